"""Registering the meter's public key with the coordinator over CoAP
(POST /devices with the installer token, or over OSCORE with the
installer's context, which also brings the meter's own OSCORE context) and
confirming it (GET /devices?id=...). The coordinator side is
coordinator/ingest/devices.py and coordinator/link/guard.py.

Every failure becomes a FlashError naming the step, what the coordinator
(or the network) said, and what the installer does about it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from microgrid.shared import cbor

from .errors import FlashError

CBOR_FORMAT = 60
DEFAULT_TIMEOUT_S = 10.0
# The Microgrid-Token option (coordinator/ingest/access.py TOKEN_OPTION).
TOKEN_OPTION = 65002


@dataclass(frozen=True)
class Registration:
    device_id: str
    name: str
    public_key: bytes
    registered_at: str
    created: bool = False


def coap_uri(host: str, port: int, path: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"coap://{host}:{port}/{path}"


def _unreachable(step: str, uri: str, why: str) -> FlashError:
    return FlashError(step, f"coordinator at {uri} is unreachable: {why}",
                      "check that the coordinator runs (systemctl status microgrid-coordinator) and that this laptop "
                      "reaches it at that address; give the address with --coordinator HOST:PORT")


async def _request(step: str, message: aiocoap.Message, uri: str, timeout: float) -> aiocoap.Message:
    context = await aiocoap.Context.create_client_context()
    try:
        return await asyncio.wait_for(context.request(message).response, timeout)
    except asyncio.TimeoutError:
        raise _unreachable(step, uri, f"no answer within {timeout:g} s") from None
    except aiocoap.error.Error as e:
        if isinstance(e.__cause__, ConnectionRefusedError):
            why = "nothing listens on that UDP port (connection refused)"
        elif isinstance(e.__cause__, OSError) and e.__cause__.strerror:
            why = e.__cause__.strerror
        else:
            why = str(e) if str(e) and str(e) != type(e).__name__ else f"{type(e).__name__} (host unknown or network down)"
        raise _unreachable(step, uri, why) from None
    except OSError as e:
        raise _unreachable(step, uri, e.strerror or str(e)) from None
    finally:
        await context.shutdown()


def _decode(step: str, response: aiocoap.Message, uri: str, created: bool = False) -> Registration:
    try:
        doc: Any = cbor.loads(response.payload)
        return Registration(str(doc["device_id"]), str(doc["name"]), bytes(doc["public_key"]),
                            str(doc["registered_at"]), created)
    except (ValueError, KeyError, TypeError) as e:
        raise FlashError(step, f"{uri} answered {response.code} with a body that is not a device record ({e})",
                         "the address may be another service: check --coordinator HOST:PORT") from None


def register(host: str, port: int, public_key: bytes, name: str, token: str,
             timeout: float = DEFAULT_TIMEOUT_S, step: str = "register") -> Registration:
    uri = coap_uri(host, port, "devices")
    body = cbor.dumps({"public_key": public_key, "name": name, "token": token})
    message = aiocoap.Message(code=Code.POST, uri=uri, payload=body, content_format=CBOR_FORMAT)
    response = asyncio.run(_request(step, message, uri, timeout))
    text = response.payload.decode(errors="replace")
    if response.code in (Code.CREATED, Code.CHANGED):
        return _decode(step, response, uri, created=response.code == Code.CREATED)
    if response.code == Code.UNAUTHORIZED:
        raise FlashError(step, f"the coordinator refused the installer token (4.01 {text})",
                         "use the token in the coordinator's config ([ingest] installer_token): "
                         "--token-file FILE or MICROGRID_INSTALLER_TOKEN")
    if response.code == Code.FORBIDDEN:
        raise FlashError(step, f"the coordinator does not accept registrations over CoAP (4.03 {text})",
                         "the operator sets [ingest] installer_token in the coordinator's config and restarts it, or "
                         f"registers the key by hand: microgrid coordinator register-device --pubkey {public_key.hex()}")
    if response.code == Code.NOT_FOUND:
        raise FlashError(step, f"{uri} does not exist (4.04): the coordinator predates device registration",
                         "update the coordinator, or register by hand with `microgrid coordinator register-device`")
    raise FlashError(step, f"the coordinator answered {response.code}: {text}",
                     "see the coordinator's log (journalctl -u microgrid-coordinator) for the reason")


def lookup(host: str, port: int, device_id: str, timeout: float = DEFAULT_TIMEOUT_S,
           step: str = "check registration", token: str | None = None,
           installer_context: Path | None = None) -> Registration | None:
    """The coordinator's record of `device_id`, or None if it has none.
    The coordinator shows registrations only to those with credentials:
    the installer's OSCORE context, or the installer token in the
    Microgrid-Token option (coordinator/ingest/access.py)."""
    uri = coap_uri(host, port, "devices")
    if installer_context is not None:
        response = asyncio.run(_protected_request(step, uri, b"", installer_context, timeout,
                                                  code=Code.GET, query=f"?id={device_id}"))
    else:
        message = aiocoap.Message(code=Code.GET, uri=uri + f"?id={device_id}")
        if token:
            from aiocoap.optiontypes import OpaqueOption

            message.opt.add_option(OpaqueOption(TOKEN_OPTION, token.encode()))
        response = asyncio.run(_request(step, message, uri, timeout))
    if response.code == Code.UNAUTHORIZED:
        raise FlashError(step, f"the coordinator shows registrations only with credentials (4.01 "
                               f"{response.payload.decode(errors='replace')})",
                         "give the installer's context (--installer-context DIR) or token "
                         "(--token-file FILE or MICROGRID_INSTALLER_TOKEN)")
    if response.code == Code.CONTENT:
        return _decode(step, response, uri)
    if response.code == Code.NOT_FOUND and response.opt.content_format is None and b"not registered" in response.payload:
        return None
    raise FlashError(step, f"the coordinator answered {response.code}: {response.payload.decode(errors='replace')}",
                     "update the coordinator (it needs GET /devices), or check the address with --coordinator HOST:PORT")


def register_protected(host: str, port: int, public_key: bytes, name: str, installer_context: Path,
                       timeout: float = DEFAULT_TIMEOUT_S, step: str = "register") -> tuple[Registration, dict[str, str]]:
    """POST /devices over OSCORE with the installer's context (made by
    `microgrid coordinator installer-context`): no token, request and
    answer encrypted, and the answer carries the meter's new OSCORE context
    (master secret included: the caller writes it to the board, never to
    the screen)."""
    uri = coap_uri(host, port, "devices")
    body = cbor.dumps({"public_key": public_key, "name": name, "oscore": True})
    response = asyncio.run(_protected_request(step, uri, body, installer_context, timeout))
    text = response.payload.decode(errors="replace")
    if response.code in (Code.CREATED, Code.CHANGED):
        registration = _decode(step, response, uri, created=response.code == Code.CREATED)
        doc: Any = cbor.loads(response.payload).get("oscore")
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("secret", "salt", "sender_id", "recipient_id")):
            raise FlashError(step, f"{uri} registered the meter but sent no OSCORE context",
                             "update the coordinator (it needs coordinator/link), then flash again")
        return registration, {k: str(doc[k]) for k in ("secret", "salt", "sender_id", "recipient_id")}
    if response.code == Code.UNAUTHORIZED:
        raise FlashError(step, f"the coordinator did not accept the installer context {installer_context} (4.01 {text})",
                         "ask the operator for a current one: microgrid coordinator installer-context NAME --out DIR")
    if response.code == Code.TOO_MANY_REQUESTS:
        raise FlashError(step, f"the coordinator locked this address out after failed registrations (4.29 {text})",
                         "wait, then flash again with a valid installer context")
    raise FlashError(step, f"the coordinator answered {response.code}: {text}",
                     "see the coordinator's log (journalctl -u microgrid-coordinator) for the reason")


async def _protected_request(step: str, uri: str, body: bytes, installer_context: Path, timeout: float,
                             code: Code = Code.POST, query: str = "") -> aiocoap.Message:
    from aiocoap.oscore import FilesystemSecurityContext

    try:
        security = FilesystemSecurityContext(str(installer_context))
    except Exception as e:  # noqa: BLE001 - a missing or broken directory, a lock held by another flash
        raise FlashError(step, f"cannot use the installer context {installer_context}: {e}",
                         "give the directory `microgrid coordinator installer-context` made (one flash at a time)") from None
    context = await aiocoap.Context.create_client_context()
    context.client_credentials[":installer"] = security
    context.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = ":installer"
    try:
        if code == Code.POST:
            message = aiocoap.Message(code=code, uri=uri, payload=body, content_format=CBOR_FORMAT)
        else:
            message = aiocoap.Message(code=code, uri=uri + query)
        return await asyncio.wait_for(context.request(message).response, timeout)
    except asyncio.TimeoutError:
        raise _unreachable(step, uri, f"no answer within {timeout:g} s") from None
    except aiocoap.error.Error as e:
        raise _unreachable(step, uri, str(e) or type(e).__name__) from None
    except OSError as e:
        raise _unreachable(step, uri, e.strerror or str(e)) from None
    finally:
        await context.shutdown()
        security._destroy()  # persists its sequence number, releases the lock
