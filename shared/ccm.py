# AES-CCM (RFC 3610): authenticated encryption with a CBC-MAC and a
# counter-mode key stream, both from one AES block function (shared/aes.py).
# OSCORE's default algorithm AES-CCM-16-64-128 (RFC 8152 10.2, COSE alg 10)
# is this with a 16-byte key, an 8-byte tag and a 13-byte nonce (L = 2:
# messages up to 65,535 bytes).
#
# Small on purpose: one 16-byte buffer for the MAC, one for the counter
# block, one for the key stream, reused for every block; the output is the
# only allocation that grows with the message.

from .aes import Block


class CCMError(ValueError):
    """The tag does not match: the message or its associated data was
    altered, or the key or nonce is not the sender's."""


def _check(nonce, tag_len):
    if not 7 <= len(nonce) <= 13:
        raise ValueError("CCM nonce of %d bytes: expected 7..13" % len(nonce))
    if tag_len not in (4, 6, 8, 10, 12, 14, 16):
        raise ValueError("CCM tag of %d bytes: expected 4, 6, ..., 16" % tag_len)


def _mac(block, nonce, aad, msg, tag_len):
    """CBC-MAC over B0, the encoded associated data and the message."""
    q = 15 - len(nonce)
    x = bytearray(16)
    x[0] = (64 if aad else 0) | (((tag_len - 2) // 2) << 3) | (q - 1)
    x[1:1 + len(nonce)] = nonce
    n = len(msg)
    for i in range(q):
        x[15 - i] = (n >> (8 * i)) & 0xFF
    block.encrypt(x)
    if aad:
        a = len(aad)
        if a < 0xFF00:
            head = bytes((a >> 8, a & 0xFF))
        else:
            head = b"\xff\xfe" + bytes(((a >> 24) & 255, (a >> 16) & 255, (a >> 8) & 255, a & 255))
        _absorb(block, x, head + aad)
    _absorb(block, x, msg)
    return x


def _absorb(block, x, data):
    # XOR each 16-byte block (the last zero-padded) into x, then encrypt.
    n = len(data)
    for off in range(0, n, 16):
        end = min(off + 16, n)
        for i in range(off, end):
            x[i - off] ^= data[i]
        block.encrypt(x)


def _ctr(block, nonce, data, out, ks):
    """XOR data with the key stream S_1, S_2, ... into out."""
    q = 15 - len(nonce)
    a = bytearray(16)
    a[0] = q - 1
    a[1:1 + len(nonce)] = nonce
    n = len(data)
    i = 1
    for off in range(0, n, 16):
        for k in range(q):
            a[15 - k] = (i >> (8 * k)) & 0xFF
        ks[:] = a
        block.encrypt(ks)
        for j in range(off, min(off + 16, n)):
            out[j] = data[j] ^ ks[j - off]
        i += 1
    # S_0, which encrypts the tag.
    for k in range(q):
        a[15 - k] = 0
    ks[:] = a
    block.encrypt(ks)


def encrypt(key, nonce, plaintext, aad=b"", tag_len=8, block=None):
    """ciphertext || tag. `block` is a shared.aes.Block for `key`, when the
    caller keeps one (saves the key schedule per message)."""
    _check(nonce, tag_len)
    block = block or Block(key)
    x = _mac(block, nonce, aad, plaintext, tag_len)
    n = len(plaintext)
    out = bytearray(n + tag_len)
    ks = bytearray(16)
    _ctr(block, nonce, plaintext, out, ks)
    for i in range(tag_len):
        out[n + i] = x[i] ^ ks[i]
    return bytes(out)


def decrypt(key, nonce, ciphertext, aad=b"", tag_len=8, block=None):
    """The plaintext, or CCMError when the tag does not verify."""
    _check(nonce, tag_len)
    n = len(ciphertext) - tag_len
    if n < 0:
        raise CCMError("CCM message of %d bytes is shorter than its %d-byte tag" % (len(ciphertext), tag_len))
    block = block or Block(key)
    out = bytearray(n)
    ks = bytearray(16)
    _ctr(block, nonce, memoryview(ciphertext)[:n], out, ks)
    x = _mac(block, nonce, aad, out, tag_len)
    # Compare every byte whatever the first difference (no early exit).
    diff = 0
    for i in range(tag_len):
        diff |= x[i] ^ ks[i] ^ ciphertext[n + i]
    if diff:
        raise CCMError("CCM tag does not verify")
    return bytes(out)
