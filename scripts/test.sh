#!/usr/bin/env bash
# Set everything up, then run the type check and the whole test suite
# (arguments go to pytest). pytest's "no tests collected" (exit 5) is not a
# failure when a subset is chosen; any failing test or type error is.
set -euo pipefail
cd "$(dirname "$0")/.."
MICROGRID_SETUP_TESTS=1 bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"

# The coordinator and its tools are type-checked (edge/ and shared/ stay plain MicroPython).
types=0
.venv/bin/python -m mypy coordinator microgrid flash hardware || types=$?

# Three workers on two cores: most of the suite waits on MicroPython
# processes, sockets and simulated clocks; MICROGRID_TEST_WORKERS=0 runs
# it in one process.
workers="${MICROGRID_TEST_WORKERS:-3}"
parallel=()
if [ "$workers" != "0" ]; then parallel=(-n "$workers" --dist load); fi
tests=0
timeout 1500 .venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@" || tests=$?
if [ "$tests" -eq 5 ]; then
    echo "test: no tests were collected for this selection"
    tests=0
fi
if [ "$types" -ne 0 ]; then
    echo "test: the type check failed (see mypy's output above)"
    exit "$types"
fi
exit "$tests"
