"""Sharded keys: per-interval data spread over `shards` keys per zone, so
no key holds more than a bounded number of values however many households
a zone has (SPEC.md section 2).

A publisher's records under a sharded base name go to

    <base>/<shard>    shard = first two bytes of its key id, big-endian, mod shards

and readers read every shard (or, for named publishers, only theirs). With
`shards == 1` the base name itself is the key: what zones of a few hundred
households use, and what coordinators before sharding wrote. All
coordinators of a zone must use the same count (like the network id)."""

from __future__ import annotations

from microgrid.shared.reading import key_id

# Namespaces whose keys are sharded: per-interval data, one record (or a
# few) per household and interval.
SHARDED_PREFIXES = ("mg/market/", "mg/market-result/", "mg/metering/", "mg/live/", "mg/round/")
MAX_SHARDS = 4096


def is_sharded(base: str) -> bool:
    return base.startswith(SHARDED_PREFIXES)


def shard_of(publisher: bytes, shards: int) -> int:
    return int.from_bytes(key_id(publisher)[:2], "big") % shards


def key_for(base: str, publisher: bytes, shards: int) -> str:
    """Where `publisher` puts its records for `base`."""
    if shards <= 1 or not is_sharded(base):
        return base
    return f"{base}/{shard_of(publisher, shards)}"


def all_keys(base: str, shards: int) -> list[str]:
    """Every key a reader of `base` reads."""
    if shards <= 1 or not is_sharded(base):
        return [base]
    return [f"{base}/{i}" for i in range(shards)]
