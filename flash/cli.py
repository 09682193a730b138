"""`microgrid flash`: turn a blank board (or a folder) into a registered
meter, and `microgrid flash --check` to verify one.

    microgrid flash --target /dev/ttyUSB0 --board esp32-devkitc \\
        --firmware ESP32_GENERIC-v1.29.bin --firmware-sha256 HEX \\
        --config meter.json --name flat-3 --coordinator 192.168.1.10:5683 \\
        --token-file installer.token
    microgrid flash --target dir:./meter1 --config meter.json --token-file installer.token
    microgrid flash --target dir:./meter1 --frozen --config meter.json --token-file installer.token
    microgrid flash --check --target dir:./meter1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from . import registration, tools
from .errors import FlashError
from .flow import TOKEN_ENV, CheckRequest, Flasher, FlashRequest, check
from .targets import BOARDS
from .transfer import parse_target


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return Path(args.token_file).read_text().strip()
        except OSError as e:
            raise FlashError("register", f"cannot read --token-file {args.token_file}: {e.strerror}",
                             "give the file holding the installer token") from None
    return args.token or os.environ.get(TOKEN_ENV) or None


def _run(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.target, mpremote=args.mpremote, micropython=args.micropython,
                              timeout=args.board_timeout)
        if args.check:
            failures = check(CheckRequest(target, args.coordinator, not args.no_register, args.timeout,
                                          token=None if args.no_register else _token(args),
                                          installer_context=Path(args.installer_context)
                                          if args.installer_context and not args.no_register else None))
            print("check passed" if not failures else f"check failed: {len(failures)} problem(s)", flush=True)
            return 1 if failures else 0
        req = FlashRequest(
            target=target, board=args.board, config_file=args.config, settings=args.set or [], name=args.name,
            coordinator=args.coordinator, wifi_ssid=args.wifi_ssid, wifi_password=args.wifi_password,
            meter=args.meter, persist_every=args.persist_every, release_keys=args.release_key or [], token=None if args.no_register else _token(args),
            register=not args.no_register, host_key=args.host_key,
            installer_context=Path(args.installer_context) if args.installer_context else None,
            firmware=Path(args.firmware) if args.firmware else None, firmware_sha256=args.firmware_sha256,
            erase=args.erase, compile=not args.no_compile, esptool=args.esptool, coap_timeout=args.timeout,
            frozen=args.frozen,
        )
        result = Flasher(req).run()
    except FlashError as e:
        print(e.render(), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to finish (it is safe to repeat)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(asdict(result)), flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flash", help="build a meter image, write it to a board or folder, register its key",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="dir:PATH (a folder the unix port boots) or the board's serial port")
    p.add_argument("--check", action="store_true", help="verify the target instead of flashing it")
    p.add_argument("--board", choices=[b for b in BOARDS if b != "unix"], help="the board (read from it when left out)")
    g = p.add_argument_group("meter config (see edge/config.py; the target's config is kept when none is given)")
    g.add_argument("--config", help="JSON config file for the meter")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting, repeatable (meter.KEY for the meter's)")
    g.add_argument("--name", help="device name")
    g.add_argument("--coordinator", help="HOST[:PORT] of the coordinator (also where the key is registered)")
    g.add_argument("--wifi-ssid")
    g.add_argument("--wifi-password")
    g.add_argument("--meter", help="meter type (simulated, pzem004t, sdm120, sdm630, s0, ct)")
    g.add_argument("--persist-every", type=int, help="save the counters to flash every N readings")
    g.add_argument("--release-key", action="append", metavar="HEX",
                   help="a public release key the meter trusts for updates (repeatable; docs/UPDATES.md)")
    k = p.add_argument_group("key and registration")
    k.add_argument("--host-key", action="store_true",
                   help="make the key on this machine instead of on the board (only when the board cannot)")
    k.add_argument("--installer-context", metavar="DIR",
                   help="the installer's OSCORE context (microgrid coordinator installer-context): register over "
                        "OSCORE, no token, and give the meter its own OSCORE context")
    k.add_argument("--token-file", help="file with the coordinator's installer token")
    k.add_argument("--token", help=f"the installer token (visible to other users in `ps`: prefer --token-file or {TOKEN_ENV})")
    k.add_argument("--no-register", action="store_true", help="do not register (or, with --check, do not ask) the coordinator")
    k.add_argument("--timeout", type=float, default=registration.DEFAULT_TIMEOUT_S, help="seconds to wait for the coordinator")
    f = p.add_argument_group("firmware and tools")
    f.add_argument("--firmware", help="MicroPython firmware .bin to write with esptool first")
    f.add_argument("--firmware-sha256", help="its SHA-256 from the download page (else FILE.sha256 beside it)")
    f.add_argument("--frozen", action=argparse.BooleanOptionalAction, default=None,
                   help="the firmware runs frozen in the MicroPython binary, only main.py and config are files "
                        "(default for a board, whose image --firmware writes; for dir: the esp32-like build with "
                        "it frozen in, built once and cached); --no-frozen copies edge/ and shared/ as .mpy files")
    f.add_argument("--erase", action="store_true", help="erase the whole flash first (the board loses its key and counters)")
    f.add_argument("--no-compile", action="store_true", help="copy .py sources instead of compiling with mpy-cross")
    f.add_argument("--esptool", help="path of esptool")
    f.add_argument("--mpremote", help="path of mpremote")
    f.add_argument("--micropython", help="path of the micropython unix port (dir: targets)")
    f.add_argument("--board-timeout", type=float, default=tools.MPREMOTE_TIMEOUT_S, help="seconds to wait for the board")
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """`python -m microgrid.flash.cli ...` until `microgrid flash` is wired in."""
    parser = argparse.ArgumentParser(prog="microgrid")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["flash", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
