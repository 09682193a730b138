"""The coordinator as an OCPP central system (CSMS) for the household's EV
chargers: OCPP 1.6J and 2.0.1 with the maintained `ocpp` library over a
`websockets` server.

- Transport and admission (this module): a charge point connects to
  ws://HOST:PORT/<path>/<its id> offering the subprotocol "ocpp1.6" or
  "ocpp2.0.1". The handshake is refused with 404 for an id not listed in
  [ocpp.chargers] (the 1.6J specification's answer to an unknown
  identity) and 401 without HTTP Basic credentials whose user is that id
  and whose password is the configured one (OCPP security profile 1);
  after 10 failed attempts for one id from one address, 429 for a minute
  of the clock.
  Messages larger than max_message_bytes close the connection.
- Protocol (the `ocpp` library): schema validation of every message both
  ways, CallError answers to malformed or unknown calls.
- Bookkeeping (ocpp_sessions.py): sessions from StartTransaction /
  StopTransaction (1.6) and TransactionEvent (2.0.1), meter values from
  MeterValues and the meter data inside those.
- Control: `ChargerLink.set_limit` sends SetChargingProfile
  (ocpp_profiles.py) and reports the charger's answer.

Callbacks (`subscribe`) run before the charge point gets its answer, so
a value the coordinator failed to hand on is not acknowledged as taken;
their exceptions are logged and never reach the charger. A callback must
not wait for a command to the same charger (its answer is read by the
loop that is waiting for the callback).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import logging
import math
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as res16
from ocpp.v16 import datatypes as dt16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import AuthorizationStatus, RegistrationStatus
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as res201
from ocpp.v201 import datatypes as dt201
from ocpp.v201.enums import Action as Action201
from ocpp.v201.enums import AuthorizationStatusEnumType, RegistrationStatusEnumType
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import ocpp_profiles
from .interface import (
    ChargingSession,
    DeviceRejected,
    DeviceUnavailable,
    LimitResult,
    MeterValue,
    MeterValueCallback,
    OcppVersion,
    SessionCallback,
    SetpointError,
)
from .registers import DeviceMeasurement
from .ocpp_sessions import SessionBook, iso, parse_meter_values, parse_time
from .ocpp_settings import ChargerSettings, OcppSettings, OcppSettingsError, read_password

log = logging.getLogger("microgrid.devices.ocpp")

LOCKOUT_AFTER = 10  # failed handshakes for one id before it is locked out
LOCKOUT_S = 60.0


class ChargerLink:
    """One configured charge point: its connection (when connected), its
    sessions and meter values, and the commands to it. Implements
    `EvCharger` (interface.py)."""

    def __init__(self, central: "OcppCentral", settings: ChargerSettings) -> None:
        self.central = central
        self.settings = settings
        self.charger_id = settings.charger_id
        self.version: OcppVersion = "2.0.1"
        self._cp: ChargePoint16 | ChargePoint201 | None = None
        self._ws: ServerConnection | None = None
        self.boot: dict[str, Any] = {}  # what its BootNotification said (vendor, model, firmware)
        self.status: dict[int, str] = {}  # connector/EVSE -> last StatusNotification
        self.limit: tuple[float, float | None, int] | None = None  # (W, until, evse) in force
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._cp is not None

    def sessions(self, active_only: bool = False) -> Sequence[ChargingSession]:
        return self.central.book.sessions(self.charger_id, active_only)

    def meter_values(self, since: float | None = None) -> Sequence[MeterValue]:
        return self.central.book.meter_values(self.charger_id, since)

    def _check(self, limit_w: float, until: float | None, evse_id: int) -> float:
        now = self.central.clock()
        if isinstance(limit_w, bool) or not isinstance(limit_w, (int, float)) or math.isnan(limit_w) or limit_w < 0:
            raise SetpointError(self.charger_id, f"limit {limit_w!r}: expected watts >= 0 (0 pauses charging)")
        if limit_w > self.settings.max_power_w:
            raise SetpointError(self.charger_id, f"limit {limit_w:.0f} W: this charger is configured for at most "
                                f"{self.settings.max_power_w:.0f} W (max_power_w)")
        if until is not None and (not math.isfinite(until) or until <= now):
            raise SetpointError(self.charger_id, f"until={until!r} is not after now ({now:.0f})")
        if isinstance(evse_id, bool) or not isinstance(evse_id, int) or not 0 <= evse_id <= 99:
            raise SetpointError(self.charger_id, f"evse_id={evse_id!r}: expected 0 (all) or a connector/EVSE number")
        return now

    async def _call(self, payload: Any, what: str) -> Any:
        cp = self._cp
        if cp is None:
            raise DeviceUnavailable(self.charger_id, f"not connected; {what} not sent")
        try:
            return await cp.call(payload, suppress=False)
        except asyncio.TimeoutError:
            raise DeviceUnavailable(self.charger_id, f"no answer to {what} within "
                                    f"{self.central.settings.response_timeout_s} s") from None
        except ConnectionClosed:
            raise DeviceUnavailable(self.charger_id, f"connection closed during {what}") from None
        except OCPPError as e:
            raise DeviceRejected(self.charger_id, f"answered {what} with {type(e).__name__}: "
                                 f"{e.description or ''}".rstrip(": ")) from None

    async def set_limit(self, limit_w: float, until: float | None = None, evse_id: int = 0) -> LimitResult:
        now = self._check(limit_w, until, evse_id)
        s = self.central.settings
        if self.version == "1.6":
            req: Any = ocpp_profiles.set_profile_16(evse_id, limit_w, now, until, s.rate_unit, s.voltage_v, s.phases)
        else:
            req = ocpp_profiles.set_profile_201(evse_id, limit_w, now, until, s.rate_unit, s.voltage_v, s.phases)
        res = await self._call(req, "SetChargingProfile")
        status = str(getattr(res.status, "value", res.status))
        if status != "Accepted":
            raise DeviceRejected(self.charger_id, f"SetChargingProfile answered {status}; the previous limit stays")
        self.limit = (float(limit_w), until, evse_id)
        self.central.book.set_limit(self.charger_id, evse_id, float(limit_w))
        log.debug("ocpp %s: limit %.0f W on %d until %s", self.charger_id, limit_w, evse_id, until)
        return LimitResult(self.charger_id, evse_id, float(limit_w), until, True, status)

    async def clear_limit(self, evse_id: int = 0) -> None:
        req: Any = ocpp_profiles.clear_profile_16(evse_id) if self.version == "1.6" else ocpp_profiles.clear_profile_201()
        res = await self._call(req, "ClearChargingProfile")
        status = str(getattr(res.status, "value", res.status))
        # "Unknown": there was no profile of ours to clear; the result is the same.
        if status not in ("Accepted", "Unknown"):
            raise DeviceRejected(self.charger_id, f"ClearChargingProfile answered {status}")
        self.limit = None
        self.central.book.set_limit(self.charger_id, evse_id, None)

    # -- from the protocol handlers --------------------------------------------

    def token_ok(self, token: str) -> bool:
        tags = self.central.settings.id_tags
        return not tags or token in tags

    async def started(self, evse_id: int, session_id: str, token: str, t: float | None, meter_start: Any) -> None:
        book = self.central.book
        start = meter_start if isinstance(meter_start, int) and not isinstance(meter_start, bool) and meter_start >= 0 \
            else None
        s = book.get(self.charger_id, session_id)
        if s is None:
            s = book.start(self.charger_id, evse_id, session_id, token, t if t is not None else self.central.clock(), start)
            log.info("ocpp %s: session %s started on %d", self.charger_id, session_id, evse_id)
        await self.central.emit_session(s)

    async def values(self, evse_id: int, raw: Any, session_id: str | None) -> None:
        values, dropped = parse_meter_values(self.charger_id, evse_id, raw, session_id)
        if dropped:
            self.central.book.dropped_samples += dropped
            log.warning("ocpp %s: %d malformed meter sample(s) dropped", self.charger_id, dropped)
        kept, s = self.central.book.add_values(values)
        for mv in kept:
            await self.central.emit_value(mv)
        if s is not None:
            await self.central.emit_session(s)

    async def stopped(self, session_id: str, t: float | None, meter_stop: Any, reason: str | None, evse_id: int = 0,
                      token: str = "") -> None:
        stop = meter_stop if isinstance(meter_stop, int) and not isinstance(meter_stop, bool) and meter_stop >= 0 \
            else None
        s = self.central.book.stop(self.charger_id, session_id, t if t is not None else self.central.clock(), stop,
                                   reason, evse_id, token)
        log.info("ocpp %s: session %s stopped (%s), %d Wh", self.charger_id, session_id, s.stop_reason, s.energy_wh)
        await self.central.emit_session(s)


class _Cp16(ChargePoint16):
    """OCPP 1.6J handlers: answers and hands what they carry to the link."""

    def __init__(self, link: ChargerLink, connection: ServerConnection, timeout: float) -> None:
        super().__init__(link.charger_id, connection, response_timeout=timeout, logger=_wire_log)
        self.link = link

    @on(Action16.boot_notification)
    async def on_boot(self, charge_point_vendor: str, charge_point_model: str, **kw: Any) -> Any:
        self.link.boot = {"vendor": charge_point_vendor, "model": charge_point_model, **kw}
        return res16.BootNotification(current_time=iso(self.link.central.clock()),
                                      interval=self.link.central.settings.heartbeat_s,
                                      status=RegistrationStatus.accepted)

    @on(Action16.heartbeat)
    async def on_heartbeat(self, **kw: Any) -> Any:
        return res16.Heartbeat(current_time=iso(self.link.central.clock()))

    @on(Action16.status_notification)
    async def on_status(self, connector_id: int, status: str, **kw: Any) -> Any:
        if 0 <= connector_id <= 99:  # bounded, whatever a charger sends
            self.link.status[connector_id] = str(status)
        return res16.StatusNotification()

    def _tag(self, id_tag: str) -> dt16.IdTagInfo:
        ok = self.link.token_ok(id_tag)
        return dt16.IdTagInfo(status=AuthorizationStatus.accepted if ok else AuthorizationStatus.invalid)

    @on(Action16.authorize)
    async def on_authorize(self, id_tag: str, **kw: Any) -> Any:
        return res16.Authorize(id_tag_info=self._tag(id_tag))

    @on(Action16.start_transaction)
    async def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kw: Any) -> Any:
        info = self._tag(id_tag)
        book = self.link.central.book
        t = parse_time(timestamp)
        repeat = book.find_repeat(self.link.charger_id, connector_id, id_tag, t, meter_start) if t is not None else None
        if repeat is not None:  # our answer was lost: the same transaction again, not a second one
            return res16.StartTransaction(transaction_id=int(repeat.session_id), id_tag_info=info)
        tid = book.next_transaction_id()
        if info.status == AuthorizationStatus.accepted:
            await self.link.started(connector_id, str(tid), id_tag, t, meter_start)
        return res16.StartTransaction(transaction_id=tid, id_tag_info=info)

    @on(Action16.meter_values)
    async def on_meter_values(self, connector_id: int, meter_value: list[Any], transaction_id: int | None = None,
                              **kw: Any) -> Any:
        await self.link.values(connector_id, meter_value, None if transaction_id is None else str(transaction_id))
        return res16.MeterValues()

    @on(Action16.stop_transaction)
    async def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
                      id_tag: str | None = None, transaction_data: list[Any] | None = None, **kw: Any) -> Any:
        sid = str(transaction_id)
        s = self.link.central.book.get(self.link.charger_id, sid)
        evse = s.evse_id if s is not None else 0
        if transaction_data:
            await self.link.values(evse, transaction_data, sid)
        await self.link.stopped(sid, parse_time(timestamp), meter_stop, None if reason is None else str(reason), evse,
                                id_tag or "")
        return res16.StopTransaction(id_tag_info=self._tag(id_tag) if id_tag else None)


class _Cp201(ChargePoint201):
    """OCPP 2.0.1 handlers."""

    def __init__(self, link: ChargerLink, connection: ServerConnection, timeout: float) -> None:
        super().__init__(link.charger_id, connection, response_timeout=timeout, logger=_wire_log)
        self.link = link

    @on(Action201.boot_notification)
    async def on_boot(self, charging_station: dict[str, Any], reason: str, **kw: Any) -> Any:
        self.link.boot = {**charging_station, "reason": reason}
        return res201.BootNotification(current_time=iso(self.link.central.clock()),
                                       interval=self.link.central.settings.heartbeat_s,
                                       status=RegistrationStatusEnumType.accepted)

    @on(Action201.heartbeat)
    async def on_heartbeat(self, **kw: Any) -> Any:
        return res201.Heartbeat(current_time=iso(self.link.central.clock()))

    @on(Action201.status_notification)
    async def on_status(self, evse_id: int, connector_id: int, connector_status: str, **kw: Any) -> Any:
        if 0 <= evse_id <= 99:
            self.link.status[evse_id] = str(connector_status)
        return res201.StatusNotification()

    def _token(self, id_token: dict[str, Any] | None) -> dt201.IdTokenInfoType | None:
        if not id_token:
            return None
        ok = self.link.token_ok(str(id_token.get("id_token", "")))
        return dt201.IdTokenInfoType(status=AuthorizationStatusEnumType.accepted if ok
                                     else AuthorizationStatusEnumType.invalid)

    @on(Action201.authorize)
    async def on_authorize(self, id_token: dict[str, Any], **kw: Any) -> Any:
        return res201.Authorize(id_token_info=self._token(id_token))

    @on(Action201.transaction_event)
    async def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                                   transaction_info: dict[str, Any], meter_value: list[Any] | None = None,
                                   evse: dict[str, Any] | None = None, id_token: dict[str, Any] | None = None,
                                   **kw: Any) -> Any:
        sid = str(transaction_info.get("transaction_id"))
        known = self.link.central.book.get(self.link.charger_id, sid)
        evse_id = int(evse["id"]) if evse and isinstance(evse.get("id"), int) else (known.evse_id if known else 0)
        token = str((id_token or {}).get("id_token", "")) or (known.id_token if known else "")
        t = parse_time(timestamp)
        info = self._token(id_token)
        if event_type == "Started" or known is None:
            await self.link.started(evse_id, sid, token, t, None)
        if meter_value:
            await self.link.values(evse_id, meter_value, sid)
        if event_type == "Ended":
            s = self.link.central.book.get(self.link.charger_id, sid)
            last = s.meter_start_wh + s.energy_wh if s is not None and s.meter_start_wh is not None else None
            await self.link.stopped(sid, t, last, transaction_info.get("stopped_reason") or trigger_reason, evse_id,
                                    token)
        return res201.TransactionEvent(id_token_info=info)

    @on(Action201.meter_values)
    async def on_meter_values(self, evse_id: int, meter_value: list[Any], **kw: Any) -> Any:
        active = [s for s in self.link.sessions(active_only=True) if s.evse_id == evse_id]
        await self.link.values(evse_id, meter_value, active[-1].session_id if active else None)
        return res201.MeterValues()


_wire_log = logging.getLogger("microgrid.devices.ocpp.wire")  # the ocpp library's per-message log
# Every message at INFO would drown the journal (a charger sends meter
# values every minute): warnings only, unless someone set a level on purpose.
for _name in ("microgrid.devices.ocpp.wire", "microgrid.devices.ocpp.ws"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


_AUTH = re.compile(r"(?i)(authorization:\s*).*")


class _RedactAuthorization(logging.Filter):
    """websockets logs every handshake header at DEBUG, the charge point's
    Basic credentials (its password, base64) among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "authorization" in msg.lower():
            record.msg, record.args = _AUTH.sub(r"\1(redacted)", msg), ()
        return True


_ws_log = logging.getLogger("microgrid.devices.ocpp.ws")
_ws_log.addFilter(_RedactAuthorization())


@dataclass
class _Attempts:
    failures: int = 0
    locked_until: float = 0.0


class OcppCentral:
    """The central system: a websockets server and one `ChargerLink` per
    configured charge point. Implements `ChargerFleet` (interface.py)."""

    def __init__(self, settings: OcppSettings, clock: Callable[[], float] = time.time,
                 secrets_dir: Path | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.clock = clock
        self.secrets_dir = secrets_dir
        self.book = SessionBook(settings.meter_values_kept, start_id=int(clock()))
        default = read_password("ocpp", settings.password, settings.password_file, secrets_dir) \
            if settings.password or settings.password_file else ""
        self._links: dict[str, ChargerLink] = {}
        self._passwords: dict[str, bytes] = {}
        for c in settings.charger_settings():
            own = read_password(f"ocpp.chargers.{c.charger_id}", c.password, c.password_file, secrets_dir) \
                if c.password or c.password_file else default
            self._passwords[c.charger_id] = own.encode()
            self._links[c.charger_id] = ChargerLink(self, c)
        # Failed handshakes by (id, address): a stranger guessing cannot lock
        # the real charge point out from its own address.
        self._attempts: dict[tuple[str, str], _Attempts] = {}
        self.refused: dict[str, int] = {}  # reason -> handshakes refused
        self._on_session: list[SessionCallback] = []
        self._on_value: list[MeterValueCallback] = []
        self._server: Server | None = None
        self.port = settings.port

    # -- ChargerFleet -------------------------------------------------------------

    def chargers(self) -> Mapping[str, ChargerLink]:
        return dict(self._links)

    def subscribe(self, on_session: SessionCallback | None = None,
                  on_meter_value: MeterValueCallback | None = None) -> None:
        if on_session is not None:
            self._on_session.append(on_session)
        if on_meter_value is not None:
            self._on_value.append(on_meter_value)

    async def emit_session(self, s: ChargingSession) -> None:
        await _emit(self._on_session, s)

    async def emit_value(self, v: MeterValue) -> None:
        await _emit(self._on_value, v)

    # -- server -------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext | None:
        """Security profile 2: TLS 1.2 or later around the same Basic
        credentials, when a certificate is configured."""
        s = self.settings
        if not s.tls_cert_file:
            return None
        base = self.secrets_dir or Path(".")
        cert, key = (p if Path(p).is_absolute() else str(base / p) for p in (s.tls_cert_file, s.tls_key_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise OcppSettingsError(f"ocpp.tls_cert_file / tls_key_file ({cert}, {key}): cannot load them: "
                                    f"{getattr(e, 'strerror', None) or e}") from None
        return ctx

    async def start(self) -> "OcppCentral":
        s = self.settings
        tls = self._tls()
        self._server = await serve(self._connection, s.host, s.port, subprotocols=s.subprotocols(),  # type: ignore[arg-type]
                                   ssl=tls,
                                   process_request=self._admit, max_size=s.max_message_bytes, max_queue=16,
                                   ping_interval=max(20, s.heartbeat_s), server_header=None,
                                   logger=_ws_log)
        self.port = self._server.sockets[0].getsockname()[1] if s.port == 0 else s.port
        log.info("ocpp central system on %s://%s:%d%s/<id> (%s)", "wss" if tls else "ws", s.host, self.port, s.path,
                 ", ".join(s.versions))
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "OcppCentral":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str, cid: str) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("ocpp: refused a charge point handshake from %s for id %r: %s",
                    _peer(connection), cid[:48], reason)
        response = connection.respond(status, f"{status.phrase}\n")
        if status == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return response

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Admission during the opening handshake: a known id on our path,
        the right credentials, not locked out."""
        path = urllib.parse.urlsplit(request.path).path
        prefix = self.settings.path.rstrip("/") + "/"
        cid = urllib.parse.unquote(path[len(prefix):]) if path.startswith(prefix) else ""
        if cid not in self._links:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "unknown charge point id", cid)
        now = self.clock()
        if len(self._attempts) > 10000:  # bounded: forget the oldest
            del self._attempts[next(iter(self._attempts))]
        attempts = self._attempts.setdefault((cid, _peer(connection).rsplit(":", 1)[0]), _Attempts())
        if attempts.locked_until > now:
            return self._refuse(connection, HTTPStatus.TOO_MANY_REQUESTS, "locked out after failed attempts", cid)
        why = _check_basic(request.headers, cid, self._passwords[cid])
        if why:
            attempts.failures += 1
            if attempts.failures >= LOCKOUT_AFTER:
                attempts.failures = 0
                attempts.locked_until = now + LOCKOUT_S
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, why, cid)
        attempts.failures = 0
        return None

    async def _connection(self, ws: ServerConnection) -> None:
        path = urllib.parse.urlsplit(ws.request.path if ws.request else "").path
        cid = urllib.parse.unquote(path[len(self.settings.path.rstrip("/") + "/"):])
        link = self._links[cid]  # _admit let only known ids through
        if ws.subprotocol not in ("ocpp1.6", "ocpp2.0.1"):
            await ws.close(1002, "an OCPP subprotocol (ocpp1.6, ocpp2.0.1) is required")
            return
        version: OcppVersion = "1.6" if ws.subprotocol == "ocpp1.6" else "2.0.1"
        timeout = self.settings.response_timeout_s
        cp: ChargePoint16 | ChargePoint201 = _Cp16(link, ws, timeout) if version == "1.6" else _Cp201(link, ws, timeout)
        old = link._ws
        link._cp, link._ws, link.version = cp, ws, version
        link.connects += 1
        if old is not None:
            await old.close(1000, "replaced by a new connection of the same charge point")
        log.info("ocpp %s connected (OCPP %s) from %s", cid, version, _peer(ws))
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            if link._ws is ws:
                link._cp = link._ws = None
                log.info("ocpp %s disconnected", cid)


def as_measurement(mv: MeterValue, version: str = "") -> DeviceMeasurement:
    """A charger's meter sample in the form the wired meters' are stored
    in (App._on_wired_measurement, store.insert_measurement): the charger's
    energy register as import, source "ocpp:<charge point id>"."""
    extra = {"evse_id": float(mv.evse_id)}
    if mv.soc_pct is not None:
        extra["ev_soc_pct"] = mv.soc_pct
    return DeviceMeasurement(device=mv.charger_id, source=f"ocpp:{mv.charger_id}",
                             model=f"ocpp-{version}" if version else "ocpp", t=mv.t, import_wh=mv.energy_wh,
                             export_wh=None, power_w=mv.power_w, extra=extra)


def _check_basic(headers: Headers, cid: str, password: bytes) -> str:
    """"" if the Authorization header carries Basic `cid`:`password`, else why not."""
    value = headers.get("Authorization")
    if value is None:
        return "no credentials (HTTP Basic, security profile 1)"
    scheme, _, data = value.partition(" ")
    if scheme.lower() != "basic":
        return f"{scheme[:16]!r} credentials; expected Basic"
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "malformed Basic credentials"
    user, sep, pw = raw.partition(b":")
    ok_user = hmac.compare_digest(user, cid.encode())
    ok_pw = hmac.compare_digest(pw, password)
    if not sep or not ok_user:
        return "Basic user is not the charge point id of the URL"
    if not ok_pw:
        return "wrong password"
    return ""


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else "?"


async def _emit(callbacks: Sequence[Callable[[Any], Any]], value: Any) -> None:
    for cb in callbacks:
        try:
            r = cb(value)
            if inspect.isawaitable(r):
                await r
        except Exception:  # noqa: BLE001 - a consumer's bug must not reach the charger
            log.exception("ocpp: a callback failed")
