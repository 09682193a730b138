# What a meter accepts as an update, apart from the update's state machine
# (edge/ota.py): the signed manifest checked against the release keys, the
# board, the running version and the slot. A module of its own because the
# signature check is the updater's largest use of the heap (big-integer
# arithmetic, ~8 KB of working memory): edge/ota_boot.py runs it at boot
# with only this and shared/release.py loaded, then releases them before
# the state machine is loaded to act on the answer. Where the slots are and
# which version runs are here too: the Session's start needs only those.

import binascii

MANIFEST_FILE = "ota.cose"


def partition_class():
    try:
        from esp32 import Partition
    except ImportError:
        from edge.hal.partition import Partition
    return Partition


def running_version(default):
    """The running image's version: the firmware's VERSION on a board; under
    the unix port the stand-in slot's header names it (edge/hal/partition.py)."""
    try:
        import esp32  # noqa: F401

        return default
    except ImportError:
        from edge.hal.partition import Partition, image_header

        hdr = image_header(Partition(Partition.RUNNING))
        return hdr["version"] if hdr and isinstance(hdr.get("version"), str) else default


def offer(signed, updates, version, Partition):
    """(fields, None) when the signed manifest may replace `version` on
    this board, else (None, why). `fields`: what the state machine keeps
    of it (edge/ota.py Updater.accept). With `Partition` None, `version`
    is a function returning (version, Partition), called once the signature
    is checked (edge/ota_boot.py: under the unix ports it loads the
    partition stand-in, which the check's peak need not share the heap with)."""
    from shared import release

    try:
        rel = release.verify(signed, [binascii.unhexlify(k) for k in updates["keys"]])
        if Partition is None:
            version, Partition = version()
        why = release.applicable(rel, updates["board"], version)
        if why is None:
            target = Partition(Partition.RUNNING).get_next_update()
            if rel.chunk != target.ioctl(5, 0):
                why = "chunk size %d is not the slot's block size" % rel.chunk
            elif rel.size > target.ioctl(4, 0) * rel.chunk:
                why = "image of %d bytes does not fit the slot" % rel.size
    except release.ReleaseError as e:
        return None, str(e)
    if why is not None:
        return None, why
    fields = {"version": rel.version, "sha": rel.release_id(), "size": rel.size, "chunk": rel.chunk,
              "tsha": binascii.hexlify(rel.table_sha256).decode(), "slot": target.info()[4]}
    if rel.keys:
        # Rotation, adopted once the release is confirmed (checked now,
        # so confirming needs no second signature check).
        fields["keys"] = [binascii.hexlify(k).decode() for k in rel.keys]
    return fields, None


def kept(updates, sha, path=MANIFEST_FILE):
    """None if the manifest kept on flash still verifies and names the
    release `sha`, else why not (a file on flash is no more trusted than
    the network: checked again before the switch)."""
    from shared import release

    try:
        with open(path, "rb") as f:
            rel = release.verify(f.read(), [binascii.unhexlify(k) for k in updates["keys"]])
    except (OSError, release.ReleaseError) as e:
        return "kept manifest: %s" % e
    if rel.release_id() != sha:
        return "kept manifest names another release"
    return None
