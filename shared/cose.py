# COSE_Sign1 (RFC 9052 section 4.2) build and parse, MicroPython-safe.
#
# Only what a reading needs: one signer, an empty external AAD, the
# algorithm and key id in the protected header. The signature covers the
# exact protected-header bytes and payload bytes as sent, so the verifier
# never re-serialises anything.

from . import cbor

TAG_SIGN1 = 18
HDR_ALG = 1
HDR_KID = 4
CONTENT_FORMAT_SIGN1 = 18  # application/cose; cose-type="cose-sign1"


class COSEError(ValueError):
    pass


def sig_structure(protected, payload, external_aad=b""):
    """The bytes that are signed: Sig_structure for a single signer."""
    return cbor.dumps(["Signature1", protected, external_aad, payload])


def encode_protected(alg, kid):
    # Keys in ascending order (1 then 4): the deterministic encoding.
    return cbor.dumps({HDR_ALG: alg, HDR_KID: kid})


def build(protected, payload, signature):
    return cbor.dumps(cbor.Tag(TAG_SIGN1, [protected, {}, payload, signature]))


class Sign1:
    """A parsed COSE_Sign1 message; fields are the bytes as received."""

    def __init__(self, protected, headers, unprotected, payload, signature):
        self.protected = protected
        self.headers = headers
        self.unprotected = unprotected
        self.payload = payload
        self.signature = signature

    def to_be_signed(self):
        return sig_structure(self.protected, self.payload)


def parse(data):
    try:
        obj = cbor.loads(data)
    except cbor.CBORError as e:
        raise COSEError("not CBOR: %s" % e)
    if isinstance(obj, cbor.Tag):
        if obj.tag != TAG_SIGN1:
            raise COSEError("CBOR tag %d is not COSE_Sign1 (18)" % obj.tag)
        obj = obj.value
    if not isinstance(obj, list) or len(obj) != 4:
        raise COSEError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes):
        raise COSEError("protected header must be a byte string")
    if not isinstance(unprotected, dict):
        raise COSEError("unprotected header must be a map")
    if not isinstance(payload, bytes):
        raise COSEError("payload must be an attached byte string")
    if not isinstance(signature, bytes):
        raise COSEError("signature must be a byte string")
    if protected:
        try:
            headers = cbor.loads(protected)
        except cbor.CBORError as e:
            raise COSEError("protected header is not CBOR: %s" % e)
        if not isinstance(headers, dict):
            raise COSEError("protected header must encode a map")
    else:
        headers = {}
    for label in headers:
        if label in unprotected:
            raise COSEError("header %r both protected and unprotected" % (label,))
    return Sign1(protected, headers, unprotected, payload, signature)
