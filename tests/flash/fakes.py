"""Stand-ins for what cannot exist here: a board on a USB cable.

`fake_mpremote` is an executable with mpremote's command line (the subset
`microgrid flash` uses: `connect PORT` then `run FILE`, `exec CODE`,
`fs cp SRC :DEST`, chained with `+`). Behind it the "board" is a folder run
by the MicroPython unix port, so the real on-board scripts (inventory,
keygen) and the real image run; its os.uname().machine is what
FAKE_BOARD_MACHINE says. FAKE_BOARD_MODE makes it misbehave as boards do:
`busy` (port held by another program), `silent` (no answer), `no-repl`
(not running MicroPython). Every call's argv is appended to FAKE_TOOL_LOG.

`fake_esptool` records its argv and answers as esptool does for a
working board (`ok`), the wrong chip (`wrong-chip`) or a board not in its
bootloader (`silent`), per FAKE_ESPTOOL_MODE. With FAKE_BOARD_FIRMWARE set,
`write-flash FILE` copies FILE there and the fake mpremote runs the board
with it from then on: a MicroPython binary given as the firmware image
(the esp32-like build with the firmware frozen in) is what the board runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MPREMOTE = r'''
import json, os, shutil, subprocess, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write(json.dumps(["mpremote"] + argv) + "\n")
mode = os.environ.get("FAKE_BOARD_MODE", "ok")
root = os.environ["FAKE_BOARD_ROOT"]
mp = os.environ["FAKE_MICROPYTHON"]
if os.path.isfile(os.environ.get("FAKE_BOARD_FIRMWARE", "")):
    mp = os.environ["FAKE_BOARD_FIRMWARE"]  # what the fake esptool wrote
if argv[:1] != ["connect"] or len(argv) < 3:
    print("mpremote: bad command line", argv); sys.exit(2)
port = argv[1]
if mode == "busy":
    print("mpremote: failed to access %s (it may be in use by another program)" % port); sys.exit(1)
if mode == "silent":
    time.sleep(600)
if mode == "no-repl":
    print("mpremote.transport.TransportError: could not enter raw repl"); sys.exit(1)
env = dict(os.environ, MICROPYPATH=".frozen:" + root)
def micropython(args):
    p = subprocess.run([mp] + args, cwd=root, env=env, capture_output=True, text=True)
    out = p.stdout.replace('"machine": "linux"', '"machine": "%s"' % os.environ.get("FAKE_BOARD_MACHINE", "linux"))
    if os.environ.get("FAKE_BOARD_MPY"):
        import re
        out = re.sub(r'"mpy": \d+', '"mpy": ' + os.environ["FAKE_BOARD_MPY"], out)
    sys.stdout.write(out + p.stderr)
    if p.returncode:
        sys.exit(1)
commands, cur = [], []
for a in argv[2:]:
    if a == "+":
        commands.append(cur); cur = []
    else:
        cur.append(a)
commands.append(cur)
for c in commands:
    if c[0] == "run":
        micropython([os.path.abspath(c[1])])
    elif c[0] == "exec":
        micropython(["-c", c[1]])
    elif c[:2] == ["fs", "cp"]:
        src, dest = c[2], c[3]
        assert dest.startswith(":"), dest
        target = os.path.join(root, dest[1:])
        if not os.path.isdir(os.path.dirname(target) or root):
            print("cp %s %s\nOSError: [Errno 2] ENOENT" % (src, dest)); sys.exit(1)
        shutil.copyfile(src, target)
    else:
        print("mpremote: unknown command", c); sys.exit(2)
'''

ESPTOOL = r'''
import json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write(json.dumps(["esptool"] + argv) + "\n")
mode = os.environ.get("FAKE_ESPTOOL_MODE", "ok")
chip = argv[argv.index("--chip") + 1]
print("esptool v5.6.0\nConnecting....")
if mode == "wrong-chip":
    print("\nA fatal error occurred: This chip is ESP32-C3, not %s. Wrong chip argument?" % chip.upper()); sys.exit(2)
if mode == "silent":
    print("\nA fatal error occurred: Failed to connect to ESP32: No serial data received."); sys.exit(2)
if os.environ.get("FAKE_BOARD_FIRMWARE") and "write-flash" in argv:
    import shutil
    shutil.copyfile(argv[-1], os.environ["FAKE_BOARD_FIRMWARE"])
    os.chmod(os.environ["FAKE_BOARD_FIRMWARE"], 0o755)
print("Connected to %s.\nWrote 1622016 bytes (1067035 compressed) at 0x00001000.\nHash of data verified." % chip.upper())
'''


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def fake_mpremote(folder: Path) -> Path:
    return _script(folder / "mpremote", MPREMOTE)


def fake_esptool(folder: Path) -> Path:
    return _script(folder / "esptool", ESPTOOL)


def tool_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def board_env(tmp_path: Path, root: Path, machine: str = "Generic ESP32 module with ESP32", **extra: str) -> dict[str, str]:
    from microgrid.flash.unix_port import find_micropython

    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FAKE_TOOL_LOG=str(tmp_path / "tools.log"), FAKE_BOARD_ROOT=str(root),
               FAKE_MICROPYTHON=find_micropython(), FAKE_BOARD_MACHINE=machine)
    env.update(extra)
    return env
