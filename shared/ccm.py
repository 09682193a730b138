# AES-CCM (RFC 3610): authenticated encryption with a CBC-MAC and a
# counter-mode key stream, both from one AES block function (shared/aes.py).
# OSCORE's default algorithm AES-CCM-16-64-128 (RFC 8152 10.2, COSE alg 10)
# is this with a 16-byte key, an 8-byte tag and a 13-byte nonce (L = 2:
# messages up to 65,535 bytes).
#
# Small on purpose, for a meter's heap: `seal` encrypts in place, in the
# buffer the caller built the plaintext in (with room for the tag), so a
# message is never copied; the MAC, counter and key-stream blocks are three
# 16-byte buffers made once at import and shared by every call (no block is
# ever encrypted from an interrupt or a second thread, so nothing runs two
# at once), and the associated data is absorbed where it lies, not joined
# to its length header. `encrypt` and `decrypt` allocate only their output.

from .aes import Block

_X = bytearray(16)  # CBC-MAC state
_A = bytearray(16)  # counter block A_i
_S = bytearray(16)  # key stream block S_i


class CCMError(ValueError):
    """The tag does not match: the message or its associated data was
    altered, or the key or nonce is not the sender's."""


def _check(nonce, tag_len):
    if not 7 <= len(nonce) <= 13:
        raise ValueError("CCM nonce of %d bytes: expected 7..13" % len(nonce))
    if tag_len not in (4, 6, 8, 10, 12, 14, 16):
        raise ValueError("CCM tag of %d bytes: expected 4, 6, ..., 16" % tag_len)


def _absorb(block, data, n, pos):
    # XOR data[:n] into the MAC state from byte `pos` on, encrypting it at
    # every full block and after the last, zero-padded one.
    x = _X
    for i in range(n):
        x[pos] ^= data[i]
        pos += 1
        if pos == 16:
            block.encrypt(x, x)
            pos = 0
    if pos:
        block.encrypt(x, x)


def _mac(block, nonce, aad, msg, n, tag_len):
    """CBC-MAC over B0, the encoded associated data and msg[:n], in _X."""
    q = 15 - len(nonce)
    x = _X
    x[0] = (64 if aad else 0) | (((tag_len - 2) // 2) << 3) | (q - 1)
    x[1:1 + len(nonce)] = nonce
    for i in range(q):
        x[15 - i] = (n >> (8 * i)) & 0xFF
    block.encrypt(x, x)
    a = len(aad)
    if a:
        # The length header, then the data, as one zero-padded stream.
        if a < 0xFF00:
            x[0] ^= a >> 8
            x[1] ^= a & 0xFF
            pos = 2
        else:
            x[0] ^= 0xFF
            x[1] ^= 0xFE
            for i in range(4):
                x[2 + i] ^= (a >> (24 - 8 * i)) & 0xFF
            pos = 6
        _absorb(block, aad, a, pos)
    if n:
        _absorb(block, msg, n, 0)


def _ctr(block, nonce, data, n, out):
    """out[:n] = data[:n] XOR the key stream S_1, S_2, ... (out may be
    data); then S_0, which encrypts the tag, in _S."""
    q = 15 - len(nonce)
    a = _A
    s = _S
    a[0] = q - 1
    a[1:1 + len(nonce)] = nonce
    i = 1
    for off in range(0, n, 16):
        c = i
        for k in range(q):
            a[15 - k] = c & 0xFF
            c >>= 8
        block.encrypt(a, s)
        for j in range(off, min(off + 16, n)):
            out[j] = data[j] ^ s[j - off]
        i += 1
    for k in range(q):
        a[15 - k] = 0
    block.encrypt(a, s)


def seal(block, nonce, buf, n, aad=b"", tag_len=8):
    """Encrypt buf[:n] in place and write the tag into buf[n:n + tag_len]
    (the bytearray `buf` has that room); returns buf. `block` is a
    shared.aes.Block for the key."""
    _check(nonce, tag_len)
    if len(buf) < n + tag_len:
        raise ValueError("CCM buffer of %d bytes has no room for a %d-byte tag after %d bytes" % (len(buf), tag_len, n))
    _mac(block, nonce, aad, buf, n, tag_len)
    _ctr(block, nonce, buf, n, buf)
    x = _X
    s = _S
    for i in range(tag_len):
        buf[n + i] = x[i] ^ s[i]
    return buf


def encrypt(key, nonce, plaintext, aad=b"", tag_len=8, block=None):
    """ciphertext || tag. `block` is a shared.aes.Block for `key`, when the
    caller keeps one (saves the key schedule per message)."""
    n = len(plaintext)
    buf = bytearray(n + tag_len)
    buf[:n] = plaintext
    return bytes(seal(block or Block(key), nonce, buf, n, aad, tag_len))


def decrypt(key, nonce, ciphertext, aad=b"", tag_len=8, block=None):
    """The plaintext, or CCMError when the tag does not verify."""
    _check(nonce, tag_len)
    n = len(ciphertext) - tag_len
    if n < 0:
        raise CCMError("CCM message of %d bytes is shorter than its %d-byte tag" % (len(ciphertext), tag_len))
    block = block or Block(key)
    out = bytearray(n)
    _ctr(block, nonce, ciphertext, n, out)
    _mac(block, nonce, aad, out, n, tag_len)
    # Compare every byte whatever the first difference (no early exit).
    x = _X
    s = _S
    diff = 0
    for i in range(tag_len):
        diff |= x[i] ^ s[i] ^ ciphertext[n + i]
    if diff:
        raise CCMError("CCM tag does not verify")
    return bytes(out)
