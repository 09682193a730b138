# Firmware entry point. On a board MicroPython runs /main.py at boot; the
# firmware itself is frozen into the MicroPython image (edge/manifest.py),
# so this file is all of it on the filesystem (a frozen main.py would run
# instead of /main.py and could not be replaced without reflashing). With
# `microgrid flash --no-frozen` the edge/ and shared/ packages lie beside it.
# Under the unix port: `micropython main.py` in the image folder.

import gc
import sys

# Collect after every 1/32 of the free heap is allocated (about 1.5 KB in
# a 48 KB heap), not only when an allocation fails: a signature leaves
# ~100 KB of short-lived big integers per reading, and reclaimed early they
# do not end up between long-lived objects. Measured in the esp32-like
# build (bench/bench_firmware.py): 1/32 lets the frozen firmware run in
# 1 KB less heap than 1/16; 1/64 gains nothing more and collects twice as
# often.
gc.collect()
if hasattr(gc, "threshold"):
    gc.threshold(gc.mem_free() // 32)

from edge import hal  # noqa: E402
from edge.firmware import main  # noqa: E402
from edge.safemode import EXIT_INTERRUPTED  # noqa: E402

status = main()
# After Ctrl-C a board stays at the REPL (sys.exit from main.py would
# soft-reset it into the firmware again); see edge/safemode.py.
if status != EXIT_INTERRUPTED or not hal.IS_BOARD:
    sys.exit(status)
