# Freeze the firmware into a MicroPython build, so its bytecode runs from
# flash instead of taking heap. Measured in the esp32-like build (32-bit,
# as an ESP32; bench/bench_firmware.py): the whole firmware with the PZEM
# driver and the console, sending readings to a coordinator while the
# console answers status and selftest, peaks at 47 KB of heap frozen and
# about twice that as .mpy files on the filesystem. Frozen, the heap still
# holds the imported modules' objects (functions, classes, globals: ~30
# KB), the firmware's state and one signature's working memory; see
# edge/README.md, Memory.
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/repo/edge/manifest.py
#   ../shared/micropython-esp32like/build.sh OUT edge/manifest.py   (esp32-like unix build)
#
# The board's filesystem then holds only main.py (which imports the frozen
# edge.firmware: MicroPython runs a frozen main.py before /main.py, so the
# entry point stays on the filesystem where it can be replaced), config.json,
# device.key and the data files. Any edge/ or shared/ folder there would
# shadow the frozen packages ('' comes before .frozen in sys.path):
# `microgrid flash` removes them and checks. This file is build input,
# never imported by the firmware, and not itself frozen.

import os

include("$(PORT_DIR)/boards/manifest.py")


def _sources(package):
    # Every .py under ../PACKAGE, as paths inside it, without this file.
    found = []
    top = os.path.join("..", package)
    for folder, _, names in os.walk(top):
        for name in names:
            if name.endswith(".py") and not (package == "edge" and folder == top and name == "manifest.py"):
                found.append(os.path.relpath(os.path.join(folder, name), top).replace(os.sep, "/"))
    return sorted(found)


package("edge", files=_sources("edge"), base_path="..")
package("shared", files=_sources("shared"), base_path="..")
