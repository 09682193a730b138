# Boot that cannot brick the board.
#
# main() arms the hardware watchdog before anything else can block: with
# the config's watchdog_s when the file can be read and the value is
# valid, else the default (300 s). Then it starts the firmware. Whatever
# stops the start-up (a bad or unreadable config.json, a missing or wrong
# key file, a driver that refuses its settings, an exception anywhere in
# Firmware.__init__) does not end the program: the board enters safe mode.
#
# Safe mode logs the reason once (again only when it changes), keeps the
# console open whatever the config says (status shows "safe mode:
# <reason>"; config show/get/set and config clear, log and reboot work),
# feeds the watchdog, and tries the start-up again after 1 s, then 2, 4 ...
# at most every 30 s, and at once after each successful `config set`. A
# cause that goes away by itself (flash or a peripheral that was not
# ready) heals without anyone at the console. A MemoryError reboots after
# the first wait instead: a fresh heap is its cure. The coordinator's name is
# not resolved at start-up at all (edge/coap.py resolves it when sending):
# a name that does not resolve yet (Wi-Fi comes up later) is a network
# error that the running meter retries while it keeps metering and
# buffering, not a reason to stop.
#
# Ctrl-C (KeyboardInterrupt), wherever it lands: the firmware stops as at
# the end of a run (the batch is signed into the outbox, the journal is
# saved; a flash write it tore is rejected by its CRC at the next boot, as
# after a power cut), and main returns EXIT_INTERRUPTED. On a board main.py
# then leaves the program to the REPL. An ESP32's watchdog cannot be
# disabled once armed, so a timer feeds it for REPL_FEED_MS (30 minutes:
# time for mpremote or a look at the REPL); after that the watchdog restarts
# the board into the firmware, so a forgotten REPL session does not end
# metering for good. Under the unix port the process exits with status 130.

import gc
import json

import edge
from edge import hal, log

TAG = "boot"
RETRY_FIRST_MS = 1000
RETRY_MAX_MS = 30000
REPL_FEED_MS = 30 * 60 * 1000
EXIT_REBOOT = 3  # unix port: a supervisor (or a test) starts the image again
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


def watchdog_ms(config_path):
    """The watchdog timeout: watchdog_s from the config when it can be
    read and is valid, else the default (0 = off)."""
    from edge import config as config_mod

    default = int(config_mod.DEFAULTS["watchdog_s"] * 1000)
    try:
        raw = config_mod.load_raw(config_path)
        cfg = {"watchdog_s": raw.get("watchdog_s", config_mod.DEFAULTS["watchdog_s"])}
        config_mod.check_watchdog(cfg)
    except Exception:
        return default
    return int(cfg["watchdog_s"] * 1000)


def arm_watchdog(config_path):
    """(watchdog or None, timeout in ms). Armed under the unix port too (a
    scripted one that counts feeds) so tests see it fed."""
    ms = watchdog_ms(config_path)
    return (hal.watchdog(ms) if ms else None), ms


def _reason(e):
    if isinstance(e, ValueError) and str(e):
        return str(e)  # config and key errors say what is wrong and what to do
    return "%s: %s" % (type(e).__name__, e)


def _load_config(config_path):
    # Imported here, not by this module: main() runs for as long as the
    # firmware does, and its module need not stay in the heap after boot.
    from edge import config as config_mod

    return config_mod.load(config_path)


def _open_console(fw):
    from edge.console import Console

    return Console(fw)


def _reboot():
    try:
        hal.reboot()
    except Exception:
        # Unix port: the scripted reboot raises; the exit status asks the
        # supervisor to start the image again.
        pass
    return EXIT_REBOOT


def _heap_unlocked():
    # The unix port delivers Ctrl-C at once (an asynchronous jump out of
    # whatever C code runs): landing inside a garbage collection, it leaves
    # the heap locked and every allocation after it fails. A board raises
    # KeyboardInterrupt between bytecodes only, where this finds depth 0.
    # A collection run to its end clears the flag an interrupted one left.
    try:
        import micropython

        micropython.heap_lock()
        depth = micropython.heap_unlock()
        for _ in range(depth or 0):
            micropython.heap_unlock()
    except (ImportError, AttributeError):
        pass
    gc.collect()


def _interrupted(wdt, wdt_ms, fw, console):
    _heap_unlocked()
    # The watchdog first: whatever happens next (a second Ctrl-C), the
    # REPL stays alive for REPL_FEED_MS and the board then restarts.
    if wdt is not None:
        hal.keep_fed(wdt, max(wdt_ms // 4, 50), REPL_FEED_MS)
    summary = None
    if fw is not None:
        fw.stop()
        summary = fw.summary()
    if console is not None:
        console.close()
    after = ""
    if wdt is not None and hal.IS_BOARD:
        after = "; the watchdog is fed for %d min at the REPL, then restarts the meter" % (REPL_FEED_MS // 60000)
    log.warning(TAG, "interrupted (Ctrl-C): outbox and journal saved%s" % after)
    if summary is not None:
        print("SUMMARY " + json.dumps(summary))
    return EXIT_INTERRUPTED


def main(config_path, firmware_class):
    """Arm the watchdog, start the firmware (safe mode until it starts),
    run it. The exit status: 0 done, 3 reboot asked, 130 Ctrl-C."""
    wdt, wdt_ms = arm_watchdog(config_path)
    fw = None
    console = None
    safe = None
    try:
        while True:
            try:
                cfg = _load_config(config_path)
                log.set_level(cfg["log_level"])
                if console is not None and not cfg["console"]:
                    console.close()
                    console = None
                elif console is None and cfg["console"]:
                    # Imported before the signer's tables fragment the heap.
                    console = _open_console(None)
                fw = firmware_class(cfg, config_path, wdt, console)
                # The config's checks (and the drivers') are done with until
                # a console command needs them again.
                edge.release("edge.config")
                edge.release("edge.meters.checks")
                break
            except Exception as e:  # whatever stops the start-up: never the end of the board
                fw = None
                if safe is None:
                    # Loaded only when a start-up fails: a board that
                    # starts does not hold it in its heap.
                    from edge.safestate import SafeMode

                    safe = SafeMode(config_path, wdt)
                safe.failed(e)
                if console is None:
                    console = _open_console(safe)
                console.attach(safe)
                gc.collect()
                if not safe.wait(console) or isinstance(e, MemoryError):
                    # Asked for; or the heap is too small or fragmented, which
                    # only a fresh one cures (and the heap benchmark sees a
                    # failed trial at once, not a meter waiting for ever).
                    console.close()
                    return _reboot()
        if safe is not None:
            log.info(TAG, "started after %d attempt%s in safe mode" % (safe.attempts, "" if safe.attempts == 1 else "s"))
        summary = fw.run()
    except KeyboardInterrupt:
        return _interrupted(wdt, wdt_ms, fw, console)
    if console is not None:
        console.close()
    print("SUMMARY " + json.dumps(summary))
    if fw.reboot_requested:
        return _reboot()
    return 0
