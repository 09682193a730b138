# Freeze the firmware into a MicroPython build, so its bytecode runs from
# flash instead of taking heap (measured under the unix port, 64-bit, as
# .mpy loaded into RAM: shared/ 24 KB, the edge core 50 KB, the console
# and all drivers 34 KB; a 32-bit ESP32 needs roughly half). Frozen, the
# heap holds only the firmware's state and one reading's working memory.
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/repo/edge/manifest.py
#
# The image then needs only main.py, config.json and device.key. This file
# is build input, never imported by the firmware.

include("$(PORT_DIR)/boards/manifest.py")
package("edge", base_path="..")
package("shared", base_path="..")
