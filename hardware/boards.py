"""Pin maps of the supported boards, the pins each meter driver uses, and
the coordinator's Raspberry Pi GPIO assignments, read from the JSON files
beside this module (boards.json, meters.json, coordinator_pi.json).

The checks here run at flash time (flash/settings.py) and at coordinator
start-up, so a pin the board does not have, an input-only pin driven as an
output, a pin used twice or an ADC channel the radio blocks is an error on
the installer's laptop, not a dead meter in a cabinet:

>>> validate_pins("esp32-devkitc", {"relay": (34, "out")})
Traceback (most recent call last):
...
microgrid.hardware.boards.PinError: esp32-devkitc: relay=GPIO34: GPIO34 is input-only; expected an output-capable pin

Works from the installed package (`microgrid.hardware`) and from the
repository: the data files are package data, found with importlib.resources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

MODES = ("in", "out", "adc", "uart_tx", "uart_rx")


class PinError(ValueError):
    """One or more pin assignments do not fit the board. `problems` holds
    one line per fault, each naming the function, the pin and what is
    expected."""

    def __init__(self, board: str, problems: list[str]) -> None:
        self.board = board
        self.problems = list(problems)
        super().__init__(f"{board}: " + "; ".join(self.problems))


class UnknownBoard(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(name)
        self.message = f"board {name!r} is not in hardware/boards.json; expected one of {', '.join(known)}"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PinUse:
    """What a function does with a pin. `uart` names the UART of a uart_tx
    or uart_rx pin; `pull_up` asks for the internal pull-up of an input."""

    pin: int
    mode: str
    uart: int | None = None
    pull_up: bool = False


@dataclass(frozen=True)
class Uart:
    id: int
    tx: tuple[int, ...] | None  # None: any pin through the GPIO matrix
    rx: tuple[int, ...] | None
    default_tx: int | None
    default_rx: int | None
    reserved: str  # "" when free for meters


@dataclass(frozen=True)
class Board:
    name: str
    title: str
    gpios: frozenset[int]
    unusable: Mapping[int, str]
    caution: Mapping[int, str]
    input_only: frozenset[int]
    no_internal_pull: frozenset[int]
    strapping: Mapping[int, str]
    adc: Mapping[int, tuple[str, bool]]  # pin -> (channel, usable with Wi-Fi)
    uarts: Mapping[int, Uart]
    notes: tuple[str, ...] = field(default=())


@dataclass
class PinReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _package() -> str:
    return __name__.rpartition(".")[0] or "hardware"


@lru_cache(maxsize=None)
def load_data(filename: str) -> dict[str, Any]:
    """One of the JSON data files of this package, parsed."""
    text = resources.files(_package()).joinpath(filename).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _pins(items: Any) -> dict[int, Any]:
    return {int(k): v for k, v in dict(items).items()}


def _uart(uid: str, raw: dict[str, Any]) -> Uart:
    def pins(value: Any) -> tuple[int, ...] | None:
        return None if value == "any" else tuple(int(p) for p in value)

    return Uart(int(uid), pins(raw["tx"]), pins(raw["rx"]), raw.get("default_tx"), raw.get("default_rx"),
                raw.get("reserved", ""))


def board_names() -> list[str]:
    return list(load_data("boards.json")["boards"])


@lru_cache(maxsize=None)
def board(name: str) -> Board:
    """The pin map of `name`; UnknownBoard (a KeyError) if there is none."""
    boards = load_data("boards.json")["boards"]
    if name not in boards:
        raise UnknownBoard(name, list(boards))
    raw = boards[name]
    return Board(
        name=name,
        title=raw["title"],
        gpios=frozenset(raw["gpios"]),
        unusable=_pins(raw.get("unusable", {})),
        caution=_pins(raw.get("caution", {})),
        input_only=frozenset(raw.get("input_only", [])),
        no_internal_pull=frozenset(raw.get("no_internal_pull", [])),
        strapping=_pins(raw.get("strapping", {})),
        adc={int(k): (v["channel"], bool(v.get("with_wifi", True))) for k, v in raw.get("adc", {}).items()},
        uarts={int(k): _uart(k, v) for k, v in raw.get("uarts", {}).items()},
        notes=tuple(raw.get("notes", [])),
    )


def _as_use(board_name: str, function: str, value: Any) -> PinUse:
    if isinstance(value, PinUse):
        use = value
    elif isinstance(value, tuple) and len(value) == 2:
        use = PinUse(value[0], value[1])
    else:
        raise PinError(board_name, [f"{function}={value!r}: expected PinUse(pin, mode) or a (pin, mode) tuple"])
    if use.mode not in MODES:
        raise PinError(board_name, [f"{function}: mode {use.mode!r} is not one of {', '.join(MODES)}"])
    return use


def _name(b: Board, pin: int) -> str:
    return f"GP{pin}" if b.name == "pico-w" else f"GPIO{pin}"


def check_pins(board_name: str, assignments: Mapping[str, PinUse | tuple[int, str]],
               wifi: bool = True, allow_reserved: frozenset[str] = frozenset()) -> PinReport:
    """Every fault of `assignments` (function -> PinUse or (pin, mode)) on
    the board, as lines; nothing raised. `wifi`: the radio is on (ESP32
    ADC2 is then unusable). Functions in `allow_reserved` may use pins and
    UARTs reserved for the REPL or console (the console itself)."""
    b = board(board_name)
    report = PinReport()
    owner: dict[int, str] = {}
    for function, value in assignments.items():
        use = _as_use(b.name, function, value)
        pin = use.pin
        if isinstance(pin, bool) or not isinstance(pin, int):
            report.problems.append(f"{function}={pin!r}: expected a GPIO number")
            continue
        label = f"{function}={_name(b, pin)}"
        if pin in owner:
            report.problems.append(f"{label}: {_name(b, pin)} is already used by {owner[pin]}; expected a pin no other function uses")
        owner.setdefault(pin, function)
        if pin in b.unusable:
            report.problems.append(f"{label}: {_name(b, pin)} is {b.unusable[pin]}; expected one of {_list(b, b.gpios)}")
            continue
        if pin not in b.gpios:
            candidates = [p for p, (_, ok) in b.adc.items() if ok or not wifi] if use.mode == "adc" else b.gpios
            report.problems.append(f"{label}: {b.name} has no {_name(b, pin)}; expected one of {_list(b, candidates)}")
            continue
        reserved = function in allow_reserved
        if pin in b.caution and not reserved:
            report.warnings.append(f"{label}: {_name(b, pin)} is {b.caution[pin]}")
        if pin in b.strapping:
            report.warnings.append(f"{label}: {_name(b, pin)} is a strapping pin ({b.strapping[pin]}); "
                                   "make sure the circuit does not hold it at the wrong level during reset")
        if use.mode in ("out", "uart_tx") and pin in b.input_only:
            report.problems.append(f"{label}: {_name(b, pin)} is input-only; expected an output-capable pin")
        if use.pull_up and pin in b.no_internal_pull:
            report.problems.append(f"{label}: {_name(b, pin)} has no internal pull-up; fit an external 10 kOhm "
                                   "pull-up to 3V3 and turn the internal one off, or pick another pin")
        if use.mode == "adc":
            if pin not in b.adc:
                report.problems.append(f"{label}: {_name(b, pin)} has no ADC; expected one of {_list(b, b.adc) or '(none: this board has no ADC)'}")
            elif wifi and not b.adc[pin][1]:
                channel = b.adc[pin][0]
                usable = [p for p, (_, ok) in b.adc.items() if ok]
                report.problems.append(f"{label}: {_name(b, pin)} is {channel}, which cannot be read while Wi-Fi is on; "
                                       f"expected one of {_list(b, usable)}")
        if use.mode in ("uart_tx", "uart_rx"):
            _check_uart_pin(b, function, label, use, report, reserved)
    return report


def _check_uart_pin(b: Board, function: str, label: str, use: PinUse, report: PinReport, reserved: bool) -> None:
    if use.uart is None or use.uart not in b.uarts:
        report.problems.append(f"{function}: {b.name} has no UART{use.uart}; expected one of "
                               f"{', '.join(str(u) for u in b.uarts)}")
        return
    u = b.uarts[use.uart]
    if u.reserved and not reserved:
        report.problems.append(f"{function}: UART{u.id} is not free: {u.reserved}; expected one of "
                               f"{', '.join(str(x.id) for x in b.uarts.values() if not x.reserved)}")
    allowed = u.tx if use.mode == "uart_tx" else u.rx
    if allowed is not None and use.pin not in allowed:
        direction = "TX" if use.mode == "uart_tx" else "RX"
        report.problems.append(f"{label}: UART{u.id} {direction} cannot be on {_name(b, use.pin)}; "
                               f"expected one of {_list(b, allowed)}")


def _list(b: Board, pins: Any) -> str:
    return ", ".join(_name(b, p) for p in sorted(pins))


def validate_pins(board_name: str, assignments: Mapping[str, PinUse | tuple[int, str]],
                  wifi: bool = True, allow_reserved: frozenset[str] = frozenset()) -> list[str]:
    """Raise PinError listing every fault; return the warnings (strapping
    pins, pins the REPL or console share) when there is none."""
    report = check_pins(board_name, assignments, wifi, allow_reserved)
    if report.problems:
        raise PinError(board_name, report.problems)
    return report.warnings


# -- meter configs (edge/config.py's "meter" object) --------------------------


def meter_pin_uses(board_name: str, meter: Mapping[str, Any]) -> dict[str, PinUse]:
    """The pins a meter config uses on `board_name`, keyed by config key
    ("meter.uart.tx", "meter.de_pin" ...), with the driver's defaults
    filled in as the firmware will fill them. PinError if the config names
    a driver hardware/meters.json does not know, or a UART without pins."""
    drivers = load_data("meters.json")["drivers"]
    kind = meter.get("type")
    if kind not in drivers:
        raise PinError(board_name, [f"meter.type={kind!r}: expected one of {', '.join(drivers)}"])
    spec = drivers[kind]
    b = board(board_name)
    uses: dict[str, PinUse] = {}
    if spec.get("uart"):
        ucfg = meter.get("uart") or {}
        uid = ucfg.get("id", spec.get("uart_default_id", 2))
        u = b.uarts.get(uid) if isinstance(uid, int) else None
        for key, mode in (("tx", "uart_tx"), ("rx", "uart_rx")):
            pin = ucfg.get(key)
            if pin is None and u is not None:
                pin = u.default_tx if key == "tx" else u.default_rx
            if pin is None:
                if u is None:
                    raise PinError(board_name, [f"meter.uart.id={uid!r}: {board_name} has no UART{uid}; expected one of "
                                                f"{', '.join(str(x) for x in b.uarts)}"])
                raise PinError(board_name, [f"meter.uart.{key}: UART{uid} of {board_name} has no default pin; set meter.uart.{key}"])
            uses[f"meter.uart.{key}"] = PinUse(pin, mode, uart=uid)
    for key, pspec in spec.get("pins", {}).items():
        pin = meter.get(key, pspec.get("default"))
        if pin is None:
            continue
        pull = bool(meter.get(pspec["pull_key"], pspec.get("pull_default", False))) if "pull_key" in pspec else False
        uses[f"meter.{key}"] = PinUse(pin, pspec["mode"], pull_up=pull)
    return uses


def validate_config(board_name: str, cfg: Mapping[str, Any]) -> list[str]:
    """Pin problems of a meter's whole config (edge/config.py keys) on the
    board, one line each; [] when it fits. Used by `microgrid flash`."""
    meter = cfg.get("meter") or {}
    try:
        uses = meter_pin_uses(board_name, meter)
        # A meter reports over Wi-Fi, so ESP32 ADC2 is never free for it.
        return check_pins(board_name, uses, wifi=True).problems
    except UnknownBoard as e:
        return [str(e)]
    except PinError as e:
        return e.problems


def suggested_meter_config(board_name: str, kind: str) -> dict[str, Any]:
    """The meter config hardware/wiring.md draws for this board and driver."""
    spec = load_data("meters.json")["drivers"][kind]
    suggested: dict[str, Any] = json.loads(json.dumps(spec.get("suggested", {}).get(board_name, {})))
    return {"type": kind, **suggested}


# -- the coordinator's Raspberry Pi ------------------------------------------


@dataclass(frozen=True)
class PiAssignment:
    name: str
    gpio: int
    header_pin: int
    mode: str
    purpose: str
    active_high: bool = True
    safe_state: str = ""
    uart: int | None = None


def coordinator_assignments() -> dict[str, PiAssignment]:
    """The coordinator Pi's GPIO assignments (BCM numbers) by function."""
    raw = load_data("coordinator_pi.json")["assignments"]
    return {
        name: PiAssignment(name, a["gpio"], a["header_pin"], a["mode"], a["purpose"], a.get("active_high", True),
                           a.get("safe_state", ""), a.get("uart"))
        for name, a in raw.items()
    }


def coordinator_pin(name: str) -> int:
    """The BCM GPIO number of a coordinator function ("relay_1", "status_led" ...)."""
    assignments = coordinator_assignments()
    if name not in assignments:
        raise KeyError(f"coordinator GPIO function {name!r} is not in hardware/coordinator_pi.json; "
                       f"expected one of {', '.join(assignments)}")
    return assignments[name].gpio


def validate_coordinator_pins(extra: Mapping[str, PinUse | tuple[int, str]] | None = None) -> list[str]:
    """Check the Pi assignments (plus `extra`, e.g. relays from the config)
    against the Pi's header; PinError on a fault, warnings otherwise."""
    data = load_data("coordinator_pi.json")
    uses: dict[str, PinUse | tuple[int, str]] = {
        name: PinUse(a["gpio"], a["mode"], uart=a.get("uart")) for name, a in data["assignments"].items()
    }
    allow = frozenset(name for name, a in data["assignments"].items() if a.get("allow_reserved"))
    uses.update(extra or {})
    return validate_pins(data["board"], uses, wifi=False, allow_reserved=allow)


# -- documents rendered from the data (kept in step by a test) ---------------


def bills_of_materials() -> dict[str, Any]:
    builds: dict[str, Any] = load_data("bom.json")["builds"]
    return builds


def render_bom_markdown() -> str:
    """hardware/bom.md, from bom.json."""
    lines = ["# Bills of materials", "",
             "Generated from `hardware/bom.json` by `python -m microgrid.hardware.boards`; edit the JSON, not this file.",
             "Part numbers are the ones the builds were drawn for; parts with the same ratings are fine.",
             "Mains parts (breakers, contactors, meters) must carry the marks your country requires (CE/UKCA/UL).", ""]
    for name, build in bills_of_materials().items():
        lines += [f"## {build['title']}", "", f"Build `{name}`: board `{build['board']}`"
                  + (f", meter driver `{build['meter']}`" if build.get("meter") else "") + ".", "",
                  "| Qty | Part | Manufacturer | Part number | Note |", "|---:|---|---|---|---|"]
        for it in build["items"]:
            lines.append(f"| {it['qty']} | {it['part']} | {it['manufacturer']} | {it['part_number']} | {it.get('note', '')} |")
        lines.append("")
    return "\n".join(lines)


def render_pinmaps_markdown() -> str:
    """hardware/pinmaps.md, from boards.json and meters.json."""
    lines = ["# Pin maps", "",
             "Generated from `hardware/boards.json` and `hardware/meters.json` by `python -m microgrid.hardware.boards`;",
             "edit the JSON, not this file. GPIO numbers are the chip's (ESP32 GPIOn, RP2040 GPn, Raspberry Pi BCM),",
             "not header pin positions. `microgrid flash` checks a meter's config against these maps.", ""]
    drivers = load_data("meters.json")["drivers"]
    for name in board_names():
        b = board(name)
        lines += [f"## {b.title} (`{name}`)", ""]
        lines.append(f"- Usable GPIOs: {_list(b, b.gpios)}")
        if b.input_only:
            lines.append(f"- Input-only (no output, no internal pull-up/down): {_list(b, b.input_only)}")
        for pin, why in sorted(b.unusable.items()):
            lines.append(f"- Not usable: {_name(b, pin)}: {why}")
        for pin, why in sorted(b.strapping.items()):
            lines.append(f"- Strapping: {_name(b, pin)}: {why}")
        for pin, why in sorted(b.caution.items()):
            lines.append(f"- Shared: {_name(b, pin)}: {why}")
        if b.adc:
            ok = [f"{_name(b, p)} ({ch})" for p, (ch, wifi) in sorted(b.adc.items()) if wifi]
            blocked = [f"{_name(b, p)} ({ch})" for p, (ch, wifi) in sorted(b.adc.items()) if not wifi]
            lines.append(f"- ADC: {', '.join(ok)}")
            if blocked:
                lines.append(f"- ADC, unusable while Wi-Fi is on: {', '.join(blocked)}")
        else:
            lines.append("- ADC: none")
        for uid, u in sorted(b.uarts.items()):
            tx = "any output pin" if u.tx is None else _list(b, u.tx)
            rx = "any pin" if u.rx is None else _list(b, u.rx)
            default = f"; default TX {_name(b, u.default_tx)}, RX {_name(b, u.default_rx)}" if u.default_tx is not None and u.default_rx is not None else "; no default pins"
            lines.append(f"- UART{uid}: TX {tx}; RX {rx}{default}" + (f" ({u.reserved})" if u.reserved else ""))
        for note in b.notes:
            lines.append(f"- Note: {note}")
        suggested = [(kind, spec["suggested"][name]) for kind, spec in drivers.items() if name in spec.get("suggested", {})]
        if suggested:
            lines += ["", "Suggested meter wiring (the `meter` object of the board's config):", ""]
            for kind, cfg in suggested:
                lines.append(f"- `{kind}`: `{json.dumps({'type': kind, **cfg})}`")
        lines.append("")
    return "\n".join(lines)


def _write_docs() -> None:  # pragma: no cover - run by hand after editing the JSON
    from pathlib import Path

    here = Path(__file__).resolve().parent
    (here / "bom.md").write_text(render_bom_markdown())
    (here / "pinmaps.md").write_text(render_pinmaps_markdown())
    print(f"wrote {here / 'bom.md'} and {here / 'pinmaps.md'}")


if __name__ == "__main__":  # pragma: no cover
    _write_docs()
