#!/usr/bin/env bash
# Set up everything microgrid needs on a Debian 12 (or newer) machine:
# the Debian packages that are missing, then a virtual environment in .venv
# with the project and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv python3-pip)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# The tests also look at the demo's report in a headless browser.
if [ "${MICROGRID_SETUP_TESTS:-0}" = "1" ]; then
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    # The firmware tests also run in ../shared's esp32-like MicroPython, a
    # 32-bit program.
    if [ "$(uname -m)" = "x86_64" ] && [ ! -e /lib/ld-linux.so.2 ]; then need+=(libc6-i386); fi
    # One test session builds it with the firmware frozen in (its build.sh, gcc -m32).
    if [ "$(uname -m)" = "x86_64" ] && ! echo 'int main(void){return 0;}' | gcc -m32 -x c - -o /dev/null 2>/dev/null; then
        need+=(gcc-multilib make xz-utils)
    fi
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python 3.11 or newer is required, this is {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
echo "setup: installing microgrid and its dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import microgrid.coordinator, aiocoap, bitcoinx, opendht' \
    || { echo "setup: the installation is incomplete (see the pip output above)"; exit 1; }
