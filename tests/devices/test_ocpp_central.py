"""The OCPP central system against the `ocpp` library's own charge point
side (1.6J and 2.0.1) over real websockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable

import pytest
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from microgrid.coordinator.devices.interface import (
    ChargerFleet,
    ChargingSession,
    DeviceRejected,
    DeviceUnavailable,
    EvCharger,
    MeterValue,
    SetpointError,
)
from microgrid.coordinator.devices.ocpp_central import LOCKOUT_AFTER, OcppCentral, as_measurement
from microgrid.coordinator.devices.ocpp_profiles import PROFILE_ID
from microgrid.coordinator.devices.ocpp_sessions import iso, parse_time
from microgrid.coordinator.devices.ocpp_settings import OcppSettings, OcppSettingsError

from .ocpp_client import PASSWORD, basic, self_signed, station

T0 = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def central(clock: Clock, **kw: Any) -> OcppCentral:
    s = OcppSettings(enabled=True, port=0, password=PASSWORD, response_timeout_s=kw.pop("response_timeout_s", 2.0),
                     chargers={"garage": {"max_power_w": 11000}, "CP-201": {}}, **kw)
    return OcppCentral(s, clock=clock)


def sv16(value: str, measurand: str | None = None, unit: str | None = None, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"value": value, **kw}
    if measurand:
        d["measurand"] = measurand
    if unit:
        d["unit"] = unit
    return d


def test_ocpp16_session_meter_values_and_charging_profile() -> None:
    clock = Clock()
    sessions: list[ChargingSession] = []
    values: list[MeterValue] = []

    async def go() -> None:
        async with central(clock) as cs:
            assert isinstance(cs, ChargerFleet)
            cs.subscribe(on_session=sessions.append, on_meter_value=values.append)
            async with station(cs.port, "garage", "1.6") as cp:
                boot = await cp.call(c16.BootNotification(charge_point_model="Wallbox", charge_point_vendor="Acme"))
                assert boot.status == "Accepted" and boot.interval == 300
                assert parse_time(boot.current_time) == pytest.approx(T0, abs=0.001)
                link = cs.chargers()["garage"]
                assert isinstance(link, EvCharger) and link.connected and link.version == "1.6"
                assert link.boot["vendor"] == "Acme"
                await cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
                assert (await cp.call(c16.Authorize(id_tag="CARD1"))).id_tag_info["status"] == "Accepted"
                start = await cp.call(c16.StartTransaction(connector_id=1, id_tag="CARD1", meter_start=1000,
                                                           timestamp=iso(T0 + 1)))
                assert start.id_tag_info["status"] == "Accepted"
                tid = start.transaction_id
                await cp.call(c16.MeterValues(connector_id=1, transaction_id=tid, meter_value=[{
                    "timestamp": iso(T0 + 61), "sampled_value": [
                        sv16("1.5", "Energy.Active.Import.Register", "kWh"),
                        sv16("7.2", "Power.Active.Import", "kW"),
                        sv16("230.1", "Voltage", "V", phase="L1-N"),
                        sv16("41", "SoC", "Percent")]}]))
                # Sent again (our answer lost on the way): the same transaction, the samples kept once.
                again = await cp.call(c16.StartTransaction(connector_id=1, id_tag="CARD1", meter_start=1000,
                                                           timestamp=iso(T0 + 1)))
                assert again.transaction_id == tid
                await cp.call(c16.MeterValues(connector_id=1, transaction_id=tid, meter_value=[{
                    "timestamp": iso(T0 + 61), "sampled_value": [sv16("1.5", unit="kWh")]}]))
                assert len(link.meter_values()) == 1
                s = link.sessions(active_only=True)
                assert len(s) == 1 and s[0].session_id == str(tid) and s[0].started_t == T0 + 1
                assert (s[0].meter_start_wh, s[0].energy_wh, s[0].power_w) == (1000, 500, 7200.0)
                assert values[-1] == MeterValue("garage", 1, T0 + 61, 1500, 7200.0, 41.0, str(tid))
                m = as_measurement(values[-1], link.version)
                assert (m.source, m.model, m.import_wh, m.power_w, m.extra) == (
                    "ocpp:garage", "ocpp-1.6", 1500, 7200.0, {"evse_id": 1.0, "ev_soc_pct": 41.0})

                result = await link.set_limit(3680.0, until=T0 + 900)
                assert result.accepted and result.status == "Accepted"
                (p,) = cp.profiles
                assert p["connector_id"] == 0 and p["charging_profile_id"] == PROFILE_ID
                assert p["charging_profile_purpose"] == "TxDefaultProfile"
                assert p["charging_profile_kind"] == "Absolute"
                assert parse_time(p["valid_to"]) == T0 + 900
                sched = p["charging_schedule"]
                assert sched["charging_rate_unit"] == "W" and sched["duration"] == 900 + 60
                assert parse_time(sched["start_schedule"]) == T0 - 60  # a charger's clock may run behind
                assert sched["charging_schedule_period"] == [{"start_period": 0, "limit": 3680.0}]
                assert link.sessions(active_only=True)[0].limit_w == 3680.0

                await link.clear_limit()
                assert cp.cleared == [{"id": PROFILE_ID, "connector_id": 0}]

                await cp.call(c16.StopTransaction(meter_stop=2500, timestamp=iso(T0 + 3600), transaction_id=tid,
                                                  reason="EVDisconnected"))
                (done,) = link.sessions()
                assert not done.active and (done.stopped_t, done.meter_stop_wh, done.energy_wh) == (T0 + 3600, 2500, 1500)
                assert done.stop_reason == "EVDisconnected"
                assert sessions[-1] == done and sessions[0].active
            await asyncio.sleep(0.05)
            assert not cs.chargers()["garage"].connected
            with pytest.raises(DeviceUnavailable, match="not connected"):
                await cs.chargers()["garage"].set_limit(1000.0)

    run(go())


def test_ocpp201_transaction_events_meter_values_and_charging_profile() -> None:
    clock = Clock()
    values: list[MeterValue] = []

    async def go() -> None:
        async with central(clock, rate_unit="A", phases=3, voltage_v=230.0) as cs:
            cs.subscribe(on_meter_value=values.append)
            async with station(cs.port, "CP-201", "2.0.1") as cp:
                boot = await cp.call(c201.BootNotification(
                    charging_station={"model": "Wallbox2", "vendor_name": "Acme"}, reason="PowerUp"))
                assert boot.status == "Accepted"
                link = cs.chargers()["CP-201"]
                assert link.version == "2.0.1"
                mv = lambda t, wh, w: [{"timestamp": iso(t), "sampled_value": [  # noqa: E731
                    {"value": wh, "measurand": "Energy.Active.Import.Register",
                     "unit_of_measure": {"unit": "kWh", "multiplier": 0}},
                    {"value": w, "measurand": "Power.Active.Import", "phase": "L1"},
                    {"value": w, "measurand": "Power.Active.Import", "phase": "L2"}]}]
                r = await cp.call(c201.TransactionEvent(
                    event_type="Started", timestamp=iso(T0), trigger_reason="Authorized", seq_no=0,
                    transaction_info={"transaction_id": "tx-1"}, evse={"id": 1, "connector_id": 1},
                    id_token={"id_token": "CARD9", "type": "ISO14443"}, meter_value=mv(T0, 10.0, 0.0)))
                assert r.id_token_info["status"] == "Accepted"
                await cp.call(c201.TransactionEvent(
                    event_type="Updated", timestamp=iso(T0 + 60), trigger_reason="MeterValuePeriodic", seq_no=1,
                    transaction_info={"transaction_id": "tx-1"}, meter_value=mv(T0 + 60, 10.25, 3000.0)))
                (s,) = link.sessions(active_only=True)
                assert (s.evse_id, s.id_token, s.meter_start_wh, s.energy_wh, s.power_w) == (1, "CARD9", 10000, 250, 6000.0)

                clock.t = T0 + 100
                await link.set_limit(6900.0, until=T0 + 100 + 1800, evse_id=1)
                (p,) = cp.profiles
                assert p["evse_id"] == 1 and p["id"] == PROFILE_ID and p["charging_profile_purpose"] == "TxDefaultProfile"
                (sched,) = p["charging_schedule"]
                assert sched["charging_rate_unit"] == "A" and sched["duration"] == 1800 + 60
                assert sched["charging_schedule_period"] == [{"start_period": 0, "limit": 10.0, "number_phases": 3}]
                assert parse_time(sched["start_schedule"]) == T0 + 100 - 60
                assert parse_time(p["valid_to"]) == T0 + 1900 and "valid_from" not in p

                # MeterValues outside a TransactionEvent belong to the EVSE's active session.
                await cp.call(c201.MeterValues(evse_id=1, meter_value=mv(T0 + 120, 10.5, 3200.0)))
                assert link.sessions()[0].energy_wh == 500
                await cp.call(c201.TransactionEvent(
                    event_type="Ended", timestamp=iso(T0 + 200), trigger_reason="EVCommunicationLost", seq_no=2,
                    transaction_info={"transaction_id": "tx-1", "stopped_reason": "EVDisconnected"},
                    meter_value=mv(T0 + 200, 11.0, 0.0)))
                (s,) = link.sessions()
                assert not s.active and s.energy_wh == 1000 and s.stop_reason == "EVDisconnected"
                assert [v.energy_wh for v in values] == [10000, 10250, 10500, 11000]
                await link.clear_limit()
                assert cp.cleared == [{"charging_profile_id": PROFILE_ID}]

    run(go())


def test_admission_unknown_ids_bad_credentials_lockout(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.DEBUG)
    for name in ("microgrid.devices.ocpp.ws", "microgrid.devices.ocpp.wire"):  # quiet by default; all of it here
        caplog.set_level(logging.DEBUG, logger=name)

    async def status_of(port: int, cid: str, headers: dict[str, str], sub: str = "ocpp1.6") -> int:
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"ws://127.0.0.1:{port}/ocpp/{cid}", subprotocols=[sub],  # type: ignore[list-item]
                               additional_headers=headers, open_timeout=5):
                pass
        return e.value.response.status_code

    async def go() -> None:
        async with central(clock) as cs:
            p = cs.port
            assert await status_of(p, "garage", basic("garage", PASSWORD), sub="ocpp0.9") == 400
            assert await status_of(p, "stranger", basic("stranger", PASSWORD)) == 404
            assert await status_of(p, "garage", {}) == 401
            assert await status_of(p, "garage", basic("garage", "wrong-password-000")) == 401
            assert await status_of(p, "garage", basic("CP-201", PASSWORD)) == 401  # someone else's id
            assert await status_of(p, "garage", {"Authorization": "Basic !!notbase64"}) == 401
            assert await status_of(p, "garage", {"Authorization": "Bearer abc"}) == 401
            assert cs.refused == {"unknown charge point id": 1, "no credentials (HTTP Basic, security profile 1)": 1,
                                  "wrong password": 1, "Basic user is not the charge point id of the URL": 1,
                                  "malformed Basic credentials": 1, "'Bearer' credentials; expected Basic": 1}
            # Guessing: after LOCKOUT_AFTER failures even the right password waits.
            for _ in range(LOCKOUT_AFTER - 5):
                await status_of(p, "garage", basic("garage", "guess-guess-guess"))
            assert await status_of(p, "garage", basic("garage", PASSWORD)) == 429
            assert not cs.chargers()["garage"].connected
            clock.t += 61
            async with station(p, "garage") as cp:
                await cp.call(c16.Heartbeat())
                assert cs.chargers()["garage"].connected
            # The other charger was never locked.
            async with station(p, "CP-201", "2.0.1") as cp:
                await cp.call(c201.Heartbeat())
        server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
        assert "Authorization: (redacted)" in server_log  # websockets' debug log of the handshake
        for secret in (PASSWORD, "guess-guess-guess", basic("garage", PASSWORD)["Authorization"].split()[1]):
            assert secret not in server_log

    run(go())


def test_limits_checked_refused_unanswered_and_hostile_input() -> None:
    clock = Clock()

    async def go() -> None:
        async with central(clock, response_timeout_s=0.5) as cs:
            async with station(cs.port, "garage", "1.6") as cp:
                link = cs.chargers()["garage"]
                await cp.call(c16.Heartbeat())
                for bad, why in ((-1.0, "expected watts >= 0"), (math.nan, "expected watts"),
                                 (11001.0, "at most 11000 W"), (True, "expected watts")):
                    with pytest.raises(SetpointError, match=why):
                        await link.set_limit(bad)  # type: ignore[arg-type]
                for bad_until in (T0, math.inf, math.nan):
                    with pytest.raises(SetpointError, match="not after now"):
                        await link.set_limit(1000.0, until=bad_until)
                assert cp.profiles == []

                await link.set_limit(2000.0)
                cp.answer = "Rejected"
                with pytest.raises(DeviceRejected, match="answered Rejected; the previous limit stays"):
                    await link.set_limit(5000.0)
                assert link.limit == (2000.0, None, 0)
                cp.answer, cp.delay_s = "Accepted", 1.5
                with pytest.raises(DeviceUnavailable, match="no answer to SetChargingProfile within 0.5 s"):
                    await link.set_limit(4000.0)
                assert link.limit == (2000.0, None, 0)
                cp.delay_s = 0.0
                await asyncio.sleep(1.2)  # the late answer arrives and is ignored
                assert (await link.set_limit(4000.0)).limit_w == 4000.0

                # Hostile meter values: the bad samples are dropped and counted, the good one kept.
                start = await cp.call(c16.StartTransaction(connector_id=2, id_tag="X", meter_start=0, timestamp=iso(T0)))
                await cp.call(c16.MeterValues(connector_id=2, transaction_id=start.transaction_id, meter_value=[
                    {"timestamp": iso(T0 + 10), "sampled_value": [sv16("abc"), sv16("NaN", "Power.Active.Import")]},
                    {"timestamp": "yesterday", "sampled_value": [sv16("5")]},
                    {"timestamp": iso(T0 + 20), "sampled_value": [sv16("-5", unit="Wh"), sv16("1e30", "Power.Active.Import"),
                                                                 sv16("150", "SoC")]},
                    {"timestamp": iso(T0 + 30), "sampled_value": [sv16("42", unit="Wh")]}]))
                assert cs.book.dropped_samples == 6
                assert [(v.t, v.energy_wh) for v in link.meter_values(since=T0)] == [(T0 + 30, 42)]
                assert link.sessions(active_only=True)[0].energy_wh == 42
                # A payload the schema refuses gets a CallError; the connection stays.
                raw = cp._connection
                await raw.send('[2,"x1","MeterValues",{"connectorId":"one"}]')
                await raw.send("not json at all")
                assert (await cp.call(c16.Heartbeat())).current_time

            # An oversized frame closes that connection only.
            async with station(cs.port, "garage", "1.6") as cp:
                with pytest.raises(ConnectionClosed):
                    await cp._connection.send("[2,\"big\",\"DataTransfer\",{\"vendorId\":\"" + "x" * 70000 + "\"}]")
                    await cp._connection.recv()
            async with station(cs.port, "garage", "1.6") as cp:
                assert (await cp.call(c16.Heartbeat())).current_time

    run(go())


def test_a_callback_failure_does_not_reach_the_charger() -> None:
    clock = Clock()

    def boom(_: Any) -> None:
        raise RuntimeError("store is down")

    async def go() -> None:
        async with central(clock) as cs:
            cs.subscribe(on_session=boom, on_meter_value=boom)
            async with station(cs.port, "garage", "1.6") as cp:
                r = await cp.call(c16.StartTransaction(connector_id=1, id_tag="X", meter_start=5, timestamp=iso(T0)))
                assert r.id_tag_info["status"] == "Accepted"
                assert len(cs.chargers()["garage"].sessions()) == 1

    run(go())


def test_security_profile_2_over_tls(tmp_path: Path) -> None:
    clock = Clock()
    cert, key = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def go() -> None:
        s = OcppSettings(enabled=True, port=0, password=PASSWORD, chargers={"garage": {}}, tls_cert_file=cert.name,
                         tls_key_file=key.name)
        async with OcppCentral(s, clock=clock, secrets_dir=tmp_path) as cs:
            async with station(cs.port, "garage", "2.0.1", tls=trusting) as cp:
                assert (await cp.call(c201.Heartbeat())).current_time
                assert cs.chargers()["garage"].connected
            with pytest.raises(ssl.SSLCertVerificationError):  # a charger that does not trust the certificate
                async with station(cs.port, "garage", "2.0.1", tls=ssl.create_default_context()):
                    pass
            with pytest.raises(InvalidMessage):  # plain ws:// to the TLS port: no HTTP answer
                async with station(cs.port, "garage", "2.0.1"):
                    pass
            with pytest.raises(InvalidStatus):  # TLS does not replace the password
                async with station(cs.port, "garage", "2.0.1", password="not-the-password-00", tls=trusting):
                    pass
        with pytest.raises(OcppSettingsError, match="cannot load them"):
            await OcppCentral(replace(s, tls_key_file="missing.key"), clock=clock, secrets_dir=tmp_path).start()

    run(go())


@pytest.mark.parametrize("kw, message", [
    (dict(enabled=True, password="0123456789abcdef"), "none listed"),
    (dict(password="short", chargers={"a": {}}), "16 to 40"),
    (dict(chargers={"a": {}}), "password_file: missing"),
    (dict(password="0123456789abcdef", chargers={"bad/id": {}}), "charge point id"),
    (dict(password="0123456789abcdef", versions=["1.5"]), "versions"),
    (dict(password="0123456789abcdef", rate_unit="kW"), "rate_unit"),
    (dict(password="0123456789abcdef", chargers={"a": {"max_power_w": "lots"}}), "expected float"),
    (dict(password="0123456789abcdef", password_file="x"), "not both"),
    (dict(password="0123456789abcdef", tls_cert_file="c.pem"), "set both"),
])
def test_settings_errors_name_the_key(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(OcppSettingsError, match=message):
        OcppSettings(**kw).validate()


def test_the_session_book_stays_bounded() -> None:
    from microgrid.coordinator.devices.ocpp_sessions import SessionBook

    book = SessionBook(keep=10, keep_sessions=3)
    for i in range(5):
        book.start("cp", 1, str(i), "t", T0 + i, 0)
    assert [s.session_id for s in book.sessions()] == ["2", "3", "4"]  # all active: the oldest went
    book.stop("cp", "3", T0 + 10, 5, None)
    book.start("cp", 1, "5", "t", T0 + 11, 0)
    assert [s.session_id for s in book.sessions()] == ["2", "4", "5"]  # the finished one went first
    values = [MeterValue("cp", 1, T0 + i, i, None, None, "5") for i in range(30)]
    kept, _ = book.add_values(values)
    assert len(kept) == 30 and len(book.meter_values()) == 10


def test_version_negotiation_follows_the_configured_preference() -> None:
    clock = Clock()

    async def go() -> None:
        async with central(clock) as cs:
            async with connect(f"ws://127.0.0.1:{cs.port}/ocpp/garage", subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
                               additional_headers=basic("garage", PASSWORD)) as ws:
                assert ws.subprotocol == "ocpp2.0.1"  # ours first: 2.0.1 preferred
        async with central(clock, versions=["1.6"]) as cs:
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://127.0.0.1:{cs.port}/ocpp/garage", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                   additional_headers=basic("garage", PASSWORD)):
                    pass
            assert e.value.response.status_code == 400

    run(go())
