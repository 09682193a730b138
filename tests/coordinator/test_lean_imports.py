"""The appliance does not load pandas or numpy: sqlite_utils would import
them when installed (the planner's pvlib and the grid's pandapower install
them), ~50 MB of resident memory in every coordinator process. Checked in
a fresh interpreter, since other tests load them on purpose."""

from __future__ import annotations

import subprocess
import sys


def test_starting_the_coordinator_loads_neither_pandas_nor_numpy() -> None:
    code = ("import sys, microgrid.coordinator.app, microgrid.coordinator.channels.store, "
            "microgrid.coordinator.store.retention, microgrid.cli\n"
            "print(sorted(m for m in ('pandas', 'numpy', 'scipy', 'pandapower', 'pvlib') if m in sys.modules))\n"
            "import numpy\n"  # and a process that wants them can still have them
            "print(numpy.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[]", "numpy"]
