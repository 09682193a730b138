# Firmware updates on the meter: A/B slots, checked before and after the
# switch, rolled back unless the new image proves itself. This module is
# the state machine over the partitions and two small files (no network);
# edge/ota_session.py drives it from the running firmware.
#
# Loaded only for one step of an update at a time (edge/ota_session.py
# imports it, runs the step and unloads it again), so a meter pays no RAM
# for it while it signs a reading, and nothing when it is not updating.
# Each step starts from ota.json: what the checked manifest said (size,
# chunk size, the image's and the chunk table's SHA-256) is kept there, so
# a step needs no signature check; the signature checks run at boot, in a
# fresh heap (edge/ota_boot.py). The steps (docs/UPDATES.md):
#   1. offer: the coordinator's 2.01 to a reading says " fw=VERSION"; the
#      meter fetches the signed manifest, keeps it (offered()) and reboots;
#      at boot it is checked (a trusted release key, this board, newer than
#      the running version and the running one not below the release's
#      minimum: shared/release.py) and accepted or refused.
#   2. download: first the chunk table (each chunk's SHA-256; the manifest
#      signs only the table's hash), streamed to a file and checked there;
#      then one 4 KiB chunk per pass of the firmware's loop, only when the
#      outbox is empty (readings first), streamed into its block of the
#      inactive slot as it arrives and hashed on the way, then compared
#      with its entry in the table (read from flash, 32 bytes). The next
#      chunk's number is saved after each good chunk, so a power cut
#      resumes where it was. Neither the table nor a whole chunk is ever
#      held in RAM: a full 1.5 MB slot updates in a 48 KB heap.
#   3. switch: after the last chunk (ready()) the meter reboots; at boot
#      the kept manifest is checked again (a file on flash is no more
#      trusted than the network), the whole slot read back and its SHA-256
#      compared with the manifest's, then set_boot() and a reboot.
#   4. trial: the new image runs "pending verify"; once CONFIRM_READINGS
#      readings (edge/ota_session.py) made after the boot are acknowledged
#      by the coordinator it
#      marks itself valid (mark_app_valid_cancel_rollback). If that does
#      not happen within confirm_ms it reboots unconfirmed; the bootloader
#      then boots the old slot, which records the rollback and its reason.
# Counters, outbox and keys live on the filesystem, which an update never
# touches: they survive. State: ota.json (replaced whole: write a copy,
# rename), ota.cose (the signed manifest as received) and ota.tbl (the
# chunk table, while downloading).

import binascii
import hashlib
import json
import os

from edge import log

TAG = "ota"
STATE_FILE = "ota.json"  # exists only while an update is under way
LAST_FILE = "ota.last"  # the last outcomes (installed, rollback, refusal), for status
MANIFEST_FILE = "ota.cose"
TABLE_FILE = "ota.tbl"  # the chunk table, while downloading
PIECE = 512  # bytes read or written at once: the table's pieces (one CoAP block), the read-back
HASH_LEN = 32
ROLLBACKS = 2  # rollbacks of one version (a power cut in its trial counts) before it is refused
BAD_CHUNKS = 3  # bad copies of one chunk before the update is abandoned


# Where the slots are and what runs: edge/ota_check.py (small, so that the
# steps that need only these do not load this module).
from edge.ota_check import partition_class, running_version  # noqa: E402,F401


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


class ChunkWriter:
    """Chunk i streamed into its block of the slot as it arrives: the block
    erased first, each piece programmed at its offset and hashed on the
    way, so no whole chunk is held in RAM. Updater.end() judges it."""

    def __init__(self, part, i, length):
        self.part = part
        self.i = i
        self.length = length
        self.n = 0
        self.over = False
        self.h = hashlib.sha256()
        part.ioctl(6, i)  # erase the block (as writeblocks without offset would)

    def write(self, data):
        if self.n + len(data) > self.length:
            self.over = True  # more than the chunk holds: bad, whatever its hash
            data = data[:self.length - self.n]
        if data:
            self.h.update(data)
            self.part.writeblocks(self.i, data, self.n)
            self.n += len(data)


class Updater:
    """The update's state machine over the partitions and two small files.
    No network: `offer`, `put`, `finish` take bytes in."""

    def __init__(self, updates, version, Partition, state_path=STATE_FILE, manifest_path=MANIFEST_FILE,
                 last_path=LAST_FILE, table_path=TABLE_FILE):
        self.updates = updates
        self.version = version
        self.Partition = Partition
        self.state_path = state_path
        self.manifest_path = manifest_path
        self.last_path = last_path
        self.table_path = table_path
        self.state = self._load()

    def _load(self):
        for path in (self.state_path, self.last_path):
            try:
                with open(path) as f:
                    s = json.loads(f.read())
                if isinstance(s, dict):
                    return s
            except (OSError, ValueError):
                pass
        return {"phase": "idle"}

    def save(self):
        # Each file replaced whole (a copy renamed over it). When nothing
        # is under way only LAST_FILE remains, so the firmware's boot sees
        # no STATE_FILE and never loads this module.
        idle = self.state.get("phase") == "idle"
        path = self.last_path if idle else self.state_path
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.state))
        os.rename(tmp, path)
        if idle:
            try:
                os.remove(self.state_path)
            except OSError:
                pass

    def _keep(self):
        # What outlives an update: the last outcomes, for `status`.
        out = {"phase": "idle"}
        for k in ("last_rollback", "last_failed", "last_refused", "installed", "report"):
            if k in self.state:
                out[k] = self.state[k]
        return out

    def count(self):
        s = self.state
        return (s["size"] + s["chunk"] - 1) // s["chunk"]

    def chunk_len(self, i):
        s = self.state
        return min(s["chunk"], s["size"] - i * s["chunk"])

    def running(self):
        return self.Partition(self.Partition.RUNNING)

    def offer(self, signed):
        """Take a signed manifest. None if the update starts (or resumes),
        else why it was refused (also kept as last_refused)."""
        from edge import ota_check

        fields, why = ota_check.offer(signed, self.updates, self.version, self.Partition)
        return self.accept(signed, fields, why)

    def accept(self, signed, fields, why):
        """Act on edge/ota_check.offer's answer for `signed`."""
        if why is not None:
            self.state["last_refused"] = {"reason": why}
            self.save()
            log.warning(TAG, "update refused: %s" % why)
            return why
        if self.state.get("phase") == "download" and self.state.get("sha") == fields["sha"]:
            return None
        _remove(self.table_path)
        with open(self.manifest_path, "wb") as f:
            f.write(signed)
        s = self._keep()
        s.update(fields)
        s.update({"phase": "download", "next": 0, "table": False, "from": self.version,
                  "from_slot": self.running().info()[4]})
        self.state = s
        self.save()
        log.info(TAG, "update to %s accepted: %d bytes into %s" % (s["version"], s["size"], s["slot"]))
        return None

    def offered(self, version, signed):
        """Keep an offered manifest, unchecked, for edge/ota_boot.py to check
        at the next boot (the check needs more heap than a running meter
        has free). Nothing else changes until it is checked."""
        with open(self.manifest_path, "wb") as f:
            f.write(signed)
        s = self._keep()
        s.update({"phase": "offered", "version": version})
        self.state = s
        self.save()
        log.info(TAG, "update to %s offered: checked at the next boot" % version)

    def ready(self):
        """Every chunk is in: the image is checked and switched to at the
        next boot, in a fresh heap (edge/ota_boot.py)."""
        self.state["phase"] = "verify"
        self.save()
        log.info(TAG, "update to %s downloaded: checked and switched at the next boot" % self.state.get("version"))

    # -- the chunk table: streamed to flash, checked there ------------------

    def wanted_table(self):
        """Offset of the chunk table's next piece to fetch (PIECE bytes), or
        None when the table is in and checked (or nothing is under way).
        A piece torn by a power cut restarts the table (12 KiB at most)."""
        if self.state.get("phase") != "download" or self.state.get("table"):
            return None
        size = self.count() * HASH_LEN
        n = _file_size(self.table_path)
        if n > size or (n % PIECE and n != size):
            _remove(self.table_path)
            n = 0
        if n == size:
            # All in before a cut came between the last piece and its check.
            self._check_table()
            return self.wanted_table()
        return n

    def put_table(self, off, data):
        """A piece of the chunk table as received, appended to the file; the
        whole table checked against the manifest once in. False if refused
        (not the piece wanted, or the table did not match)."""
        size = self.count() * HASH_LEN
        if off != self.wanted_table() or not 0 < len(data) <= min(PIECE, size - off):
            return False
        with open(self.table_path, "ab") as f:
            f.write(data)
        if off + len(data) == size:
            return self._check_table()
        return True

    def _table_matches(self):
        if _file_size(self.table_path) != self.count() * HASH_LEN:
            return False
        h = hashlib.sha256()
        buf = bytearray(PIECE)
        with open(self.table_path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
        return binascii.hexlify(h.digest()).decode() == self.state["tsha"]

    def _check_table(self):
        if self._table_matches():
            self.state["table"] = True
            self.save()
            return True
        _remove(self.table_path)
        self._bad("the chunk table does not match the manifest's hash")
        return False

    def entry(self, i):
        """Chunk i's SHA-256, read from the table on flash."""
        with open(self.table_path, "rb") as f:
            f.seek(i * HASH_LEN)
            return f.read(HASH_LEN)

    # -- chunks: streamed into the slot ---------------------------------------

    def wanted(self):
        """The next chunk to fetch, or None (table still missing, or done)."""
        if self.state.get("phase") != "download" or not self.state.get("table"):
            return None
        n = self.state["next"]
        return n if n < self.count() else None

    def begin(self, i):
        """A ChunkWriter for chunk i if it is the one wanted, else None."""
        if i != self.wanted():
            return None
        return ChunkWriter(self.Partition(self.state["slot"]), i, self.chunk_len(i))

    def end(self, w):
        """The chunk `w` wrote is done: kept if its length and hash match
        the table's entry, else counted (the update is abandoned after
        BAD_CHUNKS) and fetched again. True if kept."""
        try:
            expected = self.entry(w.i)
        except OSError:
            expected = b""
        if len(expected) != HASH_LEN:
            # The table went from flash under us: fetch it again.
            self.state["table"] = False
            _remove(self.table_path)
            self.save()
            return False
        if w.over or w.n != w.length or w.h.digest() != expected:
            self._bad("chunk %d does not match its hash" % w.i)
            return False
        self.state["next"] = w.i + 1
        self.save()
        return True

    def put(self, i, data):
        """Chunk i whole (a source that has it in RAM): see begin/end."""
        w = self.begin(i)
        if w is None:
            return False
        w.write(data)
        return self.end(w)

    def _bad(self, what):
        bad = self.state.get("bad", 0) + 1
        self.state["bad"] = bad
        log.warning(TAG, "%s of %s (%d bad)" % (what, self.state.get("version"), bad))
        if bad >= BAD_CHUNKS:
            self.abandon("%s: failed %d times" % (what, bad))
        else:
            self.save()

    def abandon(self, reason):
        s = self._keep()
        s["last_failed"] = {"version": self.state.get("version"), "reason": reason}
        self.state = s
        self.save()
        _remove(self.table_path)
        log.error(TAG, "update abandoned: %s" % reason)

    def image_ok(self):
        """The slot read back: its first `size` bytes hash to the manifest's.
        Read PIECE bytes at a time (a 4 KiB buffer is a lot to find whole in
        a fragmented 48 KB heap)."""
        target = self.Partition(self.state["slot"])
        h = hashlib.sha256()
        buf = bytearray(PIECE)
        mv = memoryview(buf)
        for i in range(self.count()):
            n = self.chunk_len(i)
            for off in range(0, n, PIECE):
                target.readblocks(i, buf, off)
                h.update(mv[:min(PIECE, n - off)])
        return binascii.hexlify(h.digest()).decode() == self.state["sha"]

    def manifest_ok(self):
        """None if the kept manifest still verifies and names the release
        under way, else why not."""
        from edge import ota_check

        return ota_check.kept(self.updates, self.state.get("sha"), self.manifest_path)

    def finish(self, kept=False):
        """All chunks in: check the kept manifest (unless `kept`: the caller
        just did) and the whole image, then point the bootloader at it.
        True: reboot now. False: abandoned (the reason is kept)."""
        why = None if kept else self.manifest_ok()
        if why is not None:
            self.abandon(why)
            return False
        if not self.image_ok():
            self.abandon("image in %s does not match the manifest's SHA-256" % self.state["slot"])
            return False
        self.state["phase"] = "switching"
        self.state.pop("table", None)
        self.save()
        _remove(self.table_path)
        self.Partition(self.state["slot"]).set_boot()
        self.state["phase"] = "switched"
        self.save()
        log.warning(TAG, "switching to %s in %s: rebooting" % (self.state["version"], self.state["slot"]))
        return True

    def at_boot(self):
        """After a boot: "trial" when the new image runs unconfirmed,
        "rolled_back" when the old one runs again, "download" to go on
        fetching, None when nothing is under way."""
        s = self.state
        phase = s.get("phase")
        if phase in ("idle", None):
            return None
        if phase == "download" and not _file_size(self.manifest_path):
            # Lost from flash: start afresh at the next offer, not stuck.
            self.abandon("kept manifest unreadable")
            return None
        if phase in ("download", "report", "offered", "verify"):
            return phase  # offered, verify: edge/ota_boot.py's, before the firmware starts
        here = self.running().info()[4]
        if here == s.get("slot"):
            if phase != "trial":
                s["phase"] = "trial"
                self.save()
            return "trial"
        if phase == "switching" and s.get("retries", 0) < 2:
            # Cut before set_boot() took: the image is whole, switch again.
            s["retries"] = s.get("retries", 0) + 1
            self.save()
            return "switch"
        reason = s.get("giving_up") or "the new image restarted before it was confirmed"
        out = self._keep()
        before = out.get("last_rollback") or {}
        n = before.get("count", 0) + 1 if before.get("version") == s.get("version") else 1
        out["last_rollback"] = {"version": s.get("version"), "reason": reason, "count": n}
        out["report"] = {"v": self.version, "to": s.get("version") or "", "ok": False, "why": reason}
        out["phase"] = "report"  # kept in STATE_FILE until sent, so a reboot still sends it
        self.state = out
        self.save()
        log.error(TAG, "rolled back from %s to %s: %s" % (s.get("version"), self.version, reason))
        return "rolled_back"

    def confirm(self):
        """The new image proved itself: make it permanent. Returns the
        release keys it announces (rotation) or None."""
        self.Partition.mark_app_valid_cancel_rollback()
        keys = self.state.get("keys")
        out = self._keep()
        out["installed"] = {"version": self.state.get("version"), "from": self.state.get("from")}
        out["report"] = {"v": self.state.get("version") or "", "to": self.state.get("version") or "", "ok": True,
                         "why": ""}
        out["phase"] = "report"
        self.state = out
        self.save()
        log.info(TAG, "running %s confirmed" % out["installed"]["version"])
        return keys

    def reported(self):
        """The outcome reached the coordinator (or was refused for good)."""
        self.state.pop("report", None)
        self.state["phase"] = "idle"
        self.save()

    def give_up(self, reason):
        """Not confirmed: note why, for the old image to report after the
        rollback; the caller reboots without marking the image valid."""
        self.state["giving_up"] = reason
        self.save()
        log.error(TAG, "new image not confirmed: %s; rebooting to roll back" % reason)

    def status(self):
        s = self.state
        out = {"version": self.version, "phase": s.get("phase", "idle")}
        if s.get("phase") == "download":
            out["target"] = s.get("version")
            try:
                out["progress"] = "%d/%d" % (s["next"], self.count())
            except (KeyError, ZeroDivisionError):
                pass
        for k in ("last_rollback", "last_failed", "last_refused", "installed"):
            if k in s:
                out[k] = s[k]
        return out
