# Firmware entry point. On a board MicroPython runs /main.py at boot; the
# image puts this file there with the edge/ and shared/ packages beside it.
# Under the unix port: `micropython main.py` in the image folder.

import sys

from edge.firmware import main

sys.exit(main())
