"""`microgrid zone publish` and `zone list --fetch` on real OpenDHT nodes
(loopback): the record reaches the running coordinator's node through a
short-lived node of the command's own, and a coordinator's roster takes it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from microgrid.cli import main
from microgrid.coordinator.membership.gate import board_key
from microgrid.coordinator.membership.install import found_and_admit
from microgrid.coordinator.membership.roster import Roster
from microgrid.coordinator.membership.sync import fetch

from ..overlay.conftest import eventually, start_nodes, stop_all
from .helpers import DAY, T0, pub


def test_publish_reaches_the_coordinators_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bitcoinx import PrivateKey

    member = PrivateKey.from_random()

    async def go() -> None:
        nodes = await start_nodes(3)
        node = nodes[0]
        try:
            z = found_and_admit(tmp_path / "z", "elm-street", [(pub(member), "EAN-1", "F1")], T0, T0 + 700 * DAY)
            record = next((tmp_path / "z" / "records").iterdir())
            config = tmp_path / "coordinator.toml"
            config.write_text(
                f'[store]\npath = "{tmp_path / "c.db"}"\n'
                f'[overlay]\nenabled = true\nport = {node.port}\nbind4 = "127.0.0.1"\nbind6 = "::1"\n'
                "peer_rate_limit = -1\nrate_limit = -1\n"
                f'[zone]\nid = "{z.id}"\nname = "{z.name}"\nadmins = {json.dumps(z.admins)}\n'
                f'threshold = {z.threshold}\nfounded = {z.founded}\nrecords_dir = "{tmp_path / "records"}"\n')
            # Another coordinator's config: an empty records folder of its own.
            (tmp_path / "other.toml").write_text(config.read_text().replace(str(tmp_path / "records"),
                                                                            str(tmp_path / "other-records")))
            code = await asyncio.to_thread(main, ["zone", "publish", str(record), "--config", str(config)])
            out = capsys.readouterr()
            assert code == 0, out.out + out.err
            assert "published on the overlay" in out.out
            roster = Roster(z.zone())

            async def arrived() -> bool:
                await fetch(node, roster, T0 + 10)
                return roster.is_member(pub(member), T0 + 10)

            assert await eventually(arrived, timeout=20)
            for n in nodes:  # stored in the network, not only on the node it came in by
                assert len(await n.get(board_key(z.id))) == 1
            # `zone list --fetch` reads the board through a node of its own.
            code = await asyncio.to_thread(main, ["zone", "list", "--config", str(tmp_path / "other.toml"),
                                                  "--fetch", "--json"])
            out = capsys.readouterr()
            assert code == 0, out.out + out.err
            assert [r["member"] for r in json.loads(out.out)] == [pub(member).hex()]
        finally:
            await stop_all(nodes)

    asyncio.run(go())
