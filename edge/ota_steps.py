# One step of an update inside the running firmware, for edge/ota_session.py
# (which imports this module for the step and releases it after): fetch the
# offered manifest, the chunk table or one chunk block-wise over the
# firmware's CoAP client (RFC 7959 Block2), send the signed report,
# confirm a trial, give one up, and the console's `update`. Each works on a
# Session `s` and loads the state machine (edge/ota.py) from ota.json for
# the step.

import gc

from edge import coap, log

TAG = "ota"
MAX_MANIFEST = 4096  # shared/release.MAX_MANIFEST (not imported here: it is released between steps)
GET = 1
CONTENT = 69  # 2.05
OPT_BLOCK2 = 23
# 512-byte CoAP blocks (RFC 7959 SZX 5): each block is one datagram in RAM
# (its payload viewed, not copied: edge/coap.py), a run of its size that a
# fragmented 48 KB heap must find free; at 1 KiB it did not always.
SZX = 5
BLOCK_BYTES = 512


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

    def block(self, path, num, view=False):
        """Block `num` of `path`; with `view` a memoryview into the received
        datagram (no copy), valid until the next exchange."""
        gc.collect()  # the last block's garbage gone: whole free runs for this one
        code, payload = self.client.post(path, b"", None, GET, (block2(num),), view=view)
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
        return self.block("fw/" + sha[:16] + "/table", off // BLOCK_BYTES, True)

    def chunk(self, sha, i, size, length, sink):
        """Chunk i's blocks, each handed to `sink(buffer)` as it arrives (the
        updater streams it into flash): one block in RAM at a time, not 4 KiB."""
        per = size // BLOCK_BYTES
        path = "fw/" + sha[:16]
        got = 0
        for k in range(per):
            part = self.block(path, i * per + k, True)
            sink(part)
            n = len(part)
            part = None  # the datagram it views is free before the next block arrives
            got += n
            if got >= length or n < BLOCK_BYTES:
                break


def _partition(s):
    if s.Partition is not None:
        return s.Partition
    from edge.ota_check import partition_class

    return partition_class()


def _updater(s):
    from edge.ota import Updater

    return Updater(s.fw.cfg["updates"], s.version, _partition(s))


def _source(s):
    return s.source or CoapSource(s.fw.client)


def _note(s, u):
    # What the Session decides on between steps without loading anything.
    _note_state(s, u.state)


def _note_state(s, st):
    s.declined = st.get("declined")
    s.back = st.get("last_rollback") or {}
    s.reporting = st.get("report") is not None


def begin(s):
    """At the Session's start: the running version and where the update is.
    With nothing under way only the last outcomes are read (edge/ota.py's
    LAST_FILE), without loading the state machine."""
    import json

    from edge.firmware import VERSION
    from edge.hal.region import exists
    from edge.ota_check import running_version

    s.version = running_version(VERSION)
    if exists("ota.json"):  # edge/ota.py STATE_FILE
        u = _updater(s)
        s.mode = u.at_boot()
        _note(s, u)
        return
    try:
        with open("ota.last") as f:
            st = json.loads(f.read())
    except (OSError, ValueError):
        st = {}
    _note_state(s, st if isinstance(st, dict) else {})


def work(s):
    """The step a poll found room for: take the offer, report, or fetch."""
    if s.offer is not None and not s.reporting:
        if not s.wants(s.offer):
            s.offer = None  # came before the Session knew what runs
            return False
        return _take_offer(s)
    u = _updater(s)
    done = _step(s, u)
    if done == "finish":
        # Every chunk in: checked and switched to at the next boot, in a
        # fresh heap (edge/ota_boot.py).
        u.ready()
        s.mode = "verify"
        s._reboot()
        done = True
    _note(s, u)
    return done


def _take_offer(s):
    """Fetch the offered manifest and keep it on flash; it is checked at the
    next boot, in a fresh heap (edge/ota_boot.py: an ES256K verification
    needs more than a running meter has free), so reboot."""
    v, s.offer = s.offer, None
    try:
        signed = _source(s).manifest()
    except OSError as e:
        log.warning(TAG, "update manifest not fetched: %s" % e)
        s._retry_later()
        return False
    u = _updater(s)
    u.offered(v, signed)
    _note(s, u)
    s.mode = "offered"
    s._reboot()
    return True


def _step(s, u):
    try:
        if s.mode != "download":
            return False
        if u.state.get("phase") != "download":
            s.mode = None  # abandoned at boot (the kept manifest lost)
            return False
        sha = u.state["sha"]
        off = u.wanted_table()
        if off is not None:
            # The chunk table first, one piece a pass, to flash.
            if not u.put_table(off, _source(s).table(sha, off)) and u.state.get("phase") != "download":
                s.mode = None
            return True
        if u.state.get("phase") != "download":
            s.mode = None  # the table failed its check once too often
            return False
        i = u.wanted()
        if i is not None:
            w = u.begin(i)
            _source(s).chunk(sha, i, u.state["chunk"], u.chunk_len(i), w.write)
            if not u.end(w) and u.state.get("phase") != "download":
                s.mode = None
            return True
        return "finish"
    except (OSError, MemoryError) as e:
        # Network or flash trouble, or no room this time: the state on
        # flash resumes it.
        log.warning(TAG, "update step failed: %r" % (e,))
        s._retry_later()
        return False
    except Exception as e:  # an updater fault must never stop metering
        u.abandon("updater fault: %r" % (e,))
        s.mode = None
        return False


def report(s, msg):
    """Tell the coordinator how the update ended (`msg`: the outcome signed
    with the device key by the Session; None when there was none to send):
    its staged rollout (coordinator/updates/rollout.py) goes on or halts on
    it. Sent once; an answer of any kind ends it, no answer is tried again
    later."""
    code = None
    if msg is not None:
        try:
            code = _source(s).report(msg)
        except OSError as e:
            log.warning(TAG, "update report not sent: %s" % e)
            s._retry_later()
            return False
        except Exception as e:  # no reporting must stop metering
            log.warning(TAG, "update report dropped: %r" % (e,))
        msg = None
    if code is not None and code >> 5 != 2:
        log.warning(TAG, "update report answered %s" % coap.code_str(code))
    u = _updater(s)
    u.reported()
    _note(s, u)
    return True


def give_up(s, reason):
    """The trial ran out: noted for the old image to report (the caller
    reboots without confirming, which rolls back)."""
    _updater(s).give_up(reason)


def confirm(s):
    """Enough readings of the trial acknowledged: the new image is kept."""
    u = _updater(s)
    keys = u.confirm()
    _note(s, u)
    s.mode = None
    if keys:
        _adopt(s, keys)


def _adopt(s, keys):
    """Rotation: the confirmed release names the keys to trust next."""
    from edge import config as config_mod

    try:
        raw = config_mod.load_raw(s.fw.config_path)
        updates = dict(raw.get("updates") or s.fw.cfg["updates"])
        updates["keys"] = keys
        raw["updates"] = updates
        config_mod.save_raw(s.fw.config_path, raw)
        s.fw.cfg["updates"] = updates
        log.warning(TAG, "release keys rotated: %d trusted" % len(keys))
    except (OSError, ValueError) as e:
        log.error(TAG, "release keys not rotated: %s" % e)


def status(s):
    return _updater(s).status()


def console_lines(fw):
    """The console's `update`: what runs, what is under way, what happened
    last (read from the state files)."""
    from edge.firmware import VERSION
    from edge.ota import Updater, partition_class, running_version

    cfg = fw.cfg.get("updates")
    if not cfg:
        return ["updates off (config updates is null)"]
    Partition = partition_class()
    st = status(fw.ota) if fw.ota is not None else Updater(cfg, running_version(VERSION), Partition).status()
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
