"""The flash outbox under MicroPython: readings survive a restart in order,
a write torn at any byte is skipped, files are only appended to and
deleted whole, a full outbox merges the oldest readings (the merged reading
is re-signed, deterministic, and names the first reading it stands for)
instead of dropping them, and after a power cut a reading already delivered
goes out again byte for byte; firmware 0.2's ring file is carried over."""

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
    assert "600 bytes" in got and "472" in got


def test_a_push_torn_at_every_byte_is_skipped_and_nothing_else_is_lost(tmp_path: Path) -> None:
    # Tear the write of reading 4 at every byte (with and without a
    # half-programmed byte at the cut), in the middle of a segment and as
    # the first record of a new one: at the restart readings 1..3 are
    # pending, the newest is 3, and reading 4 (never sent) goes in after it.
    got = run(tmp_path, """
import os
from edge import outbox as ob
def wipe(p):
    try:
        for e in os.listdir(p + ".d"):
            os.remove(p + ".d/" + e)
    except OSError:
        pass
from edge.hal import region
lengths = []
bad = []
for skip in (0, ob.SEGMENT_SLOTS - 3):
    # The write's length (a record, after padding to its slot) by a spy.
    wipe(path)
    o = Outbox(path, 64)
    for s in range(1, skip + 4):
        o.push(s, msg(s), s, 0)
    region.fault = lambda owner, offset, data: lengths.append(len(data))
    o.push(skip + 4, msg(skip + 4), skip + 4, 0)
    region.fault = None
    o.close()
    n = lengths[-1]
    for garbage in (None, 0xA7):
        for cut in range(n + 1):
            wipe(path)
            o = Outbox(path, 64)
            for s in range(1, skip + 1):  # acknowledged before: a later segment
                o.push(s, msg(s), s, 0)
                o.pop(s)
            for s in range(skip + 1, skip + 4):
                o.push(s, msg(s), s, 0)
            hal.tear_next_write(cut, garbage)
            try:
                o.push(skip + 4, msg(skip + 4), skip + 4, 0)
            except PowerCut:
                pass
            o.close()
            o = Outbox(path, 64, acked=skip)
            newest = o.newest[0]
            if newest == skip + 3:
                o.push(skip + 4, msg(skip + 4), skip + 4, 0)
            seqs = []
            while o.peek():
                seqs.append(o.peek()[0] - skip)
                o.pop(o.peek()[0])
            o.close()
            # Torn anywhere short of its end, the record is invalid.
            if seqs != [1, 2, 3, 4] or newest != skip + (4 if cut == n else 3):
                bad.append([skip, garbage, cut, seqs, newest])
print(json.dumps([lengths, bad]))
""")
    lengths, bad = got
    # In the middle of a segment the write pads the slot before it.
    assert lengths[0] > lengths[1] > 28
    assert bad == [], bad[:5]


def test_files_are_only_appended_and_acknowledged_segments_deleted(tmp_path: Path) -> None:
    # LittleFS rewrites everything after a write in the middle of a file:
    # the outbox only ever writes at a file's end, and deletes a segment
    # whole once every reading in it is acknowledged, except the newest's.
    got = run(tmp_path, """
import os
from edge import outbox as ob
from edge.hal import region
K = ob.SEGMENT_SLOTS
writes = []
def spy(owner, offset, data):
    name = owner._seg(owner.head // K)
    try:
        size = os.stat(name)[6]
    except OSError:
        size = 0
    writes.append(offset == size)
    return None
region.fault = spy
o = Outbox(path, 3 * K)
most = 0
for s in range(1, 10 * K):
    o.push(s, msg(s), s, 0)
    if s % 5 == 0:  # the coordinator answers every fifth interval
        while o.peek():
            o.pop(o.peek()[0])
    most = max(most, len(os.listdir(path + ".d")))
while o.peek():
    o.pop(o.peek()[0])
left = sorted(int(n) for n in os.listdir(path + ".d"))
o.close()
region.fault = None
print(json.dumps([all(writes), len(writes), most, ob.segments_for(3 * K), left]))
""")
    appended, n, most, budget, left = got
    assert appended and n == 10 * 32 - 1
    assert most <= 2 < budget and left == [9]


def test_a_restart_with_an_old_acked_mark_neither_loses_nor_merges_delivered_readings(tmp_path: Path) -> None:
    # The journal is saved every few readings: its `acked` mark may be
    # behind. Each record carries its floor (below it everything was
    # delivered or merged), so the restart starts at the newest reading's
    # floor: the delivered readings are not sent again, and none is
    # re-signed as a merge of readings that were in fact delivered.
    got = run(tmp_path, """
from edge import outbox as ob
K = ob.SEGMENT_SLOTS
o = Outbox(path, 2 * K)
for s in range(1, 3 * K + 5):
    o.push(s, msg(s), s, 0)
    o.pop(s)
    if s == 2 * K:
        saved = o.state()  # the journal's last save
o.push(3 * K + 5, msg(3 * K + 5), 0, 0)  # pending at the power cut
o.close()
o = Outbox(path, 2 * K, saved["acked"], saved["covered_from"])
out = []
while o.peek():
    out.append([o.peek()[0], o.peek()[2]])
    o.pop(o.peek()[0])
print(json.dumps([saved, out]))
""")
    saved, out = got
    assert saved == {"acked": 64, "covered_from": None}
    assert out == [[101, 101]]


def test_a_full_outbox_on_flash_holds_at_most_its_segment_budget(tmp_path: Path) -> None:
    got = run(tmp_path, """
import os
from edge import outbox as ob
o = Outbox(path, 100)
most = 0
for s in range(1, 1001):  # coordinator away: merging from 101 on
    o.push(s, msg(s), s, 0)
    most = max(most, len(os.listdir(path + ".d")))
o.close()
o = Outbox(path, 100, acked=0, covered_from=1)
after = [len(o), o.peek()[0], o.peek()[2]]
o.push(1001, msg(1001), 1001, 0)
print(json.dumps([most, ob.segments_for(100), after, [len(o), o.peek()[0], o.peek()[2]]]))
""")
    most, budget, after, pushed = got
    assert most <= budget == 5
    # After a restart the oldest reading left goes first, standing for every
    # reading merged away before it (those still on flash stay merged).
    assert after == [100, 901, 1] and pushed == [100, 902, 1]


RING_0_2 = """
import binascii
from edge.outbox import _be, SLOT_SIZE
def encode_v1(seq, imp, exp, m):
    # Firmware 0.2's slot: magic, version 1, seq, import, export, length, message, CRC.
    out = bytearray([0xA7, 1]) + _be(seq, 8) + _be(imp, 8) + _be(exp, 8) + _be(len(m), 2) + m
    return out + _be(binascii.crc32(out) & 0xFFFFFFFF, 4)
def write_ring(path, capacity, seqs):
    # Firmware 0.2: slot head*512 of one ring file, written in place.
    raw = bytearray(b"\\xff" * (capacity * SLOT_SIZE))
    for k, s in enumerate(seqs):
        r = encode_v1(s, 10 * s, s, msg(s))
        i = (k % capacity) * SLOT_SIZE
        raw[i:i + len(r)] = r
    with open(path, "wb") as f:
        f.write(raw)
"""


def test_a_0_2_ring_file_is_carried_over_once_oldest_first(tmp_path: Path) -> None:
    got = run(tmp_path, RING_0_2 + """
import os
write_ring(path, 8, range(1, 21))  # wrapped: slots hold 17..20, 13..16
o = Outbox(path, 1536, acked=10, covered_from=11)
first = [o.newest[0], o.peek()[0], o.peek()[2], len(o)]
o.close()
gone = "outbox" not in os.listdir(path[:-7])
o = Outbox(path, 1536, acked=10, covered_from=11)
seqs = []
while o.peek():
    seqs.append(o.peek()[0])
    o.pop(o.peek()[0])
o.push(21, msg(21), 210, 21)
print(json.dumps([first, gone, seqs, o.newest[0]]))
""")
    first, gone, seqs, newest = got
    # 13..20 are on flash, unacknowledged: the same readings, the same
    # order, and the journal's merge mark (the oldest stands for 11..13).
    assert first == [20, 13, 11, 8] and gone
    assert seqs == list(range(13, 21)) and newest == 21


def test_a_fully_acknowledged_0_2_ring_keeps_its_newest_reading(tmp_path: Path) -> None:
    # Nothing to send, but the sequence must continue from the ring's
    # newest reading: neither reused nor skipped.
    got = run(tmp_path, RING_0_2 + """
write_ring(path, 8, range(1, 12))
o = Outbox(path, 64, acked=11)
print(json.dumps([list(o.newest), len(o), o.peek()]))
""")
    assert got == [[11, 110, 11], 0, None]


def test_a_migration_cut_by_power_loss_starts_again_from_the_ring(tmp_path: Path) -> None:
    got = run(tmp_path, RING_0_2 + """
import os
write_ring(path, 8, range(1, 7))
hal.tear_next_write(40)
try:
    Outbox(path, 64, acked=2)
    cut = False
except PowerCut:
    cut = True
o = Outbox(path, 64, acked=2)
seqs = []
while o.peek():
    seqs.append(o.peek()[0])
    o.pop(o.peek()[0])
print(json.dumps([cut, seqs, o.newest[0]]))
""")
    assert got == [True, [3, 4, 5, 6], 6]


def test_readings_merged_away_do_not_come_back_after_a_restart(tmp_path: Path) -> None:
    # Full and merging: the merged-away readings are still in their segment
    # on flash. The coordinator comes back, takes the merged reading, and
    # the power fails before the journal is saved again: after the restart
    # the merged reading goes out again byte for byte (a "duplicate"), and
    # none of the readings merged away into it reappears.
    got = run(tmp_path, """
o = Outbox(path, 8)
for s in range(1, 21):
    if o.push(s, msg(s), s, 0) is not None:
        saved = o.state()  # the firmware saves the journal after a merge
sent = o.peek()
o.pop(sent[0])
o.close()
o = Outbox(path, 8, saved["acked"], saved["covered_from"])
again = o.peek()
print(json.dumps([saved, sent[0], sent[2], again[0], again[2], len(o)]))
""")
    saved, seq, first, again_seq, again_first, pending = got
    assert saved == {"acked": 0, "covered_from": 1}
    assert [seq, first] == [13, 1] and [again_seq, again_first] == [13, 1]
    assert pending == 8


def test_a_merged_reading_delivered_before_a_power_cut_goes_out_again_byte_for_byte(tmp_path: Path) -> None:
    # The journal was saved when reading 20 was the tail (acked 19, cover
    # 20). Then 20 was delivered and the next reading stood alone; a new
    # reading was written and the power failed before the next save. The
    # newest record says its floor reading (21) stood for itself, so it is
    # not re-signed as a merge of 20..21, which the coordinator would refuse
    # as "stale" (it holds 21 as sent).
    got = run(tmp_path, """
o = Outbox(path, 64)
for s in range(1, 20):
    o.push(s, msg(s), s, 0)
    o.pop(s)
o.push(20, msg(20), 20, 0)
o.push(21, msg(21), 21, 0)
saved = o.state()
o.pop(20)
o.push(22, msg(22), 22, 0)
o.close()
o = Outbox(path, 64, saved["acked"], saved["covered_from"])
out = []
while o.peek():
    out.append([o.peek()[0], o.peek()[2]])
    o.pop(o.peek()[0])
print(json.dumps([saved, out]))
""")
    saved, out = got
    assert saved == {"acked": 19, "covered_from": 20}
    assert out == [[21, 21], [22, 22]]


def test_after_merges_the_restart_resends_the_merged_reading_with_the_same_merge(tmp_path: Path) -> None:
    got = run(tmp_path, """
o = Outbox(path, 4)
for s in range(1, 11):
    o.push(s, msg(s), s, 0)
journal = o.state()  # saved after the last merge: acked 0, covered 1
sent = o.peek()
o.pop(sent[0])  # the coordinator took 7 (merged from 1), then the power failed
o.close()
o = Outbox(path, 4, journal["acked"], journal["covered_from"])
print(json.dumps([[sent[0], sent[2]], [o.peek()[0], o.peek()[2]], len(o)]))
""")
    sent, again, pending = got
    assert sent == again == [7, 1] and pending == 4
