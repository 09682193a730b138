"""AES-CCM (shared/ccm.py) and OSCORE (shared/oscore.py) hold to RFC 3610's
packet vectors, RFC 8613's Appendix C and to the `cryptography` package's
AES-CCM, on CPython and in both MicroPython runtimes (the esp32-like build
has no cryptolib: it runs the plain-Python AES block)."""

from __future__ import annotations

import json
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from microgrid.shared import ccm, oscore

from ..conftest import run_micropython

KEY = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
# RFC 3610 section 8, packet vectors 1-5 (M = 8, L = 2: OSCORE's shape).
RFC3610 = [
    ("00000003020100a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e",
     "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0"),
    ("00000004030201a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "72c91a36e135f8cf291ca894085c87e3cc15c439c9e43a3ba091d56e10400916"),
    ("00000005040302a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
     "51b1e5f44a197d1da46b0f8e2d282ae871e838bb64da8596574adaa76fbd9fb0c5"),
    ("00000006050403a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e",
     "a28c6865939a9a79faaa5c4c2a9d4a91cdac8c96c861b9c9e61ef1"),
    ("00000007060504a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "dcf1fb7b5d9e23fb9d4e131253658ad86ebdca3e51e83f077d9c2d93"),
]

# RFC 8613 Appendix C.1 - C.3: (secret, salt, sender id, recipient id, id context) -> keys, Common IV.
SECRET = "0102030405060708090a0b0c0d0e0f10"
DERIVATIONS = [
    (SECRET, "9e7ca92223786340", "", "01", None,
     "f0910ed7295e6ad4b54fc793154302ff", "ffb14e093c94c9cac9471648b4f98710", "4622d4dd6d944168eefb54987c"),
    (SECRET, "", "00", "01", None,
     "321b26943253c7ffb6003b0b64d74041", "e57b5635815177cd679ab4bcec9d7dda", "be35ae297d2dace910c52e99f9"),
    (SECRET, "9e7ca92223786340", "", "01", "37cbf3210017a2d3",
     "af2a1300a5e95788b356336eeecd2b92", "e39a0c7c77b43f03b4b39ab9a268699f", "2ca58fb85ff1b81c0b7181b85e"),
]
# C.4 - C.6: the GET to coap://localhost/tv1 with sequence number 20 -> OSCORE option, ciphertext.
REQUESTS = [(0, False, "0914", "612f1092f1776f1c1668b3825e"),
            (1, False, "091400", "4ed339a5a379b0b8bc731fffb0"),
            (2, True, "19140837cbf3210017a2d3", "72cd7273fd331ac45cffbe55c3")]
# C.7 (no Partial IV) and C.8 (Partial IV 0): "Hello World!" 2.05 answering C.4.
RESPONSES = [("", "dbaad1e9a7e7b2a813d3c31524378303cdafae119106"),
             ("0100", "4d4c13669384b67354b2b6175ff4b8658c666a6cf88e")]

MP_SCRIPT = """
import json, sys
from binascii import unhexlify as h, hexlify
from shared import ccm, oscore
from shared import aes
args = json.loads(sys.stdin.read())
out = {"backend": aes.backend(), "ccm": [], "derive": [], "req": [], "resp": [], "random": []}
for n, a, p, c in args["rfc3610"]:
    got = ccm.encrypt(h(args["key"]), h(n), h(p), h(a))
    back = ccm.decrypt(h(args["key"]), h(n), got, h(a))
    out["ccm"].append([hexlify(got).decode(), back == h(p)])
ctxs = []
for s, salt, sid, rid, idc, *_ in args["derive"]:
    c = oscore.Context(h(s), h(salt), h(sid), h(rid), h(idc) if idc else None)
    ctxs.append(c)
    out["derive"].append([hexlify(x).decode() for x in (c.sender_key, c.recipient_key, c.common_iv)])
for i, kctx, _, _ in args["req"]:
    opt, ct, rid = ctxs[i].protect_request(20, 1, [(11, b"tv1")], b"", kctx)
    out["req"].append([hexlify(opt).decode(), hexlify(ct).decode()])
for opt, ct in args["resp"]:
    code, opts, payload = ctxs[0].unprotect_response(h(opt), h(ct), (b"", b"\\x14"))
    out["resp"].append([code, opts, payload.decode()])
for k, n, a, p in args["random"]:
    out["random"].append(hexlify(ccm.encrypt(h(k), h(n), h(p), h(a))).decode())
print(json.dumps(out))
"""


def _random_cases(n: int) -> list[tuple[str, str, str, str]]:
    rng = random.Random(16)
    sizes = [0, 1, 15, 16, 17, 31, 32, 33, 300] + [rng.randrange(0, 400) for _ in range(n)]
    return [(rng.randbytes(16).hex(), rng.randbytes(13).hex(), rng.randbytes(rng.choice([0, 1, 20, 300])).hex(),
             rng.randbytes(size).hex()) for size in sizes]


def test_ccm_and_oscore_match_the_rfcs_and_cryptography_in_micropython(mp_runtime: str) -> None:
    cases = _random_cases(12)
    args = {"key": KEY, "rfc3610": RFC3610, "derive": DERIVATIONS, "req": REQUESTS, "resp": RESPONSES, "random": cases}
    out = json.loads(run_micropython(MP_SCRIPT, stdin=json.dumps(args)).strip().splitlines()[-1])
    assert out["backend"] == ("python" if mp_runtime == "esp32like" else "cryptolib")
    assert [c[0] for c in out["ccm"]] == [v[3] for v in RFC3610]
    assert all(c[1] for c in out["ccm"])
    assert out["derive"] == [list(d[5:]) for d in DERIVATIONS]
    assert out["req"] == [[r[2], r[3]] for r in REQUESTS]
    assert out["resp"] == [[69, [], "Hello World!"]] * 2  # 2.05 Content
    for (k, n, a, p), got in zip(cases, out["random"]):
        assert got == AESCCM(bytes.fromhex(k), tag_length=8).encrypt(bytes.fromhex(n), bytes.fromhex(p), bytes.fromhex(a)).hex()


@pytest.mark.parametrize("vector", RFC3610)
def test_ccm_matches_rfc3610_on_cpython(vector: tuple[str, str, str, str]) -> None:
    n, a, p, c = (bytes.fromhex(x) for x in vector)
    key = bytes.fromhex(KEY)
    assert ccm.encrypt(key, n, p, a) == c
    assert ccm.decrypt(key, n, c, a) == p


def test_any_altered_bit_fails_the_tag_and_gives_no_plaintext() -> None:
    n, a, p, c = (bytes.fromhex(x) for x in RFC3610[0])
    key = bytes.fromhex(KEY)
    for i in range(len(c)):
        for bit in (0x01, 0x80):
            bad = bytearray(c)
            bad[i] ^= bit
            with pytest.raises(ccm.CCMError):
                ccm.decrypt(key, n, bytes(bad), a)
    with pytest.raises(ccm.CCMError):
        ccm.decrypt(key, n, c, a + b"x")  # other associated data
    with pytest.raises(ccm.CCMError):
        ccm.decrypt(key, n, c[:5], a)  # shorter than the tag
    with pytest.raises(ValueError):
        ccm.encrypt(key, n[:6], p, a)  # a nonce CCM does not define


def test_forged_or_misbound_responses_are_refused() -> None:
    c = oscore.Context(bytes.fromhex(SECRET), bytes.fromhex("9e7ca92223786340"), b"", b"\x01")
    opt, ct = (bytes.fromhex(x) for x in RESPONSES[0])
    assert c.unprotect_response(opt, ct, (b"", b"\x14"))[0] == 69
    with pytest.raises(oscore.OSCOREError):  # the same answer for another request (seq 21)
        c.unprotect_response(opt, ct, (b"", b"\x15"))
    with pytest.raises(oscore.OSCOREError):  # a forged 2.01 in clear text with a made-up tag
        c.unprotect_response(b"", b"\x41" + bytes(8), (b"", b"\x14"))
    with pytest.raises(oscore.OSCOREError):  # a kid that is not the server's
        c.unprotect_response(b"\x08\x07", ct, (b"", b"\x14"))
    with pytest.raises(oscore.OSCOREError):  # reserved flag bits
        c.unprotect_response(b"\x80", ct, (b"", b"\x14"))
    with pytest.raises(oscore.OSCOREError):
        c.protect_request(1 << 40, 2, [], b"")  # Partial IV exhausted


def test_option_codec_round_trips_long_numbers_and_values() -> None:
    opts = [(11, b"readings"), (12, b"\x12"), (252, bytes(14)), (300, bytes(300))]
    encoded = oscore.encode_options(opts)
    assert oscore.decode_options(encoded + b"\xffpay") == (opts, b"pay")
    for bad in (encoded[:-1], b"\xd1", b"\xf0", b"\xff"):  # cut short, nibble 15, marker without payload
        with pytest.raises(oscore.OSCOREError):
            oscore.decode_options(bad)


def test_requests_and_responses_interoperate_with_aiocoap_both_ways(tmp_path) -> None:
    """shared.oscore's requests unprotect in aiocoap's server context, and
    aiocoap's responses (with and without a Partial IV) verify here."""
    import aiocoap
    from aiocoap.message import Direction
    from aiocoap.oscore import FilesystemSecurityContext

    from microgrid.coordinator.link.contexts import write_context_dir

    secret, salt, kid = bytes(range(16)), b"\x01\x02\x03\x04", b"\xa1\xb2\xc3\xd4\xe5\xf6"
    write_context_dir(tmp_path / "server", secret, salt, b"", kid)
    server = FilesystemSecurityContext(str(tmp_path / "server"))
    client = oscore.Context(secret, salt, kid, b"")
    try:
        for seq, payload in ((0, b""), (1, b"x"), (300, bytes(range(256)) * 2)):
            value, ct, rid = client.protect_request(seq, 2, [(11, b"readings"), (12, b"\x12")], payload)
            outer = aiocoap.Message(code=aiocoap.POST, payload=ct)
            outer.opt.oscore = value
            outer.direction = Direction.INCOMING
            inner, request_id = server.unprotect(outer)
            assert inner.code == aiocoap.POST and inner.opt.uri_path == ("readings",) and inner.payload == payload
            assert inner.opt.content_format == 18
            answer = aiocoap.Message(code=aiocoap.CREATED, payload=b"stored", echo=b"e" * 8 if seq == 300 else None)
            protected, _ = server.protect(answer, request_id)
            code, opts, body = client.unprotect_response(protected.opt.oscore or b"", protected.payload, rid)
            assert (code, body) == (65, b"stored")
            assert opts == ([(oscore.OPT_ECHO, b"e" * 8)] if seq == 300 else [])
            # The same answer is worthless for the next request.
            with pytest.raises(oscore.OSCOREError):
                client.unprotect_response(protected.opt.oscore or b"", protected.payload,
                                          (kid, oscore.piv_bytes(seq + 1)))
        # A replayed request is refused by aiocoap.
        value, ct, rid = client.protect_request(1, 2, [(11, b"readings")], b"x")
        outer = aiocoap.Message(code=aiocoap.POST, payload=ct)
        outer.opt.oscore = value
        outer.direction = Direction.INCOMING
        with pytest.raises(Exception, match="(?i)replay|reused"):
            server.unprotect(outer)
    finally:
        server._destroy()


def _sbox_from_definition() -> bytes:
    """FIPS-197 5.1.1 written out: the multiplicative inverse in GF(2^8)
    (found by search), then the affine map. Independent of how
    shared/aes_soft.py got its table."""
    def mul(a: int, b: int) -> int:
        p = 0
        while b:
            if b & 1:
                p ^= a
            a = ((a << 1) ^ 0x11B) if a & 0x80 else a << 1
            b >>= 1
        return p

    out = bytearray(256)
    for x in range(256):
        inv = next((y for y in range(1, 256) if mul(x, y) == 1), 0)
        s = 0x63
        for i in range(8):
            bit = (inv >> i ^ inv >> (i + 4) % 8 ^ inv >> (i + 5) % 8 ^ inv >> (i + 6) % 8 ^ inv >> (i + 7) % 8) & 1
            s ^= bit << i
        out[x] = s
    return bytes(out)


def test_plain_python_aes_is_byte_identical_to_cryptography() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from microgrid.shared import aes_soft

    assert aes_soft._SBOX == _sbox_from_definition()
    # FIPS-197 Appendix C.1.
    block = bytearray(bytes.fromhex("00112233445566778899aabbccddeeff"))
    aes_soft.SoftAES(bytes(range(16))).encrypt(block, block)
    assert block.hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"
    rng = random.Random(3610)
    for _ in range(200):
        key, src = rng.randbytes(16), rng.randbytes(16)
        want = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(src)
        dst = bytearray(16)
        aes_soft.SoftAES(key).encrypt(src, dst)
        assert bytes(dst) == want and src != want
    with pytest.raises(ValueError, match="AES-128 only"):
        aes_soft.SoftAES(bytes(32))


def test_ccm_seals_in_place_and_takes_long_associated_data() -> None:
    from microgrid.shared import aes

    rng = random.Random(8613)
    key, nonce = rng.randbytes(16), rng.randbytes(13)
    # Associated data of 0xFF00 bytes or more takes the 6-byte length header.
    for aad_len, n in ((0, 0), (14, 2), (0xFEFF, 17), (0xFF00, 40)):
        aad, plain = rng.randbytes(aad_len), rng.randbytes(n)
        want = AESCCM(key, tag_length=8).encrypt(nonce, plain, aad)
        buf = bytearray(plain) + bytearray(8)
        assert ccm.seal(aes.Block(key), nonce, buf, n, aad) is buf and bytes(buf) == want
        assert ccm.decrypt(key, nonce, want, aad) == plain
    with pytest.raises(ValueError, match="no room"):
        ccm.seal(aes.Block(key), nonce, bytearray(10), 5)
    assert aes.backend() == "cryptography"
