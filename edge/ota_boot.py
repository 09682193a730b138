# The update's signature checks, run at boot before the firmware takes its
# heap (edge/firmware.py calls `run` first thing when ota.json exists).
#
# Why at boot: an ES256K verification is the updater's largest use of the
# heap (big-integer arithmetic, ~12 KB at its peak), more than a running
# meter with its driver and console has free in the 48 KB bound (~9 KB,
# which a reading's signature needs). At boot nothing but the firmware's
# modules is in the heap yet. So the running firmware only fetches: it
# keeps an offered manifest on flash unchecked (phase "offered") and, once
# every chunk is in, marks the image ready (phase "verify"); either way it
# reboots, and here, in a fresh heap:
#   offered: the manifest is checked (a trusted key, this board, a newer
#            version the running one may update from, the slot) and the
#            download starts, or the refusal is kept; the firmware then
#            starts as usual.
#   verify:  the kept manifest is checked again (a file on flash is no more
#            trusted than the network), the whole slot read back and
#            compared with its SHA-256, and the bootloader pointed at it:
#            `run` returns True and the firmware reboots at once into the
#            new image's trial (edge/ota.py).
#   switching (a power cut before set_boot() took): the same as verify.
# A power cut anywhere here leaves the phase as it was: the next boot
# checks again. Only this module, edge/ota.py, edge/ota_check.py and
# shared/release.py are loaded, and released again before the firmware
# goes on.

import gc

from edge import log

TAG = "ota"
# Boots on which a check may start and not finish (power cuts, a fault)
# before the update is abandoned rather than tried at every boot.
BOOT_TRIES = 3


def run(updates, version):
    """Boot-time work of an update under way. True when the bootloader was
    pointed at the new image: the caller reboots before doing anything
    else. `version`: the firmware's VERSION (under the unix ports the
    running slot's header names it). Never raises: an updater fault must
    not stop the meter."""
    import edge

    # The config's checks are done with by now (edge/safemode.py releases
    # them once the firmware has started): their ~2.7 KB go to the check.
    edge.release("edge.config")
    edge.release("edge.meters.checks")
    try:
        return _run(updates, version)
    except Exception as e:
        log.error(TAG, "update check at boot failed: %r" % (e,))
        return False
    finally:
        _unload(("edge.ota", "edge.ota_check", "shared.release", "edge.hal.partition", "edge.ota_boot"))


def _unload(modules=("edge.ota", "edge.ota_check", "shared.release")):
    import edge

    for name in modules:
        edge.release(name)
    gc.collect()


def _running(default):
    """(running version, Partition class), loading the partition (under the
    unix ports the stand-in, ~2.7 KB) only now."""
    from edge.ota_check import partition_class, running_version

    return running_version(default), partition_class()


def _run(updates, default):
    # The state first, with nothing but edge/ota.py loaded (no partition):
    # a signature check must have the heap to itself.
    from edge.ota import Updater

    u = Updater(updates, default, None)
    phase = u.state.get("phase")
    if phase in ("offered", "verify"):
        tries = u.state.get("tries", 0)
        if tries >= BOOT_TRIES:
            u.abandon("its check at boot did not finish %d times" % tries)
            return False
        u.state["tries"] = tries + 1  # counted before it starts: a cut in it counts
        u.save()
    path = u.manifest_path
    sha = u.state.get("sha")
    u = Updater = None
    if phase == "offered":
        return _offered(updates, default, path)
    if phase not in ("verify", "switching"):
        return False
    if phase == "switching":
        # A power cut before set_boot() took, or after (then the new image
        # runs): edge/ota.py decides, counting the tries.
        u = _updater(updates, default)
        if u.at_boot() != "switch":
            return False  # on the new image already, or rolled back: the Session takes it from there
        u = None
    why = _checked(lambda ota_check: ota_check.kept(updates, sha, path))
    u = _updater(updates, default)
    if why is not None:
        u.abandon(why)
        return False
    return u.finish(kept=True)


def _updater(updates, default):
    from edge.ota import Updater

    version, Partition = _running(default)
    return Updater(updates, version, Partition)


def _offered(updates, default, path):
    """The manifest fetched by the running firmware, checked now."""

    def offer(ota_check):
        try:
            with open(path, "rb") as f:
                signed = f.read()
        except OSError as e:
            return None, None, "offered manifest unreadable: %s" % e
        fields, why = ota_check.offer(signed, updates, lambda: _running(default), None)
        return signed, fields, why

    signed, fields, why = _checked(offer)
    u = _updater(updates, default)
    v = u.state.get("version")
    u.state = u._keep()  # what accept() starts from: the last outcomes, nothing under way
    if u.accept(signed, fields, why) is not None:
        u.state["declined"] = v
        u.save()
        try:
            import os

            os.remove(path)
        except OSError:
            pass
    return False


def _checked(check):
    """`check(ota_check)` with the signature's modules alone in the heap
    beside the firmware's (the state machine released), released after."""
    _unload()
    from edge import ota_check

    try:
        return check(ota_check)
    finally:
        ota_check = None
        _unload()
