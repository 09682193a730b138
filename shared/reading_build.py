# Building a reading: what a meter needs of shared/reading.py (which
# re-exports all of this and adds parsing, for the coordinator). A module of
# its own so that the meter does not hold the parser's functions and
# classes in its heap: frozen into a board's image, code costs no RAM, but
# every function and class of an imported module does (shared/reading.py
# and shared/senml.py together ~2.5 KB of a 48 KB heap).
#
# The SenML labels (RFC 8428, section 6; also in shared/senml.py) are
# const() here: on MicroPython they are folded into the bytecode and take
# no heap.

import binascii
import hashlib

from . import cbor, cose, secp256k1

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_BN = const(-2)
_BT = const(-3)
_N = const(0)
_U = const(1)
_V = const(2)
_VS = const(3)
_VB = const(4)

ALG_ES256K = -47
KID_LEN = 8

# Record names, appended to the base name "<device-id>:".
SEQ = "seq"
IMPORT = "import"
EXPORT = "export"
POWER = "power"
VOLTAGE = "voltage"


def key_id(public_key):
    """kid: the first 8 bytes of SHA-256 over the compressed SEC1 key."""
    return hashlib.sha256(public_key).digest()[:KID_LEN]


def device_id(public_key):
    """The device id is the key id in lower-case hex (16 characters)."""
    return binascii.hexlify(key_id(public_key)).decode()


def encode_payload(device, seq, t, import_wh, export_wh, power_w, voltage_v, extra=None):
    """SenML pack for one reading. `extra` is a list of (name, unit, value)
    records appended after the required ones (current, frequency, flags)."""
    pack = [
        {_BN: device + ":", _BT: t, _N: SEQ, _V: seq},
        {_N: IMPORT, _U: "Wh", _V: import_wh},
        {_N: EXPORT, _U: "Wh", _V: export_wh},
        {_N: POWER, _U: "W", _V: power_w},
        {_N: VOLTAGE, _U: "V", _V: voltage_v},
    ]
    if extra:
        for name, unit, value in extra:
            rec = {_N: name}
            if unit:
                rec[_U] = unit
            if isinstance(value, str):
                rec[_VS] = value
            elif isinstance(value, bool):
                rec[_VB] = value
            else:
                rec[_V] = value
            pack.append(rec)
    return cbor.dumps(pack)


def encode_batch(device, readings):
    """SenML pack for several readings: tuples (seq, t, import_wh,
    export_wh, power_w, voltage_v, extra), each starting with its own seq
    record and base time. One reading encodes exactly as encode_payload."""
    pack = []
    for seq, t, imp, exp, power, volt, extra in readings:
        one = cbor.loads(encode_payload(device, seq, t, imp, exp, power, volt, extra))
        if pack:
            del one[0][_BN]  # the base name carries over
        pack.extend(one)
    return cbor.dumps(pack)


def build_batch(secret, public_key, readings):
    """One signed message carrying several readings (see encode_batch)."""
    return sign_payload(secret, public_key, encode_batch(device_id(public_key), readings))


def sign_payload(secret, public_key, payload):
    """Wrap a payload in a COSE_Sign1 signed by `secret`."""
    protected = cose.encode_protected(ALG_ES256K, key_id(public_key))
    # secp256k1.sign() over the digest, the Sig_structure hashed first: it
    # is not held in RAM while the big-integer arithmetic runs.
    digest = hashlib.sha256(cose.sig_structure(protected, payload)).digest()
    r, s = secp256k1.sign_digest(secret, digest)
    return cose.build(protected, payload, secp256k1.int_to_32(r) + secp256k1.int_to_32(s))


def build(secret, public_key, seq, t, import_wh, export_wh, power_w, voltage_v, extra=None):
    payload = encode_payload(device_id(public_key), seq, t, import_wh, export_wh, power_w, voltage_v, extra)
    return sign_payload(secret, public_key, payload)
