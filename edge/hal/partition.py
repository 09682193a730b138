# A stand-in for esp32.Partition under the unix port: two OTA app slots and
# the bootloader's otadata, each a file in the board's folder.
#
# Same interface as MicroPython's esp32.Partition (the subset the updater
# uses): Partition(Partition.RUNNING) or Partition("ota_1"),
# get_next_update(), info(), readblocks(), writeblocks() (without an offset
# the blocks are erased first, as on the board), ioctl(4/5/6),
# set_boot(), and Partition.mark_app_valid_cancel_rollback().
#
# The bootloader is modelled as ESP-IDF's with app rollback enabled: a
# slot chosen by set_boot() boots once as "pending_verify"; if it boots
# again without the app having marked itself valid, it is "aborted" and
# the previous slot boots. The bootloader runs at the first Partition use
# of a process (a process start is a power-up) and again after reboot().
#
# Power cuts for tests: cut_after(n) lets n more flash writes through (a
# block, an otadata update) and makes the next one fail half written
# (PowerCut), as a board losing power mid-write would; reboot() then
# powers it up again in the same process, which is how a test cuts the
# power hundreds of times cheaply.
#
# Slot images under the unix port are whatever a test wrote; an image that
# starts with b"MGFW " and a JSON line names the version it runs
# (image_header), standing in for the VERSION frozen into a real image.

import json
import os

BLOCK = 4096
SLOT_BLOCKS = 384  # 1.5 MB, the default ESP32 OTA app slot
SLOTS = ("ota_0", "ota_1")
ROOT = "."
OTADATA = "otadata"

_FF = b"\xff" * 512  # erased flash, written in pieces: no 4 KiB buffer on a small heap
# The slot the bootloader chose at this power-up is kept in the edge.hal
# package, not here: the updater releases this module between its steps
# (edge/ota_session.py), and importing it again must not run the
# bootloader a second time.
_RUNNING = "partition_running"
_budget = None
writes = 0  # flash writes so far (blocks, otadata): tests count them


class PowerCut(Exception):
    pass


def _path(name):
    return ROOT + "/" + name


def cut_after(n):
    """Fail the (n+1)-th flash write from now; None: never."""
    global _budget
    _budget = n


def _spend():
    global _budget, writes
    writes += 1
    if _budget is None:
        return False
    if _budget <= 0:
        return True
    _budget -= 1
    return False


def reboot():
    """Power up again: the bootloader runs at the next Partition use (a
    cut armed with cut_after stays armed)."""
    _hal().__dict__.pop(_RUNNING, None)


def _load():
    try:
        with open(_path(OTADATA)) as f:
            d = json.loads(f.read())
        if isinstance(d, dict) and d.get("boot") in SLOTS and isinstance(d.get("state"), dict):
            return d
    except (OSError, ValueError):
        pass
    # Fresh from the flashing tool: the first slot, valid.
    return {"boot": SLOTS[0], "state": {SLOTS[0]: "valid"}}


def _save(d):
    # otadata is two sectors with a sequence number on the board: an
    # update replaces it whole or not at all. Here: write a copy, rename.
    if _spend():
        with open(_path(OTADATA + ".tmp"), "w") as f:
            f.write("{\"boot\": ")
        raise PowerCut("power cut writing otadata")
    tmp = _path(OTADATA + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(d))
    os.rename(tmp, _path(OTADATA))


def _other(label):
    return SLOTS[1] if label == SLOTS[0] else SLOTS[0]


def _hal():
    import edge.hal

    return edge.hal


def _boot():
    d = _load()
    sel = d["boot"]
    state = d["state"].get(sel, "valid")
    if state == "new":
        d["state"][sel] = "pending_verify"
        _save(d)
    elif state in ("pending_verify", "aborted", "invalid"):
        # Booted before and never marked valid (or marked bad): roll back.
        if state == "pending_verify":
            d["state"][sel] = "aborted"
        sel = _other(sel)
        d["boot"] = sel
        _save(d)
    _hal().__dict__[_RUNNING] = sel
    return sel


def running_label():
    return _hal().__dict__.get(_RUNNING) or _boot()


def slot_state(label):
    """The bootloader's state for a slot (tests and the console)."""
    return _load()["state"].get(label, "valid" if label == SLOTS[0] else "undefined")


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0

    def __init__(self, which):
        if which == Partition.RUNNING:
            which = running_label()
        elif which == Partition.BOOT:
            which = _load()["boot"]
        if which not in SLOTS:
            raise ValueError("no partition %r" % (which,))
        self.label = which

    def __eq__(self, other):
        return isinstance(other, Partition) and other.label == self.label

    def info(self):
        return (0, 16 + SLOTS.index(self.label), 0x10000 + SLOTS.index(self.label) * SLOT_BLOCKS * BLOCK,
                SLOT_BLOCKS * BLOCK, self.label, False)

    def get_next_update(self):
        return Partition(_other(self.label))

    def _file(self):
        p = _path(self.label + ".bin")
        try:
            return open(p, "r+b")
        except OSError:
            return open(p, "w+b")

    def readblocks(self, block, buf, offset=0):
        pos = block * BLOCK + offset
        with self._file() as f:
            f.seek(pos)
            n = f.readinto(buf) or 0
        for i in range(n, len(buf)):
            buf[i] = 0xFF  # erased flash

    def writeblocks(self, block, buf, offset=None):
        if block < 0 or block * BLOCK + len(buf) + (offset or 0) > SLOT_BLOCKS * BLOCK:
            raise OSError(22)  # EINVAL: outside the slot
        data = buf  # bytes or a memoryview (a received block): written as it is, not copied
        erase = offset is None
        if erase:
            offset = 0
        torn = _spend()
        with self._file() as f:
            if erase:
                # Erase, then program: the erased blocks read 0xFF.
                f.seek(block * BLOCK)
                pieces = max(1, (len(data) + BLOCK - 1) // BLOCK) * (BLOCK // len(_FF))
                for _ in range(pieces // 2 if torn and not data else pieces):
                    f.write(_FF)
            f.seek(block * BLOCK + offset)
            f.write(data[:len(data) // 2] if torn else data)
        if torn:
            raise PowerCut("power cut writing %s block %d" % (self.label, block))

    def ioctl(self, op, arg):
        if op == 4:
            return SLOT_BLOCKS
        if op == 5:
            return BLOCK
        if op == 6:
            self.writeblocks(arg, b"")  # erase only
            return 0
        return None

    def set_boot(self):
        d = _load()
        d["boot"] = self.label
        d["state"][self.label] = "new"
        _save(d)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        d = _load()
        label = running_label()
        if d["state"].get(label) != "valid":
            d["state"][label] = "valid"
            _save(d)


def image_header(part):
    """The JSON header of a unix-port stand-in image in `part`, or None."""
    buf = bytearray(256)
    part.readblocks(0, buf)
    if buf[:5] != b"MGFW ":
        return None
    end = bytes(buf).find(b"\n")
    try:
        return json.loads(bytes(buf[5:end]).decode())
    except (ValueError, UnicodeError):
        return None
