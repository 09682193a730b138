# The updater inside the running firmware: it takes the coordinator's
# offer, fetches the manifest and the chunks block-wise over the
# firmware's CoAP client (RFC 7959 Block2), confirms the new image once its
# readings are acknowledged (or gives up and reboots, which rolls back),
# and reports the outcome signed with the device key. The state machine
# is edge/ota.py; docs/UPDATES.md has the whole story.
#
# Memory: the firmware signs a reading and takes an update step one after
# the other, never at once, so the two need not share the heap. Each step
# imports edge/ota.py (and shared/release.py when it checks a signature),
# runs from the state on flash and unloads them again (_unload): between
# steps the updater holds only this module and a Session, and a reading's
# signature finds the heap as it would without an update. Measured in the
# frozen esp32-like build: a full 1.5 MB slot updates in the firmware's
# 48 KB heap bound (tests/flash/test_frozen_ota.py).

import gc
import sys

from edge import coap, log, ticks

TAG = "ota"
CONFIRM_READINGS = 2
CONFIRM_MS = 15 * 60 * 1000
MAX_MANIFEST = 4096  # shared/release.MAX_MANIFEST (not imported here: see _unload)
ROLLBACKS = 2  # edge/ota.ROLLBACKS
GET = 1
CONTENT = 69  # 2.05
OPT_BLOCK2 = 23
# 512-byte CoAP blocks (RFC 7959 SZX 5): each block is a datagram, its
# bytes object and its payload in RAM at once, three runs of its size that a
# fragmented 48 KB heap must find free; at 1 KiB they did not always.
SZX = 5
BLOCK_BYTES = 512
# Free heap (after a collection) below which no update step is taken.
# Measured in the frozen esp32-like build (docs/UPDATES.md, Figures): a full
# update completes with ~12 KB free at each step (a 52 KB heap); with ~8 KB
# (48 KB) steps fragment the heap until a reading's receive buffer fails.
FREE_FLOOR = 11 * 1024
_STEP_MODULES = (("edge", "ota"), ("edge", "ota_check"), ("shared", "release"))


def _unload():
    """Forget the updater's modules (sys.modules and the package attribute
    both hold them), so the GC takes back their functions and classes.
    Frozen, they are imported again from flash at the next step."""
    for pkg, name in _STEP_MODULES:
        sys.modules.pop(pkg + "." + name, None)
        parent = sys.modules.get(pkg)
        if parent is not None and hasattr(parent, name):
            try:
                delattr(parent, name)
            except (AttributeError, TypeError):
                pass


def _updater(updates, version, Partition):
    from edge.ota import Updater

    return Updater(updates, version, Partition)


def block2(num):
    """The Block2 option of a request for block `num` of BLOCK_BYTES."""
    v = (num << 4) | SZX
    n = 1 if v < 0x100 else 2 if v < 0x10000 else 3
    return (OPT_BLOCK2, bytes([(v >> (8 * k)) & 0xFF for k in range(n - 1, -1, -1)]))


class CoapSource:
    """Blocks of the coordinator's /fw resources over the firmware's CoAP
    client (RFC 7959 Block2, BLOCK_BYTES a block)."""

    def __init__(self, client):
        self.client = client

    def block(self, path, num):
        gc.collect()  # the last block's garbage gone: whole free runs for this one
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

    def table(self, sha, off):
        """The chunk table's BLOCK_BYTES from `off` (Block2 of fw/<id16>/table)."""
        return self.block("fw/" + sha[:16] + "/table", off // BLOCK_BYTES)

    def chunk(self, sha, i, size, length, sink):
        """Chunk i's blocks, each handed to `sink(bytes)` as it arrives (the
        updater streams it into flash): one block in RAM at a time, not 4 KiB."""
        per = size // BLOCK_BYTES
        got = 0
        for k in range(per):
            part = self.block("fw/" + sha[:16], i * per + k)
            sink(part)
            got += len(part)
            if got >= length or len(part) < BLOCK_BYTES:
                break


class Session:
    """The updater inside the running firmware (edge/firmware.py calls
    offered, poll and delivered). Holds no Updater between steps."""

    def __init__(self, fw, source=None, Partition=None, confirm_ms=CONFIRM_MS):
        from edge.firmware import VERSION
        from edge.ota import partition_class, running_version

        self.Partition = Partition or partition_class()
        self.fw = fw
        self.source = source or CoapSource(fw.client)
        self.confirm_ms = confirm_ms
        self.version = running_version(VERSION)
        self.acked = 0
        self.since = ticks.ticks_ms()
        self.offer = None
        self.retry_at = None
        self.short = False  # the last step waited for memory (logged once)
        try:
            u = self._updater()
            self.mode = u.at_boot()
            self._note(u)
            sha = u.state.get("sha")
        finally:
            u = None
            _unload()
        if self.mode == "switch":
            # Cut before the switch took: the image is whole, switch again.
            self._finish(sha)

    def _updater(self):
        return _updater(self.fw.cfg["updates"], self.version, self.Partition)

    def _note(self, u):
        # What offered() and poll() decide on without loading the updater.
        s = u.state
        self.declined = s.get("declined")
        self.back = s.get("last_rollback") or {}
        self.reporting = s.get("report") is not None

    def _reboot(self):
        self.fw.reboot_requested = True
        self.fw.running = False

    def offered(self, payload):
        """The 2.01's " fw=VERSION": fetched on the next poll when it is a
        version we neither run nor refused nor are already fetching."""
        try:
            text = payload.decode()
            v = text[text.find(" fw=") + 4:].split()[0]
            parts = v.split(".")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                return
        except (ValueError, UnicodeError, IndexError):
            return
        if v == self.version or self.mode in ("trial", "download") or self.declined == v:
            return
        if self.back.get("version") == v and self.back.get("count", 1) >= ROLLBACKS:
            return  # it failed here twice: not again until a newer one
        self.offer = v

    def poll(self):
        """One step of work; True when it used the network. Never raises:
        an updater fault must not stop metering."""
        try:
            return self._poll()
        except Exception as e:
            log.error(TAG, "update step fault: %r" % (e,))
            self.retry_at = ticks.add(ticks.ticks_ms(), 60000)
            return False
        finally:
            _unload()

    def _retry_later(self):
        self.retry_at = ticks.add(ticks.ticks_ms(), int(self.fw.cfg["retry_after_s"] * 1000) or 1000)

    def _poll(self):
        if self.mode == "trial":
            if ticks.since(self.since) > self.confirm_ms:
                self._updater().give_up("no reading acknowledged within %d s of booting it" % (self.confirm_ms // 1000))
                self._reboot()
            return False
        if self.fw.outbox:
            return False  # readings first
        if self.retry_at is not None and ticks.since(self.retry_at) < 0:
            return False
        self.retry_at = None
        if not self.reporting and self.offer is None and self.mode != "download":
            return False  # nothing to do: nothing loaded
        # The last reading's garbage gone first: a step's 1 KiB blocks need
        # whole free runs of a 48 KB heap.
        gc.collect()
        if hasattr(gc, "mem_free") and gc.mem_free() < FREE_FLOOR:
            # Too little room for a step: it would fragment the heap until a
            # reading's acknowledgement no longer fits. Metering goes first.
            if not self.short:
                log.warning(TAG, "update waits: %d bytes free, a step needs %d" % (gc.mem_free(), FREE_FLOOR))
                self.short = True
            self._retry_later()
            return False
        self.short = False
        if self.offer is not None and not self.reporting:
            return self._take_offer()
        u = self._updater()
        try:
            done = self._step(u)
            self._note(u)
            sha = u.state.get("sha")
        finally:
            u = None
        if done != "finish":
            return done
        _unload()
        self._finish(sha)
        return True

    def _take_offer(self):
        """Fetch and check the offered manifest (the signature checked with
        only edge/ota_check.py and shared/release.py loaded), then start
        the update or note the refusal."""
        v, self.offer = self.offer, None
        try:
            signed = self.source.manifest()
        except OSError as e:
            log.warning(TAG, "update manifest not fetched: %s" % e)
            self._retry_later()
            return False
        from edge import ota_check

        gc.collect()
        fields, why = ota_check.offer(signed, self.fw.cfg["updates"], self.version, self.Partition)
        ota_check = None
        _unload()
        gc.collect()
        u = self._updater()
        if u.accept(signed, fields, why) is None:
            self.mode = "download"
        else:
            u.state["declined"] = v
            u.save()
        self._note(u)
        return True

    def _finish(self, sha):
        """All chunks in: the kept manifest checked again (the updater's
        modules unloaded meanwhile), then the image and the switch."""
        from edge import ota_check

        gc.collect()
        why = ota_check.kept(self.fw.cfg["updates"], sha)
        ota_check = None
        _unload()
        gc.collect()
        u = self._updater()
        if why is not None:
            u.abandon(why)
            ok = False
        else:
            ok = u.finish(kept=True)
        self._note(u)
        if ok:
            self._reboot()
        else:
            self.mode = None

    def _step(self, u):
        if u.state.get("report") is not None:
            return self._report(u)
        try:
            if self.mode != "download":
                return False
            if u.state.get("phase") != "download":
                self.mode = None  # abandoned at boot (the kept manifest lost)
                return False
            sha = u.state["sha"]
            off = u.wanted_table()
            if off is not None:
                # The chunk table first, one piece a pass, to flash.
                if not u.put_table(off, self.source.table(sha, off)) and u.state.get("phase") != "download":
                    self.mode = None
                return True
            if u.state.get("phase") != "download":
                self.mode = None  # the table failed its check once too often
                return False
            i = u.wanted()
            if i is not None:
                w = u.begin(i)
                self.source.chunk(sha, i, u.state["chunk"], u.chunk_len(i), w.write)
                if not u.end(w) and u.state.get("phase") != "download":
                    self.mode = None
                return True
            return "finish"
        except (OSError, MemoryError) as e:
            # Network or flash trouble, or no room this time: the state on
            # flash resumes it.
            log.warning(TAG, "update step failed: %r" % (e,))
            self._retry_later()
            return False
        except Exception as e:  # an updater fault must never stop metering
            u.abandon("updater fault: %r" % (e,))
            self.mode = None
            return False

    def _report(self, u):
        """Tell the coordinator how the update ended, signed with the device
        key (coordinator/updates/rollout.py): its staged rollout goes on or
        halts on it. Sent once; an answer of any kind ends it."""
        from shared import cbor, reading_build

        rep = u.state["report"]
        try:
            msg = reading_build.sign_payload(self.fw.secret, self.fw.public_key, cbor.dumps(rep))
            code = self.source.report(msg)
        except OSError as e:
            log.warning(TAG, "update report not sent: %s" % e)
            self._retry_later()
            return False
        except Exception as e:  # no reporting must stop metering
            code = None
            log.warning(TAG, "update report dropped: %r" % (e,))
        if code is not None and code >> 5 != 2:
            log.warning(TAG, "update report answered %s" % coap.code_str(code))
        u.reported()
        return True

    def delivered(self):
        """A reading was acknowledged: in a trial, the new image works once
        CONFIRM_READINGS made after the boot are in."""
        if self.mode != "trial":
            return
        self.acked += 1
        if self.acked < CONFIRM_READINGS:
            return
        try:
            u = self._updater()
            keys = u.confirm()
            self._note(u)
        except Exception as e:  # not confirmed now: the next reading tries again
            log.error(TAG, "confirmation failed: %r" % (e,))
            return
        finally:
            u = None
            _unload()
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
        try:
            return self._updater().status()
        finally:
            _unload()


def console_lines(fw):
    """The console's `update`: what runs, what is under way, what happened
    last (read from the state files; loads nothing else)."""
    from edge.firmware import VERSION
    from edge.ota import partition_class, running_version

    cfg = fw.cfg.get("updates")
    if not cfg:
        return ["updates off (config updates is null)"]
    Partition = partition_class()
    try:
        st = fw.ota.status() if fw.ota is not None else \
            _updater(cfg, running_version(VERSION), Partition).status()
    finally:
        _unload()
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
