"""Zone membership without an operator (docs/MEMBERSHIP.md).

records.py   founding record (zone id = its hash), admissions and
             revocations signed by k of the zone's admins (COSE_Sign)
roster.py    who is a member now: newest record per member decides (pure)
gate.py      the predicates the other layers call (overlay accept, orders,
             channels, metering)
sync.py      publishing and fetching records through the overlay, the
             records folder and the cache kept across restarts
cli.py       `microgrid zone ...`
"""
