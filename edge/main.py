# Firmware entry point. On a board MicroPython runs /main.py at boot; the
# image puts this file there with the edge/ and shared/ packages beside it.
# Under the unix port: `micropython main.py` in the image folder.

import sys

from edge import hal
from edge.firmware import main
from edge.safemode import EXIT_INTERRUPTED

status = main()
# After Ctrl-C a board stays at the REPL (sys.exit from main.py would
# soft-reset it into the firmware again); see edge/safemode.py.
if status != EXIT_INTERRUPTED or not hal.IS_BOARD:
    sys.exit(status)
