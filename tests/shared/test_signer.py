"""The ES256K signer in shared/ makes exactly the signatures libsecp256k1
(through bitcoinx) makes, on MicroPython as on CPython."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from bitcoinx import PrivateKey, PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.shared import secp256k1

from ..conftest import run_micropython


def bitcoinx_raw_signature(secret: bytes, message: bytes) -> bytes:
    recoverable = PrivateKey(secret).sign_recoverable(message)  # sha256, RFC 6979, low-S
    return recoverable[:64]


def random_cases(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        secret = rng.randrange(1, secp256k1.N).to_bytes(32, "big")
        message = rng.randbytes(rng.randrange(0, 300))
        cases.append((secret, message))
    # Edge keys: 1 and n-1.
    cases.append(((1).to_bytes(32, "big"), b"edge"))
    cases.append(((secp256k1.N - 1).to_bytes(32, "big"), b"edge"))
    return cases


def test_micropython_signatures_are_byte_identical_to_bitcoinx(mp_runtime: str) -> None:
    cases = random_cases(300, seed=7)
    script = """
import sys, binascii, json
from shared import secp256k1
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    sk, msg = line.split(",")
    sk = binascii.unhexlify(sk)
    msg = binascii.unhexlify(msg)
    sig = secp256k1.sign(sk, msg)
    print(json.dumps([binascii.hexlify(sig).decode(), binascii.hexlify(secp256k1.public_key(sk)).decode()]))
"""
    stdin = "".join(f"{s.hex()},{m.hex()}\n" for s, m in cases)
    out = run_micropython(script, stdin=stdin).split("\n")
    results = [json.loads(line) for line in out if line.strip()]
    assert len(results) == len(cases)
    for (secret, message), (sig_hex, pub_hex) in zip(cases, results):
        assert sig_hex == bitcoinx_raw_signature(secret, message).hex()
        assert pub_hex == PrivateKey(secret).public_key.to_bytes(compressed=True).hex()


@given(st.integers(1, secp256k1.N - 1), st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_cpython_signatures_are_byte_identical_to_bitcoinx(d: int, message: bytes) -> None:
    secret = d.to_bytes(32, "big")
    sig = secp256k1.sign(secret, message)
    assert sig == bitcoinx_raw_signature(secret, message)
    assert int.from_bytes(sig[32:], "big") <= secp256k1.HALF_N
    der = secp256k1.der_signature(sig)
    assert PublicKey.from_bytes(secp256k1.public_key(secret)).verify_der_signature(der, message)


@given(st.integers(1, secp256k1.N - 1), st.binary(max_size=64), st.binary(min_size=1, max_size=64))
@settings(max_examples=50, deadline=None)
def test_pure_verify_accepts_own_and_rejects_other_messages(d: int, message: bytes, other: bytes) -> None:
    secret = d.to_bytes(32, "big")
    pub = secp256k1.public_key(secret)
    sig = secp256k1.sign(secret, message)
    assert secp256k1.verify(pub, message, sig)
    if other != message:
        assert not secp256k1.verify(pub, other, sig)


def test_rfc6979_nonce_matches_published_secp256k1_vector() -> None:
    # Widely used secp256k1/SHA-256 RFC 6979 vector (private key 1,
    # message "Satoshi Nakamoto"): k and the low-S signature are known.
    secret = (1).to_bytes(32, "big")
    digest = hashlib.sha256(b"Satoshi Nakamoto").digest()
    k = next(secp256k1._rfc6979_nonces(1, digest))
    assert k == 0x8F8A276C19F4149656B280621E358CCE24F5F52542772691EE69063B74F15D15
    r, s = secp256k1.sign_digest(secret, digest)
    assert r == 0x934B1EA10A4B3C1757E2B0C017D0B6143CE3C9A7E6A4A49860D7A6AB210EE3D8
    assert s == 0x2442CE9D2B916064108014783E923EC36B49743E2FFA1C4496F01A512AAFD9E5


@pytest.mark.parametrize("secret", [b"\x00" * 32, secp256k1.N.to_bytes(32, "big"), b"\x01" * 31])
def test_invalid_private_keys_are_refused(secret: bytes) -> None:
    with pytest.raises(ValueError):
        secp256k1.sign(secret, b"x")


def test_hmac_matches_stdlib() -> None:
    import hmac

    for key in (b"", b"k", b"x" * 64, b"y" * 100):
        for msg in (b"", b"abc", b"z" * 1000):
            assert secp256k1.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
