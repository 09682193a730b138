"""The demo's conductor (microgrid/conductor.py): simulated time moves only
when every participant is done with the instant; coordinator tasks wake in
a fixed order; a MicroPython meter steps with it through the shim."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from microgrid.conductor import METER_SHIM, Conductor
from microgrid.flash.unix_port import find_micropython

REPO = Path(__file__).resolve().parent.parent
START = 1_800_000_000.0


def test_tasks_wake_in_time_then_coordinator_order_and_time_waits_for_busy_work() -> None:
    async def main() -> list[tuple[str, float]]:
        cond = Conductor(START)
        await cond.open_gate()
        clock = cond.clock()
        seen: list[tuple[str, float]] = []

        async def task(name: str, rank: int, wake: float, work_s: float = 0.0) -> None:
            await cond.sleeper(rank)(wake)
            seen.append((name, clock.now() - START))
            if work_s:
                async with cond.busy():
                    # Real time spent on the "network": simulated time must
                    # not move meanwhile.
                    await asyncio.sleep(work_s)
                seen.append((name + " done", clock.now() - START))

        # Started in an order unlike the one they must wake in.
        tasks = [asyncio.ensure_future(task("b1", 1, 60)), asyncio.ensure_future(task("a2", 0, 120)),
                 asyncio.ensure_future(task("a1", 0, 60, work_s=0.3)), asyncio.ensure_future(task("c", 2, 30))]
        await cond.run(START + 200)
        cond.close_gate()
        await asyncio.gather(*tasks)
        assert cond.now == START + 200
        return seen

    seen = asyncio.run(main())
    assert seen == [("c", 30.0), ("a1", 60.0), ("a1 done", 60.0), ("b1", 60.0), ("a2", 120.0)]


def test_a_ceiling_speed_holds_simulated_time_back() -> None:
    async def main() -> float:
        cond = Conductor(START, ceiling_speed=1000.0)
        await cond.open_gate()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await cond.run(START + 300)  # 300 simulated s at most 1000x: >= 0.3 s
        cond.close_gate()
        return loop.time() - t0

    assert asyncio.run(main()) >= 0.29


def test_a_micropython_meter_steps_with_the_conductor(tmp_path: Path, mp_runtime: str) -> None:
    """The shim puts the firmware's ticks on the scripted HAL's virtual
    time: the meter's sleeps are exact, it is never granted past the next
    coordinator wake-up, and the coordinator sees the clock at its wake-up
    only after the meter asked to sleep past it."""
    (tmp_path / "hal_script.json").write_text('{"virtual_time": true}')
    (tmp_path / "main.py").write_text(
        "from edge import ticks\n"
        "t0 = ticks.ticks_ms()\n"
        "for i in range(3):\n"
        "    ticks.sleep_ms(60000)\n"
        "    print('at', ticks.since(t0))\n")

    async def main() -> tuple[str, list[int], list[tuple[float, list[int]]]]:
        cond = Conductor(START)
        port = await cond.open_gate()
        (tmp_path / "demo_main.py").write_text(METER_SHIM % {"name": "m1", "port": port})
        grants: list[int] = []
        assert cond._gate is not None
        gate_grant = cond._gate.grant

        def record(addr: object, ms: int) -> None:
            grants.append(ms)
            gate_grant(addr, ms)
        cond._gate.grant = record  # type: ignore[method-assign]
        env = dict(os.environ, MICROPYPATH=str(REPO))
        proc = subprocess.Popen([find_micropython(), "demo_main.py"], cwd=str(tmp_path), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cond.add_meter("m1", lambda: proc.poll() is None)
        woke: list[tuple[float, list[int]]] = []

        async def coordinator() -> None:
            await cond.sleeper(0)(90)
            woke.append((cond.now - START, list(grants)))

        task = asyncio.ensure_future(coordinator())
        await cond.run(START + 400)
        await task
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        cond.close_gate()
        return out, grants, woke

    out, grants, woke = asyncio.run(main())
    assert [line for line in out.splitlines() if line.startswith("at")] == ["at 60000", "at 120000", "at 180000"], out
    # The meter ran a whole step (300 s) before the coordinator's instant
    # (90 s) came: all its readings up to then were made first.
    assert woke == [(90.0, [300000])]
    assert grants == [300000]


@pytest.mark.parametrize("bad", [b"hello", b"W m1 notanumber", b"X m1 5", b"W ghost 10"])
def test_hostile_datagrams_are_ignored_and_the_meter_still_steps(bad: bytes) -> None:
    async def main() -> list[bytes]:
        cond = Conductor(START)
        port = await cond.open_gate()
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        class Meter(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.append(data)

        transport, _ = await loop.create_datagram_endpoint(Meter, remote_addr=("127.0.0.1", port))
        cond.add_meter("m1", lambda: not got)  # ends once answered
        transport.sendto(bad)
        transport.sendto(b"W m1 5000")
        await cond.run(START + 10)
        transport.close()
        cond.close_gate()
        return got

    assert asyncio.run(main()) == [b"G 10000"]
