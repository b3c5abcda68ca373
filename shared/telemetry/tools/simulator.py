"""A simulated drive of the sample solar car, recorded to a candump log with injected faults.

The car (``vehicles/sample/solar_car.dbc``): a 36-cell battery pack with a BMS (pack status,
multiplexed cell voltages and temperatures), three MPPTs, a hub motor controller, driver
controls and a GPS on a 29-bit id. A telemetry radio sends a heartbeat the DBC does not
describe, and the bus sees a few error frames, as a real one does.

The drive: away from the line, cruising, a stop, a hard acceleration, and a stop at the end.
``FAULTS`` lists what is injected and when, so tests can check the detector against it. The
output is deterministic for a given seed: the committed recording is what
``python -m telemetry simulate`` writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can
import cantools
import numpy as np

from telemetry.tools.paths import SAMPLE

DBC = SAMPLE / "solar_car.dbc"
START = 1_782_900_000.0  # 2026-07-01 10:00:00 UTC: candump logs carry absolute times
CELLS = 36
HEARTBEAT_ID = 0x7E0  # the telemetry radio: not in the DBC


@dataclass(frozen=True)
class Expect:
    """An alert a fault must raise with the rules of ``vehicles/sample/vehicle.toml``: the rule,
    the key (signal, message, group or bus counter), when the alert must be raised and cleared
    (seconds from the start of the drive; ``end`` None: still active when the recording ends),
    and the latency allowed: the signal's sampling period plus one batch interval."""

    rule: str
    key: str
    start: float
    end: float | None
    latency: float


@dataclass(frozen=True)
class Fault:
    name: str
    alerts: tuple[Expect, ...]


_BATCH = 0.5  # latency allowed beyond the signal's period (a replay decides at event times: exact)

FAULTS = (
    # A cell's voltage tap reads 0.13 V high from 60 s to 80 s: the pack looks imbalanced.
    Fault("cell voltage imbalance", (Expect("cell-imbalance", "cell-imbalance", 60.5, 80.0, 0.2 + _BATCH),)),
    # The bus glitches: 40 error frames in one second from 100 s (2/s over 5 s is the bound):
    # with the odd one at 97.5 s, the 11th error in 5 s is the burst's 10th, at 100.225 s; the
    # rate is back to 2/s when the burst's 30th error leaves the window, at 105.725 s.
    Fault("bus error burst", (Expect("bus-errors", "bus.error", 100.225, 105.725, _BATCH),)),
    # A cell heats up (a failing cell or a blocked cooling duct): Temp14 over 55 degC from 130 s,
    # back under 54.5 degC (the hysteresis) at 160.5 s. Temperatures are sent once a second.
    Fault("cell over-temperature", (Expect("cell-overtemp", "BMS_CellTemps.Temp14", 130.0, 160.5, 1.0 + _BATCH),)),
    # MPPT2 stops reporting at 170 s and never comes back: stale after 2 s.
    Fault("MPPT2 offline", (Expect("mppt-offline", "MPPT2_Status", 171.8, None, 0.2 + _BATCH),)),
    # A weak cell sags to 2.85 V under the hard acceleration, 186 s to 189 s: under-voltage, and
    # an imbalance once it has lasted the spread rule's 0.5 s debounce.
    Fault("cell under-voltage under load", (
        Expect("cell-undervoltage", "BMS_CellVoltages.Cell27", 186.0, 189.0, 0.2 + _BATCH),
        Expect("cell-imbalance", "cell-imbalance", 186.5, 189.0, 0.2 + _BATCH),
    )),
    # The motor temperature sensor reads 45 degC too high for one frame at 205 s.
    Fault("motor temperature glitch", (Expect("motor-temp-jump", "MC_Drive.MotorTemp", 205.0, 205.05, 0.1 + _BATCH),)),
    # MPPT3's panels are shaded, 215 s to 221 s: input voltage 65 V instead of about 95 V. No
    # fixed limit fits a solar input; the statistical rule (1 s debounce) catches it.
    Fault("MPPT3 shaded", (Expect("mppt-input-anomaly", "MPPT3_Status.InputVoltage", 216.0, 221.0, 0.2 + _BATCH),)),
)


def _speed_profile(t: np.ndarray) -> np.ndarray:
    """Target speed in km/h over the drive."""
    points_t = [0, 20, 60, 95, 102, 110, 125, 180, 184, 200, 225, 238, 10_000]
    points_v = [0, 60, 68, 62, 0, 0, 58, 64, 90, 85, 70, 0, 0]
    return np.interp(t, points_t, points_v)


class _Car:
    """The car's state on a 10 ms grid; frames sample it."""

    def __init__(self, seconds: float, rng: np.random.Generator) -> None:
        dt = 0.01
        self.dt = dt
        t = np.arange(0.0, seconds + dt, dt)
        self.t = t
        speed = _speed_profile(t)
        accel = np.gradient(speed / 3.6, dt)  # m/s^2
        self.speed = speed
        mass, crr, cda, rho, wheel_r = 320.0, 0.006, 0.12, 1.2, 0.28
        v = speed / 3.6
        force = mass * accel + mass * 9.81 * crr * (v > 0.1) + 0.5 * rho * cda * v**2
        # Regenerative braking is capped at 3 kW; the mechanical brakes do the rest.
        power = np.maximum(force * v / 0.95, -3000.0)
        self.sun = 900.0 + 80.0 * np.sin(t / 37.0)  # W from the array, three MPPTs share it
        self.ocv0 = 4.02
        soc = np.empty_like(t)
        pack_v = np.empty_like(t)
        current = np.empty_like(t)
        capacity_as = 36.0 * 3600.0  # 36 Ah pack
        s = 0.82
        for i in range(len(t)):
            ocv = CELLS * (3.3 + 0.9 * s)
            current[i] = (power[i] - self.sun[i]) / ocv
            pack_v[i] = ocv - current[i] * 0.09
            soc[i] = s
            s -= current[i] * dt / capacity_as
        self.soc = soc
        self.pack_current = current
        self.pack_voltage = pack_v
        self.motor_current = power / np.maximum(pack_v, 1.0)
        self.rpm = v / wheel_r * 60.0 / (2 * np.pi)
        self.odometer = 1234.5 + np.cumsum(v * dt) / 1000.0
        self.throttle = np.clip(accel * 40.0 + v * 0.8, 0.0, 100.0) * (accel >= -0.05)
        self.regen = np.clip(-accel * 40.0, 0.0, 100.0) * (accel < -0.05)
        self.cell_offset = rng.normal(0.0, 0.004, CELLS)
        self.temp_offset = rng.normal(0.0, 0.6, CELLS)
        heat = np.cumsum(np.maximum(current, 0.0) ** 2 * 0.0004 * dt) - t * 0.004
        self.pack_temp = 27.0 + np.clip(heat, 0.0, 8.0)
        self.motor_temp = 35.0 + 25.0 * (1 - np.exp(-t / 120.0)) + 0.05 * np.abs(self.motor_current)

    def at(self, seconds: float) -> int:
        return min(round(seconds / self.dt), len(self.t) - 1)


def _fault_temp14(s: float, normal: float) -> float:
    """Temp14 heats up: 45 degC at 120 s, 55 at 130 s, 61 from 136 s to 150 s, 55 again at 160 s,
    back to normal by 175 s."""
    profile = float(np.interp(s, [120.0, 130.0, 136.0, 150.0, 160.0, 175.0], [45.0, 55.0, 61.0, 61.0, 55.0, 40.0]))
    return max(normal, profile) if 120.0 <= s <= 175.0 else normal


def _fault_cell27(s: float, normal: float) -> float:
    """Cell27 sags to 2.85 V during the hard acceleration, from 186 s to 189 s."""
    return 2.85 if 186.0 <= s < 189.0 else normal


def _frames(seconds: float, seed: int) -> Iterator[can.Message]:
    rng = np.random.default_rng(seed)
    db = cantools.database.load_file(str(DBC), strict=True)
    assert isinstance(db, cantools.database.can.Database)
    car = _Car(seconds, rng)
    schedule: list[tuple[float, int, str, int]] = []  # (time, tie-break, message, group)

    def every(name: str, period: float, phase: float, groups: int = 1) -> None:
        n = int(seconds / period)
        for k in range(n):
            for g in range(groups):
                t = phase + k * period + g * 0.0009 + rng.uniform(0.0, 0.0004)
                if t < seconds:
                    schedule.append((t, len(schedule), name, g))

    every("BMS_PackStatus", 0.1, 0.003)
    every("BMS_CellVoltages", 0.2, 0.011, groups=12)
    every("BMS_CellTemps", 1.0, 0.057, groups=6)
    for i in range(3):
        every(f"MPPT{i + 1}_Status", 0.2, 0.021 + 0.004 * i)
    every("MC_Drive", 0.05, 0.007)
    every("MC_Velocity", 0.05, 0.009)
    every("DriverControls", 0.1, 0.033)
    every("GPS_Position", 0.5, 0.101)
    every("HEARTBEAT", 1.0, 0.5)
    for t in (42.1234, 97.5, 203.25):  # the odd error frame a real bus sees
        schedule.append((t, len(schedule), "ERROR", 0))
    for i in range(40):  # fault: a burst of error frames
        schedule.append((100.0 + i * 0.025 + 0.0001, len(schedule), "ERROR", 0))
    # fault: MPPT2 goes offline at 170 s
    schedule = [entry for entry in schedule if not (entry[2] == "MPPT2_Status" and entry[0] >= 170.0)]
    glitch = min((entry[0] for entry in schedule if entry[2] == "MC_Drive" and entry[0] >= 205.0), default=None)
    schedule = [entry for entry in schedule if entry[0] < seconds]
    schedule.sort()

    for t, _, name, group in schedule:
        i = car.at(t)
        ts = round(START + t, 6)
        if name == "ERROR":
            yield can.Message(timestamp=ts, arbitration_id=0x20000004, is_error_frame=True, dlc=8, data=bytes(8))
            continue
        if name == "HEARTBEAT":
            yield can.Message(timestamp=ts, arbitration_id=HEARTBEAT_ID, is_extended_id=False, data=bytes([1, int(t) % 256]))
            continue
        msg = db.get_message_by_name(name)
        values: dict[str, float]
        if name == "BMS_PackStatus":
            values = {
                "PackVoltage": car.pack_voltage[i] + rng.normal(0, 0.02),
                "PackCurrent": car.pack_current[i] + rng.normal(0, 0.05),
                "SOC": round(car.soc[i] * 200) / 2,
                "BmsState": 1,
            }
        elif name == "BMS_CellVoltages":
            values = {"Module": group}
            for j in range(3):
                c = group * 3 + j
                v = car.pack_voltage[i] / CELLS + car.cell_offset[c] + rng.normal(0, 0.0008)
                if c + 1 == 27:
                    v = _fault_cell27(t, v)
                if c + 1 == 12 and 60.0 <= t < 80.0:
                    v += 0.13  # fault: a voltage tap reading high
                values[f"Cell{c + 1:02d}"] = v
        elif name == "BMS_CellTemps":
            values = {"Module": group}
            for j in range(6):
                c = group * 6 + j
                temp = car.pack_temp[i] + car.temp_offset[c] + rng.normal(0, 0.2)
                if c + 1 == 14:
                    temp = _fault_temp14(t, temp)
                values[f"Temp{c + 1:02d}"] = temp
        elif name.startswith("MPPT"):
            share = car.sun[i] / 3.0 * (1.0 + 0.03 * rng.normal())
            vin = 95.0 + 3.0 * rng.normal()
            if name == "MPPT3_Status" and 215.0 <= t < 221.0:
                vin -= 30.0  # fault: shaded panels
            values = {
                "InputVoltage": vin,
                "InputCurrent": share / vin,
                "OutputVoltage": car.pack_voltage[i],
                "Temperature": 38.0 + 0.01 * t + rng.normal(0, 0.5),
            }
        elif name == "MC_Drive":
            values = {
                "MotorRpm": car.rpm[i],
                "BusCurrent": car.motor_current[i] + rng.normal(0, 0.05),
                "BusVoltage": car.pack_voltage[i],
                "MotorTemp": car.motor_temp[i] + (45.0 if t == glitch else 0.0),
            }
        elif name == "MC_Velocity":
            values = {"VehicleSpeed": car.speed[i], "Odometer": car.odometer[i]}
        elif name == "DriverControls":
            values = {
                "Throttle": car.throttle[i],
                "Regen": car.regen[i],
                "Brake": int(car.regen[i] > 20),
                "Gear": 1 if car.speed[i] > 0 or t < 5 else 0,
                "CruiseOn": int(60 < t < 95),
            }
        else:  # GPS_Position: a lap around a circuit
            angle = t / 240.0 * 2 * np.pi
            values = {"Latitude": -33.9173 + 0.004 * np.sin(angle), "Longitude": 151.2313 + 0.005 * np.cos(angle)}
        data = msg.encode({k: float(v) for k, v in values.items()}, scaling=True, strict=False)
        yield can.Message(
            timestamp=ts, arbitration_id=msg.frame_id, is_extended_id=msg.is_extended_frame, data=data
        )


def write_drive(path: str | Path, *, seconds: float = 240.0, seed: int = 2026) -> int:
    """Record the simulated drive to a candump -L log; return the number of frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with can.CanutilsLogWriter(str(path), channel="can0") as writer:
        for frame in _frames(seconds, seed):
            writer.on_message_received(frame)
            count += 1
    return count
