# Readings waiting for the coordinator's acknowledgement, in append-only
# flash segment files.
#
# Every reading is written here *before* it is first sent, so a reading
# the coordinator may have seen is always on flash: after a power cut the
# sequence number and the counters continue from the newest record, and
# unacknowledged readings go out again, oldest first (a reading the
# coordinator already stored is answered "duplicate" and counts as
# delivered, because it is byte for byte the same message).
#
# Record (one slot of SLOT_SIZE bytes):
#   0  1  magic 0xA7
#   1  1  layout version (2; firmware 0.2's ring held version 1, without
#         the floor and cover fields, read only to carry a ring over)
#   2  8  seq, big-endian
#   10 8  import Wh      18 8  export Wh
#   26 4  seq - floor: when this record was written, `floor` was the
#         oldest unacknowledged reading (this one if none): every reading
#         below it had been acknowledged or merged away
#   30 4  floor - cover: the first seq the floor reading stood for (< floor
#         when readings were merged into it)
#   34 2  message length L
#   36 L  the signed reading (COSE_Sign1), exactly as sent
#   36+L 4 CRC-32 over bytes 0 .. 36+L
#
# Layout: the directory `<path>.d` holds segment files named 0, 1, 2, ...;
# segment n holds the records of ordinals n*K .. n*K+K-1 (K =
# SEGMENT_SLOTS), the record of ordinal o at byte (o % K) * SLOT_SIZE of
# its segment. Records are only ever appended: a file is never written in
# the middle, because LittleFS is copy-on-write and a write in the middle
# of a file rewrites everything after it (firmware 0.2's ring file cost 97
# erases per reading once it had wrapped). A segment whose readings are
# all acknowledged or merged away is deleted whole (a metadata commit, no
# erase), except the newest record's. Few files, so a small directory:
# its metadata commits and compactions are part of every append. The
# bytes between a record's end and the next slot are written as zeros
# with the next record (in the same write).
#
# A write torn at any byte leaves an invalid slot at the end of its file;
# it is skipped (the reading in it was never sent: sending happens only
# after the write), and the next record goes into the next slot, still at
# the end of the file. There are no pointers on flash: at boot a scan of
# the segments finds the newest valid record; the run to send starts at
# the first record above both its floor and the journal's `acked` mark
# (the last acknowledged sequence number, persisted with the counters).
# Readings merged away stay on flash until their segment goes, and the
# floor keeps them merged: their merge may have been delivered already,
# and the merged reading goes out again with the same `merged_from` (its
# cover), so the coordinator sees the same bytes ("duplicate"); a reading
# after the floor was never merged and goes out as it was. RAM use is constant:
# a few integers (first segment, tail and head ordinals) and one cached
# record, whatever the capacity.
#
# When the outbox holds `capacity` records, the two oldest unacknowledged
# readings are merged: the oldest is dropped and the next one goes out
# re-signed with an extra record ("merged_from", first seq it stands for).
# Counters are cumulative, so no energy is lost, only time resolution in
# the oldest part of the outage. Signatures are deterministic (RFC 6979),
# so re-signing the same merge gives the same bytes on every retry.
#
# Flash wear, measured (bench/bench_flash.py: LittleFS2 on a counting block
# device with an ESP32 vfs partition's geometry, 512 blocks of 4096 bytes,
# 256-byte signed readings, the journal saved as the firmware saves it).
# LittleFS cannot program a block it has already programmed and synced, so
# every synced append copies the file's last, partly filled block into a
# freshly erased one: one erase per reading, whatever K, plus a share of
# the directory's metadata compactions. Measured: 1.13 erases per reading
# before the wrap and after it with the coordinator up, 1.16 with the
# coordinator away and the outbox merging (a journal save per merge), 2.5
# to 2.7 KB programmed per reading; firmware 0.2's ring: 98 erases and
# 389 KB per reading once wrapped. LittleFS allocates blocks by walking
# round the whole partition and moves a metadata pair after 100 erases
# (block_cycles), so those erases spread over every block not held by a
# file that never changes (510 of 512; measured over 126,000 readings the
# most-erased block stayed within 90 erases of the mean). Arithmetic at
# one reading per 10 s: 3,153,600 readings a year x 1.13 erases / 510
# blocks = 7,000 erases per block per year, so 100,000-cycle flash lasts
# 14 years (13.9 while merging for ever; six times that at one a minute).
# Firmware 0.2's ring: 3,153,600 x 98 / 510 = 606,000 a year: 60 days.
#
# Space: at most segments_for(capacity) = ceil(capacity / K) + 1 segments
# exist, each at most K * SLOT_SIZE bytes (5 blocks for K = 32; 4 unless
# the last record is over 496 bytes).
# `fits(path, capacity)` checks that against the filesystem's free space
# (os.statvfs); the firmware runs with the largest capacity that fits if
# the configured one does not, and the console refuses a size that cannot
# fit, naming the largest that does.
#
# Firmware 0.2 kept the outbox in one ring file at `path`; at boot such a
# file is carried over once (its unacknowledged records, or at least its
# newest record, so the sequence continues) and then removed.

import binascii
import os

from edge.hal import region as _region

MAGIC = 0xA7
VERSION = 2
HEADER = 36
HEADER_V1 = 28
SLOT_SIZE = 512
MAX_MESSAGE = SLOT_SIZE - HEADER - 4
SEGMENT_SLOTS = 32  # K: 16 KB segments; 49 files for the default 1536
RESERVE_BLOCKS = 8  # kept free for LittleFS's metadata and copy-on-write


def _be(n, width):
    out = bytearray(width)
    for i in range(width - 1, -1, -1):
        out[i] = n & 255
        n >>= 8
    return out


def _int(b, i, width):
    n = 0
    for k in range(width):
        n = (n << 8) | b[i + k]
    return n


def encode_record(seq, import_wh, export_wh, message, floor=None, cover=None):
    if len(message) > MAX_MESSAGE:
        raise ValueError("reading of %d bytes does not fit an outbox slot (%d)" % (len(message), MAX_MESSAGE))
    floor = seq if floor is None else floor
    cover = floor if cover is None else cover
    out = bytearray([MAGIC, VERSION])
    out.extend(_be(seq, 8))
    out.extend(_be(import_wh, 8))
    out.extend(_be(export_wh, 8))
    out.extend(_be(seq - floor, 4))
    out.extend(_be(floor - cover, 4))
    out.extend(_be(len(message), 2))
    out.extend(message)
    out.extend(_be(binascii.crc32(out) & 0xFFFFFFFF, 4))
    return out


def decode_header(raw):
    """(seq, import_wh, export_wh, message, floor, cover) of a valid slot,
    else None; a version 1 slot (0.2's ring) has floor and cover 0."""
    if len(raw) < HEADER_V1 + 4 or raw[0] != MAGIC or raw[1] not in (1, VERSION):
        return None
    head = HEADER if raw[1] == VERSION else HEADER_V1
    if len(raw) < head + 4:
        return None
    n = _int(raw, head - 2, 2)
    end = head + n
    if end + 4 > len(raw):
        return None
    if binascii.crc32(raw[0:end]) & 0xFFFFFFFF != _int(raw, end, 4):
        return None
    seq = _int(raw, 2, 8)
    floor = cover = 0
    if head == HEADER:
        floor = seq - _int(raw, 26, 4)
        cover = floor - _int(raw, 30, 4)
    return seq, _int(raw, 10, 8), _int(raw, 18, 8), bytes(raw[head:end]), floor, cover


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _parent(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] or "/"


def _ctz_blocks(size, bs):
    """Blocks LittleFS uses for a file of `size` bytes: block i > 0 starts
    with 4 * (ctz(i) + 1) bytes of skip-list pointers."""
    n = 0
    left = size
    while left > 0:
        ptrs = 0
        if n:
            i = n
            ptrs = 1
            while i & 1 == 0:
                ptrs += 1
                i >>= 1
        left -= bs - 4 * ptrs
        n += 1
    return n


def segments_for(capacity):
    return (capacity + SEGMENT_SLOTS - 1) // SEGMENT_SLOTS + 1


def fits(path, capacity):
    """None if an outbox of `capacity` records fits the filesystem holding
    `path`, else (largest capacity that fits, error message). The outbox's
    own files count as free: they are part of its budget."""
    d = _parent(path)
    try:
        st = os.statvfs(d)
    except (OSError, AttributeError):
        return None  # no statvfs: nothing to check against
    bs = st[0] or 4096
    free = st[3]
    seg_blocks = _ctz_blocks(SEGMENT_SLOTS * SLOT_SIZE, bs)
    segdir = path + ".d"
    try:
        for entry in os.ilistdir(segdir):
            free += _ctz_blocks(_size(segdir + "/" + entry[0]), bs)
    except OSError:
        pass
    free += _ctz_blocks(_size(path), bs)  # a ring file of firmware 0.2, removed at boot
    usable = free - RESERVE_BLOCKS
    need = segments_for(capacity) * seg_blocks
    if need <= usable:
        return None
    best = (usable // seg_blocks - 1) * SEGMENT_SLOTS
    best = max(best, 0)
    return best, ("outbox_size %d needs %d KB of flash; the filesystem has %d KB for the outbox: at most %d fits"
                  % (capacity, need * bs // 1024, max(usable, 0) * bs // 1024, best))


def check_fits(path, capacity):
    """Raise ValueError naming the largest size that fits (config set)."""
    got = fits(path, capacity)
    if got is not None:
        raise ValueError(got[1])


def capacity_for(path, wanted):
    """(capacity to run with, None), or (the largest that fits, the error
    to report) when `wanted` does not fit: the meter runs on at boot."""
    got = fits(path, wanted)
    if got is None:
        return wanted, None
    return max(2, got[0]), got[1]


class Outbox:
    def __init__(self, path, capacity, acked=0, covered_from=None):
        if capacity < 2:
            raise ValueError("outbox capacity %d: expected at least 2" % capacity)
        self.capacity = capacity
        self.path = path
        self.dir = path + ".d"
        self.acked = acked
        self.dropped = 0  # readings merged away since boot
        self.errors = 0
        self.first = 0  # oldest segment on flash
        self.tail = 0  # ordinal of the oldest unacknowledged record (maybe invalid)
        self.head = 0  # ordinal of the next record to write
        self.newest = None  # (seq, import_wh, export_wh) of the newest record
        self.newest_at = -1  # its ordinal: its segment is never deleted
        self.floor = 0  # below it every reading was delivered or merged (from the newest record)
        self.cover = 0  # the first seq the floor reading stands for (from the newest record)
        self.covered_from = covered_from
        self._cached = None
        self._wf = None  # the segment file being appended to
        self._wseg = -1
        if not _region.exists(self.dir):
            os.mkdir(self.dir)
        if _region.exists(path):
            self._migrate_ring()
        self._scan()
        tail = self._tail_record()
        # The first seq the tail reading stands for (< its seq once merged).
        # Merges happen only in push, before the record is written: the
        # newest record knows what its floor reading stood for, and every
        # reading after the floor stands for itself. (The journal's mark,
        # possibly older, serves only to carry a 0.2 ring over.)
        if tail is None:
            self.covered_from = None
        elif tail[0] == self.floor and acked < self.cover <= tail[0]:
            self.covered_from = self.cover
        elif self.floor or self.covered_from is None or self.covered_from > tail[0] or self.covered_from <= acked:
            self.covered_from = tail[0]

    # -- files -----------------------------------------------------------

    def _seg(self, n):
        return "%s/%d" % (self.dir, n)

    def _segments(self):
        """(lowest, highest) segment number on flash, or None."""
        lo = hi = None
        for entry in os.ilistdir(self.dir):
            try:
                n = int(entry[0])
            except ValueError:
                continue
            if lo is None or n < lo:
                lo = n
            if hi is None or n > hi:
                hi = n
        return None if lo is None else (lo, hi)

    def _close_writer(self):
        if self._wf is not None:
            try:
                self._wf.close()
            except OSError:
                pass
            self._wf = None
            self._wseg = -1

    def _read(self, o, n=SLOT_SIZE):
        # A segment that is not there (deleted, never written) reads as
        # erased; a read error counts and reads as a torn slot.
        name = self._seg(o // SEGMENT_SLOTS)
        try:
            f = open(name, "rb")
        except OSError:
            return b""
        try:
            f.seek((o % SEGMENT_SLOTS) * SLOT_SIZE)
            return f.read(n)
        except OSError:
            self.errors += 1
            return b""
        finally:
            f.close()

    def _record(self, o):
        raw = self._read(o)
        if not raw:
            return None
        return decode_header(raw)

    def _append(self, record):
        """Write `record` at the head ordinal; only ever at a file's end."""
        o = self.head
        seg = o // SEGMENT_SLOTS
        if self._wseg != seg:
            self._close_writer()
            name = self._seg(seg)
            size = _size(name)
            if size > (o % SEGMENT_SLOTS) * SLOT_SIZE:
                # The file grew past the head (a torn write): next slot.
                o = seg * SEGMENT_SLOTS + (size + SLOT_SIZE - 1) // SLOT_SIZE
                self.head = o
                if o // SEGMENT_SLOTS != seg:
                    return self._append(record)
            self._wf = open(name, "ab")
            self._wseg = seg
            self._wsize = size
        pad = (o % SEGMENT_SLOTS) * SLOT_SIZE - self._wsize
        data = bytes(pad) + record if pad > 0 else record
        try:
            _region.write_through(self._wf, data, self, self._wsize)
        except Exception:
            # Torn or failed: the file's size is unknown now; stat it again.
            self._close_writer()
            raise
        self._wsize += len(data)
        self.head = o + 1
        return o

    def _gc(self):
        """Delete whole segments behind the tail (every reading in them
        acknowledged or merged away), but never the newest record's: the
        sequence continues from it after a restart."""
        limit = self.tail // SEGMENT_SLOTS
        if self.newest_at >= 0:
            limit = min(limit, self.newest_at // SEGMENT_SLOTS)
        while self.first < limit:
            if self._wseg == self.first:
                self._close_writer()
            try:
                os.remove(self._seg(self.first))
            except OSError:
                if _region.exists(self._seg(self.first)):
                    self.errors += 1
                    return
            self.first += 1

    # -- boot --------------------------------------------------------------

    def _scan(self):
        span = self._segments()
        if span is None:
            return
        lo, hi = span
        self.first = lo
        self.head = hi * SEGMENT_SLOTS + (_size(self._seg(hi)) + SLOT_SIZE - 1) // SLOT_SIZE
        # Newest: the last valid record, in the order written.
        o = self.head - 1
        while o >= lo * SEGMENT_SLOTS:
            rec = self._record(o)
            if rec is not None:
                self.newest = (rec[0], rec[1], rec[2])
                self.newest_at = o
                self.floor, self.cover = rec[4], rec[5]
                break
            o -= 1
        # Tail: the first valid record above the acknowledged mark.
        self.tail = self.head
        for seg in range(lo, hi + 1):
            if self._scan_segment(seg):
                break
        self._gc()

    def _scan_segment(self, seg):
        try:
            f = open(self._seg(seg), "rb")
        except OSError:
            return False
        try:
            for i in range(SEGMENT_SLOTS):
                f.seek(i * SLOT_SIZE)
                h = f.read(10)
                if len(h) < 10:
                    return False
                if h[0] != MAGIC or _int(h, 2, 8) <= self.acked or _int(h, 2, 8) < self.floor:
                    continue
                f.seek(i * SLOT_SIZE)
                if decode_header(f.read(SLOT_SIZE)) is not None:
                    self.tail = seg * SEGMENT_SLOTS + i
                    return True
        finally:
            f.close()
        return False

    def _migrate_ring(self):
        """Carry firmware 0.2's ring file over: its unacknowledged run
        oldest first (or, with none, its newest record), then remove it.
        Interrupted, it starts again from the ring file at the next boot."""
        self._wipe()
        old = open(self.path, "rb")
        try:
            slots = (_size(self.path) + SLOT_SIZE - 1) // SLOT_SIZE

            def rec(s):
                old.seek(s * SLOT_SIZE)
                return decode_header(old.read(SLOT_SIZE))

            best = None
            for s in range(slots):
                r = rec(s)
                if r is not None and (best is None or r[0] > best[0]):
                    best = (r[0], s)
            if best is not None:
                # Walk back over the unacknowledged run, as 0.2 did.
                start = best[1]
                last = best[0] + 1
                for k in range(slots):
                    s = (best[1] - k) % slots
                    r = rec(s)
                    if r is not None:
                        if r[0] >= last or r[0] <= self.acked:
                            break
                        last = r[0]
                        start = s
                try:
                    s = start
                    while True:
                        r = rec(s)
                        if r is not None and (r[0] > self.acked or s == best[1]):
                            self.push(r[0], r[3], r[1], r[2])
                        if s == best[1]:
                            break
                        s = (s + 1) % slots
                except OSError:
                    # No room for both copies: keep the newest record, standing
                    # for every unacknowledged one before it.
                    first = self.covered_from if self.covered_from is not None else last
                    self._wipe()
                    r = rec(best[1])
                    self.push(r[0], r[3], r[1], r[2])
                    self.covered_from = first if first < r[0] and first > self.acked else None
        finally:
            old.close()
        self._close_writer()
        os.remove(self.path)

    def _wipe(self):
        self._close_writer()
        for entry in list(os.ilistdir(self.dir)):
            os.remove(self.dir + "/" + entry[0])
        self.first = self.tail = self.head = self.floor = self.cover = 0
        self.newest = None
        self.newest_at = -1
        self._cached = None

    # -- the queue -----------------------------------------------------------

    def _tail_record(self):
        # Skip torn and acknowledged slots at the tail.
        while self.tail < self.head:
            rec = self._record(self.tail)
            if rec is not None and rec[0] > self.acked and rec[0] >= self.floor:
                return rec
            self.tail += 1
        return None

    def push(self, seq, message, import_wh, export_wh):
        """Write a reading; returns the seq merged away to make room, or None."""
        encode_record(seq, import_wh, export_wh, message)  # too big: refused before any merge
        merged = None
        # Once at a time, but more after a restart found merged readings
        # still on flash, or with a smaller capacity than before.
        while self.head - self.tail >= self.capacity:
            got = self._merge_oldest()
            merged = got if got is not None else merged
        # The floor goes to flash with the record: readings merged away stay
        # on flash until their segment goes, and must not come back after a
        # restart (their merge may have been delivered already).
        oldest = self.peek()
        if oldest:
            record = encode_record(seq, import_wh, export_wh, message, oldest[0], oldest[2])
        else:
            record = encode_record(seq, import_wh, export_wh, message)
        self.newest_at = self._append(record)
        self.newest = (seq, import_wh, export_wh)
        if self.covered_from is None:
            self.covered_from = seq
        self._gc()
        return merged

    def _merge_oldest(self):
        first = self.covered_from
        old = self._tail_record()
        self.tail += 1
        self._cached = None
        nxt = self._tail_record()
        self.dropped += 1
        if old is None:
            return None
        self.covered_from = first if first is not None and first < old[0] else old[0]
        if nxt is None:
            self.covered_from = None
        return old[0]

    def peek(self):
        """(seq, message, covered_from) of the oldest unacknowledged reading;
        covered_from < seq when it stands for merged readings."""
        if self._cached is not None:
            return self._cached
        rec = self._tail_record()
        if rec is None:
            return None
        first = self.covered_from if self.covered_from is not None and self.covered_from < rec[0] else rec[0]
        self._cached = (rec[0], rec[3], first)
        return self._cached

    def pop(self, seq):
        rec = self._tail_record()
        if rec is None or rec[0] != seq:
            return False
        self.tail += 1
        self.acked = seq
        self._cached = None
        nxt = self._tail_record()
        self.covered_from = nxt[0] if nxt else None
        if self.tail % SEGMENT_SLOTS == 0:
            self._gc()  # the tail left a segment
        return True

    def state(self):
        return {"acked": self.acked, "covered_from": self.covered_from}

    def clear(self):
        self._wipe()
        self.covered_from = None

    def __len__(self):
        return self.head - self.tail

    def close(self):
        self._close_writer()
