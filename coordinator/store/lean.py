"""sqlite_utils without pandas and numpy.

sqlite_utils imports pandas and numpy at its own import when they are
installed, for dataframe conveniences the coordinator never uses. The
planner (pvlib) and the grid model (pandapower) install them, and loading
them costs the appliance ~50 MB of resident memory and a second of start
on a Raspberry Pi, in every process that opens a store. So they are hidden
while sqlite_utils loads (its own `except ImportError` then leaves them
unset); a process that loads them for its own use still can, afterwards.
Every module that needs sqlite_utils imports it from here.
"""

from __future__ import annotations

import sys

_HIDDEN = ("pandas", "numpy")
_was = {name: name in sys.modules for name in _HIDDEN}
for _name, _loaded in _was.items():
    if not _loaded:
        sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError
try:
    import sqlite_utils
finally:
    for _name, _loaded in _was.items():
        if not _loaded and sys.modules.get(_name, 0) is None:
            del sys.modules[_name]

__all__ = ["sqlite_utils"]
