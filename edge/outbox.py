# Readings waiting for the coordinator's acknowledgement, in a flash ring.
#
# Every reading is written here *before* it is first sent, so a reading
# the coordinator may have seen is always on flash: after a power cut the
# sequence number and the counters continue from the newest record, and
# unacknowledged readings go out again, oldest first (a reading the
# coordinator already stored is answered "duplicate" and counts as
# delivered, because it is byte for byte the same message).
#
# Layout: `capacity` slots of SLOT_SIZE bytes in one flash region,
#   0  1  magic 0xA7
#   1  1  layout version (1)
#   2  8  seq, big-endian
#   10 8  import Wh      18 8  export Wh
#   26 2  message length L
#   28 L  the signed reading (COSE_Sign1), exactly as sent
#   28+L 4 CRC-32 over bytes 0 .. 28+L
# Slots are written in order around the ring; a write torn at any byte
# leaves an invalid slot that is skipped (the reading in it was never
# sent: sending happens only after the write). The ring keeps no pointers
# on flash: at boot a scan finds the newest record, and the journal's
# `acked` mark (the last acknowledged sequence number, persisted with the
# counters) says where the unacknowledged run starts. RAM use is constant.
#
# When the ring is full the two oldest unacknowledged readings are merged:
# the oldest is dropped and the next one goes out re-signed with an extra
# record ("merged_from", first seq it stands for). Counters are cumulative,
# so no energy is lost, only time resolution in the oldest part of the
# outage. Signatures are deterministic (RFC 6979), so re-signing the same
# merge gives the same bytes on every retry.
#
# Default capacity 1536 slots (768 KB of flash): more than 24 hours of
# one-minute readings.

import binascii

from edge.hal.region import Region

MAGIC = 0xA7
VERSION = 1
HEADER = 28
SLOT_SIZE = 512
MAX_MESSAGE = SLOT_SIZE - HEADER - 4


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


def encode_record(seq, import_wh, export_wh, message):
    if len(message) > MAX_MESSAGE:
        raise ValueError("reading of %d bytes does not fit an outbox slot (%d)" % (len(message), MAX_MESSAGE))
    out = bytearray([MAGIC, VERSION])
    out.extend(_be(seq, 8))
    out.extend(_be(import_wh, 8))
    out.extend(_be(export_wh, 8))
    out.extend(_be(len(message), 2))
    out.extend(message)
    out.extend(_be(binascii.crc32(out) & 0xFFFFFFFF, 4))
    return out


def decode_header(raw):
    """(seq, import_wh, export_wh, message) of a valid slot, else None."""
    if raw[0] != MAGIC or raw[1] != VERSION:
        return None
    n = _int(raw, 26, 2)
    end = HEADER + n
    if end + 4 > len(raw):
        return None
    if binascii.crc32(raw[0:end]) & 0xFFFFFFFF != _int(raw, end, 4):
        return None
    return _int(raw, 2, 8), _int(raw, 10, 8), _int(raw, 18, 8), bytes(raw[HEADER:end])


class Outbox:
    def __init__(self, path, capacity, acked=0, covered_from=None):
        if capacity < 2:
            raise ValueError("outbox capacity %d: expected at least 2" % capacity)
        self.capacity = capacity
        self.region = Region(path, capacity * SLOT_SIZE)
        self.acked = acked
        self.dropped = 0  # readings merged away since boot
        self.errors = 0
        self.head = 0  # next slot to write
        self.count = 0  # slots from tail to head (some may be invalid)
        self.newest = None  # (seq, import_wh, export_wh) of the newest record
        self._cached = None
        self._scan()
        tail = self._tail_record()
        # The first seq the tail reading stands for (< its seq once merged).
        self.covered_from = covered_from
        if tail is None or covered_from is None or covered_from > tail[0] or covered_from <= acked:
            self.covered_from = tail[0] if tail else None

    def _read(self, slot):
        try:
            return decode_header(self.region.read(slot * SLOT_SIZE, SLOT_SIZE))
        except OSError:
            self.errors += 1
            return None

    def _scan(self):
        best = None
        for slot in range(self.capacity):
            if self.region.read(slot * SLOT_SIZE, 1)[0] != MAGIC:
                continue
            rec = self._read(slot)
            if rec is not None and (best is None or rec[0] > best[0]):
                best = (rec[0], slot, rec[1], rec[2])
        if best is None:
            return
        seq, slot, imp, exp = best
        self.newest = (seq, imp, exp)
        self.head = (slot + 1) % self.capacity
        # Walk back over the unacknowledged run; torn slots are skipped,
        # an erased slot or an older or acknowledged record ends it.
        count = 0
        last = seq + 1
        for k in range(self.capacity):
            s = (slot - k) % self.capacity
            raw = self.region.read(s * SLOT_SIZE, 2)
            if raw[0] == 0xFF and raw[1] == 0xFF:
                break
            rec = self._read(s)
            if rec is not None:
                if rec[0] >= last or rec[0] <= self.acked:
                    break
                last = rec[0]
            count = k + 1
        self.count = count

    def _tail_slot(self):
        return (self.head - self.count) % self.capacity

    def _tail_record(self):
        # Skip torn slots at the tail.
        while self.count:
            rec = self._read(self._tail_slot())
            if rec is not None and rec[0] > self.acked:
                return rec
            self.count -= 1
        return None

    def push(self, seq, message, import_wh, export_wh):
        """Write a reading; returns the seq merged away to make room, or None."""
        record = encode_record(seq, import_wh, export_wh, message)
        merged = None
        if self.count >= self.capacity:
            merged = self._merge_oldest()
        self.region.write(self.head * SLOT_SIZE, record)
        self.head = (self.head + 1) % self.capacity
        self.count += 1
        self.newest = (seq, import_wh, export_wh)
        if self.covered_from is None:
            self.covered_from = seq
        return merged

    def _merge_oldest(self):
        first = self.covered_from
        old = self._tail_record()
        self.count -= 1
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
        self.count -= 1
        self.acked = seq
        self._cached = None
        nxt = self._tail_record()
        self.covered_from = nxt[0] if nxt else None
        return True

    def state(self):
        return {"acked": self.acked, "covered_from": self.covered_from}

    def clear(self):
        self.region.erase()
        self.count = 0
        self.head = 0
        self.newest = None
        self.covered_from = None
        self._cached = None

    def __len__(self):
        return self.count

    def close(self):
        self.region.close()
