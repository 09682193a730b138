"""The meter's side of OSCORE (edge/oscore.py) under MicroPython: sequence
numbers are reserved on flash in blocks and never handed out twice, not
across reboots and not after a torn reservation; a context file that is
unusable stops the boot with a message that never shows the secret; an
answer that is not protected for the request is ignored."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import run_micropython

SEQUENCE = """
import json, os
from edge import hal
from edge.hal.region import PowerCut
from edge.oscore_context import open_link
ctx = %(path)r
with open(ctx, "w") as f:
    f.write(json.dumps({"secret": "00112233445566778899aabbccddeeff", "salt": "", "sender_id": %(sid)r, "recipient_id": ""}))
def piv(link):
    # The Partial IV the request carries in its OSCORE option.
    opts, ct = link.request("readings", b"reading", 18)
    value = opts[0][1]
    n = value[0] & 7
    return int.from_bytes(value[1:1 + n], "big")
handed = []
s = open_link(ctx, 8)
for _ in range(20):
    handed.append(piv(s))
saves_first_boot = s._limit // 8
# Reboot: continue above the last reservation, never below.
s = open_link(ctx, 8)
after_reboot = piv(s)
handed.append(after_reboot)
for _ in range(7):
    handed.append(piv(s))
# The next reservation is torn: nothing of it is handed out.
hal.tear_next_write(7)
torn = False
try:
    handed.append(piv(s))
except PowerCut:
    torn = True
s = open_link(ctx, 8)
for _ in range(3):
    handed.append(piv(s))
# A context with another sender id (provisioned anew) starts at 0.
with open(ctx, "w") as f:
    f.write(json.dumps({"secret": "ff" * 16, "salt": "", "sender_id": "09", "recipient_id": ""}))
fresh = piv(open_link(ctx, 8))
print(json.dumps({"handed": handed, "saves": saves_first_boot, "after_reboot": after_reboot, "torn": torn, "fresh": fresh}))
"""


def test_sequence_numbers_are_reserved_in_blocks_and_never_reused(tmp_path: Path) -> None:
    script = SEQUENCE % {"path": str(tmp_path / "oscore.json"), "sid": "0102"}
    out = json.loads(run_micropython(script).strip().splitlines()[-1])
    handed = out["handed"]
    assert len(handed) == len(set(handed)), handed  # no number twice, across two reboots and a torn write
    assert handed[:20] == list(range(20))
    assert out["saves"] == 3  # 20 numbers, blocks of 8: three flash writes, not twenty
    assert out["after_reboot"] == 24  # above the reservation made before the reboot
    assert out["torn"] is True
    assert out["fresh"] == 0


CONTEXTS = """
import json
from edge.oscore_context import open_link
from edge.oscore_context import load_context
SECRET = "00112233445566778899aabbccddeeff"
def attempt(name, text):
    path = %(dir)r + "/" + name
    if text is not None:
        with open(path, "w") as f:
            f.write(text)
    try:
        got = load_context(path)
        return "none" if got is None else "ok"
    except ValueError as e:
        return str(e)
good = {"secret": SECRET, "salt": "0102", "sender_id": "a1b2c3d4e5f6", "recipient_id": ""}
results = {
    "missing": attempt("absent.json", None),
    "good": attempt("good.json", json.dumps(good)),
    "not_json": attempt("bad1.json", SECRET + "{"),
    "bad_hex": attempt("bad2.json", json.dumps(dict(good, secret=SECRET[:-1] + "z"))),
    "short": attempt("bad3.json", json.dumps(dict(good, secret=SECRET[:8]))),
    "long_id": attempt("bad4.json", json.dumps(dict(good, sender_id="00" * 8))),
}
# A link ignores what is not protected for its request.
link = open_link(%(dir)r + "/good.json")
link.request("readings", b"reading", 18)
garbage = [
    bytes([0x60, 65, 0, 1]) + b"\\xffstored",                          # 2.01 in clear
    bytes([0x60, 68, 0, 1]) + b"\\x90\\xff" + bytes(20),                  # OSCORE option, bad tag
    bytes([0x60, 68, 0, 1]) + b"\\x91",                                # option cut short
    bytes([0x60, 68, 0, 1]) + b"\\x91\\x80\\xff" + bytes(12),            # reserved flag bits
]
results["answers"] = [link.response(g) for g in garbage]
results["ignored"] = link.ignored
print(json.dumps(results))
"""


def test_unusable_contexts_stop_the_boot_without_showing_the_secret_and_forgeries_are_ignored(tmp_path: Path) -> None:
    out = run_micropython(CONTEXTS % {"dir": str(tmp_path)})
    got = json.loads(out.strip().splitlines()[-1])
    assert got["missing"] == "none" and got["good"] == "ok"
    for key in ("not_json", "bad_hex", "short", "long_id"):
        assert "oscore context" in got[key], got[key]
        assert "00112233" not in got[key]  # no part of the secret in the message
    assert "is not hex" in got["bad_hex"] and "expected 16..64" in got["short"]
    assert got["answers"] == [None, None, None, None] and got["ignored"] == 4
