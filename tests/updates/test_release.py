"""Signed releases (shared/release.py, `microgrid release`): what a board
accepts and what it refuses, and the key never shows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from microgrid.cli import main as cli_main
from microgrid.edge import config as edge_config
from microgrid.shared import cbor, cose, reading, release, secp256k1

SECRET = bytes(range(1, 33))
OTHER = bytes(range(2, 34))
PUB = secp256k1.public_key(SECRET)
IMAGE = bytes((i * 7) & 0xFF for i in range(10_000))


def signed(**kw: object) -> bytes:
    args = dict(version="0.3.0", board="esp32-devkitc", min_version="0.2.0", notes="fixes")
    args.update(kw)  # type: ignore[arg-type]
    return release.sign(SECRET, release.make_manifest(IMAGE, **args))  # type: ignore[arg-type]


def test_a_release_signed_by_a_trusted_key_verifies_with_every_chunk() -> None:
    rel = release.verify(signed(), [secp256k1.public_key(OTHER), PUB])
    assert rel.size == len(IMAGE) and rel.sha256 == hashlib.sha256(IMAGE).digest()
    # The manifest signs the chunk table's hash, not the table: no chunk
    # can be checked until a table that matches it is attached.
    assert rel.count == 3 and rel.chunks is None and rel.table_size == 96
    with pytest.raises(release.ReleaseError, match="no chunk table"):
        rel.chunk_ok(0, IMAGE[:4096])
    table = release.chunk_table(IMAGE)
    for bad in (table[:-32], table[:-1] + b"\x00", table + bytes(32)):
        with pytest.raises(release.ReleaseError, match="chunk table"):
            rel.attach(bad)
    assert rel.chunk_ok(1, IMAGE[4096:8192], expected=table[32:64])
    rel.attach(table)
    assert len(rel.chunks) == 3 and rel.chunk_len(2) == len(IMAGE) - 2 * 4096
    for i in range(3):
        assert rel.chunk_ok(i, IMAGE[i * 4096:(i + 1) * 4096])
    assert not rel.chunk_ok(1, IMAGE[4096:8191] + b"\x00")
    assert not rel.chunk_ok(3, b"")
    assert release.applicable(rel, "esp32-devkitc", "0.2.0") is None


def test_another_key_a_changed_byte_and_a_reading_are_refused() -> None:
    with pytest.raises(release.ReleaseError, match="does not trust"):
        release.verify(signed(), [secp256k1.public_key(OTHER)])
    msg = cose.parse(signed())
    payload = bytearray(msg.payload)
    payload[-3] ^= 1  # in the notes
    forged = cose.build(msg.protected, bytes(payload), msg.signature)
    with pytest.raises(release.ReleaseError, match="bad signature"):
        release.verify(forged, [PUB])
    # A reading signed by the same key is no manifest.
    r = reading.build(SECRET, PUB, 1, 1_700_000_000, 1, 0, 5, 230)
    with pytest.raises(release.ReleaseError, match="map"):
        release.verify(r, [PUB])
    with pytest.raises(release.ReleaseError, match="COSE|CBOR"):
        release.verify(b"\xff\x00garbage", [PUB])


def test_wrong_board_old_version_and_running_below_the_minimum_are_not_applicable() -> None:
    rel = release.verify(signed(), [PUB])
    assert "board" in str(release.applicable(rel, "esp32-c3", "0.2.0"))
    assert "not newer" in str(release.applicable(rel, "esp32-devkitc", "0.3.0"))
    assert "not newer" in str(release.applicable(rel, "esp32-devkitc", "0.10.0"))
    assert "minimum" in str(release.applicable(rel, "esp32-devkitc", "0.1.9"))


@pytest.mark.parametrize("change, match", [
    ({"table": b"short"}, "table"),
    ({"chunks": [b"\x00" * 32]}, "unknown"),
    ({"version": "1.2"}, "MAJOR"),
    ({"chunk": 3000}, "chunk"),
    ({"sha256": b"short"}, "sha256"),
    ({"keys": [b"\x02" + b"\x00" * 32]}, "keys"),
    ({"extra": 1}, "unknown"),
    ({"size": True}, "size"),
])
def test_a_manifest_with_a_wrong_field_is_refused_naming_it(change: dict, match: str) -> None:
    m = release.make_manifest(IMAGE, "0.3.0", "unix", "0.2.0")
    m.update(change)
    with pytest.raises(release.ReleaseError, match=match):
        release.check(m)
    # Signed anyway (bypassing sign()'s check): verify refuses it too.
    bad = reading.sign_payload(SECRET, PUB, cbor.dumps(m))
    with pytest.raises(release.ReleaseError, match=match):
        release.verify(bad, [PUB])


def test_release_command_signs_an_image_and_never_prints_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = tmp_path / "release.key"
    assert cli_main(["release", "--new-key", str(key)]) == 0
    secret = bytes.fromhex(key.read_text().strip())
    assert key.stat().st_mode & 0o077 == 0
    assert cli_main(["release", "--new-key", str(key)]) == 2  # never overwritten
    image = tmp_path / "fw.bin"
    image.write_bytes(IMAGE)
    out = tmp_path / "rel"
    assert cli_main(["release", "--key", str(key), "--image", str(image), "--version", "0.3.0", "--board", "unix",
                     "--min-version", "0.2.0", "--notes", "n", "--out", str(out)]) == 0
    assert cli_main(["release", "--key", str(image), "--image", str(image), "--version", "0.3.0", "--board", "unix",
                     "--min-version", "0.2.0", "--out", str(out)]) == 2
    printed = capsys.readouterr()
    assert secret.hex() not in printed.out + printed.err
    assert secp256k1.public_key(secret).hex() in printed.out
    rel = release.verify((out / "0.3.0" / "manifest.cose").read_bytes(), [secp256k1.public_key(secret)])
    assert (out / "0.3.0" / "image.bin").read_bytes() == IMAGE and rel.board == "unix"


def test_meter_config_takes_release_keys_and_refuses_bad_ones() -> None:
    good = {"board": "esp32-devkitc", "keys": [PUB.hex()]}
    assert edge_config.with_defaults({"updates": good})["updates"] == good
    for bad in ({"board": "x", "keys": []}, {"board": "x", "keys": ["04" + "0" * 64]}, {"keys": [PUB.hex()]},
                {"board": "x", "keys": [PUB.hex()[:-1] + "z"]}, "on"):
        with pytest.raises(edge_config.ConfigError, match="updates"):
            edge_config.with_defaults({"updates": bad})


def test_flashing_puts_the_release_keys_and_board_in_the_meter_config(tmp_path: Path) -> None:
    from microgrid.flash.flow import FlashRequest, base_config
    from microgrid.flash.settings import validate
    from microgrid.flash.transfer import parse_target

    target = parse_target(f"dir:{tmp_path}")
    raw = base_config(FlashRequest(target=target, release_keys=[PUB.hex()]), None, "esp32-devkitc")
    assert raw["updates"] == {"board": "esp32-devkitc", "keys": [PUB.hex()]}
    assert validate(raw, "esp32-devkitc")["updates"]["keys"] == [PUB.hex()]
    bad = base_config(FlashRequest(target=target, release_keys=["nothex"]), None, "esp32-devkitc")
    with pytest.raises(Exception, match="updates"):
        validate(bad, "esp32-devkitc")
