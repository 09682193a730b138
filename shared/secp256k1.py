# ES256K on secp256k1 (RFC 8812): ECDSA with SHA-256, deterministic nonces
# (RFC 6979) and low-S, in plain Python that runs on MicroPython and CPython.
#
# Why our own: MicroPython boards have no secp256k1 library. The signature
# must be byte-identical to what libsecp256k1 (through bitcoinx) produces for
# the same key and digest; the tests hold us to that.
#
# MicroPython traps avoided here: pow(a, -1, m) silently returns 0 (we use
# extended Euclid), int.bit_length does not exist, hashlib objects cannot be
# copied (HMAC is computed from scratch each time, see hmac_sha256).

import hashlib

P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
GX = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
GY = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8
HALF_N = N >> 1


class KeyError_(ValueError):
    pass


def inverse(a, m):
    """Modular inverse by extended Euclid (a must be coprime to m)."""
    a = a % m
    if a == 0:
        raise ZeroDivisionError("no inverse of 0")
    lm, hm = 1, 0
    low, high = a, m
    while low > 1:
        q = high // low
        lm, hm = hm - lm * q, lm
        low, high = high - low * q, low
    return lm % m


def int_from_bytes(b):
    return int.from_bytes(b, "big")


def int_to_32(n):
    return n.to_bytes(32, "big")


def hmac_sha256(key, msg):
    """HMAC-SHA256 (RFC 2104). micropython-lib's hmac is not installable
    here (no network for mip) and needs hashlib .copy(), which MicroPython's
    hashlib lacks; this is the smallest equivalent."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (64 - len(key))
    ipad = bytes(x ^ 0x36 for x in key)
    opad = bytes(x ^ 0x5C for x in key)
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


# --- Jacobian point arithmetic (a = 0). A point is (X, Y, Z); Z == 0 is
# the point at infinity. Affine (x, y) = (X/Z^2, Y/Z^3).

_INF = (0, 1, 0)


# Few big integers alive at once: a board signs in a heap of a few tens of
# KB, and every value alive in a step below holds ~100 bytes (a 256-bit
# remainder keeps the 512-bit product's digit buffer). Names are reused so
# a value no longer needed is garbage at once (a local lives until the
# function returns); measured in the esp32-like build, a signature then
# needs ~1.5 KB less free heap (bench/bench_firmware.py). The formulas are
# the usual ones (dbl-2009-l, add-2007-bl without the shortcuts).


def _double(p):
    X1, Y1, Z1 = p
    if Z1 == 0 or Y1 == 0:
        return _INF
    z = 2 * Y1 * Z1 % P  # Z3
    a = Y1 * Y1 % P  # YY
    s = 4 * X1 * a % P  # S
    a = 8 * a * a % P  # 8 YY^2
    m = 3 * X1 * X1 % P  # M
    x = (m * m - 2 * s) % P  # X3
    return (x, (m * (s - x) - a) % P, z)


def _add(p, q):
    X1, Y1, Z1 = p
    X2, Y2, Z2 = q
    if Z1 == 0:
        return q
    if Z2 == 0:
        return p
    a = Z1 * Z1 % P  # Z1Z1
    b = Z2 * Z2 % P  # Z2Z2
    u = X1 * b % P  # U1
    b = Y1 * Z2 * b % P  # S1
    h = (X2 * a - u) % P  # H = U2 - U1
    r = (Y2 * Z1 * a - b) % P  # R = S2 - S1
    if h == 0:  # U1 == U2: the same x
        if r != 0:
            return _INF
        return _double(p)
    a = h * h % P  # HH
    u = u * a % P  # V = U1 HH
    a = h * a % P  # HHH
    x = (r * r - a - 2 * u) % P  # X3
    return (x, (r * (u - x) - b * a) % P, h * Z1 * Z2 % P)


def _to_affine(p):
    X, Y, Z = p
    if Z == 0:
        return None
    zi = inverse(Z, P)
    zi2 = zi * zi % P
    return (X * zi2 % P, Y * zi2 * zi % P)


# Precomputed multiples G * 16^i * j for a fixed 4-bit window: k*G then
# costs 64 additions and no doublings. Built lazily on first use (64 * 15
# points) and only where memory allows (see _table_fits).
_G_TABLE = None


def _g_table():
    global _G_TABLE
    if _G_TABLE is None:
        table = []
        base = (GX, GY, 1)
        for _ in range(64):
            row = [None] * 16
            acc = _INF
            for j in range(1, 16):
                acc = _add(acc, base)
                row[j] = acc
            table.append(row)
            for _ in range(4):
                base = _double(base)
        _G_TABLE = table
    return _G_TABLE


def _table_fits():
    # The table holds 960 points (about 460 KB of big integers on
    # MicroPython, measured by bench/bench_firmware.py): worth it on the
    # unix port or a board with PSRAM, not on a bare ESP32, which signs
    # without it in a 54 KB peak heap, about 2.7x slower.
    try:
        import gc

        return not hasattr(gc, "mem_free") or gc.mem_free() > 1000000
    except ImportError:
        return True


USE_G_TABLE = None


def _mul_g(k):
    global USE_G_TABLE
    if USE_G_TABLE is None:
        USE_G_TABLE = _table_fits()
    if not USE_G_TABLE:
        return _mul((GX, GY, 1), k)
    table = _g_table()
    acc = _INF
    i = 0
    while k:
        nib = k & 15
        if nib:
            acc = _add(acc, table[i][nib])
        k >>= 4
        i += 1
    return acc


def _mul(point, k):
    acc = _INF
    addend = point
    while k:
        if k & 1:
            acc = _add(acc, addend)
        addend = _double(addend)
        k >>= 1
    return acc


def _check_secret(d):
    if not 0 < d < N:
        raise KeyError_("private key out of range 1..n-1")


def public_key(secret):
    """Compressed SEC1 public key (33 bytes) of a 32-byte secret."""
    if len(secret) != 32:
        raise KeyError_("private key must be 32 bytes, got %d" % len(secret))
    d = int_from_bytes(secret)
    _check_secret(d)
    x, y = _to_affine(_mul_g(d))
    return bytes([2 + (y & 1)]) + int_to_32(x)


def decode_public_key(pub):
    """Affine point of a compressed or uncompressed SEC1 key; rejects
    points not on the curve."""
    if len(pub) == 33 and pub[0] in (2, 3):
        x = int_from_bytes(pub[1:])
        if x >= P:
            raise KeyError_("public key x out of range")
        y2 = (pow(x, 3, P) + 7) % P
        y = pow(y2, (P + 1) // 4, P)
        if y * y % P != y2:
            raise KeyError_("public key not on curve")
        if (y & 1) != (pub[0] & 1):
            y = P - y
        return (x, y)
    if len(pub) == 65 and pub[0] == 4:
        x = int_from_bytes(pub[1:33])
        y = int_from_bytes(pub[33:])
        if x >= P or y >= P or (y * y - x * x * x - 7) % P != 0:
            raise KeyError_("public key not on curve")
        return (x, y)
    raise KeyError_("public key must be 33 (compressed) or 65 bytes, got %d" % len(pub))


def _rfc6979_nonces(d, digest):
    """Candidate nonces per RFC 6979 section 3.2 with HMAC-SHA256."""
    x = int_to_32(d)
    h = int_to_32(int_from_bytes(digest) % N)
    V = b"\x01" * 32
    K = b"\x00" * 32
    K = hmac_sha256(K, V + b"\x00" + x + h)
    V = hmac_sha256(K, V)
    K = hmac_sha256(K, V + b"\x01" + x + h)
    V = hmac_sha256(K, V)
    while True:
        V = hmac_sha256(K, V)
        k = int_from_bytes(V)
        if 0 < k < N:
            yield k
        K = hmac_sha256(K, V + b"\x00")
        V = hmac_sha256(K, V)


def sign_digest(secret, digest):
    """Sign a 32-byte digest; returns (r, s) with s low (s <= n/2)."""
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes, got %d" % len(digest))
    if len(secret) != 32:
        raise KeyError_("private key must be 32 bytes, got %d" % len(secret))
    d = int_from_bytes(secret)
    _check_secret(d)
    z = int_from_bytes(digest) % N
    for k in _rfc6979_nonces(d, digest):
        R = _to_affine(_mul_g(k))
        r = R[0] % N
        if r == 0:
            continue
        s = inverse(k, N) * (z + r * d) % N
        if s == 0:
            continue
        if s > HALF_N:
            s = N - s
        return r, s


def sign(secret, message):
    """ES256K: ECDSA over SHA-256(message); 64-byte r||s as COSE wants."""
    r, s = sign_digest(secret, hashlib.sha256(message).digest())
    return int_to_32(r) + int_to_32(s)


def verify(pub, message, signature):
    """True if the 64-byte r||s signature over SHA-256(message) is valid."""
    if len(signature) != 64:
        return False
    r = int_from_bytes(signature[:32])
    s = int_from_bytes(signature[32:])
    if not (0 < r < N and 0 < s < N):
        return False
    try:
        x, y = decode_public_key(pub)
    except KeyError_:
        return False
    w = inverse(s, N)
    u2 = r * w % N
    # u1 = z * w; fewer big integers held while the points are multiplied
    # (see the note above _double).
    w = int_from_bytes(hashlib.sha256(message).digest()) % N * w % N
    del s
    q = _mul((x, y, 1), u2)
    del x, y, u2
    aff = _to_affine(_add(_mul_g(w), q))
    return aff is not None and aff[0] % N == r


def der_signature(sig64):
    """DER encoding of an r||s signature, for tools that want ECDSA-DER."""
    def _int(b):
        b = b.lstrip(b"\x00") or b"\x00"
        if b[0] & 0x80:
            b = b"\x00" + b
        return b"\x02" + bytes([len(b)]) + b

    body = _int(sig64[:32]) + _int(sig64[32:])
    return b"\x30" + bytes([len(body)]) + body
