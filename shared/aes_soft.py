# AES-128 block encryption in plain Python (FIPS-197), for a MicroPython
# without `cryptolib` (the esp32-like test build). Encryption only: CCM
# never decrypts a block. Slow (a few hundred microseconds a block on a
# PC) and not constant-time: boards use cryptolib (shared/aes.py).
#
# The S-box is a bytes literal: frozen into a board's image it stays in
# flash and costs no heap (computed at import it took 256 bytes and two
# functions). The tests derive it independently (FIPS-197 5.1.1) and hold
# the block to the `cryptography` package. Per key: the 176 bytes of round
# keys; one 16-byte scratch block is shared by every key (no block is
# ever encrypted from an interrupt, so nothing runs two at once).

# FIPS-197 Figure 7.
_SBOX = (
    b"\x63\x7c\x77\x7b\xf2\x6b\x6f\xc5\x30\x01\x67\x2b\xfe\xd7\xab\x76"
    b"\xca\x82\xc9\x7d\xfa\x59\x47\xf0\xad\xd4\xa2\xaf\x9c\xa4\x72\xc0"
    b"\xb7\xfd\x93\x26\x36\x3f\xf7\xcc\x34\xa5\xe5\xf1\x71\xd8\x31\x15"
    b"\x04\xc7\x23\xc3\x18\x96\x05\x9a\x07\x12\x80\xe2\xeb\x27\xb2\x75"
    b"\x09\x83\x2c\x1a\x1b\x6e\x5a\xa0\x52\x3b\xd6\xb3\x29\xe3\x2f\x84"
    b"\x53\xd1\x00\xed\x20\xfc\xb1\x5b\x6a\xcb\xbe\x39\x4a\x4c\x58\xcf"
    b"\xd0\xef\xaa\xfb\x43\x4d\x33\x85\x45\xf9\x02\x7f\x50\x3c\x9f\xa8"
    b"\x51\xa3\x40\x8f\x92\x9d\x38\xf5\xbc\xb6\xda\x21\x10\xff\xf3\xd2"
    b"\xcd\x0c\x13\xec\x5f\x97\x44\x17\xc4\xa7\x7e\x3d\x64\x5d\x19\x73"
    b"\x60\x81\x4f\xdc\x22\x2a\x90\x88\x46\xee\xb8\x14\xde\x5e\x0b\xdb"
    b"\xe0\x32\x3a\x0a\x49\x06\x24\x5c\xc2\xd3\xac\x62\x91\x95\xe4\x79"
    b"\xe7\xc8\x37\x6d\x8d\xd5\x4e\xa9\x6c\x56\xf4\xea\x65\x7a\xae\x08"
    b"\xba\x78\x25\x2e\x1c\xa6\xb4\xc6\xe8\xdd\x74\x1f\x4b\xbd\x8b\x8a"
    b"\x70\x3e\xb5\x66\x48\x03\xf6\x0e\x61\x35\x57\xb9\x86\xc1\x1d\x9e"
    b"\xe1\xf8\x98\x11\x69\xd9\x8e\x94\x9b\x1e\x87\xe9\xce\x55\x28\xdf"
    b"\x8c\xa1\x89\x0d\xbf\xe6\x42\x68\x41\x99\x2d\x0f\xb0\x54\xbb\x16"
)
_T = bytearray(16)


def _xtime(a):
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


class SoftAES:
    def __init__(self, key):
        if len(key) != 16:
            raise ValueError("plain-Python AES does AES-128 only: key of %d bytes" % len(key))
        s = _SBOX
        w = bytearray(176)
        w[:16] = key
        rcon = 1
        for i in range(16, 176, 4):
            a, b, c, d = w[i - 4], w[i - 3], w[i - 2], w[i - 1]
            if i % 16 == 0:
                a, b, c, d = s[b] ^ rcon, s[c], s[d], s[a]
                rcon = _xtime(rcon)
            w[i] = w[i - 16] ^ a
            w[i + 1] = w[i - 15] ^ b
            w[i + 2] = w[i - 14] ^ c
            w[i + 3] = w[i - 13] ^ d
        self.rk = w

    def encrypt(self, src, dst):
        """Encrypt the 16-byte block `src` into the 16-byte bytearray `dst`
        (which may be `src`)."""
        s = _SBOX
        rk = self.rk
        t = _T
        for i in range(16):
            dst[i] = src[i] ^ rk[i]
        for r in range(1, 11):
            # SubBytes and ShiftRows together: column c, row j takes the
            # byte of column c + j.
            for c in range(4):
                for j in range(4):
                    t[c * 4 + j] = s[dst[((c + j) & 3) * 4 + j]]
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
                dst[i] = t[i] ^ rk[o + i]
