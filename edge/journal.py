# Power-loss-safe meter state: two small files, each one CRC-checked record.
#
# The state (sequence number, cumulative counters, the outbox's delivery
# mark and any driver state) is a small JSON object. Each save writes one
# record, alternately into `<path>.0` and `<path>.1`, replacing the file
# whole:
#
#   offset size
#   0      2    magic b"MJ"
#   2      1    layout version (1)
#   3      4    generation, big-endian u32, +1 per save
#   7      2    payload length L, big-endian
#   9      L    payload: the state as compact JSON (UTF-8)
#   9+L    4    CRC-32 (binascii.crc32) over bytes 0 .. 9+L
#
# Loading reads both files and keeps the valid record with the higher
# generation. A save only ever replaces the *older* file, so a write torn
# at any byte (power cut, reset, brown-out) leaves the newer one intact:
# the torn record fails its CRC (a 1 in 2^32 chance of passing) and the
# previous state is used. That loses at most one persistence interval and
# never moves a counter backwards, because the surviving record holds the
# state saved just before the torn one and saved states only grow.
# (tests/edge/test_journal.py tears a save at every byte offset, with and
# without a half-programmed byte at the cut, in both MicroPython runtimes.)
#
# Flash wear, measured (bench/bench_flash.py, LittleFS2 with an ESP32's
# 4096-byte blocks): a file of at most 128 bytes (MicroPython's LittleFS
# cache size) is stored inline in its directory's metadata, so replacing
# it is one metadata commit, about 0.04 erases; the firmware's state
# (seq, two counters, acked, covered_from, compact JSON) is about 110
# bytes with 7-digit numbers. A bigger state costs one erase per save (a
# fresh data block). With the defaults (interval_s 10, persist_every 10)
# the journal adds under 0.01 erase per reading to the outbox's ~1.1, and
# about 0.04 per reading while the outbox merges (a save after each
# merge); 3,153,600 readings a year spread by LittleFS over ~510 blocks
# (see edge/outbox.py). Firmware 0.2's journal, two 512-byte slots in one
# file written in place, cost a whole block copy (one erase) per save.
#
# Firmware 0.2 kept both slots in one file at `path` (and 0.1 a plain JSON
# file there): when neither new file holds a valid record, that file is
# read once, so an upgraded meter never reuses a sequence number, and it
# is removed after the first save in the new layout.

import binascii
import json
import os

from edge.hal.region import write_through

MAGIC = b"MJ"
VERSION = 1
HEADER = 9
SLOT_SIZE = 512
GEN_MOD = 1 << 32


class JournalError(ValueError):
    pass


def _u32(b, i):
    return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF


def encode_slot(gen, state, slot_size=SLOT_SIZE):
    payload = json.dumps(state, separators=(",", ":")).encode()
    n = len(payload)
    if HEADER + n + 4 > slot_size:
        raise JournalError("journal state of %d bytes exceeds the slot (%d bytes)" % (n, slot_size - HEADER - 4))
    out = bytearray(MAGIC)
    out.append(VERSION)
    out.extend(bytes([(gen >> 24) & 255, (gen >> 16) & 255, (gen >> 8) & 255, gen & 255]))
    out.extend(bytes([n >> 8, n & 255]))
    out.extend(payload)
    c = _crc(out)
    out.extend(bytes([(c >> 24) & 255, (c >> 16) & 255, (c >> 8) & 255, c & 255]))
    return bytes(out)


def decode_slot(raw):
    """(generation, state) for a valid slot, or None."""
    if len(raw) < HEADER + 4 or raw[0:2] != MAGIC or raw[2] != VERSION:
        return None
    n = (raw[7] << 8) | raw[8]
    end = HEADER + n
    if end + 4 > len(raw):
        return None
    if _crc(raw[0:end]) != _u32(raw, end):
        return None
    try:
        state = json.loads(raw[HEADER:end].decode())
    except (ValueError, UnicodeError):
        return None
    if not isinstance(state, dict):
        return None
    return _u32(raw, 3), state


def _newer(a, b):
    # Generations count modulo 2^32 (a wrap needs 136 years at one save a
    # second); a is newer than b if it is less than half the circle ahead.
    return 0 < (a - b) % GEN_MOD < GEN_MOD // 2


class Journal:
    """Journal(path).load() -> dict or None; .save(dict)."""

    def __init__(self, path, slot_size=SLOT_SIZE):
        self.path = path
        self.slot_size = slot_size
        self.gen = None  # generation of the newest valid record
        self.slot = 1  # index of the newest file; the next save goes to the other
        self.saves = 0
        self.legacy = False  # a 0.1/0.2 state file at `path` still to remove

    def _name(self, i):
        return "%s.%d" % (self.path, i)

    def _read(self, name, n=0):
        try:
            with open(name, "rb") as f:
                return f.read(n or self.slot_size)
        except OSError:
            return b""

    def load(self):
        best = None
        for i in (0, 1):
            got = decode_slot(self._read(self._name(i)))
            if got is None:
                continue
            if best is None or _newer(got[0], best[0]):
                best = (got[0], got[1], i)
        self.legacy = bool(self._read(self.path)[:1])
        if best is None:
            self.gen = None
            self.slot = 1
            return self._legacy()
        self.gen, state, self.slot = best
        return state

    def _legacy(self):
        # Firmware 0.2 kept two slots in one file, 0.1 a plain JSON file:
        # carry the state over once, so an upgraded meter never reuses a
        # sequence number.
        raw = self._read(self.path, 2 * SLOT_SIZE)
        best = None
        for i in (0, 1):
            got = decode_slot(raw[i * SLOT_SIZE:(i + 1) * SLOT_SIZE]) if len(raw) > i * SLOT_SIZE else None
            if got is not None and (best is None or _newer(got[0], best[0])):
                best = got
        if best is not None:
            self.gen = best[0]
            return best[1]
        if not raw or raw[0] != 0x7B:  # "{"
            return None
        end = raw.find(b"}")
        try:
            state = json.loads(raw[:end + 1].decode())
        except (ValueError, UnicodeError):
            return None
        if not isinstance(state, dict) or "seq" not in state:
            return None
        return state

    def save(self, state):
        if self.gen is None and self.saves == 0:
            self.load()
        gen = 0 if self.gen is None else (self.gen + 1) % GEN_MOD
        target = 1 - self.slot
        data = encode_slot(gen, state, self.slot_size)
        with open(self._name(target), "wb") as f:
            write_through(f, data, self, 0)
        self.gen = gen
        self.slot = target
        self.saves += 1
        if self.legacy:
            # The new record is on flash: the old layout has served.
            try:
                os.remove(self.path)
            except OSError:
                pass
            self.legacy = False

    def clear(self):
        """Remove both records (factory reset)."""
        for name in (self._name(0), self._name(1), self.path):
            try:
                os.remove(name)
            except OSError:
                pass
        self.gen = None
        self.slot = 1
        self.legacy = False

    def close(self):
        pass
