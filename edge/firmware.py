# The meter's measure-sign-send loop.
#
# Every interval it reads the meter, gives the reading the next sequence
# number, signs it and queues it; then it sends the oldest queued reading
# until the coordinator acknowledges it. The sequence number and counters
# are persisted every `persist_every` readings; after a restart the meter
# skips ahead by that many numbers, so a sequence number is never reused
# even if the last persisted state is behind what was sent.

import binascii
import time

from shared import reading, secp256k1, cose
from edge import coap, log
from edge.config import load as load_config
from edge.journal import Journal
from edge.meters import open_meter
from edge.outbox import Outbox

TAG = "fw"

# Codes after which a reading leaves the outbox.
CREATED = 65  # 2.01
CHANGED = 68  # 2.04
CONFLICT = 137  # 4.09: the coordinator already holds this sequence number


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


def _ticks_ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)


def _add(ticks, ms):
    return time.ticks_add(ticks, ms) if hasattr(time, "ticks_add") else ticks + ms


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


def _since(start):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(time.ticks_ms(), start)
    return _ticks_ms() - start


# Seconds between the MicroPython epoch and the Unix epoch: boards count
# from 2000-01-01, the unix port from 1970-01-01.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    """Unix time, optionally accelerated: clock_start (0 = now) advanced
    clock_speed times faster than real time. Demos use it to run a day in
    minutes; every reading's time and the simulated profile follow it.
    With `origin` (the real Unix time at which simulated time was `start`)
    several meters and coordinators share one simulated clock exactly."""

    def __init__(self, start, speed, origin=0):
        self.boot_ms = _ticks_ms()
        self.start = start if start else time.time() + _EPOCH_OFFSET
        self.speed = speed
        self.origin = origin

    def now(self):
        if self.origin:
            return self.start + (time.time() + _EPOCH_OFFSET - self.origin) * self.speed
        return self.start + _since(self.boot_ms) * self.speed / 1000.0


class Firmware:
    def __init__(self, cfg):
        self.cfg = cfg
        log.level = {"debug": log.DEBUG, "info": log.INFO, "warning": log.WARNING, "error": log.ERROR}[cfg["log_level"]]
        self.secret = load_key(cfg["key_file"])
        self.public_key = secp256k1.public_key(self.secret)
        self.device = reading.device_id(self.public_key)
        self.meter = open_meter(cfg["meter"])
        self.journal = Journal(cfg["state_file"])
        self.outbox = Outbox(cfg["outbox_size"])
        self.clock = Clock(cfg["clock_start"], cfg["clock_speed"], cfg["clock_origin"])
        self.client = coap.Client(
            cfg["coordinator_host"], cfg["coordinator_port"], cfg["ack_timeout_s"], cfg["max_retransmit"], cfg["local_port"]
        )
        state = self.journal.load()
        if state:
            # Skip any sequence numbers possibly used after the last save.
            self.seq = state["seq"] + cfg["persist_every"]
            self.meter.restore(state["import_wh"], state["export_wh"])
            self.last_import = state["import_wh"]
            self.last_export = state["export_wh"]
        else:
            self.seq = 0
            self.last_import = 0
            self.last_export = 0
        self.produced = 0
        self.delivered = 0
        self.rejected = 0
        self.retry_at_ms = None
        self.running = True
        log.info(TAG, "device %s (%s) -> coap://%s:%d/readings, next seq %d" % (
            self.device, cfg["device_name"], cfg["coordinator_host"], cfg["coordinator_port"], self.seq + 1))

    def persist(self):
        self.journal.save({"seq": self.seq, "import_wh": self.last_import, "export_wh": self.last_export})

    def measure(self):
        t = self.clock.now()
        m = self.meter.read(t)
        self.seq += 1
        self.last_import = m.import_wh
        self.last_export = m.export_wh
        msg = reading.build(
            self.secret, self.public_key, self.seq, int(t), m.import_wh, m.export_wh, m.power_w, m.voltage_v, m.extra_records()
        )
        dropped = self.outbox.push(self.seq, msg)
        if dropped is not None:
            log.warning(TAG, "outbox full: dropped reading seq %d (counters are cumulative)" % dropped)
        self.produced += 1
        if self.seq % self.cfg["persist_every"] == 0:
            self.persist()
        log.debug(TAG, "reading seq %d import %d Wh export %d Wh power %d W" % (self.seq, m.import_wh, m.export_wh, m.power_w))

    def send_one(self):
        """Try to deliver the oldest queued reading. Returns True if it left
        the outbox."""
        item = self.outbox.peek()
        if item is None:
            return False
        seq, msg = item
        try:
            code, payload = self.client.post("readings", msg, cose.CONTENT_FORMAT_SIGN1)
        except OSError as e:
            log.warning(TAG, "seq %d not delivered: %s; %d queued" % (seq, e, len(self.outbox)))
            self.retry_at_ms = _add(_ticks_ms(), int(self.cfg["retry_after_s"] * 1000))
            return False
        if code in (CREATED, CHANGED):
            self.outbox.pop(seq)
            self.delivered += 1
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
            log.error(TAG, "seq %d rejected %s: %s" % (seq, coap.code_str(code), text))
            return True
        log.warning(TAG, "seq %d: coordinator answered %s: %s; will retry" % (seq, coap.code_str(code), text))
        self.retry_at_ms = _add(_ticks_ms(), int(self.cfg["retry_after_s"] * 1000))
        return False

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
        }

    def run(self):
        cfg = self.cfg
        interval_ms = int(cfg["interval_s"] * 1000)
        limit = cfg["max_readings"]
        next_ms = _ticks_ms()
        drain_start = None
        while self.running:
            if (not limit or self.produced < limit) and _since(next_ms) >= 0:
                self.measure()
                next_ms = _add(next_ms, interval_ms)
                if _since(next_ms) > interval_ms:
                    # Fell far behind (a long outage): don't burst to catch up.
                    next_ms = _add(_ticks_ms(), interval_ms)
            if limit and self.produced >= limit:
                if not self.outbox:
                    break
                if drain_start is None:
                    drain_start = _ticks_ms()
                elif _since(drain_start) > cfg["drain_timeout_s"] * 1000:
                    log.warning(TAG, "giving up with %d readings undelivered" % len(self.outbox))
                    break
            if self.outbox and (self.retry_at_ms is None or _since(self.retry_at_ms) >= 0):
                self.retry_at_ms = None
                self.send_one()
                continue
            wait = -_since(next_ms)
            if self.outbox and self.retry_at_ms is not None:
                wait = min(wait, -_since(self.retry_at_ms))
            if wait > 0:
                _sleep_ms(min(wait, 1000))
        self.persist()
        self.client.close()
        return self.summary()


def main(config_path="config.json"):
    import json

    try:
        cfg = load_config(config_path)
        fw = Firmware(cfg)
    except ValueError as e:
        log.error(TAG, "cannot start: %s" % e)
        return 1
    summary = fw.run()
    print("SUMMARY " + json.dumps(summary))
    return 0
