# One AES block encryption, the only primitive AES-CCM needs (CCM
# runs AES forwards for both its MAC and its key stream).
#
# Where it comes from, in order: MicroPython's built-in `cryptolib.aes`
# (the ESP32 port has it, in hardware; so does pip's unix port), the
# `cryptography` package under CPython (the coordinator and the tests),
# else the plain-Python block in shared/aes_soft.py, imported only then
# (the esp32-like test build has no cryptolib). `Block(key)` returns an
# object whose `encrypt(src, dst)` encrypts the 16-byte block `src` into
# the 16-byte bytearray `dst` (which may be `src`): cryptolib's own
# object as it is, with no wrapper around it, so a board pays nothing
# for the indirection and CCM allocates nothing per block.


def Block(key):
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key of %d bytes: expected 16, 24 or 32" % len(key))
    try:
        import cryptolib

        # Mode 1 is ECB: one block at a time, which is what CCM wants.
        return cryptolib.aes(bytes(key), 1)
    except ImportError:
        pass
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        from .aes_soft import SoftAES

        return SoftAES(key)

    # CPython only: the class is made here so MicroPython never builds it.
    class Encryptor:
        def __init__(self, enc):
            self._enc = enc

        def encrypt(self, src, dst):
            dst[:] = self._enc.update(bytes(src))

    return Encryptor(Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor())


def backend():
    """Which AES `Block` uses here: "cryptolib", "cryptography" or "python"."""
    try:
        import cryptolib  # noqa: F401

        return "cryptolib"
    except ImportError:
        pass
    try:
        import cryptography  # noqa: F401

        return "cryptography"
    except ImportError:
        return "python"
