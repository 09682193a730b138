# Firmware updates on the meter: A/B slots, checked before and after the
# switch, rolled back unless the new image proves itself. This module is
# the state machine over the partitions and two small files (no network);
# edge/ota_session.py drives it from the running firmware.
#
# Loaded only when an update is offered or under way (edge/firmware.py
# keeps a reference only then), so a meter that is not updating pays no
# RAM for it. The steps (docs/UPDATES.md):
#   1. offer: the coordinator's 2.01 to a reading says " fw=VERSION"; the
#      meter fetches the signed manifest and checks it (a trusted release
#      key, this board, newer than the running version and the running one
#      not below the release's minimum: shared/release.py).
#   2. download: one 4 KiB chunk per pass of the firmware's loop, only when
#      the outbox is empty (readings first), each checked against its hash
#      in the manifest before it is written into the inactive slot; the
#      next chunk's number is saved after each write, so a power cut
#      resumes where it was.
#   3. switch: the whole slot read back and its SHA-256 compared with the
#      manifest's, then set_boot() and a reboot.
#   4. trial: the new image runs "pending verify"; once CONFIRM_READINGS
#      readings (edge/ota_session.py) made after the boot are acknowledged
#      by the coordinator it
#      marks itself valid (mark_app_valid_cancel_rollback). If that does
#      not happen within confirm_ms it reboots unconfirmed; the bootloader
#      then boots the old slot, which records the rollback and its reason.
# Counters, outbox and keys live on the filesystem, which an update never
# touches: they survive. State: ota.json (replaced whole: write a copy,
# rename) and ota.cose (the signed manifest as received).

import binascii
import hashlib
import json
import os

from shared import release
from edge import log

TAG = "ota"
STATE_FILE = "ota.json"  # exists only while an update is under way
LAST_FILE = "ota.last"  # the last outcomes (installed, rollback, refusal), for status
MANIFEST_FILE = "ota.cose"
ROLLBACKS = 2  # rollbacks of one version (a power cut in its trial counts) before it is refused
BAD_CHUNKS = 3  # bad copies of one chunk before the update is abandoned


def partition_class():
    try:
        from esp32 import Partition
    except ImportError:
        from edge.hal.partition import Partition
    return Partition


def running_version(default):
    """The running image's version: the firmware's VERSION on a board; under
    the unix port the stand-in slot's header names it (edge/hal/partition.py)."""
    try:
        import esp32  # noqa: F401

        return default
    except ImportError:
        from edge.hal.partition import Partition, image_header

        hdr = image_header(Partition(Partition.RUNNING))
        return hdr["version"] if hdr and isinstance(hdr.get("version"), str) else default


class _Hashes:
    """The chunk hashes as one bytes object: a list of 384 small bytes
    objects (a full slot) takes 41 KB of a board's heap, this 12 KB."""

    def __init__(self, hashes):
        self.blob = b"".join(hashes)

    def __len__(self):
        return len(self.blob) // 32

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.blob[i * 32:i * 32 + 32]


def _lean(rel):
    # Only what the download needs stays in RAM; the signed manifest is on
    # flash (ota.cose).
    rel.chunks = _Hashes(rel.chunks)
    rel.signed = None
    rel.m = None
    return rel


def _hexkeys(keys):
    return [binascii.unhexlify(k) for k in keys]


class Updater:
    """The update's state machine over the partitions and two small files.
    No network: `offer`, `put`, `finish` take bytes in."""

    def __init__(self, updates, version, Partition, state_path=STATE_FILE, manifest_path=MANIFEST_FILE,
                 last_path=LAST_FILE):
        self.board = updates["board"]
        self.keys = _hexkeys(updates["keys"])
        self.version = version
        self.Partition = Partition
        self.state_path = state_path
        self.manifest_path = manifest_path
        self.last_path = last_path
        self.state = self._load()
        self.rel = None

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

    def release(self):
        """The release under way, its manifest checked again (a file on
        flash is no more trusted than the network)."""
        if self.rel is None:
            with open(self.manifest_path, "rb") as f:
                self.rel = _lean(release.verify(f.read(), self.keys))
        return self.rel

    def running(self):
        return self.Partition(self.Partition.RUNNING)

    def offer(self, signed):
        """Take a signed manifest. None if the update starts (or resumes),
        else why it was refused (also kept as last_refused)."""
        try:
            rel = release.verify(signed, self.keys)
            why = release.applicable(rel, self.board, self.version)
            if why is None:
                target = self.running().get_next_update()
                if rel.chunk != target.ioctl(5, 0):
                    why = "chunk size %d is not the slot's block size" % rel.chunk
                elif rel.size > target.ioctl(4, 0) * rel.chunk:
                    why = "image of %d bytes does not fit the slot" % rel.size
        except release.ReleaseError as e:
            why = str(e)
        if why is not None:
            self.state["last_refused"] = {"reason": why}
            self.save()
            log.warning(TAG, "update refused: %s" % why)
            return why
        if self.state.get("phase") == "download" and self.state.get("sha") == rel.release_id():
            self.rel = _lean(rel)
            return None
        with open(self.manifest_path, "wb") as f:
            f.write(signed)
        self.rel = _lean(rel)
        s = self._keep()
        s.update({"phase": "download", "version": rel.version, "sha": rel.release_id(), "next": 0,
                  "slot": target.info()[4], "from": self.version, "from_slot": self.running().info()[4]})
        if rel.keys:
            # Rotation, adopted once the release is confirmed (checked now,
            # so confirming needs no second signature check).
            s["keys"] = [binascii.hexlify(k).decode() for k in rel.keys]
        self.state = s
        self.save()
        log.info(TAG, "update to %s accepted: %d bytes into %s" % (rel.version, rel.size, s["slot"]))
        return None

    def wanted(self):
        """The next chunk to fetch, or None."""
        if self.state.get("phase") != "download":
            return None
        n = self.state["next"]
        return n if n < len(self.release().chunks) else None

    def put(self, i, data):
        """Chunk i as received: written if its hash matches, else counted
        and refused (False). Abandons the update after BAD_CHUNKS."""
        rel = self.release()
        if i != self.wanted():
            return False
        if not rel.chunk_ok(i, data):
            bad = self.state.get("bad", 0) + 1
            self.state["bad"] = bad
            log.warning(TAG, "chunk %d of %s does not match its hash (%d bad)" % (i, rel.version, bad))
            if bad >= BAD_CHUNKS:
                self.abandon("chunk %d failed its hash %d times" % (i, bad))
            else:
                self.save()
            return False
        target = self.Partition(self.state["slot"])
        target.writeblocks(i, data)
        self.state["next"] = i + 1
        self.save()
        return True

    def abandon(self, reason):
        s = self._keep()
        s["last_failed"] = {"version": self.state.get("version"), "reason": reason}
        self.state = s
        self.save()
        log.error(TAG, "update abandoned: %s" % reason)

    def image_ok(self):
        """The slot read back: its first `size` bytes hash to the manifest's."""
        rel = self.release()
        target = self.Partition(self.state["slot"])
        h = hashlib.sha256()
        buf = bytearray(rel.chunk)
        mv = memoryview(buf)
        for i in range(len(rel.chunks)):
            target.readblocks(i, buf)
            h.update(mv[:rel.chunk_len(i)])
        return h.digest() == rel.sha256

    def finish(self):
        """All chunks in: check the whole image, then point the bootloader
        at it. True: reboot now. False: abandoned (the reason is kept)."""
        if not self.image_ok():
            self.abandon("image in %s does not match the manifest's SHA-256" % self.state["slot"])
            return False
        self.state["phase"] = "switching"
        self.save()
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
        if phase in ("download", "report"):
            return phase
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
                out["progress"] = "%d/%d" % (s["next"], len(self.release().chunks))
            except (OSError, release.ReleaseError):
                pass
        for k in ("last_rollback", "last_failed", "last_refused", "installed"):
            if k in s:
                out[k] = s[k]
        return out
