"""The meter's config file as the installer sets it: assembled from a
JSON file and command-line settings, then validated exactly as the
firmware will validate it at boot (edge/config.py) and against the
board's pin map (hardware/boards.py), so a wrong key, a pin the board
lacks or a pin used twice stops the flash instead of the meter.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from .errors import FlashError

STEP = "check config"


@contextlib.contextmanager
def _edge_importable() -> Iterator[Any]:
    """edge/config.py imports `edge.meters` as the board names it; under
    CPython the package is `microgrid.edge`. Alias it for the call only."""
    import microgrid.edge
    import microgrid.edge.config
    import microgrid.edge.meters

    added = [name for name in ("edge", "edge.meters") if name not in sys.modules]
    sys.modules.setdefault("edge", microgrid.edge)
    sys.modules.setdefault("edge.meters", microgrid.edge.meters)
    try:
        yield microgrid.edge.config
    finally:
        for name in added:
            sys.modules.pop(name, None)


def read_json_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except OSError as e:
        raise FlashError(STEP, f"cannot read config file {p}: {e.strerror}", "give the path of a JSON config file") from None
    except ValueError as e:
        raise FlashError(STEP, f"config file {p} is not valid JSON: {e}", "fix the JSON (keys in double quotes, no trailing commas)") from None
    if not isinstance(raw, dict):
        raise FlashError(STEP, f"config file {p} holds a {type(raw).__name__}", "the file must hold one JSON object")
    return raw


def apply_settings(raw: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """KEY=VALUE settings (meter.KEY for the meter's), values as JSON when
    they parse (numbers, true, objects), else text; as the console's `set`."""
    with _edge_importable() as edge_config:
        out = dict(raw)
        for item in settings:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise FlashError(STEP, f"--set {item!r} is not KEY=VALUE", "write e.g. --set interval_s=10 or --set meter.type=sdm120")
            value = edge_config.parse_value(text)
            out = _set(out, key.strip(), value, edge_config)
        return out


def _set(raw: dict[str, Any], key: str, value: Any, edge_config: Any) -> dict[str, Any]:
    out = dict(raw)
    if "." in key:
        top, sub = key.split(".", 1)
        if top != "meter" or not sub or "." in sub:
            raise FlashError(STEP, f"config key {key!r}: only meter.KEY is nested", "use meter.KEY or a top-level key")
        meter = dict(raw.get("meter") or edge_config.DEFAULTS["meter"])
        meter[sub] = value
        out["meter"] = meter
    else:
        if key not in edge_config.DEFAULTS:
            raise FlashError(STEP, f"config key {key!r} is unknown", f"use one of {', '.join(sorted(edge_config.DEFAULTS))}")
        out[key] = value
    return out


def validate(raw: dict[str, Any], board: str) -> dict[str, Any]:
    """The full config (defaults filled in) if `raw` is valid for `board`."""
    with _edge_importable() as edge_config:
        try:
            cfg: dict[str, Any] = edge_config.with_defaults(raw)
        except edge_config.ConfigError as e:
            raise FlashError(STEP, str(e), "correct that key in the config file or with --set KEY=VALUE") from None
    problems = pin_problems(cfg, board)
    if problems:
        raise FlashError(STEP, f"pins do not fit {board}: " + "; ".join(problems),
                         "pick pins the board has and no other function uses (hardware/boards.md shows the wiring), "
                         "e.g. --set meter.de_pin=4")
    return cfg


def pin_problems(cfg: dict[str, Any], board: str) -> list[str]:
    """The meter's pins on the board's pin map (hardware/boards.py): a pin
    the board lacks, one used twice, an input-only pin driven, an ADC the
    radio blocks. None for the unix port, which has no pins."""
    if board == "unix":
        return []
    from microgrid.hardware import boards

    return list(boards.validate_config(board, cfg))


def pin_warnings(cfg: dict[str, Any], board: str) -> list[str]:
    """Pins that work but need care (strapping pins, the REPL's UART)."""
    if board == "unix":
        return []
    from microgrid.hardware import boards

    try:
        return boards.check_pins(board, boards.meter_pin_uses(board, cfg.get("meter") or {})).warnings
    except (KeyError, ValueError):
        return []


def suggested_meter(board: str, kind: str) -> dict[str, Any]:
    """The wiring hardware/ documents for this meter type on this board."""
    from microgrid.hardware import boards

    try:
        return boards.suggested_meter_config(board, kind)
    except KeyError:
        return {"type": kind}


def to_json(raw: dict[str, Any]) -> str:
    """The file's text: the installer's keys only (defaults stay in the
    firmware), sorted, so the same settings give the same bytes."""
    return json.dumps(raw, indent=1, sort_keys=True) + "\n"
