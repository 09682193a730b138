# AES-128 block encryption in plain Python (FIPS-197), for a MicroPython
# without `cryptolib` (the esp32-like test build). Encryption only: CCM
# never decrypts a block. Slow (a few hundred microseconds a block on a
# PC) and not constant-time: boards use cryptolib (shared/aes.py).
#
# The S-box is computed once at import (256 bytes) instead of being a
# table in the source; the round keys are 176 bytes per key.

_SBOX = None


def _rotl8(x, n):
    return ((x << n) | (x >> (8 - n))) & 0xFF


def _make_sbox():
    # Walk the multiplicative group of GF(2^8) with generator 3: p runs
    # over 3^i, q over its inverse 3^-i; the S-box is the affine map of
    # the inverse.
    s = bytearray(256)
    p = q = 1
    while True:
        p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        s[p] = q ^ _rotl8(q, 1) ^ _rotl8(q, 2) ^ _rotl8(q, 3) ^ _rotl8(q, 4) ^ 0x63
        if p == 1:
            break
    s[0] = 0x63
    return bytes(s)


def _xtime(a):
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


class SoftAES:
    def __init__(self, key):
        global _SBOX
        if len(key) != 16:
            raise ValueError("plain-Python AES does AES-128 only: key of %d bytes" % len(key))
        if _SBOX is None:
            _SBOX = _make_sbox()
        s = _SBOX
        w = bytearray(key)
        rcon = 1
        for i in range(16, 176, 4):
            t = w[i - 4:i]
            if i % 16 == 0:
                t = bytearray((s[t[1]] ^ rcon, s[t[2]], s[t[3]], s[t[0]]))
                rcon = _xtime(rcon)
            for j in range(4):
                w.append(w[i - 16 + j] ^ t[j])
        self.rk = w
        self.t = bytearray(16)

    def encrypt(self, buf):
        """Encrypt the 16-byte bytearray `buf` in place."""
        s = _SBOX
        rk = self.rk
        t = self.t
        for i in range(16):
            buf[i] ^= rk[i]
        for r in range(1, 11):
            # SubBytes and ShiftRows together: column c, row j takes the
            # byte of column c + j.
            for c in range(4):
                for j in range(4):
                    t[c * 4 + j] = s[buf[((c + j) & 3) * 4 + j]]
            if r < 10:
                for c in range(0, 16, 4):
                    a0, a1, a2, a3 = t[c], t[c + 1], t[c + 2], t[c + 3]
                    x = a0 ^ a1 ^ a2 ^ a3
                    t[c] = a0 ^ x ^ _xtime(a0 ^ a1)
                    t[c + 1] = a1 ^ x ^ _xtime(a1 ^ a2)
                    t[c + 2] = a2 ^ x ^ _xtime(a2 ^ a3)
                    t[c + 3] = a3 ^ x ^ _xtime(a3 ^ a0)
            o = r * 16
            for i in range(16):
                buf[i] = t[i] ^ rk[o + i]
