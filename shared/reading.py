# The reading message: a COSE_Sign1 (RFC 9052) signed with ES256K (RFC 8812)
# whose payload is a SenML pack in CBOR (RFC 8428). See READING_FORMAT.md
# beside this file for the specification a third party implements.
#
# Runs on MicroPython (the meter builds and signs) and CPython (the
# coordinator parses; it verifies with bitcoinx over the bytes as received).

import binascii

from . import cbor, cose, senml, secp256k1
from .reading_build import (  # noqa: F401 - the meter's half, re-exported
    ALG_ES256K, EXPORT, IMPORT, KID_LEN, POWER, SEQ, VOLTAGE, build, build_batch, device_id, encode_batch,
    encode_payload, key_id, sign_payload)

MAX_MESSAGE_BYTES = 1024

# name -> unit for the records every reading carries.
REQUIRED = ((IMPORT, "Wh"), (EXPORT, "Wh"), (POWER, "W"), (VOLTAGE, "V"))
MAX_SEQ = (1 << 63) - 1
# Readings one message may carry (a slow board signs once per batch).
MAX_BATCH = 8


class ReadingError(ValueError):
    pass


class Reading:
    """A parsed (not yet verified) reading. `message` keeps the COSE
    structure as received; verify over message.to_be_signed()."""

    def __init__(self, message, kid, device, seq, t, values, extra):
        self.message = message
        self.kid = kid
        self.device = device
        self.seq = seq
        self.t = t
        self.import_wh = values[IMPORT]
        self.export_wh = values[EXPORT]
        self.power_w = values[POWER]
        self.voltage_v = values[VOLTAGE]
        self.extra = extra


def _open(data):
    """The COSE envelope checked, and the payload's records resolved."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ReadingError("message of %d bytes exceeds %d" % (len(data), MAX_MESSAGE_BYTES))
    try:
        msg = cose.parse(data)
    except cose.COSEError as e:
        raise ReadingError(str(e))
    alg = msg.headers.get(cose.HDR_ALG)
    if alg != ALG_ES256K:
        raise ReadingError("protected alg %r is not ES256K (-47)" % (alg,))
    kid = msg.headers.get(cose.HDR_KID)
    if not isinstance(kid, bytes) or len(kid) != KID_LEN:
        raise ReadingError("protected kid must be %d bytes" % KID_LEN)
    if len(msg.signature) != 64:
        raise ReadingError("ES256K signature must be 64 bytes, got %d" % len(msg.signature))
    try:
        # A float32 is the decimal its single-precision meter measured.
        records = senml.resolve(cbor.loads(msg.payload, f32_decimal=True))
    except (cbor.CBORError, senml.SenMLError) as e:
        raise ReadingError("payload: %s" % e)
    return msg, kid, records


def _reading(msg, kid, device, group):
    """One reading from its records (the first is its seq record)."""
    prefix = device + ":"
    values = {}
    extra = {}
    t = None
    for rec in group:
        name = rec["n"]
        if not name.startswith(prefix):
            raise ReadingError("record %r does not belong to device %s" % (name, device))
        short = name[len(prefix):]
        if short in values or short in extra:
            raise ReadingError("record %r appears twice" % short)
        if t is None:
            t = rec["t"]
        value = rec.get("v", rec.get("vs", rec.get("vb", rec.get("vd"))))
        if short == SEQ or short in (IMPORT, EXPORT, POWER, VOLTAGE):
            values[short] = (value, rec["u"])
        else:
            extra[short] = value
    if SEQ not in values:
        raise ReadingError("missing seq record")
    seq = values.pop(SEQ)[0]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise ReadingError("seq must be an integer in 0..2^63-1, got %r" % (seq,))
    if not isinstance(t, (int, float)) or t < 0:
        raise ReadingError("time must be a non-negative number, got %r" % (t,))
    plain = {}
    for name, unit in REQUIRED:
        if name not in values:
            raise ReadingError("missing %s record" % name)
        value, got_unit = values[name]
        if got_unit != unit:
            raise ReadingError("%s unit %r, expected %r" % (name, got_unit, unit))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ReadingError("%s value must be a number" % name)
        if unit == "Wh" and (not isinstance(value, int) or value < 0):
            raise ReadingError("%s must be a non-negative integer Wh, got %r" % (name, value))
        plain[name] = value
    return Reading(msg, kid, device, seq, t, plain, extra)


def parse_all(data):
    """Every reading of a message, in order: one, or a batch of up to
    MAX_BATCH whose sequence numbers strictly increase. Each reading starts
    with its `seq` record. Raises ReadingError; does not check the
    signature (one signature covers the whole batch)."""
    msg, kid, records = _open(data)
    device = binascii.hexlify(kid).decode()
    seq_name = device + ":" + SEQ
    groups = []
    for rec in records:
        if rec["n"] == seq_name or not groups:
            groups.append([])
        groups[-1].append(rec)
    if len(groups) > MAX_BATCH:
        raise ReadingError("batch of %d readings exceeds %d" % (len(groups), MAX_BATCH))
    out = [_reading(msg, kid, device, g) for g in groups]
    for a, b in zip(out, out[1:]):
        if b.seq <= a.seq:
            raise ReadingError("batch sequence numbers must increase: %d then %d" % (a.seq, b.seq))
    return out


def parse(data):
    """Parse a message holding exactly one reading (see parse_all)."""
    readings = parse_all(data)
    if len(readings) != 1:
        raise ReadingError("message holds %d readings: expected one (use parse_all)" % len(readings))
    return readings[0]


def verify(reading, public_key):
    """Check the signature with the pure-Python verifier (the coordinator
    uses bitcoinx instead; both accept exactly the same signatures)."""
    if key_id(public_key) != reading.kid:
        return False
    return secp256k1.verify(public_key, reading.message.to_be_signed(), reading.message.signature)
