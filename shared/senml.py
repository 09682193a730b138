# SenML packs in CBOR (RFC 8428 section 6), MicroPython-safe.
#
# Records are maps with the integer labels of RFC 8428 table 6. `resolve`
# applies base name, base time and base unit as the RFC describes, so a
# reader gets full names ("<device>:import") and absolute times.

BVER = -1
BN = -2
BT = -3
BU = -4
BV = -5
N = 0
U = 1
V = 2
VS = 3
VB = 4
S = 5
T = 6
UT = 7
VD = 8


class SenMLError(ValueError):
    pass


def _is_number(x):
    return (isinstance(x, int) or isinstance(x, float)) and not isinstance(x, bool)


def resolve(pack):
    """Resolved records: list of dicts with 'n', 't', 'u' and one value
    under 'v', 'vs', 'vb' or 'vd'. Raises SenMLError on malformed packs."""
    if not isinstance(pack, list) or not pack:
        raise SenMLError("SenML pack must be a non-empty array")
    bn = ""
    bt = 0
    bu = None
    bv = 0
    out = []
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            raise SenMLError("record %d is not a map" % i)
        if BN in rec:
            bn = rec[BN]
            if not isinstance(bn, str):
                raise SenMLError("record %d: base name must be text" % i)
        if BT in rec:
            bt = rec[BT]
            if not _is_number(bt):
                raise SenMLError("record %d: base time must be a number" % i)
        if BU in rec:
            bu = rec[BU]
        if BV in rec:
            bv = rec[BV]
            if not _is_number(bv):
                raise SenMLError("record %d: base value must be a number" % i)
        name = rec.get(N, "")
        if not isinstance(name, str):
            raise SenMLError("record %d: name must be text" % i)
        full = bn + name
        if not full:
            raise SenMLError("record %d has no name" % i)
        t = rec.get(T, 0)
        if not _is_number(t):
            raise SenMLError("record %d: time must be a number" % i)
        r = {"n": full, "t": bt + t, "u": rec.get(U, bu)}
        values = 0
        if V in rec:
            if not _is_number(rec[V]):
                raise SenMLError("record %d (%s): value must be a number" % (i, full))
            r["v"] = bv + rec[V]
            values += 1
        if VS in rec:
            r["vs"] = rec[VS]
            values += 1
        if VB in rec:
            r["vb"] = rec[VB]
            values += 1
        if VD in rec:
            r["vd"] = rec[VD]
            values += 1
        if S in rec:
            r["s"] = rec[S]
            values += 1
        if values == 0:
            raise SenMLError("record %d (%s) carries no value" % (i, full))
        if values > 1 and S not in rec:
            raise SenMLError("record %d (%s) carries more than one value" % (i, full))
        out.append(r)
    return out
