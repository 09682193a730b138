# Runs on the board: what is on it, for `microgrid flash` (before writing)
# and `microgrid flash --check`. Prints one line, `INVENTORY {json}`:
#   machine, platform, mpy     which board and MicroPython this is
#   files                      path -> sha256 of main.py, manifest.json,
#                              config.json and everything under edge/,
#                              shared/, lib/
#   others                     path -> size of the board's own files
#   manifest, config           their text (null when absent)
#   dirs                       the folders under edge/, shared/, lib/
#   firmware                   where main.py's `import edge` (and shared)
#                              resolve with the boot's sys.path, and the
#                              version frozen in the MicroPython binary
#   key                        public key hex of the device key, "present"
#                              when shared/ cannot derive it, null when none
# The secret itself is never printed.

import binascii
import gc
import hashlib
import json
import os
import sys

HASHED_DIRS = ("edge", "shared", "lib")
# A module edge.py / shared.py at the top would hide the package: listed
# as the image's, so a flash removes it.
HASHED_FILES = ("main.py", "manifest.json", "config.json", "edge.py", "edge.mpy", "shared.py", "shared.mpy")


def _sha256(path):
    h = hashlib.sha256()
    buf = bytearray(512)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf[:n] if n < 512 else buf)
    return binascii.hexlify(h.digest()).decode()


def _walk(prefix, hashed):
    # Prints as it goes: a board's heap holds a line, not the whole listing.
    for entry in os.ilistdir(prefix or "."):
        name, kind = entry[0], entry[1]
        path = prefix + "/" + name if prefix else name
        if kind == 0x4000:
            if prefix or name in HASHED_DIRS:
                # Even an empty edge/ shadows the frozen package: listed.
                print("D " + path)
                _walk(path, True)
        elif hashed or path in HASHED_FILES:
            print("F %s %s" % (_sha256(path), path))
        else:
            print("O %d %s" % (os.stat(path)[6], path))


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _key(config_text):
    path = "device.key"
    try:
        path = json.loads(config_text).get("key_file", path)
    except Exception:
        pass
    text = _text(path)
    if text is None:
        return "none"
    try:
        from shared import secp256k1

        return binascii.hexlify(secp256k1.public_key(binascii.unhexlify(text.strip()))).decode()
    except ImportError:
        return "present"
    except Exception as e:
        return "invalid: %s" % e


def _forget(packages):
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]


def _where(name, path, frozen):
    # Where `import name` finds it along `path`, as MicroPython looks (a
    # folder is a package, then name.py / name.mpy), without running
    # anything found on the filesystem.
    for entry in path:
        if entry == ".frozen":
            if frozen:
                return ".frozen/" + name
            continue
        base = entry + "/" + name if entry else name
        for candidate in (base, base + ".py", base + ".mpy"):
            try:
                os.stat(candidate)
                return candidate
            except OSError:
                pass
    return None


def _firmware():
    # Which copy of the firmware main.py would run. At boot sys.path is
    # ['', '.frozen', ...]: a package or module on the filesystem shadows
    # the frozen one (even an empty edge/ folder). Under the unix port this
    # script's own folder comes first in sys.path, not the image folder:
    # the boot's order is put back.
    saved = sys.path[:]
    here = globals().get("__file__", "")
    here = here[:here.rfind("/")] if "/" in here else None
    boot_path = [""] + [p for p in saved if p and p != here]
    found = {"frozen": None}
    try:
        # What the binary has frozen, whatever the filesystem holds.
        sys.path[:] = [".frozen"]
        try:
            from edge import firmware

            found["frozen"] = firmware.VERSION
        except ImportError:
            pass
    finally:
        sys.path[:] = saved
        _forget(("edge", "shared"))
        gc.collect()
    for name in ("edge", "shared"):
        found[name] = _where(name, boot_path, found["frozen"] is not None)
    return found


def main():
    print("INVENTORY begin")
    print("M " + json.dumps({
        "machine": os.uname().machine if hasattr(os, "uname") else sys.platform,
        "platform": sys.platform,
        "mpy": getattr(sys.implementation, "_mpy", 0),
    }))
    _walk("", False)
    print("R " + json.dumps(_firmware()))
    print("T manifest " + json.dumps(_text("manifest.json")))
    config = _text("config.json")
    print("T config " + json.dumps(config))
    gc.collect()
    # Last: deriving the public key fills the heap with the point table.
    print("K " + _key(config))
    print("INVENTORY end")


main()
