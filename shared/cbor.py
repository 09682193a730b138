# Small CBOR codec (RFC 8949) that runs unchanged on MicroPython and CPython.
#
# Why our own: micropython-lib has no CBOR package, and the coordinator must
# parse exactly what the meter produced. The encoder emits the preferred
# (shortest) encoding with definite lengths, so equal values always encode
# to equal bytes. The decoder is strict: it refuses truncated input, trailing
# bytes, indefinite lengths, reserved values and absurd lengths, because it is
# the first thing that touches bytes from the network.

import struct


class CBORError(ValueError):
    pass


class Tag:
    """A tagged value (major type 6)."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


# Nesting deeper than this is never produced by us and only serves to exhaust
# the stack of a small board.
MAX_DEPTH = 16


def _head(major, n, out):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(struct.pack(">I", n >> 32))
        out.extend(struct.pack(">I", n & 0xFFFFFFFF))
    else:
        raise CBORError("integer out of CBOR range: %d" % n)


def _encode(obj, out, depth):
    if depth > MAX_DEPTH:
        raise CBORError("nesting deeper than %d" % MAX_DEPTH)
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(0, obj, out)
        else:
            _head(1, -1 - obj, out)
    elif isinstance(obj, (bytes, bytearray)):
        _head(2, len(obj), out)
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(3, len(b), out)
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(4, len(obj), out)
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        # Deterministic encoding (RFC 8949 section 4.2.1): keys sorted by
        # their encoded bytes. MicroPython dicts have no stable order, so
        # without this the same reading would encode differently per runtime.
        _head(5, len(obj), out)
        pairs = []
        for k in obj:
            kb = bytearray()
            _encode(k, kb, depth + 1)
            pairs.append((bytes(kb), obj[k]))
        pairs.sort(key=lambda p: p[0])
        for kb, v in pairs:
            out.extend(kb)
            _encode(v, out, depth + 1)
    elif isinstance(obj, Tag):
        _head(6, obj.tag, out)
        _encode(obj.value, out, depth + 1)
    elif isinstance(obj, float):
        try:
            f32 = struct.pack(">f", obj)
        except OverflowError:
            f32 = None
        if f32 is not None and struct.unpack(">f", f32)[0] == obj:
            out.append(0xFA)
            out.extend(f32)
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", obj))
    else:
        raise CBORError("cannot encode %s" % type(obj))


def dumps(obj):
    out = bytearray()
    _encode(obj, out, 0)
    return bytes(out)


def _half_to_float(h):
    # RFC 8949 appendix D, without math.ldexp's availability assumptions.
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        val = mant * (2.0 ** -24)
    elif exp != 31:
        val = (mant + 1024) * (2.0 ** (exp - 25))
    elif mant == 0:
        val = float("inf")
    else:
        val = float("nan")
    return -val if h & 0x8000 else val


# True where floats are single precision (an ESP32, the esp32-like build):
# a float32 from the wire is then already the value its sender held.
_FLOATS_ARE_32 = struct.unpack(">f", struct.pack(">f", 0.1))[0] == 0.1


def float32_as_decimal(raw):
    """The shortest decimal that is the same float32 as the 4 bytes `raw`
    (big-endian): the number a single-precision sender measured and would
    print. 994.3 on a float32 board is the float32 994.29998779296875;
    taken exactly into a double it reads 994.2999877929688, here 994.3.
    At most 9 significant digits always suffice (IEEE 754)."""
    x = struct.unpack(">f", raw)[0]
    if _FLOATS_ARE_32 or x != x or x in (float("inf"), float("-inf")):
        return x
    for digits in range(1, 10):
        d = float(("%." + str(digits) + "g") % x)
        try:
            if struct.pack(">f", d) == raw:
                return d
        except OverflowError:  # rounded up past the largest float32
            pass
    return x


class _Reader:
    def __init__(self, data, f32_decimal=False):
        self.data = data
        self.pos = 0
        self.f32_decimal = f32_decimal

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise CBORError("truncated: need %d bytes at offset %d, have %d" % (n, self.pos, len(self.data) - self.pos))
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def arg(self, info):
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info == 25:
            return struct.unpack(">H", self.take(2))[0]
        if info == 26:
            return struct.unpack(">I", self.take(4))[0]
        if info == 27:
            hi, lo = struct.unpack(">II", self.take(8))
            return (hi << 32) | lo
        if info == 31:
            raise CBORError("indefinite length not accepted at offset %d" % (self.pos - 1))
        raise CBORError("reserved additional info %d at offset %d" % (info, self.pos - 1))

    def item(self, depth):
        if depth > MAX_DEPTH:
            raise CBORError("nesting deeper than %d" % MAX_DEPTH)
        ib = self.take(1)[0]
        major = ib >> 5
        info = ib & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22 or info == 23:
                return None
            if info == 25:
                return _half_to_float(struct.unpack(">H", self.take(2))[0])
            if info == 26:
                raw = self.take(4)
                if self.f32_decimal:
                    return float32_as_decimal(raw)
                return struct.unpack(">f", raw)[0]
            if info == 27:
                return struct.unpack(">d", self.take(8))[0]
            raise CBORError("unsupported simple value %d at offset %d" % (info, self.pos - 1))
        n = self.arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return bytes(self.take(n))
        if major == 3:
            try:
                return str(self.take(n), "utf-8")
            except UnicodeError:
                raise CBORError("invalid UTF-8 in text string")
        remaining = len(self.data) - self.pos
        if major == 4:
            # Every item takes at least one byte: reject lengths the input
            # cannot possibly hold before allocating anything.
            if n > remaining:
                raise CBORError("array of %d items in %d bytes" % (n, remaining))
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            if 2 * n > remaining:
                raise CBORError("map of %d pairs in %d bytes" % (n, remaining))
            m = {}
            for _ in range(n):
                k = self.item(depth + 1)
                if isinstance(k, (list, dict, Tag)):
                    raise CBORError("unhashable map key at offset %d" % self.pos)
                if k in m:
                    raise CBORError("duplicate map key %r" % (k,))
                m[k] = self.item(depth + 1)
            return m
        # major == 6
        return Tag(n, self.item(depth + 1))


def loads(data, f32_decimal=False):
    """Decode exactly one CBOR item; anything left over is an error.

    Floats decode exactly by default, so decoding and encoding again gives
    the same bytes. With f32_decimal, a single-precision float on the wire
    decodes to the shortest decimal that is the same float32 (see
    float32_as_decimal): how readings are interpreted (READING_FORMAT.md)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORError("expected bytes, got %s" % type(data))
    r = _Reader(bytes(data), f32_decimal)
    obj = r.item(0)
    if r.pos != len(r.data):
        raise CBORError("%d trailing bytes after CBOR item" % (len(r.data) - r.pos))
    return obj
