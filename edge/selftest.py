# The console's `selftest`: key, signature, meter, flash and memory checks.
# A module of its own (the console imports it for the command and releases
# it after, as edge/commands.py): a reading signed and then verified is the
# console's peak of heap, and the other commands' functions need not be in
# the heap meanwhile.

import gc

from edge import hal
from shared import cose, secp256k1
from shared import reading_build as reading


def _out(line):
    print(line)


def cmd_selftest(con, args):
    if args:
        raise ValueError("takes no arguments, got %r" % " ".join(args))
    fw = con.fw
    checks = []

    def check(name, fn):
        try:
            detail = fn()
            checks.append((name, True, detail or ""))
        except Exception as e:
            checks.append((name, False, str(e)))

    def key():
        if secp256k1.public_key(fw.secret) != fw.public_key:
            raise ValueError("the key file no longer matches the running key")

    def sign():
        # Checked as the coordinator checks it, over the COSE structure
        # (not through shared/reading.py's parser, which the meter does not
        # load: its functions would stay in the heap).
        m = cose.parse(reading.build(fw.secret, fw.public_key, 1, 0, 0, 0, 0, 0.0))
        signed = m.to_be_signed()
        sig = m.signature
        del m
        gc.collect()  # the signature's garbage gone before verifying
        if not secp256k1.verify(fw.public_key, signed, sig):
            raise ValueError("a fresh signature does not verify")

    def meter():
        m = fw.read_meter(console=True)
        return "%d Wh, %s W" % (m.import_wh, m.power_w)

    def flash():
        # Both regions read back; an empty journal is fine before the
        # first save (every persist_every readings).
        state = fw.journal.load()
        if state is not None and state.get("seq", 0) > fw.seq:
            raise ValueError("journal seq %d is ahead of the running seq %d" % (state["seq"], fw.seq))
        fw.outbox.peek()
        return "journal %s, %d buffered" % ("empty" if state is None else "seq %d" % state["seq"], len(fw.outbox))

    def memory():
        free = hal.free_memory()
        if free < 16384:
            raise ValueError("only %d bytes free" % free)
        return "%d bytes free" % free

    for name, fn in (("key", key), ("signature", sign), ("meter", meter), ("flash", flash), ("memory", memory)):
        gc.collect()  # each check starts from a clean heap (a board's is small)
        check(name, fn)
    for name, ok, detail in checks:
        _out("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""))
    _out("selftest %s" % ("passed" if all(c[1] for c in checks) else "FAILED"))
