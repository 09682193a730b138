"""What zone membership costs a coordinator: membership records judged per
second (k admin signatures each), the same for a flood of forged records on
the board, and the members-only check every overlay record, order, channel
open and metering record goes through; against one bitcoinx signature
verification in the same run (the least a signed record can cost).

    python bench/bench_membership.py [--records 300]

A forged record is judged once: its digest is remembered, so the same
bytes read again at the next refresh cost a hash, not k verifications.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Callable

from bitcoinx import PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - run from a checkout

from microgrid.coordinator.membership import records as R  # noqa: E402
from microgrid.coordinator.membership.roster import Roster  # noqa: E402

T0 = 1_790_000_000


def per_second(fn: Callable[[], int], min_s: float = 0.5) -> float:
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_s:
        n += fn()
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300)
    args = ap.parse_args()
    n = args.records

    key = PrivateKey.from_random()
    msg = b"x" * 200
    sig = key.sign(msg, hasher=lambda d: hashlib.sha256(d).digest())
    pub = key.public_key
    base = per_second(lambda: sum(pub.verify_der_signature(sig, msg, hasher=lambda d: hashlib.sha256(d).digest())
                                  for _ in range(100)))
    print(f"baseline: bitcoinx ECDSA verify           {base:10.0f} /s")

    for k in (2, 5):
        admins = [PrivateKey.from_random() for _ in range(max(k, 3))]
        zone = R.found("bench", [a.public_key.to_bytes(compressed=True) for a in admins], k, T0)
        members = [PrivateKey.from_random().public_key.to_bytes(compressed=True) for _ in range(n)]
        raws = [R.signed(R.admission(zone, m, f"EAN-{i}", "F", T0, T0 + 86400 * 365), *admins[:k])
                for i, m in enumerate(members)]

        def judge_all() -> int:
            roster = Roster(zone)
            for raw in raws:
                roster.offer(raw, T0 + 10)
            return len(raws)

        rate = per_second(judge_all)
        print(f"admissions judged, k={k}                 {rate:10.0f} /s   ({rate / base:.2f} x baseline, "
              f"{base / rate:.1f} verifications each)")
        roster = Roster(zone)
        for raw in raws:
            roster.offer(raw, T0 + 10)
        t = [T0 + 10]

        def checks() -> int:
            for m in members:
                roster.is_member(m, t[0])
            t[0] += 1  # a new second: the member set is recomputed, as it is under a scaled clock
            return len(members)

        rate_m = per_second(checks)
        print(f"is_member with {n} members, k={k}       {rate_m:10.0f} /s   ({rate_m / base:.1f} x baseline)")

    forgers = [PrivateKey.from_random() for _ in range(2)]
    forged = [R.signed(R.admission(zone, m, "EAN", "F", T0, T0 + 86400), *forgers) for m in members]

    def flood() -> int:
        r = Roster(zone)
        for raw in forged:
            try:
                r.offer(raw, T0)
            except R.MembershipError:
                pass
        return len(forged)

    first = per_second(flood)
    seen = Roster(zone)
    for raw in forged:
        try:
            seen.offer(raw, T0)
        except R.MembershipError:
            pass

    def again() -> int:
        for raw in forged:
            try:
                seen.offer(raw, T0)
            except R.MembershipError:
                pass
        return len(forged)

    second = per_second(again)
    print(f"forged records refused, first read        {first:10.0f} /s   ({first / base:.2f} x baseline)")
    print(f"forged records refused, read again        {second:10.0f} /s   ({second / base:.1f} x baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
