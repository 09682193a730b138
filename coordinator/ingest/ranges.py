"""The documented range of every value in a reading (shared/READING_FORMAT.md,
"Ranges"), checked before a reading reaches the store or the API.

The parser (shared/reading.py) checks types and structure; it is shared
with the firmware and stays lenient. The coordinator stores what it accepts
in SQLite (64-bit signed integers, IEEE doubles) and serves it as JSON
(numbers safe in every JSON reader up to 2^53), so a value outside these
ranges is refused with 4.00 and a reason: never 5.00 (the meter would retry
it for ever and its outbox would stay blocked behind it), never NaN or
infinity in a JSON answer, never a sequence number so high that every later
reading of the meter is stale.

Pure: a parsed reading in, the first problem (text) or None out.
"""

from __future__ import annotations

import math
from typing import Any

# Sequence numbers: a meter counts up from 1, one per reading; at one a
# second 2^53 lasts 285 million years, and stays exact in JSON readers.
MAX_SEQ = (1 << 53) - 1
# Unix seconds up to 2^32 - 1 (year 2106): whole seconds on the wire, and a
# float32 cannot say more precisely where it is anyway.
MAX_TIME = (1 << 32) - 1
# Cumulative energy in Wh: 2^53 Wh is 9 PWh.
MAX_WH = (1 << 53) - 1
# Instantaneous power, W (either direction) and RMS voltage, V.
MAX_ABS_POWER_W = 1e9
MAX_VOLTAGE_V = 1e6
# An optional record: a finite number of at most this magnitude, a boolean,
# or text of at most MAX_TEXT characters.
MAX_ABS_EXTRA = float(1 << 53)
MAX_TEXT = 64


def _number(name: str, value: Any, lo: float, hi: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value}"
    if not lo <= value <= hi:
        return f"{name}={value!r:.40} is outside {lo:g}..{hi:g}"
    return None


def _integer(name: str, value: Any, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be an integer, got {type(value).__name__}"
    if not 0 <= value <= hi:
        return f"{name}={value} is outside 0..{hi}"
    return None


def _extra(name: str, value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
            return f"record {name!r:.40}: text must be at most {MAX_TEXT} printable characters"
        return None
    if isinstance(value, (int, float)):
        return _number(f"record {name!r:.40}", value, -MAX_ABS_EXTRA, MAX_ABS_EXTRA)
    return f"record {name!r:.40}: value must be a number, text or boolean, got {type(value).__name__}"


def problem(r: Any) -> str | None:
    """The first value of reading `r` outside its range, or None."""
    return (_integer("seq", r.seq, MAX_SEQ)
            or _number("time", r.t, 0, MAX_TIME)
            or _integer("import", r.import_wh, MAX_WH)
            or _integer("export", r.export_wh, MAX_WH)
            or _number("power", r.power_w, -MAX_ABS_POWER_W, MAX_ABS_POWER_W)
            or _number("voltage", r.voltage_v, 0, MAX_VOLTAGE_V)
            or next((p for name, value in r.extra.items() if (p := _extra(str(name), value))), None))
