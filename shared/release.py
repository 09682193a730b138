# A firmware release: a manifest signed with a release key, the chunk
# table it names by hash, and the image.
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
#
# The chunk table (the SHA-256 of each chunk, concatenated: 32 bytes a
# chunk, 12 KiB for a full 1.5 MB slot) is not in the signed manifest: the
# manifest signs its hash (`table`). So the signed bytes stay small whatever
# the image's size, and a meter never holds the table in RAM: it streams the
# table to flash, checks it against `table` there, then reads one entry per
# chunk (edge/ota.py). Coordinators keep it whole (Release.attach).

import hashlib

from . import cbor, cose, reading_build, secp256k1

FORMAT = 2  # 1 carried the chunk hashes in the manifest itself
# A chunk is one flash block of an ESP32 OTA partition (4 KiB): the meter
# verifies a chunk in RAM, then writes it whole with one erase.
CHUNK = 4096
HASH_LEN = 32
MAX_NOTES = 1024
MAX_KEYS = 4
# A signed manifest: its fields, notes and four keys fit well within this.
MAX_MANIFEST = 4096
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


def chunk_table(image, chunk=CHUNK):
    """The chunk table of `image`: each chunk's SHA-256, in order, as one
    byte string (32 bytes a chunk)."""
    parts = []
    for off in range(0, len(image), chunk):
        parts.append(hashlib.sha256(image[off:off + chunk]).digest())
    return b"".join(parts)


def chunk_count(size, chunk):
    return (size + chunk - 1) // chunk


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
        "table": hashlib.sha256(chunk_table(image, chunk)).digest(),
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
    return reading_build.sign_payload(secret, secp256k1.public_key(secret), cbor.dumps(manifest))


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
    for name in ("sha256", "table"):
        if len(_field(m, name, bytes)) != HASH_LEN:
            raise ReleaseError("manifest %s: expected %d bytes" % (name, HASH_LEN))
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
        if key not in ("format", "version", "board", "size", "sha256", "chunk", "table", "min_version", "notes",
                       "keys"):
            raise ReleaseError("manifest field %r is unknown" % (key,))
    return m


class Release:
    """A verified manifest: its fields, the signed bytes as received and
    the key that signed it. `chunks` is the chunk table once attached
    (coordinators); a meter checks chunks against entries it reads from
    flash instead (chunk_ok's `expected`)."""

    def __init__(self, signed, manifest, key):
        self.signed = signed
        self.m = manifest
        self.key = key
        self.version = manifest["version"]
        self.board = manifest["board"]
        self.size = manifest["size"]
        self.sha256 = manifest["sha256"]
        self.chunk = manifest["chunk"]
        self.count = chunk_count(self.size, self.chunk)
        self.table_sha256 = manifest["table"]
        self.table_size = self.count * HASH_LEN
        self.chunks = None
        self.min_version = manifest["min_version"]
        self.notes = manifest["notes"]
        self.keys = manifest.get("keys")

    def table_ok(self, table):
        """True if `table` is the chunk table the manifest signs."""
        return len(table) == self.table_size and hashlib.sha256(table).digest() == self.table_sha256

    def attach(self, table):
        """Keep the chunk table (checked against the manifest): `chunks[i]`
        is chunk i's hash from then on."""
        if not self.table_ok(table):
            raise ReleaseError("chunk table of %d bytes does not match the manifest's (%d chunks)"
                               % (len(table), self.count))
        self.chunks = [table[k:k + HASH_LEN] for k in range(0, len(table), HASH_LEN)]
        return self

    def chunk_len(self, i):
        if i == self.count - 1:
            return self.size - i * self.chunk
        return self.chunk

    def chunk_ok(self, i, data, expected=None):
        """True if `data` is chunk i as the chunk table names it
        (`expected`: its entry, else the attached table's)."""
        if not 0 <= i < self.count or len(data) != self.chunk_len(i):
            return False
        if expected is None:
            if self.chunks is None:
                raise ReleaseError("no chunk table attached to check chunk %d against" % i)
            expected = self.chunks[i]
        return hashlib.sha256(data).digest() == expected

    def release_id(self):
        """Content address of the release: SHA-256 of the image, hex."""
        import binascii

        return binascii.hexlify(self.sha256).decode()


def verify(signed, trusted_keys):
    """The Release if `signed` is a manifest signed by one of
    `trusted_keys` (33-byte compressed keys); ReleaseError saying why not."""
    if not isinstance(signed, bytes) or len(signed) > MAX_MANIFEST:
        raise ReleaseError("signed manifest: expected at most %d bytes" % MAX_MANIFEST)
    try:
        msg = cose.parse(signed)
    except cose.COSEError as e:
        raise ReleaseError("signed manifest: %s" % e)
    if msg.headers.get(cose.HDR_ALG) != reading_build.ALG_ES256K:
        raise ReleaseError("signed manifest: algorithm %r is not ES256K (-47)" % (msg.headers.get(cose.HDR_ALG),))
    kid = msg.headers.get(cose.HDR_KID)
    key = None
    for k in trusted_keys:
        if reading_build.key_id(k) == kid:
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
