# Runs on the board: make the device key there, so the private key never
# leaves it. Keeps an existing key (flashing again must not change the
# meter's identity). Prints one line, `KEY new|kept <public key hex>`; the
# secret itself is written to the key file and printed nowhere.

import binascii
import json
import os

from shared import secp256k1


def _key_file():
    try:
        with open("config.json") as f:
            return json.loads(f.read()).get("key_file", "device.key")
    except (OSError, ValueError, AttributeError):
        return "device.key"


def _random_secret():
    # ESP32: os.urandom is the hardware RNG, truly random while the radio
    # is on; switch the Wi-Fi station on for the draw. Elsewhere: no-op.
    try:
        import network

        network.WLAN(network.STA_IF).active(True)
    except Exception:
        pass
    while True:
        secret = os.urandom(32)
        d = int.from_bytes(secret, "big")
        if 0 < d < secp256k1.N:
            return secret


def main():
    path = _key_file()
    state = "kept"
    try:
        with open(path) as f:
            secret = binascii.unhexlify(f.read().strip())
        if len(secret) != 32:
            raise ValueError("key file %s holds %d bytes, expected 32" % (path, len(secret)))
    except OSError:
        secret = _random_secret()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(binascii.hexlify(secret).decode() + "\n")
        os.rename(tmp, path)
        state = "new"
    print("KEY %s %s" % (state, binascii.hexlify(secp256k1.public_key(secret)).decode()))


main()
