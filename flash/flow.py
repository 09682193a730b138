"""`microgrid flash` and `microgrid flash --check`, step by step.

flash:  [verify firmware, check config, write firmware]   only with --firmware
        connect          what is on the target now (inventory)
        check config     edge/config.py rules + the board's pin map
        build image      main.py + config when the firmware is frozen into the
                         MicroPython binary (boards; dir: with --frozen),
                         else edge/ and shared/ compiled with mpy-cross
        write files      only what differs; key, state, outbox untouched
        device key       made on the board (kept if present), or --host-key
        register         POST /devices with the installer token, or over OSCORE
                         with --installer-context (then the meter's own
                         OSCORE context goes to the board: oscore.json)
        verify           the same checks as --check

Each step prints a line as it starts and what it found; a failure stops
the flash with a FlashError (step, cause, fix).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from microgrid.shared import reading, secp256k1

from . import build, frozen, registration, settings, tools
from .errors import FlashError, Progress
from .manifest import Manifest, compare
from .targets import BOARDS, BoardProfile, decode_mpy, identify, matches
from .transfer import FolderTarget, Inventory, SerialTarget, Target

TOKEN_ENV = "MICROGRID_INSTALLER_TOKEN"


@dataclass
class FlashRequest:
    target: Target
    board: str | None = None
    config_file: str | None = None
    settings: list[str] = field(default_factory=list)
    name: str | None = None
    coordinator: str | None = None  # HOST[:PORT] the meter sends to
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    meter: str | None = None
    persist_every: int | None = None
    release_keys: list[str] = field(default_factory=list)  # public keys whose releases the meter installs
    token: str | None = None
    # An installer's OSCORE context (microgrid coordinator installer-context):
    # registration over OSCORE, and the meter gets its own context.
    installer_context: Path | None = None
    register: bool = True
    host_key: bool = False
    firmware: Path | None = None
    firmware_sha256: str | None = None
    erase: bool = False
    compile: bool = True
    esptool: str | None = None
    coap_timeout: float = registration.DEFAULT_TIMEOUT_S
    # The firmware frozen into the MicroPython binary, only main.py and
    # config as files. None: yes for a board, no for a dir: target.
    frozen: bool | None = None


@dataclass
class FlashResult:
    device_id: str
    public_key: str
    key_made: str  # "board", "kept", "host"
    files_written: int
    registered: str  # "new", "known", "skipped"


def parse_coordinator(text: str) -> tuple[str, int | None]:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise FlashError("check config", f"--coordinator {text!r}: port {port!r} is not 1..65535",
                             "write --coordinator HOST:PORT, e.g. 192.168.1.10:5683")
        return host, int(port)
    return host, None


def base_config(req: FlashRequest, existing: str | None, board: str = "unix") -> dict[str, Any]:
    """The installer's file if given, else the config already on the
    target (a re-flash keeps it), then the command-line settings on top."""
    if req.config_file:
        raw = settings.read_json_file(req.config_file)
    elif existing is not None:
        try:
            found: Any = json.loads(existing)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise FlashError("check config", "the target's config.json is not a JSON object, and no --config was given",
                             "give the meter's settings with --config FILE")
        raw = found
    else:
        raw = {}
    flags: list[str] = []
    if req.name is not None:
        flags.append("device_name=" + json.dumps(req.name))
    if req.coordinator is not None:
        host, port = parse_coordinator(req.coordinator)
        flags.append("coordinator_host=" + json.dumps(host))
        if port is not None:
            flags.append(f"coordinator_port={port}")
    if req.wifi_ssid is not None:
        flags.append("wifi=" + json.dumps({"ssid": req.wifi_ssid, "password": req.wifi_password or ""}))
    if req.meter is not None:
        if (raw.get("meter") or {}).get("type") != req.meter:
            raw = dict(raw, meter=settings.suggested_meter(board, req.meter))
    if req.persist_every is not None:
        flags.append(f"persist_every={req.persist_every}")
    if req.release_keys:
        # Over-the-air updates (docs/UPDATES.md): the meter installs only
        # releases for this board signed by one of these keys.
        flags.append("updates=" + json.dumps({"board": board, "keys": list(req.release_keys)}))
    return settings.apply_settings(raw, flags + list(req.settings))


def host_secret() -> bytes:
    while True:
        secret = secrets.token_bytes(32)
        if 0 < int.from_bytes(secret, "big") < secp256k1.N:
            return secret


class Flasher:
    def __init__(self, req: FlashRequest, out: TextIO | None = None) -> None:
        self.req = req
        self.target = req.target
        self.out = out
        serial = isinstance(self.target, SerialTarget)
        names = []
        if req.firmware is not None:
            names += ["verify firmware", "write firmware"]
        names += ["connect", "check config", "build image", "write files", "device key"]
        names += ["register"] if req.register else []
        names += ["verify"]
        self.progress = Progress(len(names), out)
        self.serial = serial

    # -- steps -------------------------------------------------------------

    def _profile(self, inventory: Inventory | None) -> BoardProfile:
        req = self.req
        if isinstance(self.target, FolderTarget):
            if req.board not in (None, "unix"):
                raise FlashError("connect", f"--board {req.board} with a folder target: a folder is booted by the unix port",
                                 "leave --board out for --target dir:PATH, or give the board's serial port")
            return BOARDS["unix"]
        if req.board is not None:
            if req.board not in BOARDS or req.board == "unix":
                raise FlashError("connect", f"--board {req.board!r} is not a supported board",
                                 f"use one of {', '.join(b for b in BOARDS if b != 'unix')}")
            return BOARDS[req.board]
        found = identify(inventory.machine) if inventory else None
        if found is None or found.name == "unix":
            seen = inventory.machine if inventory else "a blank board"
            raise FlashError("connect", f"cannot tell which board this is ({seen})",
                             f"give --board ({', '.join(b for b in BOARDS if b != 'unix')})")
        return found

    def write_firmware(self, profile: BoardProfile) -> None:
        req = self.req
        assert req.firmware is not None
        step = self.progress.step("verify firmware")
        if not isinstance(self.target, SerialTarget):
            raise FlashError(step, "--firmware needs a board: a folder target runs the unix port's own MicroPython",
                             "leave --firmware out for --target dir:PATH")
        digest = tools.verify_firmware(req.firmware, profile, req.firmware_sha256)
        self.progress.done(f"{req.firmware.name}: sha256 {digest} matches")
        # The settings too, before the board is touched (the board's own
        # config.json, if any, is read after the firmware is written).
        settings.validate(base_config(req, None, profile.name), profile.name)
        step = self.progress.step("write firmware")
        if profile.esptool_chip is None:
            raise FlashError(step, f"{profile.name} is not written with esptool",
                             "hold BOOTSEL while plugging the Pico W in and copy the .uf2 onto the RPI-RP2 drive, "
                             "then run microgrid flash again without --firmware")
        port = self.target.port
        tools.check_port(port, step)
        esptool = tools.find_tool("esptool", step, req.esptool)
        if req.erase:
            self.progress.warn("--erase: the board's key and counters are wiped; it gets a new identity")
            tools.run_esptool(tools.esptool_erase_cmd(esptool, port, profile), step, port, profile)
        tools.run_esptool(tools.esptool_write_cmd(esptool, port, profile, req.firmware), step, port, profile)
        self.progress.done(f"MicroPython written at {hex(profile.firmware_offset or 0)} and verified by esptool")

    def connect(self) -> tuple[Inventory, BoardProfile]:
        step = self.progress.step("connect")
        self.target.prepare(step)
        inventory = self.target.inventory(step)
        profile = self._profile(inventory)
        if isinstance(self.target, SerialTarget) and not matches(profile, inventory.machine):
            raise FlashError(step, f"the board on {self.target.port} is {inventory.machine!r}, not a {profile.name}",
                             "use --board for the board you have, or plug in the right one")
        have = "nothing of ours" if not inventory.files else f"{len(inventory.files)} image files"
        self.progress.done(f"{self.target.label}: {inventory.machine}, {have}, key {'present' if inventory.key else 'absent'}")
        return inventory, profile

    def check_config(self, profile: BoardProfile, existing: str | None) -> tuple[dict[str, Any], str]:
        step = self.progress.step("check config")
        raw = base_config(self.req, existing, profile.name)
        cfg = settings.validate(raw, profile.name)
        for warning in settings.pin_warnings(cfg, profile.name):
            self.progress.warn(warning)
        meter = cfg["meter"]
        self.progress.done(f"{cfg['device_name']}: meter {meter['type']}, coordinator "
                           f"{cfg['coordinator_host']}:{cfg['coordinator_port']}, persist every {cfg['persist_every']} readings, "
                           f"Wi-Fi {'ssid ' + repr(cfg['wifi']['ssid']) if cfg['wifi'] else 'off'}")
        return cfg, settings.to_json(raw)

    def _compile_arch(self, profile: BoardProfile, inventory: Inventory) -> tuple[bool, str | None]:
        if not self.req.compile:
            return False, None
        mpy_cross = build.find_mpy_cross()
        emits = build.mpy_cross_version(mpy_cross)
        version, sub, arch = decode_mpy(inventory.mpy)
        runs = f"{version}.{sub}"
        if profile.name == "unix":
            if runs != emits:
                self.progress.warn(f"micropython reads .mpy v{runs}, mpy-cross emits v{emits}: copying .py sources")
                return False, None
            return True, arch
        if inventory.mpy and runs != emits:
            raise FlashError("build image", f"the board's MicroPython reads .mpy v{runs}; this mpy-cross emits v{emits}",
                             "write a current MicroPython with --firmware FILE, install the mpy-cross matching the "
                             "board's version, or pass --no-compile")
        return True, profile.mpy_arch

    @property
    def frozen(self) -> bool:
        return self.req.frozen if self.req.frozen is not None else isinstance(self.target, SerialTarget)

    def _frozen_binary(self, step: str, inventory: Inventory) -> str | None:
        """Where the frozen firmware comes from: for a folder, the esp32-like
        build with it frozen in (built once, cached), returned to be
        recorded in the manifest; for a board, the firmware image already
        on it, which must carry this installer's firmware version."""
        current = build.firmware_version()
        if isinstance(self.target, FolderTarget):
            if self.target._micropython:
                raise FlashError(step, "--micropython with --frozen: a frozen folder boots the esp32-like build "
                                 "with the firmware frozen in", "leave --micropython out")
            binary = str(frozen.esp32like_binary())
            self.target.use(binary)
            return binary
        have = inventory.firmware.get("frozen")
        make = frozen.ESP32_BUILD.format(manifest=frozen.MANIFEST)
        if have is None:
            raise FlashError(step, f"the MicroPython on the {self.target.label} has no microgrid firmware frozen in it",
                             f"write the microgrid firmware image with --firmware FILE (built with `{make}`, see "
                             "flash/README.md), or pass --no-frozen to copy edge/ and shared/ as .mpy files "
                             "(the board then needs about twice the heap)")
        if have != current:
            raise FlashError(step, f"the firmware frozen on the {self.target.label} is version {have}; "
                             f"this installer has {current}",
                             f"write the current image with --firmware FILE (built with `{make}`), or use the "
                             f"installer of version {have}")
        return None

    def build_image(self, staging: Path, profile: BoardProfile, inventory: Inventory, config_json: str) -> Manifest:
        step = self.progress.step("build image")
        if self.frozen:
            binary = self._frozen_binary(step, inventory)
            manifest = build.build(staging, config_json, profile, None, False, frozen=True, interpreter=binary)
            where = f"frozen into {binary}" if binary else "frozen in the board's MicroPython image"
            self.progress.done(f"firmware {manifest.firmware_version} {where}; files: main.py, config.json")
            return manifest
        compile, arch = self._compile_arch(profile, inventory)
        manifest = build.build(staging, config_json, profile, arch, compile)
        kind = f".mpy v{manifest.mpy} for {arch or 'any arch'}" if manifest.mpy else ".py sources"
        packages = ", ".join(manifest.packages) or "none needed (built-in modules only)"
        self.progress.done(f"firmware {manifest.firmware_version}: {len(manifest.files)} files as {kind}; "
                           f"micropython-lib packages: {packages}")
        return manifest

    def write_files(self, staging: Path, manifest: Manifest, inventory: Inventory) -> int:
        step = self.progress.step("write files")
        n = self.target.install(staging, manifest, inventory, step)
        kept = [p for p in sorted(inventory.others) if not p.endswith(".tmp")]
        self.progress.done(f"{n} files written to {self.target.label}" + (f"; kept {', '.join(kept)}" if kept else ""))
        return n

    def device_key(self, cfg: dict[str, Any], inventory: Inventory) -> tuple[bytes, str]:
        step = self.progress.step("device key")
        if inventory.key and inventory.key.startswith("invalid"):
            raise FlashError(step, f"the key file on {self.target.label} is unusable ({inventory.key[9:]})",
                             f"remove {cfg['key_file']} from the board and flash again; the meter then has a new "
                             "identity (registered anew; readings signed with the old key stay verifiable)")
        if self.req.host_key and not inventory.key:
            secret = host_secret()
            self.target.put_key(cfg["key_file"], secret.hex(), step)
            public_key = secp256k1.public_key(secret)
            self.progress.warn("the key was made on this machine (--host-key); it was written to the board only")
            made = "host"
        else:
            output = self.target.run_script("keygen", step)
            line = next((ln.split() for ln in output.splitlines() if ln.startswith("KEY ")), None)
            if line is None or len(line) != 3:
                raise FlashError(step, f"{self.target.label} did not report a public key: {output.strip()[-200:]!r}",
                                 "check the key file on the board (microgrid flash --check); to start over, "
                                 "remove it and flash again")
            public_key = bytes.fromhex(line[2])
            made = "kept" if line[1] == "kept" else "board"
        self.target.protect_key(cfg["key_file"])
        device = reading.device_id(public_key)
        where = {"board": "made on the board", "kept": "kept (already on the board)", "host": "made on this machine"}[made]
        self.progress.done(f"{where}\n      public key: {public_key.hex()}\n      key id:     {device}")
        return public_key, made

    def register(self, cfg: dict[str, Any], public_key: bytes) -> str:
        step = self.progress.step("register")
        if self.req.installer_context is not None:
            return self._register_protected(step, cfg, public_key)
        token = self.req.token
        assert token is not None
        r = registration.register(cfg["coordinator_host"], cfg["coordinator_port"], public_key, cfg["device_name"],
                                  token, timeout=self.req.coap_timeout, step=step)
        where = registration.coap_uri(cfg["coordinator_host"], cfg["coordinator_port"], "devices")
        self.progress.done(f"{'registered' if r.created else 'already registered'} {r.device_id} as {r.name!r} at {where}")
        self.progress.warn("registered with the installer token in clear; the meter gets no OSCORE context from it "
                           "(its readings go unprotected unless it has one): flash with --installer-context DIR")
        return "new" if r.created else "known"

    def _register_protected(self, step: str, cfg: dict[str, Any], public_key: bytes) -> str:
        assert self.req.installer_context is not None
        r, context = registration.register_protected(
            cfg["coordinator_host"], cfg["coordinator_port"], public_key, cfg["device_name"],
            self.req.installer_context, timeout=self.req.coap_timeout, step=step)
        # The meter's side of its context: a secret file like the key,
        # written to the board only (never printed, never in the config).
        try:
            self.target.put_secret(cfg["oscore_file"], json.dumps(context) + "\n", step)
        except OSError as e:
            raise FlashError(step, f"the meter's OSCORE context could not be written to {cfg['oscore_file']} on "
                             f"{self.target.label}: {e.strerror or e}; the coordinator already holds the new one",
                             "flash again (the meter cannot deliver readings until it has the same context)") from None
        where = registration.coap_uri(cfg["coordinator_host"], cfg["coordinator_port"], "devices")
        self.progress.done(f"{'registered' if r.created else 'already registered'} {r.device_id} as {r.name!r} at "
                           f"{where} over OSCORE; the meter's OSCORE context (kid {context['sender_id']}) is in "
                           f"{cfg['oscore_file']}")
        return "new" if r.created else "known"

    # -- the whole flash ----------------------------------------------------

    def run(self) -> FlashResult:
        req = self.req
        if req.register and not req.token and req.installer_context is None:
            raise FlashError("register", "no installer token given",
                             f"pass --token-file FILE or set {TOKEN_ENV} (the operator has it: [ingest] installer_token); "
                             "or --no-register, then register with `microgrid coordinator register-device`")
        if req.firmware is not None:
            profile = self._profile(None)
            self.write_firmware(profile)
        inventory, profile = self.connect()
        cfg, config_json = self.check_config(profile, inventory.config_text)
        with tempfile.TemporaryDirectory(prefix="microgrid-image-") as tmp:
            staging = Path(tmp)
            manifest = self.build_image(staging, profile, inventory, config_json)
            written = self.write_files(staging, manifest, inventory)
        public_key, made = self.device_key(cfg, inventory)
        registered = self.register(cfg, public_key) if req.register else "skipped"
        step = self.progress.step("verify")
        after = self.target.inventory(step)
        failures = [e for e in verify_inventory(after, manifest, public_key, profile.name)]
        if failures:
            raise failures[0]
        where = ("edge and shared run frozen from the MicroPython binary, nothing shadows them" if manifest.frozen
                 else "edge and shared are files")
        self.progress.done(f"{len(manifest.files)} files match the manifest; {where}; config valid; key present")
        device = reading.device_id(public_key)
        print(f"done: {cfg['device_name']} ({device}) is ready on {self.target.label}", file=self.progress.out, flush=True)
        return FlashResult(device, public_key.hex(), made, written, registered)


def verify_inventory(inv: Inventory, manifest: Manifest | None, public_key: bytes | None, board: str) -> list[FlashError]:
    """What is wrong with the target's files, config and key (empty: all good)."""
    errors: list[FlashError] = []
    found = inv.manifest()
    if found is None:
        errors.append(FlashError("files", "no manifest.json: not flashed by microgrid flash, or a flash was cut short",
                                 "flash it again"))
    else:
        comparison = compare(manifest or found, inv.files)
        if not comparison.ok:
            errors.append(FlashError("files", comparison.describe(), "flash it again: only the differing files are written"))
    expected = manifest or found
    if expected is not None and expected.frozen:
        have = inv.firmware.get("frozen")
        if have is None:
            errors.append(FlashError("firmware", "the image expects the firmware frozen in MicroPython, and the "
                                     "MicroPython there has none", "write the microgrid firmware image "
                                     "(microgrid flash --firmware FILE), or flash again with --no-frozen"))
        elif have != expected.frozen:
            errors.append(FlashError("firmware", f"the firmware frozen in MicroPython is {have}, the image was "
                                     f"flashed for {expected.frozen}", "flash it again"))
        elif inv.shadowed():
            errors.append(FlashError("firmware", f"{', '.join(inv.shadowed())} on the filesystem shadows the frozen "
                                     "firmware ('' comes before .frozen in sys.path)",
                                     "flash it again: the files and folders are removed"))
    if inv.config_text is None:
        errors.append(FlashError("config", "no config.json", "flash it again with the meter's settings"))
    else:
        try:
            raw = json.loads(inv.config_text)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            settings.validate(raw, board)
        except (ValueError, FlashError) as e:
            cause = e.cause if isinstance(e, FlashError) else f"config.json is not a JSON object ({e})"
            errors.append(FlashError("config", cause, "flash it again with corrected settings (--set KEY=VALUE)"))
    if not inv.key:
        errors.append(FlashError("key", "no device key on the target", "flash it again: the board makes its key"))
    elif not all(c in "0123456789abcdef" for c in inv.key) or len(inv.key) != 66:
        errors.append(FlashError("key", f"device key unusable: {inv.key}",
                                 "remove the key file and flash again (the meter gets a new identity: register it)"))
    elif public_key is not None and inv.key != public_key.hex():
        errors.append(FlashError("key", f"the key on the target is {inv.key}, not the one just registered {public_key.hex()}",
                                 "flash it again"))
    return errors


@dataclass
class CheckRequest:
    target: Target
    coordinator: str | None = None  # where to ask, if not the config's address
    registered: bool = True  # ask the coordinator
    coap_timeout: float = registration.DEFAULT_TIMEOUT_S
    token: str | None = None  # the installer token: the coordinator shows registrations only with it
    installer_context: Path | None = None  # or the installer's OSCORE context (asked over OSCORE)


def check(req: CheckRequest, out: TextIO | None = None) -> list[FlashError]:
    """`microgrid flash --check`: every check runs and prints ok or FAIL
    with the cause and the fix; returns the failures."""
    names = ["connect", "files", "firmware", "config", "key"] + (["registered"] if req.registered else [])
    progress = Progress(len(names), out)
    failures: list[FlashError] = []

    def fail(e: FlashError) -> None:
        failures.append(e)
        print(f"      FAIL: {e.cause}\n      fix: {e.fix}", file=progress.out, flush=True)

    step = progress.step("connect")
    try:
        inv = req.target.inventory(step)
    except FlashError as e:
        fail(e)
        return failures
    progress.done(f"{req.target.label}: {inv.machine}, {len(inv.files)} image files")
    manifest = inv.manifest()
    board = manifest.board if manifest else (identify(inv.machine) or BOARDS["unix"]).name
    problems = {e.step: e for e in verify_inventory(inv, None, None, board)}
    progress.step("files")
    if "files" in problems:
        fail(problems["files"])
    else:
        assert manifest is not None
        note = ""
        current = build.firmware_version()
        if manifest.firmware_version != current:
            note = f" (firmware {manifest.firmware_version}; this installer has {current}: flash again to update)"
        progress.done(f"{len(manifest.files)} files match manifest.json (board {manifest.board}){note}")
    progress.step("firmware")
    if "firmware" in problems:
        fail(problems["firmware"])
    elif manifest is not None and manifest.frozen:
        progress.done(f"edge and shared run frozen from MicroPython (firmware {manifest.frozen}); "
                      "nothing on the filesystem shadows them")
    else:
        progress.done("edge and shared are files on the filesystem (not frozen)")
    progress.step("config")
    cfg: dict[str, Any] | None = None
    if "config" in problems:
        fail(problems["config"])
    else:
        assert inv.config_text is not None
        cfg = settings.validate(json.loads(inv.config_text), board)
        changed = ""
        if manifest is not None and manifest.config_sha256:
            import hashlib

            if hashlib.sha256(inv.config_text.encode()).hexdigest() != manifest.config_sha256:
                changed = " (changed on the board since the flash, e.g. by the console's `set`)"
        progress.done(f"valid for {board}: {cfg['device_name']}, meter {cfg['meter']['type']}{changed}")
    progress.step("key")
    public_key: bytes | None = None
    if "key" in problems:
        fail(problems["key"])
    else:
        assert inv.key is not None
        public_key = bytes.fromhex(inv.key)
        oscore_file = (cfg or {}).get("oscore_file", "oscore.json")
        link = (f"OSCORE context in {oscore_file}" if oscore_file in inv.others
                else "no OSCORE context: readings go unprotected (flash with --installer-context DIR)")
        progress.done(f"public key {inv.key}, key id {reading.device_id(public_key)}; link: {link}")
    if req.registered:
        step = progress.step("registered")
        if public_key is None or (cfg is None and req.coordinator is None):
            fail(FlashError(step, "cannot ask the coordinator without a valid key and coordinator address",
                            "fix the failures above first"))
        else:
            if req.coordinator:
                host, port = parse_coordinator(req.coordinator)
            else:
                host, port = None, None
            host = host or (cfg or {}).get("coordinator_host", "127.0.0.1")
            port = port or (cfg or {}).get("coordinator_port", 5683)
            device = reading.device_id(public_key)
            try:
                found = registration.lookup(str(host), int(port), device, timeout=req.coap_timeout, step=step,
                                            token=req.token, installer_context=req.installer_context)
            except FlashError as e:
                fail(e)
            else:
                uri = registration.coap_uri(str(host), int(port), "devices")
                if found is None:
                    fail(FlashError(step, f"{device} is not registered at {uri}",
                                    "flash again with the installer token, or on the coordinator: "
                                    f"microgrid coordinator register-device --pubkey {public_key.hex()}"))
                elif found.public_key != public_key:
                    fail(FlashError(step, f"{uri} holds a different key for {device}",
                                    "the operator checks the coordinator's device table"))
                else:
                    progress.done(f"registered at {uri} as {found.name!r} since {found.registered_at}")
    return failures
