"""`microgrid release`: make a signed firmware release from an image file.

    microgrid release --new-key release.key          # once: a release key (0600), prints its public key
    microgrid release --key release.key --image fw.bin --version 0.3.0 \\
        --board esp32-devkitc --min-version 0.2.0 --notes "fixes ..." --out releases/

writes `releases/<version>/manifest.cose` (the signed manifest, see
docs/UPDATES.md) and `releases/<version>/image.bin`. The secret key is read
from its file and never printed; only the public key is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from microgrid.coordinator.secrets import write_new_secret_file
from microgrid.shared import release, secp256k1


class ReleaseToolError(Exception):
    pass


def read_key(path: str) -> bytes:
    """The 32-byte secret from a hex key file (the meters' key format)."""
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ReleaseToolError(f"release key file {path}: {e.strerror}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ReleaseToolError(f"release key file {path}: not hex") from None
    if len(secret) != 32:
        raise ReleaseToolError(f"release key file {path}: expected 32 bytes, found {len(secret)}")
    try:
        secp256k1.public_key(secret)
    except ValueError as e:
        raise ReleaseToolError(f"release key file {path}: {e}") from None
    return secret


def new_key(path: str) -> bytes:
    """Create a key file readable by its owner only; refuse to overwrite."""
    secret = os.urandom(32)
    while True:
        try:
            secp256k1.public_key(secret)
            break
        except ValueError:
            secret = os.urandom(32)
    try:
        write_new_secret_file(path, secret.hex() + "\n")
    except FileExistsError:
        raise ReleaseToolError(f"release key file {path} exists: not overwritten") from None
    return secp256k1.public_key(secret)


def make(secret: bytes, image: bytes, version: str, board: str, min_version: str, notes: str,
         keys: list[bytes] | None, out: Path) -> Path:
    """Write <out>/<version>/{manifest.cose,image.bin}; return the folder."""
    manifest = release.make_manifest(image, version, board, min_version, notes, keys)
    signed = release.sign(secret, manifest)
    # Verify what was written as a board would, before anyone gets it.
    release.verify(signed, [secp256k1.public_key(secret)])
    folder = out / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image.bin").write_bytes(image)
    (folder / "manifest.cose").write_bytes(signed)
    return folder


def _run(args: argparse.Namespace) -> int:
    try:
        if args.new_key:
            pub = new_key(args.new_key)
            print(f"release key written to {args.new_key}; public key (put it in the meters' updates.keys):")
            print(pub.hex())
            return 0
        missing = [n for n in ("key", "image", "version", "board", "min_version") if not getattr(args, n)]
        if missing:
            raise ReleaseToolError("missing " + ", ".join("--" + n.replace("_", "-") for n in missing))
        secret = read_key(args.key)
        try:
            image = Path(args.image).read_bytes()
        except OSError as e:
            raise ReleaseToolError(f"image {args.image}: {e.strerror}") from None
        keys = [bytes.fromhex(k) for k in args.announce_key] if args.announce_key else None
        folder = make(secret, image, args.version, args.board, args.min_version, args.notes or "", keys,
                      Path(args.out))
    except (ReleaseToolError, release.ReleaseError, ValueError) as e:
        print(f"microgrid release: {e}", file=sys.stderr)
        return 2
    print(f"release {args.version} for {args.board}: {len(image)} bytes, signed by "
          f"{secp256k1.public_key(secret).hex()} -> {folder}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="make a signed firmware release (docs/UPDATES.md)")
    p.add_argument("--new-key", metavar="FILE", help="create a release key file (0600) and print its public key")
    p.add_argument("--key", metavar="FILE", help="the release key file (hex secret; never printed)")
    p.add_argument("--image", metavar="FILE", help="the firmware image")
    p.add_argument("--version", help="MAJOR.MINOR.PATCH of the image")
    p.add_argument("--board", help="the board the image is for (esp32-devkitc, esp32-c3, unix)")
    p.add_argument("--min-version", help="the oldest running version this release may replace")
    p.add_argument("--notes", help="release notes")
    p.add_argument("--announce-key", action="append", metavar="HEX",
                   help="rotation: the release keys boards trust once this release is confirmed (repeatable)")
    p.add_argument("--out", default="releases", help="folder for <version>/manifest.cose and image.bin")
    p.set_defaults(func=_run)
