# Firmware updates on the meter: A/B slots, checked before and after the
# switch, rolled back unless the new image proves itself.
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
#      readings made after the boot are acknowledged by the coordinator it
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
from edge import coap, log, ticks

TAG = "ota"
STATE_FILE = "ota.json"  # exists only while an update is under way
LAST_FILE = "ota.last"  # the last outcomes (installed, rollback, refusal), for status
MANIFEST_FILE = "ota.cose"
CONFIRM_READINGS = 2
CONFIRM_MS = 15 * 60 * 1000
ROLLBACKS = 2  # rollbacks of one version (a power cut in its trial counts) before it is refused
BAD_CHUNKS = 3  # bad copies of one chunk before the update is abandoned
MAX_MANIFEST = 16 * 1024
GET = 1
CONTENT = 69  # 2.05
OPT_BLOCK2 = 23
SZX = 6  # 1024-byte CoAP blocks (RFC 7959)
BLOCK_BYTES = 1024


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
                self.rel = release.verify(f.read(), self.keys)
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
            self.rel = rel
            return None
        with open(self.manifest_path, "wb") as f:
            f.write(signed)
        self.rel = rel
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


def block2(num):
    """The Block2 option of a request for block `num` of 1024 bytes."""
    v = (num << 4) | SZX
    n = 1 if v < 0x100 else 2 if v < 0x10000 else 3
    return (OPT_BLOCK2, bytes([(v >> (8 * k)) & 0xFF for k in range(n - 1, -1, -1)]))


class CoapSource:
    """Blocks of the coordinator's /fw resources over the firmware's CoAP
    client (RFC 7959 Block2, 1024-byte blocks)."""

    def __init__(self, client):
        self.client = client

    def block(self, path, num):
        code, payload = self.client.post(path, b"", None, GET, (block2(num),))
        if code != CONTENT:
            raise coap.CoAPError("GET %s block %d: %s" % (path, num, coap.code_str(code)))
        return payload

    def manifest(self):
        data = b""
        num = 0
        while len(data) <= MAX_MANIFEST:
            part = self.block("fw/manifest", num)
            data += part
            if len(part) < BLOCK_BYTES:
                return data
            try:
                # CBOR delimits itself: a whole message ends the fetch.
                from shared import cose

                cose.parse(data)
                return data
            except ValueError:
                num += 1
        raise coap.CoAPError("manifest larger than %d bytes" % MAX_MANIFEST)

    def report(self, signed):
        code, _ = self.client.post("fw/report", signed, 18)  # application/cose; cose-type="cose-sign1"
        return code

    def chunk(self, sha, i, size, length):
        per = size // BLOCK_BYTES
        out = b""
        for k in range(per):
            out += self.block("fw/" + sha[:16], i * per + k)
            if len(out) >= length:
                break
        return out


class Session:
    """The updater inside the running firmware (edge/firmware.py calls
    offered, poll and delivered)."""

    def __init__(self, fw, source=None, Partition=None, confirm_ms=CONFIRM_MS):
        from edge.firmware import VERSION

        Partition = Partition or partition_class()
        self.fw = fw
        self.source = source or CoapSource(fw.client)
        self.confirm_ms = confirm_ms
        self.updater = Updater(fw.cfg["updates"], running_version(VERSION), Partition)
        self.acked = 0
        self.since = ticks.ticks_ms()
        self.offer = None
        self.retry_at = None
        self.mode = self.updater.at_boot()
        if self.mode == "switch":
            self.mode = None
            if self.updater.finish():
                self._reboot()

    def _reboot(self):
        self.fw.reboot_requested = True
        self.fw.running = False

    def offered(self, payload):
        """The 2.01's " fw=VERSION": fetched on the next poll when it is a
        version we neither run nor refused nor are already fetching."""
        try:
            text = payload.decode()
            v = text[text.find(" fw=") + 4:].split()[0]
            release.parse_version(v)
        except (ValueError, UnicodeError, IndexError):
            return
        s = self.updater.state
        if v == self.updater.version or self.mode in ("trial", "download") or s.get("declined") == v:
            return
        back = s.get("last_rollback") or {}
        if back.get("version") == v and back.get("count", 1) >= ROLLBACKS:
            return  # it failed here twice: not again until a newer one
        self.offer = v

    def poll(self):
        """One step of work; True when it used the network."""
        if self.mode == "trial":
            if ticks.since(self.since) > self.confirm_ms:
                self.updater.give_up("no reading acknowledged within %d s of booting it" % (self.confirm_ms // 1000))
                self._reboot()
            return False
        if self.fw.outbox:
            return False  # readings first
        if self.retry_at is not None and ticks.since(self.retry_at) < 0:
            return False
        self.retry_at = None
        if self.updater.state.get("report") is not None:
            return self._report()
        try:
            if self.offer is not None:
                v, self.offer = self.offer, None
                why = self.updater.offer(self.source.manifest())
                if why is None:
                    self.mode = "download"
                else:
                    self.updater.state["declined"] = v
                    self.updater.save()
                return True
            if self.mode != "download":
                return False
            i = self.updater.wanted()
            if i is not None:
                rel = self.updater.release()
                data = self.source.chunk(self.updater.state["sha"], i, rel.chunk, rel.chunk_len(i))
                if not self.updater.put(i, data) and self.updater.state.get("phase") != "download":
                    self.mode = None
                return True
            if self.updater.finish():
                self._reboot()
            else:
                self.mode = None
            return True
        except release.ReleaseError as e:
            # The manifest kept on flash no longer verifies: start afresh.
            self.updater.abandon("kept manifest: %s" % e)
            self.mode = None
            return False
        except OSError as e:
            # Network or flash trouble: the state on flash resumes it.
            log.warning(TAG, "update step failed: %s" % e)
            self.retry_at = ticks.add(ticks.ticks_ms(), int(self.fw.cfg["retry_after_s"] * 1000) or 1000)
            return False
        except Exception as e:  # an updater fault must never stop metering
            self.updater.abandon("updater fault: %r" % (e,))
            self.mode = None
            return False

    def _report(self):
        """Tell the coordinator how the update ended, signed with the device
        key (coordinator/updates/rollout.py): its staged rollout goes on or
        halts on it. Sent once; an answer of any kind ends it."""
        from shared import cbor, reading

        rep = self.updater.state["report"]
        try:
            msg = reading.sign_payload(self.fw.secret, self.fw.public_key, cbor.dumps(rep))
            code = self.source.report(msg)
        except OSError as e:
            log.warning(TAG, "update report not sent: %s" % e)
            self.retry_at = ticks.add(ticks.ticks_ms(), int(self.fw.cfg["retry_after_s"] * 1000) or 1000)
            return False
        except Exception as e:  # no reporting must stop metering
            code = None
            log.warning(TAG, "update report dropped: %r" % (e,))
        if code is not None and code >> 5 != 2:
            log.warning(TAG, "update report answered %s" % coap.code_str(code))
        self.updater.reported()
        return True

    def delivered(self):
        """A reading was acknowledged: in a trial, the new image works once
        CONFIRM_READINGS made after the boot are in."""
        if self.mode != "trial":
            return
        self.acked += 1
        if self.acked >= CONFIRM_READINGS:
            keys = self.updater.confirm()
            self.mode = None
            if keys:
                self._adopt(keys)

    def _adopt(self, keys):
        """Rotation: the confirmed release names the keys to trust next."""
        from edge import config as config_mod

        try:
            raw = config_mod.load_raw(self.fw.config_path)
            updates = dict(raw.get("updates") or self.fw.cfg["updates"])
            updates["keys"] = keys
            raw["updates"] = updates
            config_mod.save_raw(self.fw.config_path, raw)
            self.fw.cfg["updates"] = updates
            log.warning(TAG, "release keys rotated: %d trusted" % len(keys))
        except (OSError, ValueError) as e:
            log.error(TAG, "release keys not rotated: %s" % e)

    def status(self):
        return self.updater.status()


def console_lines(fw):
    """The console's `update`: what runs, what is under way, what happened
    last (read from the state files; loads nothing else)."""
    from edge.firmware import VERSION

    cfg = fw.cfg.get("updates")
    if not cfg:
        return ["updates off (config updates is null)"]
    Partition = partition_class()
    st = fw.ota.status() if fw.ota is not None else Updater(cfg, running_version(VERSION), Partition).status()
    slot = Partition(Partition.RUNNING).info()[4]
    out = ["firmware %s in %s, board %s, %d release key(s)" % (st["version"], slot, cfg["board"], len(cfg["keys"]))]
    if st["phase"] == "download":
        out.append("downloading %s: %s chunks" % (st.get("target"), st.get("progress", "?")))
    elif st["phase"] == "trial":
        out.append("on trial: confirmed once readings are acknowledged, else rolled back")
    elif st["phase"] == "report":
        out.append("telling the coordinator how the update ended")
    elif st["phase"] != "idle":
        out.append("update %s" % st["phase"])
    for key, label in (("installed", "last installed"), ("last_rollback", "last rollback"),
                       ("last_failed", "last failed"), ("last_refused", "last refused")):
        v = st.get(key)
        if v:
            out.append("%s: %s%s" % (label, v.get("version") or "", (" (%s)" % v["reason"]) if v.get("reason") else
                                     (" from %s" % v["from"] if v.get("from") else "")))
    return out
