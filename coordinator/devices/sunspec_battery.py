"""A home battery through SunSpec: storage model 124 for control, battery
model 802 (and the DER storage capacity 713, the nameplate 120, an
inverter 101-103) for measurements
where the device has them. Point offsets, types and scale factors come
from SunSpec's definitions (sunspec_models.py, pysunspec2's JSON).

Discovery walks the model chain from the base address (40000, 0, 50000:
"SunS", then ID/L pairs) with the same code the meters' poller uses
(sunspec.discover). Model 124 is required; a device without it raises
DeviceUnsupported naming the models it has.

What is read, the first implemented source winning:

    state of charge   802 SoC, else 713 SoC, else 124 ChaState (% of capacity)
    power             802 W (DC; SunSpec counts discharge positive, we
                      flip it: + charges), else the inverter model's AC W
                      (negated: a storage inverter's output is discharge;
                      on a hybrid it includes PV, so prefer 802)
    capacity          802 WHRtg, else 713 WHRtg, else 120 WHRtg, else the
                      configured capacity_wh; times 802 (else 713) SoH
    max charge        smallest of 124 WChaMax, 802 WChaRteMax, 120 MaxChaRte
    max discharge     smallest of 802 WDisChaRteMax, 120 MaxDisChaRte, else
                      124 WChaMax (124 scales OutWRte by WChaMax too)
    reserve           largest of 124 MinRsvPct, 802 SoCRsvMin; 802 SocRsvMax

Both limits drop to 0 in a fault, when the storage is off or
disconnected, and at the reserve (no discharge) or full (no charge).

Command (model 124): charging at P is the window InWRte = +p %, OutWRte =
-p % of WChaMax with StorCtl_Mod = 3 (both limits active), so the battery
can neither charge more nor less than P; discharging mirrors it; 0 is the
window [0, 0]. InOutWRte_RvrtTms holds the command for the seconds left
until `until`: past that the device reverts to its own mode by itself,
so a coordinator that stops commanding cannot leave a stale setpoint.
Rates are written before the mode bits, then read back: a device that
silently ignores a write is reported (DeviceRejected), not trusted.
`release()` clears StorCtl_Mod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from . import sunspec
from .interface import BatteryState, DeviceError, DeviceRejected, DeviceUnavailable, DeviceUnsupported
from .modbus import ModbusLink
from .modbus_battery import ModbusBatteryBase
from .registers import ModbusReadError, RegisterKind, RegisterMapError
from .sunspec_models import ModelLayout, layout

log = logging.getLogger("microgrid.devices.battery")

STORAGE_ID = 124
BATTERY_ID = 802
NAMEPLATE_ID = 120
CAPACITY_ID = 713  # DERStorageCapacity (the IEEE 1547 700-series)
MODE_CHARGE = 1 << 0  # StorCtl_Mod bit CHARGE: InWRte applies
MODE_DISCHARGE = 1 << 1  # bit DISCHARGE: OutWRte applies
MAX_HOLD_S = 0xFFFE  # InOutWRte_RvrtTms is uint16; 0xFFFF is "not implemented"

_CHA_ST = {1: "off", 2: "empty", 3: "discharging", 4: "charging", 5: "full", 6: "holding", 7: "testing"}
_STATE_802 = {1: "disconnected", 2: "initializing", 3: "connected", 4: "standby", 5: "soc protection",
              6: "suspending", 99: "fault"}


class _ChainMoved(Exception):
    """A model is no longer where discovery found it."""


@dataclass
class _Models:
    device: sunspec.SunSpecDevice
    storage: sunspec.ModelLocation
    battery: sunspec.ModelLocation | None
    nameplate: sunspec.ModelLocation | None
    inverter: sunspec.ModelLocation | None
    capacity: sunspec.ModelLocation | None = None


@dataclass(frozen=True)
class _Read:
    storage: Sequence[int]
    battery: Sequence[int] | None
    nameplate: Sequence[int] | None
    inverter: Sequence[int] | None
    capacity: Sequence[int] | None = None


class SunSpecBattery(ModbusBatteryBase):
    """`Battery` (interface.py) over SunSpec models 124 / 802."""

    def __init__(self, name: str, link: ModbusLink, unit: int = 1, *, clock: Callable[[], float],
                 hold_s: float = 900.0, base: int = -1, capacity_wh: int = 0, invert_power: bool = False) -> None:
        super().__init__(name, link, unit, clock, hold_s)
        self.bases = sunspec.BASE_ADDRESSES if base < 0 else (base,)
        self.capacity_wh = capacity_wh  # when the device does not say
        # Some devices count 802 W charge-positive, against SunSpec's
        # convention: `invert_power` says so per device.
        self.invert_power = invert_power
        self.models: _Models | None = None
        self.l124 = layout(STORAGE_ID)
        self.l802 = layout(BATTERY_ID)
        self.l120 = layout(NAMEPLATE_ID)
        self.l713 = layout(CAPACITY_ID)

    # -- discovery --------------------------------------------------------------

    async def discover(self) -> _Models:
        async def read(kind: RegisterKind, address: int, count: int) -> Sequence[int]:
            return await self.link.read(kind, address, count, self.unit)

        try:
            device = await sunspec.discover(read, self.bases)
        except RegisterMapError as e:
            raise DeviceUnsupported(self.name, str(e)) from None
        except ModbusReadError as e:
            if e.kind == "exception":
                raise DeviceUnsupported(self.name, str(e)) from None
            raise DeviceUnavailable(self.name, str(e)) from None
        try:
            storage = device.find((STORAGE_ID,))
        except RegisterMapError as e:
            raise DeviceUnsupported(self.name, f"{e}: a battery needs SunSpec storage model 124 to be commanded") from None
        by_id = {m.model_id: m for m in device.models}
        if storage.length < self.l124.length:
            raise DeviceUnsupported(self.name, f"model 124 at {storage.address} has {storage.length} registers; "
                                    f"SunSpec defines {self.l124.length}")
        inverter = next((by_id[i] for i in sunspec.INVERTER_IDS if i in by_id), None)
        self.models = _Models(device, storage, by_id.get(BATTERY_ID), by_id.get(NAMEPLATE_ID), inverter,
                              by_id.get(CAPACITY_ID))
        log.info("battery %s: SunSpec %s %s (serial %s) at base %d, models %s", self.name, device.manufacturer,
                 device.model_name, device.serial, device.base, ", ".join(str(m.model_id) for m in device.models))
        return self.models

    async def _models(self) -> _Models:
        return self.models if self.models is not None else await self.discover()

    # -- reading ----------------------------------------------------------------

    async def _read_model(self, loc: sunspec.ModelLocation | None, lay: ModelLayout | None) -> Sequence[int] | None:
        """The model's data registers, read with its ID and L in front: a
        device whose model chain moved (a firmware update, a replaced
        inverter) is caught here instead of decoding someone else's
        registers."""
        if loc is None:
            return None
        count = loc.length if lay is None else min(loc.length, lay.length)
        regs = await self._read("holding", loc.address - 2, count + 2)
        if regs[0] != loc.model_id or regs[1] != loc.length:
            raise _ChainMoved(f"expected model {loc.model_id} (L {loc.length}) at {loc.address - 2}, found "
                              f"ID {regs[0]} L {regs[1]}")
        return regs[2:]

    async def _read_all(self, again: bool = True) -> _Read:
        m = await self._models()
        try:
            storage = await self._read_model(m.storage, self.l124)
            assert storage is not None
            battery = await self._read_model(m.battery, self.l802)
            nameplate = await self._read_model(m.nameplate, self.l120)
            capacity = await self._read_model(m.capacity, self.l713) if m.battery is None else None
            inverter = None
            if m.battery is None and m.inverter is not None:
                inverter = await self._read_model(m.inverter, None)
        except _ChainMoved as e:
            self.models = None
            if not again:
                raise DeviceUnsupported(self.name, f"the SunSpec model chain keeps changing: {e}") from None
            log.warning("battery %s: %s; discovering the models again", self.name, e)
            return await self._read_all(again=False)
        except DeviceUnsupported:
            self.models = None  # the device may have been replaced or reconfigured: discover again
            raise
        return _Read(storage, battery, nameplate, inverter, capacity)

    def _value(self, lay: ModelLayout, regs: Sequence[int] | None, point: str) -> float | None:
        if regs is None:
            return None
        try:
            return lay.value(regs, point)
        except RegisterMapError:  # the device's model is shorter than the definition
            return None

    def _decode(self, r: _Read) -> BatteryState:
        v124 = lambda p: self._value(self.l124, r.storage, p)  # noqa: E731
        v802 = lambda p: self._value(self.l802, r.battery, p)  # noqa: E731
        v120 = lambda p: self._value(self.l120, r.nameplate, p)  # noqa: E731
        v713 = lambda p: self._value(self.l713, r.capacity, p)  # noqa: E731

        soc = _first(v802("SoC"), v713("SoC"), v124("ChaState"))
        if soc is None:
            raise DeviceUnsupported(self.name, "no state of charge: neither model 802 SoC nor model 124 ChaState "
                                    "is implemented")
        if not -0.5 <= soc <= 100.5:
            raise DeviceError(self.name, f"state of charge {soc} %: expected 0..100 (scale factor or register fault)")
        soc = min(100.0, max(0.0, soc))

        power = self._power(r, v802)
        capacity = _first(v802("WHRtg"), v713("WHRtg"), v120("WHRtg"),
                          float(self.capacity_wh) if self.capacity_wh > 0 else None)
        if capacity is None or capacity <= 0:
            raise DeviceUnsupported(self.name, "no capacity: neither model 802 nor model 120 WHRtg is implemented; "
                                    "set capacity_wh for this battery")
        soh = _first(v802("SoH"), v713("SoH"))
        if soh is not None and 0 < soh <= 100:
            capacity = capacity * soh / 100.0
        else:
            soh = None

        wcha = v124("WChaMax")
        max_charge = _least(wcha, v802("WChaRteMax"), v120("MaxChaRte"))
        max_discharge = _least(v802("WDisChaRteMax"), v120("MaxDisChaRte"))
        if max_discharge is None:
            max_discharge = wcha
        if max_charge is None or max_discharge is None:
            raise DeviceUnsupported(self.name, "no charge rate: model 124 WChaMax is not implemented")
        min_soc = _most(v124("MinRsvPct"), v802("SoCRsvMin")) or 0.0
        max_soc = v802("SocRsvMax")
        max_soc = 100.0 if max_soc is None or not 0 < max_soc <= 100 else max_soc

        status = "ok"
        cha_st = self.l124.raw(r.storage, "ChaSt")
        state_802 = self.l802.raw(r.battery, "State") if r.battery is not None else None
        if state_802 in (1, 99) or cha_st == 1:
            status = _STATE_802.get(state_802 or 0) or _CHA_ST[1]
            max_charge = max_discharge = 0.0
        elif state_802 in (4, 6) or cha_st in (6, 7):
            status = _STATE_802.get(state_802 or 0) or _CHA_ST.get(cha_st or 0, "ok")
        if r.battery is not None and self.l802.raw(r.battery, "LocRemCtl") == 1:
            status = "local control"
        if soc <= min_soc:
            max_discharge = 0.0
        if soc >= max_soc:
            max_charge = 0.0

        return BatteryState(soc_pct=soc, power_w=power, max_charge_w=max(0.0, max_charge),
                            max_discharge_w=max(0.0, max_discharge), capacity_wh=int(capacity + 0.5), t=self.clock(),
                            setpoint_w=self._setpoint(r.storage, wcha), min_soc_pct=min_soc, max_soc_pct=max_soc,
                            soh_pct=soh, status=status)

    def _power(self, r: _Read, v802: Callable[[str], float | None]) -> float:
        w = v802("W")
        if w is not None:
            return w if self.invert_power else -w
        inv_loc = self.models.inverter if self.models else None
        if r.inverter is not None and inv_loc is not None and len(r.inverter) >= sunspec.INVERTER_LENGTH:
            inv = sunspec.decode_inverter(inv_loc.model_id, r.inverter, self.name, 0.0)
            if inv.power_w is not None:
                return inv.power_w  # decode_inverter negates already: AC output is discharge
        raise DeviceUnsupported(self.name, "no battery power: neither model 802 W nor an inverter model's W is "
                                "implemented")

    def _setpoint(self, storage: Sequence[int], wcha: float | None) -> float | None:
        """The command in force: a zero-width window of InWRte/OutWRte with
        both mode bits set, as `command` writes it; None otherwise."""
        mode = self.l124.raw(storage, "StorCtl_Mod")
        if mode is None or mode & (MODE_CHARGE | MODE_DISCHARGE) != MODE_CHARGE | MODE_DISCHARGE or wcha is None:
            return None
        inw, outw = self.l124.value(storage, "InWRte"), self.l124.value(storage, "OutWRte")
        if inw is None or outw is None or abs(inw + outw) > 1e-9:
            return None
        return inw / 100.0 * wcha

    async def state(self) -> BatteryState:
        return self._decode(await self._read_all())

    # -- commanding -------------------------------------------------------------

    async def command(self, setpoint_w: float, until: float | None = None) -> float:
        r = await self._read_all()
        st = self._decode(r)
        self.check_setpoint(setpoint_w, st.max_charge_w, st.max_discharge_w)
        if st.status == "local control":
            raise DeviceRejected(self.name, "the battery is under local control (802 LocRemCtl = LOCAL); "
                                 "nothing was sent")
        wcha = self.l124.value(r.storage, "WChaMax")
        if not wcha:
            raise DeviceUnsupported(self.name, "model 124 WChaMax is 0 or not implemented: rates cannot be scaled")
        hold = self.hold_seconds(until, MAX_HOLD_S)
        pct = abs(setpoint_w) / wcha * 100.0
        in_pct, out_pct = (pct, -pct) if setpoint_w >= 0 else (-pct, pct)
        try:
            off_out, out_regs, out_held = self.l124.encode(r.storage, "OutWRte", out_pct)
            off_in, in_regs, in_held = self.l124.encode(r.storage, "InWRte", in_pct)
        except RegisterMapError as e:
            raise DeviceUnsupported(self.name, str(e)) from None
        off_rvrt = self.l124.point("InOutWRte_RvrtTms").offset
        off_win = self.l124.point("InOutWRte_WinTms").offset
        assert off_in == off_out + 1 and off_win == off_in + 1 and off_rvrt == off_win + 1
        block = out_regs + in_regs + [0, hold]  # OutWRte, InWRte, WinTms (no random delay), RvrtTms
        mode_off = self.l124.point("StorCtl_Mod").offset
        base = self.models.storage.address if self.models else 0
        old_block = list(r.storage[off_out:off_out + len(block)])
        await self._write_steps([(base + off_out, block, old_block),
                                 (base + mode_off, [MODE_CHARGE | MODE_DISCHARGE], [])])
        back = await self._read("holding", base, self.l124.length)
        written = {off_out + i: v for i, v in enumerate(block)} | {mode_off: MODE_CHARGE | MODE_DISCHARGE}
        wrong = {o: back[o] for o, v in written.items() if back[o] != v}
        if wrong:
            raise DeviceRejected(self.name, "the device did not keep the command: registers "
                                 + ", ".join(f"{base + o} hold {back[o]} not {written[o]}" for o in wrong))
        accepted = in_held / 100.0 * wcha if setpoint_w >= 0 else -out_held / 100.0 * wcha
        log.debug("battery %s: %+.0f W for %d s (asked %+.0f W)", self.name, accepted, hold, setpoint_w)
        return accepted

    async def release(self) -> None:
        m = await self._models()
        mode_off = self.l124.point("StorCtl_Mod").offset
        await self._write(m.storage.address + mode_off, [0])


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _least(*values: float | None) -> float | None:
    have = [v for v in values if v is not None and v >= 0]
    return min(have) if have else None


def _most(*values: float | None) -> float | None:
    have = [v for v in values if v is not None]
    return max(have) if have else None
