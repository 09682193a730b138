"""Admin key files: 32 bytes hex on one line, mode 0600, like the
coordinator's identity key. The private key is read here and used to sign;
it is never printed or logged (only the public key and its id are)."""

from __future__ import annotations

import stat
from pathlib import Path

from bitcoinx import PrivateKey

from ..secrets import write_new_secret_file


class KeyFileError(ValueError):
    """An admin key file is missing, unreadable, malformed or too open."""


def create(path: Path) -> PrivateKey:
    """A new admin key in a new 0600 file; an existing file is refused
    (overwriting a key would lose an admin)."""
    key = PrivateKey.from_random()
    try:
        write_new_secret_file(path, key.to_hex() + "\n")
    except FileExistsError:
        raise KeyFileError(f"{path} exists: refusing to overwrite a key") from None
    return key


def load(path: Path) -> PrivateKey:
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise KeyFileError(f"cannot read admin key {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"admin key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): "
                           f"chmod 600 {path}")
    try:
        return PrivateKey(bytes.fromhex(text))
    except ValueError:
        raise KeyFileError(f"admin key {path} does not hold a 32-byte hex key") from None


def public(key: PrivateKey) -> bytes:
    return key.public_key.to_bytes(compressed=True)
