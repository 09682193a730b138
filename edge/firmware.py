# The meter's measure-sign-send loop.
#
# Every interval it reads the meter, gives the reading the next sequence
# number, signs it and writes it to the flash outbox; then it sends the
# oldest unacknowledged reading until the coordinator acknowledges it.
# Because a reading is on flash before it is first sent, a restart at any
# moment continues the sequence and the counters from the newest reading
# on flash: no sequence number is reused, no counter moves backwards and
# no buffered reading is lost. The journal (two slots, CRC) additionally
# keeps the sequence, counters and the last acknowledged sequence every
# `persist_every` readings.
#
# No meter, flash or network error ends the loop: each is counted, shown
# by the console's `status`, logged, and retried with backoff. The
# hardware watchdog (armed by edge/safemode.py before the firmware starts)
# is fed every pass and while a CoAP exchange waits, which also runs the
# console: it never waits on the network. A start-up failure puts the board
# in safe mode (edge/safemode.py), never out of the program.

import binascii

from micropython import const

from shared import cbor, cose, secp256k1
from shared import reading_build as reading
from edge import coap, hal, log, ticks
from edge.clock import Clock
from edge.hal.region import exists as _exists
from edge.journal import Journal
from edge.meters import open_meter
from edge.meters.base import RESET_ENERGY, RESET_FACTORY
from edge.outbox import Outbox, capacity_for
from edge.resync import Renumber, parse_stale

TAG = "fw"
VERSION = "0.2.0"
MERGED_FROM = "merged_from"

# Codes after which a reading leaves the outbox.
CREATED = 65  # 2.01
CHANGED = 68  # 2.04
CONFLICT = 137  # 4.09: the coordinator already holds this sequence number

MAX_BACKOFF = 16  # times the base delay
# SenML labels (RFC 8428, as in shared/senml.py): folded into the bytecode.
_N = const(0)
_V = const(2)


def load_key(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        raise ValueError("key file %s not found: provision the board with `microgrid flash`" % path)
    try:
        secret = binascii.unhexlify(text)
    except ValueError:
        raise ValueError("key file %s is not hex" % path)
    if len(secret) != 32:
        raise ValueError("key file %s must hold 32 bytes, has %d" % (path, len(secret)))
    return secret


class Errors:
    """Error counts by kind (meter, flash, network, rejected) and the last
    message, for `status`."""

    def __init__(self):
        self.counts = {"meter": 0, "flash": 0, "network": 0, "rejected": 0}
        self.last = None
        self.streak = {"meter": 0, "network": 0}

    def add(self, kind, msg):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in self.streak:
            self.streak[kind] += 1
        self.last = "%s: %s" % (kind, msg)

    def ok(self, kind):
        self.streak[kind] = 0

    def backoff(self, kind):
        n = self.streak.get(kind, 0)
        if n <= 0:
            return 1
        return min(1 << (n - 1), MAX_BACKOFF)


def merged_message(secret, public_key, message, first_seq):
    """The reading re-signed with a ("merged_from", first_seq) record: it
    stands for the readings first_seq .. its own seq merged in the outbox."""
    pack = cbor.loads(cose.parse(message).payload)
    pack.append({_N: MERGED_FROM, _V: first_seq})
    return reading.sign_payload(secret, public_key, cbor.dumps(pack))


class Firmware:
    def __init__(self, cfg, config_path="config.json", watchdog=None, console=None):
        self.cfg = cfg
        self.config_path = config_path
        self.boot_ms = ticks.ticks_ms()
        # Armed by the caller before anything can block (edge/safemode.py).
        self.watchdog = watchdog
        self.held_reset = None  # a reset a console read saw first (read_meter)
        if cfg["console"] and console is None:
            # Import (compile, under the unix port) before the signer's
            # tables fragment the heap.
            from edge.console import Console
        log.set_level(cfg["log_level"])
        # An update's signature checks run here, in a fresh heap, before the
        # meter, key, outbox and client take theirs (edge/ota_boot.py).
        switched = cfg["updates"] and _exists("ota.json") and _ota_at_boot(cfg["updates"])
        self.errors = Errors()
        # The driver's modules load (compile, under the unix port) before
        # the signer's tables fragment the heap.
        self.meter = open_meter(cfg["meter"])
        self.secret = load_key(cfg["key_file"])
        self.public_key = secp256k1.public_key(self.secret)
        self.device = reading.device_id(self.public_key)
        self.journal = Journal(cfg["state_file"])
        state = self.journal.load() or {}
        size, too_big = capacity_for(cfg["outbox_file"], cfg["outbox_size"])
        if too_big:
            self.errors.add("flash", too_big)
            log.error(TAG, "%s; running with outbox_size %d" % (too_big, size))
        self.outbox = Outbox(cfg["outbox_file"], size, state.get("acked", 0), state.get("covered_from"))
        self.net = hal.network(cfg["wifi"])
        self.clock = Clock(cfg["clock_start"], cfg["clock_speed"], cfg["clock_origin"], cfg["time_resync_s"])
        self.keep_time()
        # The coordinator's name is resolved when sending, never here.
        self.client = coap.Client(
            cfg["coordinator_host"], cfg["coordinator_port"], cfg["ack_timeout_s"], cfg["max_retransmit"], cfg["local_port"],
            self.idle
        )
        # OSCORE around every exchange when the board has a context
        # (edge/oscore.py, imported only then); never a fallback to clear.
        self.secure = None
        if _exists(cfg["oscore_file"]):
            from edge.oscore_context import open_link

            self.secure = open_link(cfg["oscore_file"])
            log.info(TAG, "link protected by OSCORE (sender id %s)" % binascii.hexlify(self.secure.sender_id).decode())
        self._recover(state)
        self.produced = 0
        self.batch = []  # readings waiting to be signed together (batch_size > 1)
        self.delivered = 0
        self.rejected = 0
        self.retry_at_ms = None
        self.link = "unknown"
        self.last_measurement = None
        self.running = True
        self.reboot_requested = False
        self.console = console
        if console is not None:
            console.attach(self)
        elif cfg["console"]:
            self.console = Console(self)
        self.ota = None  # edge/ota.py: loaded only while an update is offered or under way
        if switched:
            self.reboot_requested = True  # into the new image, before anything else
            self.running = False
        elif self.cfg["updates"] and _exists("ota.json"):
            self.start_ota()
        log.info(TAG, "device %s (%s) -> coap://%s:%d/readings, next seq %d, %d buffered" % (
            self.device, cfg["device_name"], cfg["coordinator_host"], cfg["coordinator_port"], self.seq + 1,
            len(self.outbox)))

    def _recover(self, state):
        # The newest reading on flash is the truth; the journal covers a
        # lost or wiped outbox, skipping the numbers that might have been
        # used after its last save.
        newest = self.outbox.newest
        jseq = state.get("seq")
        if newest is not None and (jseq is None or newest[0] >= jseq):
            self.seq, self.last_import, self.last_export = newest
        elif jseq is not None:
            self.seq = jseq + (self.cfg["persist_every"] if newest is None else 0)
            self.last_import = state.get("import_wh", 0)
            self.last_export = state.get("export_wh", 0)
        else:
            self.seq, self.last_import, self.last_export = 0, 0, 0
        if jseq is not None or newest is not None:
            self.meter.restore(self.last_import, self.last_export)
        # Readings renumbered above the coordinator after a lost state
        # (edge/resync.py), until the last of them is delivered.
        self.renumber = Renumber(state.get("renumber"))
        self.renumber.release(self.outbox.peek())
        # Timestamps keep increasing across a reboot too, even when the RTC
        # lost the time (edge/clock.py): the journal's is a floor.
        if state.get("t"):
            self.clock.last_t = state["t"]

    def keep_time(self):
        """Every pass of the loop (at least once a second): the clock adds
        up the ticks (wrap-safe, see edge/clock.py) and, at boot once the
        network is up and every time_resync_s after, takes the time from
        SNTP (tried once a minute while due)."""
        clock = self.clock
        clock.tick()
        if not clock.sntp_due() or not self.net.up():
            return
        ms = hal.sntp()
        if ms:
            self._set_time(ms, "sntp")

    def _set_time(self, unix_ms, source):
        offset = self.clock.sync(unix_ms, source)
        if offset:
            # Integrating drivers book the time that passed, not the step.
            self.meter.clock_moved(offset)

    def state(self):
        s = {"seq": self.seq, "import_wh": self.last_import, "export_wh": self.last_export}
        if self.clock.last_t is not None:
            s["t"] = self.clock.last_t
        s.update(self.outbox.state())
        s.update(self.renumber.state())
        return s

    def persist(self):
        try:
            self.journal.save(self.state())
        except OSError as e:
            self.errors.add("flash", "journal: %s" % e)
            log.error(TAG, "journal not saved: %s" % e)

    def measure(self):
        """Read the meter and queue a signed reading. False if the meter
        or the flash failed (counted; the caller backs off)."""
        taken = self.take_measurement()
        if taken is None:
            return False
        t, m = taken
        seq = self.seq + 1
        if self.cfg["batch_size"] > 1:
            return self._batch_reading(seq, t, m)
        msg = reading.build(
            self.secret, self.public_key, seq, t, m.import_wh, m.export_wh, m.power_w, m.voltage_v, m.extra_records()
        )
        try:
            merged = self.outbox.push(seq, msg, m.import_wh, m.export_wh)
        except (OSError, ValueError) as e:
            # Not on flash, so never sent: the number is free to reuse.
            self.errors.add("flash", "outbox: %s" % e)
            log.error(TAG, "reading seq %d not buffered: %s" % (seq, e))
            return False
        self.clock.commit(t)
        self.seq = seq
        self.last_import = m.import_wh
        self.last_export = m.export_wh
        self.produced += 1
        if merged is not None:
            log.warning(TAG, "outbox full: merged reading seq %d into the next (counters are cumulative)" % merged)
            self.persist()
        elif self.seq % self.cfg["persist_every"] == 0 or m.reset is not None:
            self.persist()
        log.debug(TAG, "reading seq %d import %d Wh export %d Wh power %s W" % (seq, m.import_wh, m.export_wh, m.power_w))
        return True

    def read_meter(self, t=None, console=False):
        """The driver's read. A reset that a console read (`reading`,
        `selftest`) is the first to see is held and goes out with the next
        signed reading: the console never consumes reset evidence."""
        m = self.meter.read(self.clock.now_ms() if t is None else t)
        if console:
            if m.reset is not None and self.held_reset is None:
                self.held_reset = m.reset
        elif self.held_reset is not None:
            if m.reset is not None:
                log.warning(TAG, "two resets since the last reading: the first (%s) is reported" % self.held_reset[0])
            m.reset, self.held_reset = self.held_reset, None
        return m

    def take_measurement(self):
        """(timestamp s, Measurement) read now, or None if the meter failed
        (counted). The timestamp is the clock's integer ms in whole seconds,
        strictly after the last kept reading's; its flags say when the
        time was unknown, stepped or held (edge/clock.py)."""
        t_ms = self.clock.now_ms()
        try:
            m = self.read_meter(t_ms)
        except Exception as e:  # a driver bug must not stop the meter either
            self.errors.add("meter", str(e) or repr(e))
            log.warning(TAG, "meter read failed: %s" % e)
            return None
        if self.errors.streak["meter"]:
            self.errors.ok("meter")
        t, flags = self.clock.stamp(t_ms)
        if flags:
            m.flags |= flags
        taken = self.last_measurement = (t, m)
        return taken

    def _batch_reading(self, seq, t, m):
        """Batching: readings wait in RAM until `batch_size` of them (or a
        reset, or the last one) go out in one message with one signature.
        A power cut loses the waiting readings as points in time, never
        their energy: a driver that counts in the host (S0, CT, simulated)
        has the sequence and counters journaled with every reading, so the
        next boot continues the counters from the last reading made (its
        waiting numbers are skipped, never reused); a meter that keeps its
        own counters still has them after the cut."""
        self.batch.append((seq, t, m.import_wh, m.export_wh, m.power_w, m.voltage_v, m.extra_records()))
        self.clock.commit(t)
        self.seq = seq
        self.last_import = m.import_wh
        self.last_export = m.export_wh
        self.produced += 1
        limit = self.cfg["max_readings"]
        if len(self.batch) >= self.cfg["batch_size"] or m.reset is not None or (limit and self.produced >= limit):
            ok = self.flush_batch()
        else:
            ok = True
            if self.meter.counts_in_host:
                # One journal slot write per reading instead of per batch.
                self.persist()
        if ok:
            log.debug(TAG, "reading seq %d import %d Wh export %d Wh (batched)" % (seq, m.import_wh, m.export_wh))
        return ok

    def flush_batch(self):
        """Sign and buffer the waiting readings: as many per message as fit
        an outbox slot."""
        from edge.outbox import MAX_MESSAGE

        while self.batch:
            n = len(self.batch)
            payload = reading.encode_batch(self.device, self.batch[:n])
            # COSE envelope: about 100 bytes around the payload.
            while n > 1 and len(payload) + 100 > MAX_MESSAGE:
                n -= 1
                payload = reading.encode_batch(self.device, self.batch[:n])
            part = self.batch[:n]
            last = part[-1]
            msg = reading.sign_payload(self.secret, self.public_key, payload)
            try:
                merged = self.outbox.push(last[0], msg, last[2], last[3])
            except (OSError, ValueError) as e:
                # Never on flash, never sent: those numbers are free again.
                self.errors.add("flash", "outbox: %s" % e)
                log.error(TAG, "readings seq %d..%d not buffered: %s" % (self.batch[0][0], self.batch[-1][0], e))
                self.seq = self.batch[0][0] - 1
                self.produced -= len(self.batch)
                self.batch = []
                return False
            self.batch = self.batch[n:]
            if merged is not None:
                log.warning(TAG, "outbox full: merged reading seq %d into the next (counters are cumulative)" % merged)
            self.persist()
        return True

    def _retry_later(self):
        delay = self.cfg["retry_after_s"] * self.errors.backoff("network")
        self.retry_at_ms = ticks.add(ticks.ticks_ms(), int(delay * 1000))

    def send_one(self):
        """Try to deliver the oldest queued reading. Returns True if it left
        the outbox."""
        item = self.outbox.peek()
        if item is None:
            return False
        seq, msg, first = item
        if not self.net.ensure():
            self.link = "down"
            self.errors.add("network", "wifi not connected")
            self._retry_later()
            return False
        if first < seq:
            msg = merged_message(self.secret, self.public_key, msg, first)
        stored = msg
        msg = self.renumber.outgoing(self.secret, self.public_key, seq, msg)
        try:
            if self.secure is not None:
                code, payload = self.secure.post(self.client, "readings", msg, cose.CONTENT_FORMAT_SIGN1)
            else:
                code, payload = self.client.post("readings", msg, cose.CONTENT_FORMAT_SIGN1)
        except OSError as e:
            self.link = "down"
            self.errors.add("network", str(e))
            log.warning(TAG, "seq %d not delivered: %s; %d queued" % (seq, e, len(self.outbox)))
            self._retry_later()
            return False
        self.link = "up"
        self.errors.ok("network")
        if code in (CREATED, CHANGED):
            self._delivered(seq)
            if payload and self.clock.wants_time():
                self.take_time(payload)
            if payload and b" fw=" in payload and self.cfg["updates"] and self.start_ota():
                self.ota.offered(payload)
            return True
        text = payload.decode() if payload else ""
        if code == CONFLICT and text.startswith("duplicate"):
            # Stored on an earlier attempt whose response we missed.
            self._delivered(seq)
            return True
        if code == CONFLICT and text.startswith("stale"):
            answer = parse_stale(text)
            if answer is not None:
                return self._jump(seq, stored, answer)
        if code >> 5 == 4:
            # Refused for good: keeping it would block every later reading.
            self.outbox.pop(seq)
            self.rejected += 1
            self.errors.add("rejected", "seq %d %s: %s" % (seq, coap.code_str(code), text))
            log.error(TAG, "seq %d rejected %s: %s" % (seq, coap.code_str(code), text))
            return True
        log.warning(TAG, "seq %d: coordinator answered %s: %s; will retry" % (seq, coap.code_str(code), text))
        self.errors.add("network", "coordinator answered %s" % coap.code_str(code))
        self._retry_later()
        return False

    def _delivered(self, seq):
        self.outbox.pop(seq)
        self.delivered += 1
        if self.ota is not None:
            self.ota.delivered()
        if self.renumber.release(self.outbox.peek()):
            self.persist()

    def start_ota(self):
        if self.ota is None:
            try:
                from edge.ota_session import Session

                self.ota = Session(self)
            except Exception as e:  # an updater fault must never stop metering
                self.errors.add("flash", "updater: %r" % (e,))
                log.error(TAG, "updater not started: %r" % (e,))
        return self.ota

    def _jump(self, seq, stored, answer):
        """The coordinator holds numbers up to answer[0]: our sequence went
        backwards (lost state). Continue above it (edge/resync.py); the
        refused reading stays and goes out again at once, renumbered. An
        answer out of bounds changes nothing: retried with backoff."""
        self.flush_batch()  # every number handed out is on flash first
        old = self.seq
        r = self.renumber
        before = (r.upto, r.shift, r.reset)
        try:
            new = self.renumber.jump(seq, stored, self.seq, answer)
        except ValueError as e:
            self.errors.add("rejected", "seq %d stale: %s" % (seq, e))
            log.error(TAG, "seq %d stale: %s; kept, will retry" % (seq, e))
            self._retry_later()
            return False
        # On flash before anything goes out under the new numbers; if the
        # journal cannot be written, do not jump (retried with backoff).
        self.seq = new
        try:
            self.journal.save(self.state())
        except OSError as e:
            self.seq = old
            r.upto, r.shift, r.reset = before
            self.errors.add("flash", "journal: %s" % e)
            log.error(TAG, "sequence jump not saved: %s; will retry" % e)
            self._retry_later()
            return False
        log.warning(TAG, "sequence behind the coordinator (last stored %d): readings up to %d renumbered +%d, next seq %d%s" % (
            answer[0], old, self.renumber.shift, new + 1, ", counter_dropped" if self.renumber.reset else ""))
        return False

    def energy_reset(self):
        """The driver's energy reset; the next reading, made at once,
        carries the reset record with the old totals."""
        self.meter.reset_energy(RESET_ENERGY)
        if not self.measure():
            raise OSError("energy reset: the reset record could not be made: %s" % self.errors.last)

    def factory_reset(self):
        """Clear the config and the stored energy. The counters' old totals
        go out first as a signed reset record; the sequence continues (a
        number is never reused) and the device key is kept."""
        old = (self.last_import, self.last_export)
        evidence = True
        try:
            self.meter.reset_energy(RESET_FACTORY)
        except OSError as e:
            evidence = False
            log.warning(TAG, "factory reset: meter keeps its own counters (%s)" % e)
        if evidence:
            if not self.measure():
                raise OSError("factory reset: the reset record could not be made: %s" % self.errors.last)
        from edge import config as config_mod

        config_mod.save_raw(self.config_path, {})
        self.persist()
        log.warning(TAG, "factory reset: config cleared, stored energy %d/%d Wh cleared; reboot to apply" % old)
        return evidence

    def uptime_s(self):
        # The clock's accumulated ms: ticks alone wrap after 6.2 days.
        return self.clock.uptime_ms() // 1000

    def take_time(self, payload):
        """The coordinator's 2.01 says "stored DEVICE/SEQ t=UNIX": a board
        whose clock wants a sync that SNTP has not given takes it from
        there. t is truncated to the second: the middle of that second is
        the best estimate."""
        if not self.clock.wants_time():
            return
        try:
            text = payload.decode()
            i = text.find(" t=")
            if i < 0:
                return
            t = int(text[i + 3:].split()[0])
        except (ValueError, UnicodeError, IndexError):
            return
        if t > 1600000000:
            self._set_time(t * 1000 + 500, "coordinator")

    def summary(self):
        return {
            "device": self.device,
            "produced": self.produced,
            "delivered": self.delivered,
            "rejected": self.rejected,
            "pending": len(self.outbox),
            "dropped": self.outbox.dropped,
            "retransmissions": self.client.retransmissions,
            "last_seq": self.seq,
            "import_wh": self.last_import,
            "export_wh": self.last_export,
            "errors": self.errors.counts,
        }

    def idle(self, ms, sock=None):
        """Wait up to `ms` (less once `sock` is readable) feeding the
        watchdog, giving the meter its idle time (CT windows, the pulse
        counter) and running the console. True when the loop must take
        over (a reboot or a confirmed reset): the CoAP client then stops
        waiting (coap.Interrupted)."""
        if self.watchdog is not None:
            self.watchdog.feed()
        try:
            ms -= self.meter.poll(ms)
        except Exception as e:  # as in measure(): a driver fault must not stop the loop
            self.errors.add("meter", str(e) or repr(e))
        if ms < 0:
            ms = 0
        if self.console is not None:
            return self.console.poll(ms, sock) or not self.running
        if sock is not None:
            import select

            p = select.poll()
            p.register(sock, select.POLLIN)
            p.poll(ms)
        elif ms > 0:
            ticks.sleep_ms(ms)
        return not self.running

    def wait(self, ms):
        self.idle(ms)

    def stop(self):
        """Leave nothing only in RAM: the waiting batch signed into the
        outbox, the journal saved, the socket closed. The end of every run,
        and what Ctrl-C does (edge/safemode.py)."""
        try:
            self.flush_batch()
        except Exception as e:  # still save the journal
            log.error(TAG, "batch not saved: %s" % e)
        self.persist()
        self.client.close()

    def run(self):
        cfg = self.cfg
        limit = cfg["max_readings"]
        next_ms = ticks.ticks_ms()
        drain_start = None
        while self.running:
            if self.watchdog is not None:
                self.watchdog.feed()
            self.keep_time()
            interval_ms = int(cfg["interval_s"] * 1000)
            if (not limit or self.produced < limit) and ticks.since(next_ms) >= 0:
                ok = self.measure()
                wait = interval_ms if ok else min(interval_ms * self.errors.backoff("meter"), 300000)
                next_ms = ticks.add(next_ms, wait)
                if ticks.since(next_ms) > interval_ms:
                    # Fell far behind (a long outage): don't burst to catch up.
                    next_ms = ticks.add(ticks.ticks_ms(), wait)
            if limit and self.produced >= limit:
                if not self.outbox:
                    break
                if drain_start is None:
                    drain_start = ticks.ticks_ms()
                elif ticks.since(drain_start) > cfg["drain_timeout_s"] * 1000:
                    log.warning(TAG, "giving up with %d readings undelivered" % len(self.outbox))
                    break
            if self.console is not None:
                self.console.poll(0)
                if not self.running:
                    break
            if self.outbox and (self.retry_at_ms is None or ticks.since(self.retry_at_ms) >= 0):
                self.retry_at_ms = None
                try:
                    self.send_one()
                except coap.Interrupted:
                    # The console needs the loop (reboot, reset): the reading
                    # stays queued and goes out again, byte for byte.
                    pass
                except OSError as e:
                    # Flash read or re-sign trouble: count, back off, go on.
                    self.errors.add("flash", str(e))
                    self._retry_later()
                continue
            if self.ota is not None and self.ota.poll():
                continue
            wait = -ticks.since(next_ms)
            if self.outbox and self.retry_at_ms is not None:
                wait = min(wait, -ticks.since(self.retry_at_ms))
            if limit and self.produced >= limit and not self.outbox:
                wait = 0
            if wait > 0:
                self.wait(min(wait, 1000))
        self.stop()
        return self.summary()


def _ota_at_boot(updates):
    from edge import ota_boot

    return ota_boot.run(updates, VERSION)


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def main(config_path="config.json"):
    """Watchdog, safe mode, run: see edge/safemode.py. The exit status:
    0 done, 3 reboot asked, 130 interrupted (Ctrl-C)."""
    from edge import safemode

    return safemode.main(config_path, Firmware)
