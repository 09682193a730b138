# The updater inside the running firmware: it takes the coordinator's
# offer, fetches the manifest and the chunks block-wise over the
# firmware's CoAP client (RFC 7959 Block2), confirms the new image once its
# readings are acknowledged (or gives up and reboots, which rolls back),
# and reports the outcome signed with the device key. The state machine
# is edge/ota.py; docs/UPDATES.md has the whole story.

from shared import release
from edge import coap, log, ticks
from edge.ota import TAG, ROLLBACKS, Updater, partition_class, running_version

CONFIRM_READINGS = 2
CONFIRM_MS = 15 * 60 * 1000
MAX_MANIFEST = release.MAX_MANIFEST
GET = 1
CONTENT = 69  # 2.05
OPT_BLOCK2 = 23
SZX = 6  # 1024-byte CoAP blocks (RFC 7959)
BLOCK_BYTES = 1024


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

    def table(self, sha, off):
        """The chunk table's 1024 bytes from `off` (Block2 of fw/<id16>/table)."""
        return self.block("fw/" + sha[:16] + "/table", off // BLOCK_BYTES)

    def chunk(self, sha, i, size, length, sink):
        """Chunk i's blocks, each handed to `sink(bytes)` as it arrives (the
        updater streams it into flash): 1 KiB in RAM at a time, not 4."""
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
        """One step of work; True when it used the network. Never raises:
        an updater fault must not stop metering."""
        try:
            return self._poll()
        except Exception as e:
            log.error(TAG, "update step fault: %r" % (e,))
            self.retry_at = ticks.add(ticks.ticks_ms(), 60000)
            return False

    def _poll(self):
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
            try:
                self.updater.release()
            except OSError as e:
                # Lost from flash: start afresh (the abandon below), not stuck.
                raise release.ReleaseError("unreadable: %s" % e)
            sha = self.updater.state["sha"]
            off = self.updater.wanted_table()
            if off is not None:
                # The chunk table first, one piece a pass, to flash.
                if not self.updater.put_table(off, self.source.table(sha, off)) and \
                        self.updater.state.get("phase") != "download":
                    self.mode = None
                return True
            if self.updater.state.get("phase") != "download":
                self.mode = None  # the table failed its check once too often
                return False
            i = self.updater.wanted()
            if i is not None:
                rel = self.updater.release()
                w = self.updater.begin(i)
                self.source.chunk(sha, i, rel.chunk, rel.chunk_len(i), w.write)
                if not self.updater.end(w) and self.updater.state.get("phase") != "download":
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
            try:
                keys = self.updater.confirm()
            except Exception as e:  # not confirmed now: the next reading tries again
                log.error(TAG, "confirmation failed: %r" % (e,))
                return
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
