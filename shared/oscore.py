# OSCORE (RFC 8613), the client's half: protect a request, verify and
# decrypt the response to it. Sans-I/O: bytes in, bytes out; the sender
# sequence number is handed in by the caller, who persists it (on the
# meter edge/oscore.py reserves numbers in blocks on flash).
#
# Algorithms: AES-CCM-16-64-128 (COSE 10, the default: 16-byte key,
# 8-byte tag, 13-byte nonce) and HKDF-SHA256, the only pair the meter
# needs. The coordinator side is aiocoap's OSCORE; the tests hold this
# module to RFC 8613 Appendix C and to aiocoap, byte for byte.
#
# What the meter relies on: a response is accepted only if it decrypts
# under the recipient key with an AAD naming this request's kid and
# Partial IV (request-response binding, RFC 8613 7.3). A response without
# its own Partial IV uses the request's nonce; one with a Partial IV (the
# server's Echo answer after it lost its replay window) uses the server's
# nonce. Each request gets a new sequence number, so a client needs no
# replay window for responses: one request, at most one answer accepted.


from . import cbor, ccm
from .aes import Block
from .secp256k1 import hmac_sha256

ALG_AES_CCM_16_64_128 = 10
KEY_LEN = 16
NONCE_LEN = 13
TAG_LEN = 8
MAX_ID_LEN = NONCE_LEN - 6  # 7 bytes
MAX_SEQ = (1 << 40) - 1  # the Partial IV is at most 5 bytes

OPT_OSCORE = 9
OPT_ECHO = 252


class OSCOREError(ValueError):
    """A message that is not a valid OSCORE message for this context."""


def hkdf(salt, ikm, info, length):
    """HKDF-SHA256 (RFC 5869), extract then expand. MicroPython has
    hashlib.sha256 but no hmac: HMAC comes from shared/secp256k1.py."""
    prk = hmac_sha256(salt if salt else bytes(32), ikm)
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = hmac_sha256(prk, t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


def _derive(secret, salt, role_id, id_context, kind, length):
    # info = [id, id_context, alg_aead, type, L] (RFC 8613 3.2.1)
    info = cbor.dumps([role_id, id_context, ALG_AES_CCM_16_64_128, kind, length])
    return hkdf(salt, secret, info, length)


def piv_bytes(seq):
    """The Partial IV: the sequence number in as few bytes as it takes
    (zero is one byte, 0x00)."""
    n = 1
    while seq >> (8 * n):
        n += 1
    return bytes((seq >> (8 * (n - 1 - i))) & 0xFF for i in range(n))


def encode_options(options):
    """CoAP options, [(number, bytes)] sorted by number, as on the wire
    (RFC 7252 3.1): the inner options of an OSCORE plaintext."""
    out = bytearray()
    last = 0
    for num, val in options:
        d = num - last
        n = len(val)
        dn = d if d < 13 else (13 if d < 269 else 14)
        ln = n if n < 13 else (13 if n < 269 else 14)
        out.append((dn << 4) | ln)
        for v, nib in ((d, dn), (n, ln)):
            if nib == 13:
                out.append(v - 13)
            elif nib == 14:
                out.append((v - 269) >> 8)
                out.append((v - 269) & 0xFF)
        out.extend(val)
        last = num
    return bytes(out)


def decode_options(data, start=0):
    """([(number, bytes)], payload) from CoAP options followed by an
    optional 0xFF and payload; OSCOREError when malformed."""
    opts = []
    i = start
    num = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0xFF:
            if i + 1 == n:
                raise OSCOREError("payload marker without payload")
            return opts, bytes(data[i + 1:])
        i += 1
        d = b >> 4
        ln = b & 0x0F
        vals = []
        for nib in (d, ln):
            if nib == 15:
                raise OSCOREError("option nibble 15")
            if nib == 13:
                if i >= n:
                    raise OSCOREError("option cut short")
                nib = data[i] + 13
                i += 1
            elif nib == 14:
                if i + 1 >= n:
                    raise OSCOREError("option cut short")
                nib = ((data[i] << 8) | data[i + 1]) + 269
                i += 2
            vals.append(nib)
        num += vals[0]
        if i + vals[1] > n:
            raise OSCOREError("option value cut short")
        opts.append((num, bytes(data[i:i + vals[1]])))
        i += vals[1]
    return opts, b""


def encode_option_value(piv=b"", kid=None, kid_context=None):
    """The OSCORE option's value (RFC 8613 6.1): flags, Partial IV,
    kid context, kid. Empty when there is nothing to say."""
    flags = len(piv)
    if kid is not None:
        flags |= 0x08
    if kid_context is not None:
        flags |= 0x10
    if not flags:
        return b""
    out = bytearray((flags,))
    out.extend(piv)
    if kid_context is not None:
        out.append(len(kid_context))
        out.extend(kid_context)
    if kid is not None:
        out.extend(kid)
    return bytes(out)


def decode_option_value(value):
    """(piv, kid or None, kid_context or None)."""
    if not value:
        return b"", None, None
    flags = value[0]
    n = flags & 0x07
    if flags & 0xE0 or n > 5:
        raise OSCOREError("OSCORE option flags 0x%02x: reserved bits set or Partial IV longer than 5 bytes" % flags)
    i = 1 + n
    if i > len(value):
        raise OSCOREError("OSCORE option cut short in the Partial IV")
    piv = bytes(value[1:i])
    kid_context = None
    if flags & 0x10:
        if i >= len(value) or i + 1 + value[i] > len(value):
            raise OSCOREError("OSCORE option cut short in the kid context")
        kid_context = bytes(value[i + 1:i + 1 + value[i]])
        i += 1 + value[i]
    kid = bytes(value[i:]) if flags & 0x08 else None
    if kid is None and i != len(value):
        raise OSCOREError("OSCORE option has bytes after its fields")
    return piv, kid, kid_context


class Context:
    """A security context (RFC 8613 3): the keys and Common IV derived
    from the master secret and salt, sender and recipient ids and the
    optional ID context. Holds no sequence number: the caller's.

    `keys` (sender key, recipient key, Common IV), when given, are the
    ones derived before (secret and salt are then not used): a meter
    derives once at boot and keeps only these 45 bytes, and builds a
    Context around them for each message. Each AES key schedule is made
    on its first use."""

    def __init__(self, secret, salt, sender_id, recipient_id, id_context=None, keys=None):
        if len(sender_id) > MAX_ID_LEN or len(recipient_id) > MAX_ID_LEN:
            raise ValueError("OSCORE ids are at most %d bytes with a %d-byte nonce" % (MAX_ID_LEN, NONCE_LEN))
        if sender_id == recipient_id:
            raise ValueError("OSCORE sender and recipient ids must differ")
        self.sender_id = bytes(sender_id)
        self.recipient_id = bytes(recipient_id)
        self.id_context = None if id_context is None else bytes(id_context)
        if keys is None:
            keys = (_derive(secret, salt, self.sender_id, self.id_context, "Key", KEY_LEN),
                    _derive(secret, salt, self.recipient_id, self.id_context, "Key", KEY_LEN),
                    _derive(secret, salt, b"", self.id_context, "IV", NONCE_LEN))
        self.sender_key, self.recipient_key, self.common_iv = keys
        self._send = None
        self._recv = None

    def pack(self):
        """The context as one bytes object: sender id, recipient id and ID
        context (each length-prefixed; 255: no ID context), sender key,
        recipient key, Common IV. What a meter keeps in RAM between
        messages (one object of ~60 bytes instead of six); `unpack` makes
        the Context again."""
        idc = self.id_context
        return (bytes((len(self.sender_id),)) + self.sender_id + bytes((len(self.recipient_id),)) + self.recipient_id
                + (b"\xff" if idc is None else bytes((len(idc),)) + idc)
                + self.sender_key + self.recipient_key + self.common_iv)

    def nonce(self, id_piv, piv):
        """RFC 8613 5.2: size of ID_PIV | ID_PIV padded to 7 | PIV padded
        to 5, XOR the Common IV."""
        raw = bytearray(NONCE_LEN)
        raw[0] = len(id_piv)
        raw[1 + MAX_ID_LEN - len(id_piv):1 + MAX_ID_LEN] = id_piv
        raw[NONCE_LEN - len(piv):] = piv
        for i in range(NONCE_LEN):
            raw[i] ^= self.common_iv[i]
        return bytes(raw)

    @staticmethod
    def aad(request_kid, request_piv):
        """Enc_structure ["Encrypt0", h'', external_aad] with external_aad
        = [1, [alg], request_kid, request_piv, h''] (RFC 8613 5.4)."""
        external = cbor.dumps([1, [ALG_AES_CCM_16_64_128], request_kid, request_piv, b""])
        return cbor.dumps(["Encrypt0", b"", external])

    def protect_request(self, seq, code, options, payload, send_kid_context=False):
        """(OSCORE option value, ciphertext (a bytearray), request id) for a
        request with inner `code`, class E `options` [(number, bytes)]
        sorted, and `payload`; `seq` never used before with this context."""
        if not 0 <= seq <= MAX_SEQ:
            raise OSCOREError("sender sequence number %d exhausted: provision a new context" % seq)
        piv = piv_bytes(seq)
        # The plaintext (code, inner options, payload) is built once, with
        # room for the tag, and encrypted where it lies: the ciphertext.
        opts = encode_options(options)
        n = 1 + len(opts) + (1 + len(payload) if payload else 0)
        buf = bytearray(n + TAG_LEN)
        buf[0] = code
        buf[1:1 + len(opts)] = opts
        if payload:
            buf[1 + len(opts)] = 0xFF
            buf[2 + len(opts):n] = payload
        if self._send is None:
            self._send = Block(self.sender_key)
        ccm.seal(self._send, self.nonce(self.sender_id, piv), buf, n, self.aad(self.sender_id, piv), TAG_LEN)
        value = encode_option_value(piv, self.sender_id, self.id_context if send_kid_context else None)
        return value, buf, (self.sender_id, piv)

    def unprotect_response(self, option_value, ciphertext, request_id):
        """(code, options, payload) of the response to the request
        `request_id` (kid, piv); OSCOREError when it does not verify."""
        piv, kid, kid_context = decode_option_value(option_value)
        if kid is not None and kid != self.recipient_id:
            raise OSCOREError("response kid %s is not the server's" % kid.hex())
        if kid_context is not None and kid_context != self.id_context:
            raise OSCOREError("response kid context does not match")
        if piv:
            nonce = self.nonce(self.recipient_id, piv)
        else:
            nonce = self.nonce(request_id[0], request_id[1])
        if self._recv is None:
            self._recv = Block(self.recipient_key)
        try:
            plain = ccm.decrypt(self.recipient_key, nonce, ciphertext, self.aad(request_id[0], request_id[1]), TAG_LEN,
                                self._recv)
        except ccm.CCMError:
            raise OSCOREError("response does not verify (forged, altered, or not for this request)")
        if not plain:
            raise OSCOREError("response plaintext is empty")
        opts, payload = decode_options(plain, 1)
        return plain[0], opts, payload


def unpack(packed):
    """The Context that Context.pack() packed."""
    i = 1 + packed[0]
    sid = packed[1:i]
    rid = packed[i + 1:i + 1 + packed[i]]
    i += 1 + packed[i]
    idc = None
    if packed[i] != 0xFF:
        idc = packed[i + 1:i + 1 + packed[i]]
        i += packed[i]
    i += 1
    if len(packed) != i + 2 * KEY_LEN + NONCE_LEN:
        raise ValueError("packed OSCORE context of %d bytes: expected %d" % (len(packed), i + 2 * KEY_LEN + NONCE_LEN))
    return Context(None, None, sid, rid, idc, (packed[i:i + KEY_LEN], packed[i + KEY_LEN:i + 2 * KEY_LEN], packed[i + 2 * KEY_LEN:]))
