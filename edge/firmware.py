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
# by the console's `status`, logged, and retried with backoff. On a board
# a hardware watchdog is fed every pass.

import binascii
import time

from shared import cbor, cose, reading, secp256k1, senml
from edge import coap, hal, log, ticks
from edge import config as config_mod
from edge.journal import Journal
from edge.meters import open_meter
from edge.meters.base import FLAG_TIME_UNSET, RESET_ENERGY, RESET_FACTORY
from edge.outbox import Outbox, capacity_for

TAG = "fw"
VERSION = "0.2.0"
MERGED_FROM = "merged_from"

# Codes after which a reading leaves the outbox.
CREATED = 65  # 2.01
CHANGED = 68  # 2.04
CONFLICT = 137  # 4.09: the coordinator already holds this sequence number

MAX_BACKOFF = 16  # times the base delay


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


# Seconds between the MicroPython epoch and the Unix epoch: boards count
# from 2000-01-01, the unix port from 1970-01-01.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    """Unix time, optionally accelerated: clock_start (0 = now) advanced
    clock_speed times faster than real time. Demos use it to run a day in
    minutes; every reading's time and the simulated profile follow it.
    With `origin` (the real Unix time at which simulated time was `start`)
    several meters and coordinators share one simulated clock exactly."""

    def __init__(self, start, speed, origin=0, synced=True):
        self.boot_ms = ticks.ticks_ms()
        self.start = start if start else time.time() + _EPOCH_OFFSET
        self.speed = speed
        self.origin = origin
        # False on a board until SNTP or the coordinator gave the time:
        # readings made meanwhile carry FLAG_TIME_UNSET.
        self.synced = synced or bool(start)

    def set(self, unix_s):
        """Take the time from outside (the coordinator's response)."""
        self.boot_ms = ticks.ticks_ms()
        self.start = unix_s
        self.origin = 0
        self.speed = 1.0
        self.synced = True

    def resync(self):
        """The RTC was just set (SNTP): follow it."""
        self.set(time.time() + _EPOCH_OFFSET)

    def now(self):
        if self.origin:
            # Shared simulated clock: `start` at real Unix time `origin`.
            return self.start + (time.time() + _EPOCH_OFFSET - self.origin) * self.speed
        return self.start + ticks.since(self.boot_ms) * self.speed / 1000.0


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
    pack.append({senml.N: MERGED_FROM, senml.V: first_seq})
    return reading.sign_payload(secret, public_key, cbor.dumps(pack))


class Firmware:
    def __init__(self, cfg, config_path=config_mod.CONFIG_FILE):
        self.cfg = cfg
        self.config_path = config_path
        self.boot_ms = ticks.ticks_ms()
        if cfg["console"]:
            # Import (compile, under the unix port) before the signer's
            # tables fragment the heap.
            from edge.console import Console
        log.level = {"debug": log.DEBUG, "info": log.INFO, "warning": log.WARNING, "error": log.ERROR}[cfg["log_level"]]
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
        self.clock = Clock(cfg["clock_start"], cfg["clock_speed"], cfg["clock_origin"], not hal.IS_BOARD)
        self.sntp_at_ms = None
        self._sync_time()
        self.client = coap.Client(
            cfg["coordinator_host"], cfg["coordinator_port"], cfg["ack_timeout_s"], cfg["max_retransmit"], cfg["local_port"]
        )
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
        self.watchdog = hal.watchdog(int(cfg["watchdog_s"] * 1000)) if cfg["watchdog_s"] and hal.IS_BOARD else None
        self.console = None
        if cfg["console"]:
            self.console = Console(self)
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

    def _sync_time(self):
        # SNTP where the network has it; tried again every 10 minutes.
        if self.clock.synced:
            return
        if self.sntp_at_ms is not None and ticks.since(self.sntp_at_ms) < 600000:
            return
        self.sntp_at_ms = ticks.ticks_ms()
        if self.net.up() and hal.sntp():
            self.clock.resync()
            log.info(TAG, "time set by SNTP")

    def state(self):
        s = {"seq": self.seq, "import_wh": self.last_import, "export_wh": self.last_export}
        s.update(self.outbox.state())
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
        t = self.clock.now()
        try:
            m = self.meter.read(t)
        except Exception as e:  # a driver bug must not stop the meter either
            self.errors.add("meter", str(e) or repr(e))
            log.warning(TAG, "meter read failed: %s" % e)
            return False
        self.errors.ok("meter")
        if not self.clock.synced:
            m.flags |= FLAG_TIME_UNSET
        self.last_measurement = (t, m)
        seq = self.seq + 1
        if self.cfg["batch_size"] > 1:
            return self._batch_reading(seq, t, m)
        msg = reading.build(
            self.secret, self.public_key, seq, int(t), m.import_wh, m.export_wh, m.power_w, m.voltage_v, m.extra_records()
        )
        try:
            merged = self.outbox.push(seq, msg, m.import_wh, m.export_wh)
        except (OSError, ValueError) as e:
            # Not on flash, so never sent: the number is free to reuse.
            self.errors.add("flash", "outbox: %s" % e)
            log.error(TAG, "reading seq %d not buffered: %s" % (seq, e))
            return False
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

    def _batch_reading(self, seq, t, m):
        """Batching: readings wait in RAM until `batch_size` of them (or a
        reset, or the last one) go out in one message with one signature.
        A power cut loses only readings never sent; their numbers are
        reused and the counters are cumulative."""
        self.batch.append((seq, int(t), m.import_wh, m.export_wh, m.power_w, m.voltage_v, m.extra_records()))
        self.seq = seq
        self.last_import = m.import_wh
        self.last_export = m.export_wh
        self.produced += 1
        limit = self.cfg["max_readings"]
        if len(self.batch) >= self.cfg["batch_size"] or m.reset is not None or (limit and self.produced >= limit):
            return self.flush_batch()
        return True

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
        try:
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
            self.outbox.pop(seq)
            self.delivered += 1
            if not self.clock.synced and payload:
                self.take_time(payload)
            return True
        text = payload.decode() if payload else ""
        if code == CONFLICT and text.startswith("duplicate"):
            # Stored on an earlier attempt whose response we missed.
            self.outbox.pop(seq)
            self.delivered += 1
            return True
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
        config_mod.save_raw(self.config_path, {})
        self.persist()
        log.warning(TAG, "factory reset: config cleared, stored energy %d/%d Wh cleared; reboot to apply" % old)
        return evidence

    def uptime_s(self):
        return ticks.since(self.boot_ms) // 1000

    def take_time(self, payload):
        """The coordinator's 2.01 says "stored DEVICE/SEQ t=UNIX": a board
        without SNTP takes its time from there."""
        try:
            text = payload.decode()
            i = text.find(" t=")
            if i < 0:
                return
            t = int(text[i + 3:].split()[0])
        except (ValueError, UnicodeError, IndexError):
            return
        if t > 1600000000:
            self.clock.set(t)
            log.info(TAG, "time taken from the coordinator: %d" % t)

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

    def wait(self, ms):
        if self.console is not None:
            self.console.poll(ms)
        else:
            ticks.sleep_ms(ms)

    def run(self):
        cfg = self.cfg
        limit = cfg["max_readings"]
        next_ms = ticks.ticks_ms()
        drain_start = None
        while self.running:
            if self.watchdog is not None:
                self.watchdog.feed()
            if not self.clock.synced:
                self._sync_time()
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
                except OSError as e:
                    # Flash read or re-sign trouble: count, back off, go on.
                    self.errors.add("flash", str(e))
                    self._retry_later()
                continue
            wait = -ticks.since(next_ms)
            if self.outbox and self.retry_at_ms is not None:
                wait = min(wait, -ticks.since(self.retry_at_ms))
            if limit and self.produced >= limit and not self.outbox:
                wait = 0
            if wait > 0:
                self.wait(min(wait, 1000))
        self.flush_batch()
        self.persist()
        self.client.close()
        return self.summary()


def main(config_path="config.json"):
    import json

    try:
        cfg = config_mod.load(config_path)
        fw = Firmware(cfg, config_path)
    except ValueError as e:
        log.error(TAG, "cannot start: %s" % e)
        return 1
    summary = fw.run()
    print("SUMMARY " + json.dumps(summary))
    if fw.reboot_requested:
        try:
            hal.reboot()
        except Exception:
            # Unix port: exit status 3 asks the supervisor to start again.
            return 3
    return 0
