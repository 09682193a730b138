"""The reading message: what the meter builds, a third party verifies with
nothing but the public key, and the parser refuses anything malformed."""

from __future__ import annotations

import json
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgrid.shared import cbor, reading, secp256k1

from ..conftest import run_micropython

SECRET = bytes(range(1, 33))
PUB = secp256k1.public_key(SECRET)


def sample(seq: int = 1, **kw: object) -> bytes:
    args = dict(t=1_700_000_000, import_wh=1234, export_wh=5, power_w=420, voltage_v=230.5)
    args.update(kw)
    return reading.build(SECRET, PUB, seq, **args)  # type: ignore[arg-type]


def test_roundtrip_keeps_every_value() -> None:
    r = reading.parse(sample(7, extra=[("current", "A", 1.5), ("flags", None, 1)]))
    assert (r.device, r.seq, r.t) == (reading.device_id(PUB), 7, 1_700_000_000)
    assert (r.import_wh, r.export_wh, r.power_w, r.voltage_v) == (1234, 5, 420, 230.5)
    assert r.extra == {"current": 1.5, "flags": 1}
    assert reading.verify(r, PUB)


def test_micropython_builds_the_same_bytes_as_cpython(mp_runtime: str) -> None:
    script = """
from shared import reading, secp256k1
import binascii
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
for seq in (1, 2, 300, 70000):
    m = reading.build(sk, pub, seq, 1700000000 + seq, 1234 + seq, seq // 3, -seq, 229.5, [("frequency", "Hz", 50)])
    print(binascii.hexlify(m).decode())
"""
    out = run_micropython(script).split()
    expected = [
        sample(seq, t=1_700_000_000 + seq, import_wh=1234 + seq, export_wh=seq // 3, power_w=-seq, voltage_v=229.5,
               extra=[("frequency", "Hz", 50)]).hex()
        for seq in (1, 2, 300, 70000)
    ]
    assert out == expected


def _pycose_es256k():
    """pycose knows secp256k1 keys but not the ES256K algorithm id (-47):
    registering it takes these lines, using python-ecdsa for the maths."""
    import hashlib

    from ecdsa.curves import SECP256k1
    from pycose.algorithms import CoseAlgorithm, _Ecdsa

    if -47 in CoseAlgorithm.get_registered_classes():
        return CoseAlgorithm.get_registered_classes()[-47]

    @CoseAlgorithm.register_attribute()
    class Es256K(_Ecdsa):
        identifier = -47
        fullname = "ES256K"

        @classmethod
        def get_hash_func(cls):
            return hashlib.sha256

        @classmethod
        def get_curve(cls):
            return SECP256k1

    return Es256K


def test_a_standard_cose_library_verifies_a_reading_with_only_the_public_key() -> None:
    from pycose.keys import EC2Key
    from pycose.keys.curves import SECP256K1
    from pycose.messages import Sign1Message

    _pycose_es256k()
    message = sample(42)

    def decode(data: bytes) -> Sign1Message:
        # cbor2 6 hands tagged arrays and maps over as tuple and frozendict,
        # which pycose 1.1's decode() does not expect: give it list and dict.
        tagged = cbor2.loads(data)
        assert tagged.tag == 18
        parts = list(tagged.value)
        parts[1] = dict(parts[1])
        return Sign1Message.from_cose_obj(parts, True)

    msg = decode(message)
    x, y = secp256k1.decode_public_key(PUB)
    msg.key = EC2Key(crv=SECP256K1, x=x.to_bytes(32, "big"), y=y.to_bytes(32, "big"))
    assert msg.verify_signature()
    pack = cbor2.loads(msg.payload)
    assert pack[0][-2] == reading.device_id(PUB) + ":"
    # A tampered payload fails the same third-party check.
    tampered = cbor2.loads(message)
    parts = list(tampered.value)
    parts[2] = parts[2].replace(b"\x19\x04\xd2", b"\x19\x04\xd3")
    assert parts[2] != tampered.value[2]
    msg2 = decode(cbor2.dumps(cbor2.CBORTag(18, parts)))
    msg2.key = msg.key
    assert not msg2.verify_signature()


def test_kid_is_first_eight_bytes_of_sha256_of_compressed_key() -> None:
    import hashlib

    r = reading.parse(sample())
    assert r.kid == hashlib.sha256(PUB).digest()[:8]
    assert cbor2.loads(r.message.protected) == {1: -47, 4: r.kid}


def _resign(pack: object) -> bytes:
    return reading.sign_payload(SECRET, PUB, cbor.dumps(pack))


def _pack() -> list:
    return cbor2.loads(reading.parse(sample()).message.payload)


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda p: p[1].pop(2), "carries no value"),
        (lambda p: p.pop(4), "missing voltage"),
        (lambda p: p[1].__setitem__(1, "kWh"), "unit 'kWh'"),
        (lambda p: p[1].__setitem__(2, -1), "non-negative integer"),
        (lambda p: p[0].__setitem__(2, -5), "seq must be"),
        (lambda p: p[0].__setitem__(-2, "someoneelse:"), "does not belong"),
        (lambda p: p.append({0: "import", 1: "Wh", 2: 1}), "appears twice"),
        (lambda p: p[3].__setitem__(2, "lots"), "must be a number"),
        (lambda p: p.clear(), "non-empty"),
    ],
)
def test_semantically_wrong_payloads_are_refused(mutate, why: str) -> None:
    pack = _pack()
    mutate(pack)
    with pytest.raises(reading.ReadingError, match=why):
        reading.parse(_resign(pack))


def test_wrong_algorithm_and_oversized_messages_are_refused() -> None:
    protected = cbor.dumps({1: -7, 4: reading.key_id(PUB)})
    payload = reading.parse(sample()).message.payload
    bad = cbor.dumps(cbor.Tag(18, [protected, {}, payload, b"\x00" * 64]))
    with pytest.raises(reading.ReadingError, match="not ES256K"):
        reading.parse(bad)
    with pytest.raises(reading.ReadingError, match="exceeds"):
        reading.parse(b"\x00" * 2000)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_reading_error_only(data: bytes) -> None:
    with pytest.raises(reading.ReadingError):
        reading.parse(data)


@given(st.data())
@settings(max_examples=300)
def test_any_truncation_or_bit_flip_is_refused_or_fails_verification(data: st.DataObject) -> None:
    message = bytearray(sample(9))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(message) - 1))
        mutated = bytes(message[:cut])
    else:
        i = data.draw(st.integers(0, len(message) - 1))
        bit = data.draw(st.integers(0, 7))
        message[i] ^= 1 << bit
        mutated = bytes(message)
    try:
        r = reading.parse(mutated)
    except reading.ReadingError:
        return
    assert not reading.verify(r, PUB)


def test_the_example_in_the_format_document_is_what_we_build() -> None:
    import re
    from pathlib import Path

    import microgrid.shared

    doc = (Path(microgrid.shared.__file__).parent / "READING_FORMAT.md").read_text()
    block = doc.split("## Example", 1)[1].split("```")[1]
    example = bytes.fromhex(re.sub(r"\s", "", block))
    assert example == reading.build(SECRET, PUB, 7, 1_700_000_000, 1234, 5, 420, 230.5)


BATCH = [(1, 1_700_000_000, 10, 0, 5, 230.0, None),
         (2, 1_700_000_060, 11, 0, 6, 231.0, [("flags", None, 1)]),
         (3, 1_700_000_120, 12, 1, -3, 229.5, None)]


def test_a_batch_carries_several_readings_under_one_signature() -> None:
    message = reading.build_batch(SECRET, PUB, BATCH)
    readings = reading.parse_all(message)
    assert [(r.seq, r.t, r.import_wh, r.extra) for r in readings] == [
        (1, 1_700_000_000, 10, {}), (2, 1_700_000_060, 11, {"flags": 1}), (3, 1_700_000_120, 12, {})]
    assert all(reading.verify(r, PUB) for r in readings)
    with pytest.raises(reading.ReadingError, match="holds 3 readings"):
        reading.parse(message)
    # A single reading is a batch of one, byte for byte.
    assert reading.build_batch(SECRET, PUB, BATCH[:1]) == reading.build(SECRET, PUB, *BATCH[0][:6])


def test_micropython_builds_the_same_batch_bytes(mp_runtime: str) -> None:
    out = run_micropython("""
from shared import reading, secp256k1
import binascii
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
b = [(1, 1700000000, 10, 0, 5, 230.0, None), (2, 1700000060, 11, 0, 6, 231.0, [("flags", None, 1)]),
     (3, 1700000120, 12, 1, -3, 229.5, None)]
print(binascii.hexlify(reading.build_batch(sk, pub, b)).decode())
""").split()
    assert out == [reading.build_batch(SECRET, PUB, BATCH).hex()]


def test_batches_out_of_order_or_too_long_are_refused() -> None:
    backwards = [BATCH[1], BATCH[0]]
    with pytest.raises(reading.ReadingError, match="must increase"):
        reading.parse_all(reading.build_batch(SECRET, PUB, backwards))
    many = [(i, 1_700_000_000 + i, i, 0, 0, 230.0, None) for i in range(1, 10)]
    with pytest.raises(reading.ReadingError, match="exceeds"):
        reading.parse_all(reading.sign_payload(SECRET, PUB, reading.encode_batch(reading.device_id(PUB), many)))


def test_a_float32_power_reads_as_the_decimal_the_meter_measured_and_still_verifies() -> None:
    """A single-precision meter (an ESP32) holds 994.3 W as the float32
    994.29998779296875 and sends it as a CBOR float32. The reading is parsed
    as 994.3, the shortest decimal that is that float32, while the
    signature is checked over the bytes as sent."""
    f32 = struct.unpack(">f", struct.pack(">f", 994.3))[0]
    volt = struct.unpack(">f", struct.pack(">f", 230.1))[0]
    msg = sample(power_w=f32, voltage_v=volt, extra=[("current", "A", struct.unpack(">f", struct.pack(">f", 4.321))[0])])
    assert struct.pack(">f", 994.3) in msg  # a float32 on the wire, as the board sent it
    r = reading.parse(msg)
    assert (r.power_w, r.voltage_v, r.extra["current"]) == (994.3, 230.1, 4.321)
    assert reading.verify(r, PUB)
