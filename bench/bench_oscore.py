"""OSCORE on the meter: AES-CCM time and heap per reading, in MicroPython.

    python bench/bench_oscore.py [--count 300]

Measures, in one run of pip's MicroPython unix port (cryptolib's AES, as
an ESP32 has it): protecting one reading's POST (shared/oscore.py:
AES-CCM-16-64-128 over the signed COSE reading, Uri-Path and
Content-Format inside) and verifying and decrypting the coordinator's
2.01, per reading; the bytes the heap hands out for that (gc disabled,
gc.mem_alloc before and after) and the context's resident bytes (keys,
AES key schedules). Baseline, in the same run: building and signing the
same reading (shared/reading.py, ES256K), what the meter already does per
reading. Also printed: the same OSCORE work in the esp32-like build, which
has no cryptolib and runs shared/aes_soft.py (a fallback for tests, not
what a board runs).

Peak heap: the smallest heap (-X heapsize, bisected to 1 KB, shared/
compiled to .mpy as a flashed image carries it) in which signing three
readings succeeds, with and without protecting each for OSCORE and
verifying its answer (shared/oscore.py imported too): the extra peak heap
the link costs a meter, against the signing path's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from microgrid.flash.unix_port import MicroPythonNotFound, find_esp32like, find_micropython

REPO = Path(__file__).resolve().parent.parent

MP_SCRIPT = """
import gc, time, json
from shared import reading, secp256k1, oscore, ccm
from shared import aes
n = %(count)d
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
extra = [("current", "A", 2.5), ("frequency", "Hz", 50.0)]
msg = reading.build(sk, pub, 1, 1700000000, 123456, 7890, 512.5, 231.2, extra)
secret = bytes(range(16))
gc.collect()
base = gc.mem_alloc()
ctx = oscore.Context(secret, b"\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08", b"\\xa1\\xb2\\xc3\\xd4\\xe5\\xf6", b"")
gc.collect()
resident = gc.mem_alloc() - base
# The coordinator's side, only to make its answers.
server = oscore.Context(secret, b"\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08", b"", b"\\xa1\\xb2\\xc3\\xd4\\xe5\\xf6")
opts = [(11, b"readings"), (12, b"\\x12")]
# The coordinator's answers, made beforehand (not timed): 2.01 "stored ..."
answers = []
for i in range(n):
    value, ct, rid = ctx.protect_request(i, 2, opts, msg)
    plain = bytes((65,)) + b"\\xff" + b"stored a5d0709ca0318da8/%%d t=1700000000" %% i
    answers.append(ccm.encrypt(server.sender_key, ctx.nonce(rid[0], rid[1]), plain, oscore.Context.aad(rid[0], rid[1])))
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
value, ct, rid = ctx.protect_request(n, 2, opts, msg)
protect_bytes = gc.mem_alloc() - a0
gc.enable()
gc.collect()
t0 = time.ticks_us()
for i in range(n):
    value, ct, rid = ctx.protect_request(i, 2, opts, msg)
    code, o, payload = ctx.unprotect_response(b"", answers[i], rid)
    assert code == 65
us_oscore = time.ticks_diff(time.ticks_us(), t0) / n
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
value, ct, rid = ctx.protect_request(0, 2, opts, msg)
ctx.unprotect_response(b"", answers[0], rid)
oscore_bytes = gc.mem_alloc() - a0
gc.enable()
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
reading.build(sk, pub, 2, 1700000010, 123457, 7890, 512.5, 231.2, extra)
sign_bytes = gc.mem_alloc() - a0
gc.enable()
gc.collect()
m = max(n // 10, 5)
t0 = time.ticks_us()
for i in range(m):
    reading.build(sk, pub, i + 2, 1700000000 + i, 123456 + i, 7890, 512.5, 231.2, extra)
us_sign = time.ticks_diff(time.ticks_us(), t0) / m
print(json.dumps({"backend": aes.backend(), "message_bytes": len(msg), "ciphertext_bytes": len(ct),
                  "us_oscore": us_oscore, "us_sign": us_sign, "oscore_bytes": oscore_bytes,
                  "protect_bytes": protect_bytes, "sign_bytes": sign_bytes, "resident_bytes": resident}))
"""


HEAP_PROBE = """
from shared import secp256k1, reading
sk = bytes(range(1, 33))
pub = secp256k1.public_key(sk)
if %(oscore)s:
    from shared import oscore, ccm
    ctx = oscore.Context(bytes(16), b"salt", b"\\xa1\\xb2\\xc3\\xd4\\xe5\\xf6", b"")
    key = oscore.Context(bytes(16), b"salt", b"", b"\\xa1\\xb2\\xc3\\xd4\\xe5\\xf6").sender_key
for i in range(3):
    msg = reading.build(sk, pub, i + 1, 1700000000 + i, 1000 + i, i // 2, 500, 230.5, [("current", "A", 2.5)])
    if %(oscore)s:
        value, ct, rid = ctx.protect_request(i, 2, [(11, b"readings"), (12, b"\\x12")], msg)
        nonce = ctx.nonce(rid[0], rid[1])
        answer = ccm.encrypt(key, nonce, b"\\x41\\xffstored", oscore.Context.aad(rid[0], rid[1]))
        assert ctx.unprotect_response(b"", answer, rid)[0] == 65
print("ok")
"""


def peak_heap(oscore: bool, path: str, micropython: str | None = None) -> int:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_firmware import bisect_heap

    env = dict(os.environ, MICROPYPATH=f".frozen:{path}" if path else ".frozen")

    def runs(heap: int) -> bool:
        r = subprocess.run([micropython or find_micropython("unix"), "-X", f"heapsize={heap}", "-c",
                            HEAP_PROBE % {"oscore": oscore}],
                           capture_output=True, text=True, env=env, timeout=600, cwd=path or "/")
        return r.returncode == 0 and r.stdout.strip().endswith("ok")

    return bisect_heap(runs)


def run(micropython: str, count: int) -> dict:
    env = dict(os.environ, MICROPYPATH=str(REPO))
    proc = subprocess.run([micropython, "-c", MP_SCRIPT % {"count": count}], capture_output=True, text=True,
                          timeout=600, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"{micropython} failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300, help="readings protected and verified (signed: a tenth)")
    args = ap.parse_args()
    r = run(find_micropython("unix"), args.count)
    print(f"MicroPython unix port, AES from {r['backend']}; one reading = {r['message_bytes']} bytes signed COSE, "
          f"{r['ciphertext_bytes']} bytes OSCORE ciphertext")
    print(f"  AES-CCM protect + verify per reading: {r['us_oscore']:8.1f} us   "
          f"baseline build+sign: {r['us_sign']:9.1f} us   ratio {r['us_oscore'] / r['us_sign']:.4f}")
    print(f"  heap handed out per reading:    {r['oscore_bytes']:8d} B    "
          f"baseline build+sign: {r['sign_bytes']:9d} B    ratio {r['oscore_bytes'] / r['sign_bytes']:.3f}"
          f"   (protect alone {r['protect_bytes']} B)")
    print(f"  resident per security context:  {r['resident_bytes']:8d} B")
    sys.path.insert(0, str(REPO / "bench"))
    from bench_firmware import compiled_shared

    shared_mpy = compiled_shared()
    with_link, without = peak_heap(True, shared_mpy), peak_heap(False, shared_mpy)
    print(f"  peak heap, sign 3 readings + OSCORE: {with_link // 1024:5d} KB   baseline sign only: "
          f"{without // 1024:5d} KB   ratio {with_link / without:.3f} (+{(with_link - without) // 1024} KB)")
    try:
        s = run(find_esp32like(), max(args.count // 10, 10))
    except MicroPythonNotFound as e:
        print(f"esp32-like build: skipped ({e})")
        return 0
    from microgrid.flash import frozen

    binary = str(frozen.esp32like_binary())
    with_link, without = peak_heap(True, "", binary), peak_heap(False, "", binary)
    print("esp32-like build, 32-bit as an ESP32, the firmware frozen in (flash/frozen.py; its AES is the plain-Python "
          "fallback, whose S-box and round keys a board with cryptolib does not need):")
    print(f"  peak heap, sign 3 readings + OSCORE: {with_link // 1024:5d} KB   baseline sign only: "
          f"{without // 1024:5d} KB   ratio {with_link / without:.3f} (+{(with_link - without) // 1024} KB)")
    print(f"esp32-like build (no cryptolib: AES from {s['backend']}, the tests' fallback):")
    print(f"  AES-CCM protect + verify per reading: {s['us_oscore']:8.1f} us   "
          f"baseline build+sign: {s['us_sign']:9.1f} us   ratio {s['us_oscore'] / s['us_sign']:.4f}")
    print(f"  heap handed out per reading:    {s['oscore_bytes']:8d} B    "
          f"baseline build+sign: {s['sign_bytes']:9d} B    ratio {s['oscore_bytes'] / s['sign_bytes']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
