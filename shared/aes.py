# One AES-128 block encryption, the only primitive AES-CCM needs (CCM
# runs AES forwards for both its MAC and its key stream).
#
# Where it comes from, in order: MicroPython's built-in `cryptolib.aes`
# (the ESP32 port has it, in hardware; so does pip's unix port), the
# `cryptography` package under CPython (the coordinator and the tests),
# else the plain-Python block in shared/aes_soft.py, imported only then
# (the esp32-like test build has no cryptolib). All three sit behind
# `Block(key).encrypt(buf)`, which encrypts a 16-byte bytearray in place,
# so CCM allocates nothing per block.


class Block:
    def __init__(self, key):
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key of %d bytes: expected 16, 24 or 32" % len(key))
        self.backend = None
        try:
            import cryptolib

            # Mode 1 is ECB: one block at a time, which is what CCM wants.
            self._aes = cryptolib.aes(bytes(key), 1)
            self.backend = "cryptolib"
            return
        except ImportError:
            pass
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
            self.backend = "cryptography"
            return
        except ImportError:
            pass
        from .aes_soft import SoftAES

        self._soft = SoftAES(key)
        self.backend = "python"

    def encrypt(self, buf):
        """Encrypt the 16-byte bytearray `buf` in place."""
        if self.backend == "cryptolib":
            self._aes.encrypt(buf, buf)
        elif self.backend == "cryptography":
            buf[:] = self._enc.update(bytes(buf))
        else:
            self._soft.encrypt(buf)
