# Flash writes that tests can tear, and a fixed-size byte region in a file
# on the board's filesystem (LittleFS on an ESP32, the host filesystem
# under the unix port).
#
# `fault` is a test hook (set by the scripted backend): when set, it is
# called as fault(owner, offset, data) before each write (a Region's, or
# one through `write_through`, as the outbox and the journal do) and may
# return a shorter (or altered) prefix to write followed by a PowerCut,
# which is how tests tear a write at any byte.
#
# The outbox and the journal no longer keep their records in a Region:
# writing in the middle of a LittleFS file rewrites the rest of it (see
# edge/outbox.py); they append to files and replace small files whole.

import os

fault = None


class PowerCut(Exception):
    """Raised by the scripted backend when a write is torn on purpose."""


def write_through(f, data, owner, offset):
    """Write `data` to the open file `f` at its position and flush it to
    flash (a LittleFS sync: the write is committed when this returns)."""
    cut = None
    if fault is not None:
        cut = fault(owner, offset, data)
    f.write(data if cut is None else cut)
    f.flush()
    if cut is not None:
        raise PowerCut("write of %d bytes at %d torn after %d" % (len(data), offset, len(cut)))


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Region:
    def __init__(self, path, size):
        self.path = path
        self.size = size
        if not exists(path):
            # Created empty and grown by writes: bytes past the end read as
            # erased flash (0xFF), so a fresh region costs no flash writes.
            with open(path, "wb"):
                pass
        self.f = open(path, "r+b")

    def read(self, offset, n):
        if offset < 0 or offset + n > self.size:
            raise ValueError("region %s: read %d bytes at %d outside 0..%d" % (self.path, n, offset, self.size))
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) < n:
            data = data + b"\xff" * (n - len(data))
        return data

    def write(self, offset, data):
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError("region %s: write %d bytes at %d outside 0..%d" % (self.path, len(data), offset, self.size))
        cut = None
        if fault is not None:
            cut = fault(self, offset, data)
        self.f.seek(offset)
        self.f.write(data if cut is None else cut)
        self.f.flush()
        if cut is not None:
            raise PowerCut("write of %d bytes at %d torn after %d" % (len(data), offset, len(cut)))

    def sync(self):
        self.f.flush()
        if hasattr(os, "sync"):
            os.sync()

    def close(self):
        self.f.close()

    def erase(self):
        """Set the whole region back to erased flash (reads as 0xFF)."""
        self.f.close()
        with open(self.path, "wb"):
            pass
        self.f = open(self.path, "r+b")
