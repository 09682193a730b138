"""The flash outbox under MicroPython: readings survive a restart in order,
a torn slot write is skipped, a full ring merges the oldest readings (the
merged reading is re-signed, deterministic, and names the first reading it
stands for) instead of dropping them."""

from __future__ import annotations

import json
from pathlib import Path

from microgrid.shared import reading

from .mp import mp_json

SETUP = """
import json
from edge import hal
from edge.hal.region import PowerCut
from edge.outbox import Outbox
path = %(path)r
def msg(seq):
    return ("reading-%%d" %% seq).encode()
"""


def run(tmp_path: Path, body: str) -> object:
    return mp_json(SETUP % {"path": str(tmp_path / "outbox")} + body)


def test_unacknowledged_readings_survive_a_restart_oldest_first(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 8)
for s in range(1, 6):
    o.push(s, msg(s), 100 + s, 7)
o.pop(1)
o.pop(2)
o.close()
o = Outbox(path, 8, acked=2)
out = []
while o.peek():
    seq, m, first = o.peek()
    out.append([seq, m.decode(), first])
    o.pop(seq)
print(json.dumps([out, list(Outbox(path, 8, acked=5).newest), len(Outbox(path, 8, acked=5))]))
""")
    assert got == [[[3, "reading-3", 3], [4, "reading-4", 4], [5, "reading-5", 5]], [5, 105, 7], 0]


def test_a_stale_ack_mark_resends_delivered_readings_rather_than_losing_any(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 8)
for s in range(1, 6):
    o.push(s, msg(s), s, 0)
for s in range(1, 5):
    o.pop(s)
o.close()
# The journal last saved acked=2: readings 3 and 4 go out again (the
# coordinator answers "duplicate"), 5 is pending.
o = Outbox(path, 8, acked=2)
print(json.dumps([len(o), o.peek()[0]]))
""")
    assert got == [3, 3]


def test_a_torn_slot_write_is_skipped_and_the_rest_survive(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 8)
for s in range(1, 4):
    o.push(s, msg(s), s, 0)
hal.tear_next_write(20)
try:
    o.push(4, msg(4), 4, 0)
except PowerCut:
    pass
o.close()
o = Outbox(path, 8)
seqs = []
while o.peek():
    seqs.append(o.peek()[0])
    o.pop(o.peek()[0])
print(json.dumps([seqs, o.newest[0]]))
""")
    # Reading 4 never left the board (sending follows the write): seq 4
    # is free again and the newest record is 3.
    assert got == [[1, 2, 3], 3]


def test_ring_wraps_many_times_and_keeps_order(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 5)
sent = []
for s in range(1, 41):
    o.push(s, msg(s), s, 0)
    if s % 3 == 0:
        while o.peek():
            sent.append(o.peek()[0])
            o.pop(o.peek()[0])
o.close()
o = Outbox(path, 5, acked=sent[-1])
left = []
while o.peek():
    left.append(o.peek()[0])
    o.pop(o.peek()[0])
print(json.dumps([sent + left, o.dropped]))
""")
    assert got == [list(range(1, 41)), 0]


def test_full_ring_merges_the_oldest_instead_of_dropping(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 4)
merged = []
for s in range(1, 11):
    m = o.push(s, msg(s), 10 * s, 0)
    if m is not None:
        merged.append(m)
out = []
while o.peek():
    seq, m, first = o.peek()
    out.append([seq, first])
    o.pop(seq)
print(json.dumps([merged, out, o.dropped]))
""")
    merged, out, dropped = got
    assert merged == [1, 2, 3, 4, 5, 6] and dropped == 6
    # The oldest left stands for readings 1..7; the rest are whole.
    assert out == [[7, 1], [8, 8], [9, 9], [10, 10]]


def test_merged_reading_is_resigned_deterministically_and_names_its_first_seq(tmp_path: Path) -> None:
    got = mp_json("""
import json, binascii
from shared import reading, secp256k1
from edge.firmware import merged_message
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
msg = reading.build(sk, pub, 7, 1700000000, 1234, 56, 300, 230.0)
a = merged_message(sk, pub, msg, 3)
b = merged_message(sk, pub, msg, 3)
print(json.dumps([binascii.hexlify(a).decode(), a == b, binascii.hexlify(pub).decode()]))
""")
    hexmsg, same, pub = got
    assert same
    r = reading.parse(bytes.fromhex(hexmsg))
    assert r.seq == 7 and r.import_wh == 1234 and r.extra["merged_from"] == 3
    assert reading.verify(r, bytes.fromhex(pub))


def test_a_reading_too_big_for_a_slot_is_refused_with_sizes(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 4)
try:
    o.push(1, b"x" * 600, 0, 0)
    print(json.dumps("accepted"))
except ValueError as e:
    print(json.dumps(str(e)))
""")
    assert "600 bytes" in got and "480" in got
