# The updater inside the running firmware: the part that stays in the
# heap while an update is offered or under way. It takes the coordinator's
# offer, decides when a step may run and counts the acknowledged readings
# of a trial; each step's work (Block2 fetches, the state machine, the
# signed report, confirmation) is edge/ota_steps.py, imported for the step
# and released after it. The state machine is edge/ota.py, the signature
# checks run at boot (edge/ota_boot.py); docs/UPDATES.md has the story.
#
# Memory: a running meter with its driver and console has ~9 KB free in
# the firmware's 48 KB heap bound, and a reading's signature needs most of
# it. So between steps the updater holds only this module and a Session
# (~1 KB); each step loads edge/ota_steps.py, edge/ota.py and (under the
# unix ports) the partition stand-in, runs from the state on flash, and
# releases them (_unload), and a reading's signature finds the heap as it
# would without an update. Measured in the frozen esp32-like build: a full
# 1.5 MB slot updates a meter with PZEM and console in 48 KB
# (tests/flash/test_frozen_ota.py, bench/bench_firmware.py --ota-only).

import gc

from edge import log, ticks

TAG = "ota"
CONFIRM_READINGS = 2
CONFIRM_MS = 15 * 60 * 1000
ROLLBACKS = 2  # edge/ota.ROLLBACKS
# Free heap (after a collection) below which no update step is taken: a
# step (edge/ota_steps.py, edge/ota.py, under the unix ports the partition
# stand-in, the state, one 512-byte block: ~9 KB) that ran out half way
# would leave the heap in pieces that the next reading's signature may not
# find room in. Measured in the frozen esp32-like build (docs/UPDATES.md,
# Figures): steps failed with ~8.5 KB free, ran with ~10 KB.
FREE_FLOOR = 10 * 1024
# What a step loads; released after it (edge.hal.partition is the unix
# ports' stand-in, whose bootloader state lives in edge.hal: see there).
_STEP_MODULES = ("edge.ota_steps", "edge.ota", "edge.ota_check", "shared.release", "edge.hal.partition")


def _unload():
    """Release the step's modules, so the GC takes back their functions
    and classes. Frozen, they are imported again from flash next time."""
    import edge

    for name in _STEP_MODULES:
        edge.release(name)


def _steps():
    from edge import ota_steps

    return ota_steps


class Session:
    """The updater inside the running firmware (edge/firmware.py calls
    offered, poll and delivered). Holds no module of a step between steps.
    `source` and `Partition`: a test's stand-ins (else the firmware's CoAP
    client and the board's partitions, looked up at each step)."""

    def __init__(self, fw, source=None, Partition=None, confirm_ms=CONFIRM_MS):
        self.fw = fw
        self.source = source
        self.Partition = Partition
        self.confirm_ms = confirm_ms
        self.acked = 0
        self.since = ticks.ticks_ms()
        self.offer = None
        self.retry_at = None
        self.short = False  # the last step waited for memory (logged once)
        # Set by edge/ota_steps.begin, at once or at the first poll with room:
        # the running version, the mode ("trial", "download", "report";
        # "offered", "verify" and "switch" are edge/ota_boot.py's at the next
        # boot), the version refused, the last rollback, a report to send.
        self.version = None
        self.mode = None
        self.declined = None
        self.back = {}
        self.reporting = False
        if self._room():
            try:
                _steps().begin(self)
            finally:
                _unload()

    def _room(self):
        gc.collect()
        return not hasattr(gc, "mem_free") or gc.mem_free() >= FREE_FLOOR

    def _reboot(self):
        self.fw.reboot_requested = True
        self.fw.running = False

    def _retry_later(self):
        self.retry_at = ticks.add(ticks.ticks_ms(), int(self.fw.cfg["retry_after_s"] * 1000) or 1000)

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
        if self.wants(v):
            self.offer = v

    def wants(self, v):
        """Whether an offer of version `v` is worth fetching now (asked
        again once begun, if the offer came before)."""
        if v == self.version or self.mode in ("trial", "download", "offered", "verify") or self.declined == v:
            return False
        # Failed here twice: not again until a newer one.
        return not (self.back.get("version") == v and self.back.get("count", 1) >= ROLLBACKS)

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

    def _poll(self):
        if self.mode == "trial":
            if ticks.since(self.since) > self.confirm_ms:
                _steps().give_up(self, "no reading acknowledged within %d s of booting it" % (self.confirm_ms // 1000))
                self._reboot()
            return False
        if self.fw.outbox:
            return False  # readings first
        if self.retry_at is not None and ticks.since(self.retry_at) < 0:
            return False
        self.retry_at = None
        begun = self.version is not None
        if begun and not self.reporting and self.offer is None and self.mode != "download":
            return False  # nothing to do: nothing loaded
        # The last reading's garbage gone first: a step's blocks need whole
        # free runs of a 48 KB heap.
        if not self._room():
            # Too little room for a step: it would crowd out the next
            # reading's signature. Metering goes first.
            if not self.short:
                log.warning(TAG, "update waits: %d bytes free, a step needs %d" % (gc.mem_free(), FREE_FLOOR))
                self.short = True
            self._retry_later()
            return False
        self.short = False
        if not begun:
            _steps().begin(self)
            return False
        if self.reporting:
            return self._report()
        return _steps().work(self)

    def _report(self):
        """The update's outcome, signed here with nothing of a step loaded
        (a signature needs the room a reading's does), then sent by a step.
        No room this time: tried again later."""
        import json

        from shared import cbor, reading_build

        try:
            with open("ota.json") as f:  # edge/ota.py STATE_FILE: the report waits there
                rep = json.loads(f.read()).get("report")
            msg = None if rep is None else \
                reading_build.sign_payload(self.fw.secret, self.fw.public_key, cbor.dumps(rep))
        except (OSError, ValueError, MemoryError) as e:
            log.warning(TAG, "update report not signed: %r" % (e,))
            self._retry_later()
            return False
        rep = None
        return _steps().report(self, msg)

    def delivered(self):
        """A reading was acknowledged: in a trial, the new image works once
        CONFIRM_READINGS made after the boot are in."""
        if self.mode != "trial":
            return
        self.acked += 1
        if self.acked < CONFIRM_READINGS:
            return
        try:
            _steps().confirm(self)
        except Exception as e:  # not confirmed now: the next reading tries again
            log.error(TAG, "confirmation failed: %r" % (e,))
        finally:
            _unload()

    def status(self):
        try:
            return _steps().status(self)
        finally:
            _unload()


def console_lines(fw):
    """The console's `update` (edge/ota_steps.py), when there is room to
    load it: a MemoryError half way would leave the heap in pieces."""
    gc.collect()
    if hasattr(gc, "mem_free") and gc.mem_free() < FREE_FLOOR:
        return ["update status needs %d bytes free, %d free now: ask again later" % (FREE_FLOOR, gc.mem_free())]
    try:
        return _steps().console_lines(fw)
    finally:
        _unload()
