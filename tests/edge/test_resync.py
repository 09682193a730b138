"""edge/resync.py under MicroPython: reading the coordinator's stale answer,
the bounds on a jump, and the renumbered, re-signed messages (checked in
CPython with the coordinator's parser and verifier). And edge/coap.py takes
an answer only from the coordinator's address."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from microgrid.shared import reading, secp256k1

from ..conftest import free_udp_port
from .mp import mp_json

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)

SETUP = """
import json, binascii
from shared import reading, secp256k1
from edge.resync import Renumber, parse_stale, SEQ_LIMIT
SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)
DEV = reading.device_id(PUB)
def hx(b):
    return binascii.hexlify(b).decode()
"""


def test_the_stale_answer_is_read_only_when_whole_and_sane() -> None:
    got = mp_json(SETUP + """
texts = [
    "stale: seq 1 is not above last stored 20; last=20 import=150 export=7",
    "stale: seq 2 already stored with other content; last=30 import=0 export=0",
    "stale: seq 1 is not above last stored 20",          # an older coordinator
    "stale: seq 1 ...; last=20 import=150",              # a figure missing
    "stale: seq 1 ...; last=20 import=-5 export=0",      # negative
    "stale: seq 1 ...; last=2x import=1 export=0",       # not a number
    "duplicate: seq 1 already stored; last=20 import=1 export=0",
    "",
]
print(json.dumps([parse_stale(t) for t in texts]))
""")
    assert got == [[20, 150, 7], [30, 0, 0], None, None, None, None, None, None]


def test_a_jump_renumbers_a_batch_re_signs_it_and_marks_the_counter_drop() -> None:
    got = mp_json(SETUP + """
batch = reading.build_batch(SECRET, PUB, [(3, 1700000000, 2, 0, 300, 230.0, []),
                                          (4, 1700000010, 3, 0, 300, 230.0, [("flags", None, 1)]),
                                          (5, 1700000020, 4, 0, 300, 230.0, [])])
later = reading.build(SECRET, PUB, 9, 1700000090, 9, 0, 300, 230.0)
r = Renumber()
new = r.jump(5, batch, 7, (40, 100, 7))
out = r.outgoing(SECRET, PUB, 5, batch)
again = Renumber(r.state()["renumber"]).outgoing(SECRET, PUB, 5, batch)
above = reading.build(SECRET, PUB, new + 1, 1700000100, 10, 0, 300, 230.0)
print(json.dumps([new, r.state(), hx(out), out == again, r.outgoing(SECRET, PUB, new + 1, above) == above,
                  r.release((5, batch, 5)), r.release((new + 1, above, new + 1)), r.state()]))
""")
    new, state, out, deterministic, untouched, still, done, after = got
    # Refused at 3..5 with the coordinator at 40: 3 -> 41, and every number
    # handed out (up to 7) moves by 38; new readings start at 46.
    assert new == 45 and state == {"renumber": [7, 38, 5, 100, 7]}
    batch = reading.parse_all(bytes.fromhex(out))
    assert [r.seq for r in batch] == [41, 42, 43]
    assert [r.import_wh for r in batch] == [2, 3, 4] and [r.t for r in batch] == [1700000000, 1700000010, 1700000020]
    assert batch[0].extra == {"reset": "counter_dropped", "reset_import_wh": 100, "reset_export_wh": 7}
    assert batch[1].extra == {"flags": 1} and batch[2].extra == {}
    assert reading.verify(batch[0], PUB)
    # The same bytes on every retry (and after a reboot): a lost ack ends in "duplicate".
    assert deterministic and untouched
    assert still is False and done is True and after == {}


def test_counters_at_or_above_the_coordinator_carry_no_reset_and_merges_are_renumbered() -> None:
    # The firmware module first, as the firmware does: compiling it after
    # the signer built its tables fails on the unix port's small heap.
    got = mp_json("from edge.firmware import merged_message\n" + SETUP + """
msg = reading.build(SECRET, PUB, 6, 1700000000, 5000, 20, 300, 230.0)
merged = merged_message(SECRET, PUB, msg, 2)
r = Renumber()
new = r.jump(6, merged, 6, (11, 4990, 20))
print(json.dumps([new, r.state(), hx(r.outgoing(SECRET, PUB, 6, merged))]))
""")
    new, state, out = got
    # merged_from 2 is the lowest number named: it goes to 12, seq 6 to 16.
    assert new == 16 and state == {"renumber": [6, 10]}
    one = reading.parse(bytes.fromhex(out))
    assert one.seq == 16 and one.extra == {"merged_from": 12} and reading.verify(one, PUB)


def test_a_jump_out_of_bounds_is_refused_and_changes_nothing() -> None:
    got = mp_json(SETUP + """
msg = reading.build(SECRET, PUB, 5, 1700000000, 1, 0, 300, 230.0)
out = []
for answer in [(SEQ_LIMIT, 0, 0), (1 << 40, 0, 0), (4, 0, 0)]:
    r = Renumber()
    try:
        r.jump(5, msg, 5, answer)
        out.append("jumped")
    except ValueError as e:
        out.append([str(e), r.state(), r.outgoing(SECRET, PUB, 5, msg) == msg])
# A second answer while renumbering must be above the numbers now sent.
r = Renumber()
r.jump(5, msg, 5, (20, 0, 0))
try:
    r.jump(5, msg, 25, (20, 0, 0))
    out.append("jumped")
except ValueError as e:
    out.append([str(e), r.state()])
out.append([r.jump(5, msg, 25, (30, 0, 0)), r.state()])
print(json.dumps(out))
""")
    assert "beyond" in got[0][0] and got[0][1:] == [{}, True]
    assert "beyond" in got[1][0] and got[1][1:] == [{}, True]
    assert "below the refused seq 5" in got[2][0] and got[2][1:] == [{}, True]
    # 5 goes out as 21 now: "last stored 20" would not make it stale.
    assert "below the refused seq 21" in got[3][0] and got[3][1] == {"renumber": [5, 16]}
    assert got[4] == [25 + 26, {"renumber": [25, 26]}]


def test_a_spoofed_answer_from_another_address_is_ignored(tmp_path: Path) -> None:
    """A forged 4.09 with the right message id and token, sent first from
    another port, is ignored; the coordinator's own 2.01 is taken."""
    port = free_udp_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", port))
    server.settimeout(60)
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.1", 0))

    def serve() -> None:
        try:
            data, addr = server.recvfrom(2048)
        except OSError:
            return
        mid, tkl = data[2:4], data[0] & 15
        token = data[4:4 + tkl]

        def ack(code: int, text: bytes) -> bytes:
            return bytes([0x60 | tkl, code]) + mid + token + b"\xff" + text

        spoofer.sendto(ack(0x89, b"stale: seq 1 is not above last stored 9; last=536870000 import=0 export=0"), addr)
        server.sendto(ack(0x41, b"stored x/1 t=1700000000"), addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        got = mp_json("""
import json
from edge import coap
c = coap.Client("127.0.0.1", %d, 5.0, 0)
code, payload = c.post("readings", b"x", 18)
print(json.dumps([coap.code_str(code), payload.decode()]))
""" % port)
    finally:
        t.join(10)
        server.close()
        spoofer.close()
    assert got == ["2.01", "stored x/1 t=1700000000"]
