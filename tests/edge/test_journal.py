"""The two-file journal under MicroPython: a save torn at any byte keeps
the previous state (at most one persistence interval lost), never a
counter that moved backwards, and never a corrupt state."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import run_micropython

TORN_EVERY_BYTE = """
import json
from edge import hal
from edge.hal.region import PowerCut
from edge.journal import Journal
path = %(path)r
garbage = %(garbage)r
results = []
# States grow like a meter's: every save has larger counters.
def state(k):
    return {"seq": 1000 + k, "import_wh": 5000 + 7 * k, "export_wh": 300 + 3 * k, "acked": 990 + k}
# Learn how long one slot write is.
import os
try:
    os.remove(path)
except OSError:
    pass
j = Journal(path)
for k in range(3):
    j.save(state(k))
n = len(__import__("edge.journal").journal.encode_slot(3, state(3)))
for cut in range(0, n + 1):
    try:
        os.remove(path)
    except OSError:
        pass
    j = Journal(path)
    # k saves done (alternating slots), then save k is torn at `cut`.
    for k in range(2 + cut %% 2):
        j.save(state(k))
    last = 1 + cut %% 2
    hal.tear_next_write(cut, garbage)
    torn = False
    try:
        j.save(state(last + 1))
    except PowerCut:
        torn = True
    j.close()
    got = Journal(path).load()
    results.append([cut, torn, got["seq"] if got else None, got == state(last) or got == state(last + 1), last])
print(json.dumps([n, results]))
"""


def run_torn(tmp_path: Path, garbage: int | None) -> tuple[int, list]:
    out = run_micropython(TORN_EVERY_BYTE % {"path": str(tmp_path / "journal"), "garbage": garbage})
    n, results = json.loads(out.strip().splitlines()[-1])
    return n, results


def check_torn(n: int, results: list) -> None:
    assert len(results) == n + 1
    for cut, torn, seq, exact, last in results:
        assert exact, (cut, seq)
        if cut < n:
            # Torn: the previous save survives, one interval behind.
            assert torn and seq == 1000 + last, (cut, seq)
        else:
            assert seq == 1000 + last + 1


def test_save_torn_at_every_byte_keeps_the_previous_state(tmp_path: Path) -> None:
    check_torn(*run_torn(tmp_path, None))


def test_save_torn_with_a_half_programmed_byte_keeps_the_previous_state(tmp_path: Path) -> None:
    check_torn(*run_torn(tmp_path, 0x00))
    check_torn(*run_torn(tmp_path, 0x7B))  # '{': plausible JSON


def test_fresh_journal_loads_nothing_and_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    out = run_micropython(
        f"""
import json
from edge.journal import Journal
j = Journal({path!r})
first = j.load()
for i in range(5):
    j.save({{"seq": i, "import_wh": 10 * i}})
j.close()
j2 = Journal({path!r})
print(json.dumps([first, j2.load(), j2.gen]))
"""
    )
    assert json.loads(out.strip().splitlines()[-1]) == [None, {"seq": 4, "import_wh": 40}, 4]


def test_both_slots_corrupt_loads_nothing_rather_than_garbage(tmp_path: Path) -> None:
    path = tmp_path / "j"
    run_micropython(
        f"""
from edge.journal import Journal
j = Journal({str(path)!r})
j.save({{"seq": 1}})
j.save({{"seq": 2}})
"""
    )
    for i, bit in ((0, 0x01), (1, 0x80)):
        slot = tmp_path / f"j.{i}"
        raw = bytearray(slot.read_bytes())
        raw[12] ^= bit
        slot.write_bytes(bytes(raw))
    out = run_micropython(f"from edge.journal import Journal\nprint(Journal({str(path)!r}).load())")
    assert out.strip() == "None"


def test_a_save_replaces_one_small_file_whole_never_writing_in_the_middle(tmp_path: Path) -> None:
    # LittleFS stores a file of at most 128 bytes inline in its directory:
    # replacing it whole costs a metadata commit, not a block erase.
    path = str(tmp_path / "j")
    out = run_micropython(
        f"""
import json, os
from edge.journal import Journal
j = Journal({path!r})
j.load()
state = {{"seq": 3153600, "import_wh": 123456789, "export_wh": 12345678, "acked": 3153590, "covered_from": 3153591}}
j.save(state)
j.save(state)
print(json.dumps([os.stat({path!r} + ".0")[6], os.stat({path!r} + ".1")[6], sorted(os.listdir({str(tmp_path)!r}))]))
"""
    )
    a, b, names = json.loads(out.strip().splitlines()[-1])
    assert a == b <= 128 and names == ["j.0", "j.1"]


def test_a_0_2_two_slot_journal_is_carried_over_once_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    out = run_micropython(
        f"""
import json, os
from edge.journal import encode_slot, Journal
# Firmware 0.2: two 512-byte slots in one file, the newer in slot 1.
raw = bytearray(b"\\xff" * 1024)
old = encode_slot(6, {{"seq": 60, "import_wh": 900}})
new = encode_slot(7, {{"seq": 70, "import_wh": 950, "acked": 65}})
raw[0:len(old)] = old
raw[512:512 + len(new)] = new
with open({str(path)!r}, "wb") as f:
    f.write(raw)
j = Journal({str(path)!r})
first = j.load()
j.save({{"seq": 71, "import_wh": 951, "acked": 66}})
gone = not ("state" in os.listdir({str(tmp_path)!r}))
print(json.dumps([first, Journal({str(path)!r}).load(), j.gen, gone]))
"""
    )
    first, after, gen, gone = json.loads(out.strip().splitlines()[-1])
    assert first == {"seq": 70, "import_wh": 950, "acked": 65}
    assert after == {"seq": 71, "import_wh": 951, "acked": 66} and gen == 8 and gone


def test_generation_wrap_still_picks_the_newer_slot(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    out = run_micropython(
        f"""
from edge.journal import Journal
j = Journal({path!r})
j.load()
j.gen = 0xFFFFFFFE
j.save({{"seq": "old"}})
j.save({{"seq": "new"}})
print(j.gen, Journal({path!r}).load()["seq"])
"""
    )
    assert out.split() == ["0", "new"]


def test_random_and_bit_flipped_slots_are_refused_without_a_crash() -> None:
    import random

    rng = random.Random(9)
    blobs = [bytes(rng.randrange(256) for _ in range(rng.randrange(13, 512))).hex() for _ in range(200)]
    out = run_micropython("""
import json, binascii
from edge import journal
blobs = json.loads(%r)
bad = 0
for h in blobs:
    got = journal.decode_slot(binascii.unhexlify(h))
    if got is not None:
        bad += 1
good = journal.encode_slot(5, {"seq": 9, "import_wh": 1})
flipped = 0
for i in range(len(good) * 8):
    b = bytearray(good)
    b[i // 8] ^= 1 << (i %% 8)
    if journal.decode_slot(bytes(b)) is not None:
        flipped += 1
print(json.dumps([bad, flipped, journal.decode_slot(good)[1]]))
""" % json.dumps(blobs))
    assert json.loads(out.strip().splitlines()[-1]) == [0, 0, {"seq": 9, "import_wh": 1}]


def test_a_legacy_json_state_file_is_carried_over_once(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text('{"seq": 41, "import_wh": 900, "export_wh": 12}')
    out = run_micropython(f"""
import json
from edge.journal import Journal
j = Journal({str(path)!r})
first = j.load()
j.save({{"seq": 42, "import_wh": 901, "export_wh": 12}})
j.close()
print(json.dumps([first, Journal({str(path)!r}).load()]))
""")
    first, after = json.loads(out.strip().splitlines()[-1])
    assert first == {"seq": 41, "import_wh": 900, "export_wh": 12}
    assert after == {"seq": 42, "import_wh": 901, "export_wh": 12}
