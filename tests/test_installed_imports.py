"""The installed package imports as installed.

pytest puts the repository root on sys.path (tests/ is a package), so a
module that reaches for a repo folder by its top-level name (`edge`,
`shared`) imports fine here and breaks for an installed user: this test
imports every CPython-side module in a fresh interpreter started outside
the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib, pkgutil, sys
import microgrid
names = []
for pkg in ("microgrid.coordinator", "microgrid.shared", "microgrid.flash", "microgrid.hardware",
            "microgrid.demo"):
    mod = importlib.import_module(pkg)
    names.append(pkg)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
names += ["microgrid.cli", "microgrid.loadgen", "microgrid.report", "microgrid.conductor",
          # the firmware's modules the coordinator's side uses from CPython
          "microgrid.edge.coap", "microgrid.edge.ticks"]
failed = []
for name in names:
    if name.endswith("__main__") or ".onboard" in name:  # scripts run on the board
        continue
    try:
        importlib.import_module(name)
    except ImportError as e:
        if "RPi" in str(e) or "serial" in str(e):  # optional hardware extras
            continue
        failed.append("%s: %r" % (name, e))
print("\n".join(failed))
print("imported", len(names))
sys.exit(1 if failed else 0)
"""


def test_every_cpython_module_imports_outside_the_repository(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[-1]) > 50
