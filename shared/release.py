# A firmware release: a manifest signed with a release key, plus the image.
#
# Sans-I/O and MicroPython-safe: `microgrid release` makes manifests on
# CPython, the coordinators check them before they store or pass on a
# chunk, and the meter checks them (signature, board, version, every chunk,
# the whole image) before it switches to the new slot. The envelope is the
# readings' own COSE_Sign1 with ES256K (shared/reading.sign_payload, kid =
# the first 8 bytes of SHA-256 over the release key); the payload is a CBOR
# map with text keys, so a reading can never pass for a manifest nor the
# other way round (a reading's payload is a SenML array). Format and
# rotation rules: docs/UPDATES.md.

import hashlib

from . import cbor, cose, reading, secp256k1

FORMAT = 1
# A chunk is one flash block of an ESP32 OTA partition (4 KiB): the meter
# verifies a chunk in RAM, then writes it whole with one erase.
CHUNK = 4096
HASH_LEN = 32
MAX_NOTES = 1024
MAX_KEYS = 4
# An ESP32 app slot in the default 4 MB OTA layout is 1.5 MB.
MAX_SIZE = 0x180000


class ReleaseError(ValueError):
    pass


def parse_version(text):
    """"MAJOR.MINOR.PATCH" -> a tuple of ints, compared as such."""
    if not isinstance(text, str):
        raise ReleaseError("version %r: expected a string MAJOR.MINOR.PATCH" % (text,))
    parts = text.split(".")
    if len(parts) != 3:
        raise ReleaseError("version %r: expected MAJOR.MINOR.PATCH" % (text,))
    out = []
    for p in parts:
        if not p or not p.isdigit() or len(p) > 6:
            raise ReleaseError("version %r: expected MAJOR.MINOR.PATCH of decimal numbers" % (text,))
        out.append(int(p))
    return tuple(out)


def chunk_hashes(image, chunk=CHUNK):
    out = []
    for off in range(0, len(image), chunk):
        out.append(hashlib.sha256(image[off:off + chunk]).digest())
    return out


def make_manifest(image, version, board, min_version, notes="", keys=None, chunk=CHUNK):
    """The manifest (a dict) describing `image`. `keys`: the release keys a
    board trusts after this release is confirmed (rotation, see
    docs/UPDATES.md); None keeps the board's."""
    m = {
        "format": FORMAT,
        "version": version,
        "board": board,
        "size": len(image),
        "sha256": hashlib.sha256(image).digest(),
        "chunk": chunk,
        "chunks": chunk_hashes(image, chunk),
        "min_version": min_version,
        "notes": notes,
    }
    if keys is not None:
        m["keys"] = list(keys)
    check(m)
    return m


def sign(secret, manifest):
    """The signed manifest: COSE_Sign1 bytes (the readings' envelope)."""
    check(manifest)
    return reading.sign_payload(secret, secp256k1.public_key(secret), cbor.dumps(manifest))


def _field(m, key, kind):
    v = m.get(key)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ReleaseError("manifest %s=%r: expected %s" % (key, v, kind.__name__))
    return v


def check(m):
    """Every field present, of its type and consistent; ReleaseError
    naming the field otherwise."""
    if not isinstance(m, dict):
        raise ReleaseError("manifest must be a CBOR map")
    if m.get("format") != FORMAT:
        raise ReleaseError("manifest format %r: expected %d" % (m.get("format"), FORMAT))
    parse_version(m.get("version"))
    parse_version(m.get("min_version"))
    board = _field(m, "board", str)
    if not board or len(board) > 32:
        raise ReleaseError("manifest board %r: expected a name of 1..32 characters" % board)
    size = _field(m, "size", int)
    if not 0 < size <= MAX_SIZE:
        raise ReleaseError("manifest size %d: expected 1..%d bytes" % (size, MAX_SIZE))
    chunk = _field(m, "chunk", int)
    if chunk not in (1024, 2048, 4096):
        raise ReleaseError("manifest chunk %d: expected 1024, 2048 or 4096" % chunk)
    if len(_field(m, "sha256", bytes)) != HASH_LEN:
        raise ReleaseError("manifest sha256: expected %d bytes" % HASH_LEN)
    chunks = _field(m, "chunks", list)
    if len(chunks) != (size + chunk - 1) // chunk:
        raise ReleaseError("manifest chunks: %d hashes for %d bytes in chunks of %d" % (len(chunks), size, chunk))
    for h in chunks:
        if not isinstance(h, bytes) or len(h) != HASH_LEN:
            raise ReleaseError("manifest chunks: every hash must be %d bytes" % HASH_LEN)
    if len(_field(m, "notes", str)) > MAX_NOTES:
        raise ReleaseError("manifest notes: at most %d characters" % MAX_NOTES)
    if "keys" in m:
        keys = _field(m, "keys", list)
        if not 1 <= len(keys) <= MAX_KEYS:
            raise ReleaseError("manifest keys: expected 1..%d release keys" % MAX_KEYS)
        for k in keys:
            if not isinstance(k, bytes):
                raise ReleaseError("manifest keys: every key must be a byte string")
            try:
                secp256k1.decode_public_key(k)
            except ValueError as e:
                raise ReleaseError("manifest keys: %s" % e)
    for key in m:
        if key not in ("format", "version", "board", "size", "sha256", "chunk", "chunks", "min_version", "notes",
                       "keys"):
            raise ReleaseError("manifest field %r is unknown" % (key,))
    return m


class Release:
    """A verified manifest: its fields, the signed bytes as received and
    the key that signed it."""

    def __init__(self, signed, manifest, key):
        self.signed = signed
        self.m = manifest
        self.key = key
        self.version = manifest["version"]
        self.board = manifest["board"]
        self.size = manifest["size"]
        self.sha256 = manifest["sha256"]
        self.chunk = manifest["chunk"]
        self.chunks = manifest["chunks"]
        self.min_version = manifest["min_version"]
        self.notes = manifest["notes"]
        self.keys = manifest.get("keys")

    def chunk_len(self, i):
        if i == len(self.chunks) - 1:
            return self.size - i * self.chunk
        return self.chunk

    def chunk_ok(self, i, data):
        """True if `data` is chunk i as the manifest names it."""
        if not 0 <= i < len(self.chunks) or len(data) != self.chunk_len(i):
            return False
        return hashlib.sha256(data).digest() == self.chunks[i]

    def release_id(self):
        """Content address of the release: SHA-256 of the image, hex."""
        import binascii

        return binascii.hexlify(self.sha256).decode()


def verify(signed, trusted_keys):
    """The Release if `signed` is a manifest signed by one of
    `trusted_keys` (33-byte compressed keys); ReleaseError saying why not."""
    if not isinstance(signed, bytes) or len(signed) > 64 * 1024:
        raise ReleaseError("signed manifest: expected at most 64 KiB of bytes")
    try:
        msg = cose.parse(signed)
    except cose.COSEError as e:
        raise ReleaseError("signed manifest: %s" % e)
    if msg.headers.get(cose.HDR_ALG) != reading.ALG_ES256K:
        raise ReleaseError("signed manifest: algorithm %r is not ES256K (-47)" % (msg.headers.get(cose.HDR_ALG),))
    kid = msg.headers.get(cose.HDR_KID)
    key = None
    for k in trusted_keys:
        if reading.key_id(k) == kid:
            key = k
            break
    if key is None:
        raise ReleaseError("signed manifest: signed by a key this board does not trust")
    if not secp256k1.verify(key, msg.to_be_signed(), msg.signature):
        raise ReleaseError("signed manifest: bad signature")
    try:
        m = cbor.loads(msg.payload)
    except cbor.CBORError as e:
        raise ReleaseError("manifest is not CBOR: %s" % e)
    return Release(signed, check(m), key)


def applicable(rel, board, running_version):
    """None if `rel` may replace `running_version` on `board`, else why
    not (another board, not newer, or below the release's minimum)."""
    if rel.board != board:
        return "image for board %s, this board is %s" % (rel.board, board)
    running = parse_version(running_version)
    if parse_version(rel.version) <= running:
        return "version %s is not newer than the running %s" % (rel.version, running_version)
    if running < parse_version(rel.min_version):
        return "running %s is below the release's minimum %s" % (running_version, rel.min_version)
    return None
