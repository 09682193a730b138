"""The scripted hardware layer under the MicroPython unix port: chosen
automatically, replays recorded bytes and edges, records writes."""

from __future__ import annotations

import json

from ..conftest import run_micropython


def mp_json(script: str) -> object:
    out = run_micropython(script)
    return json.loads(out.strip().splitlines()[-1])


def test_unix_port_selects_the_scripted_backend_although_machine_imports() -> None:
    got = mp_json("import json, machine\nfrom edge import hal\nprint(json.dumps([hal.BACKEND, hal.IS_BOARD]))")
    assert got == ["scripted", False]


def test_uart_answers_each_write_with_the_next_recorded_reply_and_records_writes() -> None:
    got = mp_json(
        """
import json
from edge import hal
hal.load({"uart": {"1": {"replies": ["01 02", None, "ff"]}}})
u = hal.uart({"id": 1})
out = []
for w in (b"a", b"b", b"c", b"d"):
    u.write(w)
    r = u.read(8)
    out.append(r.hex() if r else None)
print(json.dumps([out, [w.decode() for w in u.writes]]))
"""
    )
    assert got == [["0102", None, "ff", None], ["a", "b", "c", "d"]]


def test_pin_irq_fires_at_recorded_edge_times_on_the_virtual_clock() -> None:
    got = mp_json(
        """
import json
from edge import hal
hal.load({"virtual_time": True, "pin": {"4": {"edges": [[10, 0], [40, 1], [100, 0], [130, 1]]}}})
p = hal.pin(4, hal.PIN_IN)
seen = []
p.irq(lambda pin: seen.append(hal.ticks_ms()), hal.IRQ_FALLING)
hal.sleep_ms(50)
first = list(seen)
hal.advance(1000)
print(json.dumps([first, seen, p.value()]))
"""
    )
    assert got == [[10], [10, 100], 1]


def test_a_torn_region_write_keeps_only_the_prefix(tmp_path) -> None:
    path = tmp_path / "region"
    got = mp_json(
        f"""
import json
from edge import hal
from edge.hal.region import Region, PowerCut
r = Region({str(path)!r}, 16)
r.write(0, b"A" * 16)
hal.tear_next_write(5, garbage=0x5a)
try:
    r.write(0, b"B" * 16)
    print("not torn")
except PowerCut:
    pass
print(json.dumps(r.read(0, 16).decode()))
"""
    )
    assert got == "BBBBBZ" + "A" * 10
