"""Shared fixtures. Tests use the package's own in-memory transports and python-can's virtual
bus; nothing here talks to a network beyond 127.0.0.1."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "vehicles" / "sample"
RECIPES = ROOT / "recipes"
sys.path.insert(0, str(ROOT / "tests"))

settings.register_profile("default", deadline=None, max_examples=150)
settings.load_profile("default")

from telemetry.edge.clock import ManualClock  # noqa: E402
from telemetry.edge.components import Services  # noqa: E402
from telemetry.edge.config import VehicleConfig, parse_config  # noqa: E402
from telemetry.edge.transport import InMemoryCloudTransport, InMemoryLocalTransport  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def own_cache(tmp_path_factory):
    """A cache of this run's own (the recipes' service-model check remembers sound recipes
    there): no test passes on what an earlier run, or the user's replays, remembered."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True, scope="session")
def sample_schema():
    """The sample car's schema, known to this process as it is to a cloud decoder given the
    car's DBC: payloads made in other processes (the multi-process runtime) decode here."""
    from telemetry import wire
    from telemetry.edge.aggregator import dbc_resolutions

    return wire.register(wire.Schema.of(dbc_resolutions([SAMPLE / "solar_car.dbc"])))


@pytest.fixture
def sample_dbc() -> Path:
    return SAMPLE / "solar_car.dbc"


@pytest.fixture
def make_services(sample_dbc):
    """Factory: Services with in-memory transports and a config built from keyword tables."""

    def make(env=None, **config) -> Services:
        data = {"vehicle": "car-01", "dbc": [str(sample_dbc)], **config}
        cfg: VehicleConfig = parse_config(data, base=Path("/"))
        return Services(
            local=InMemoryLocalTransport(),
            cloud=InMemoryCloudTransport(),
            config=cfg,
            clock=ManualClock(1000.0),
            env={"TELEMETRY_OUTPUT_TOPIC": "telemetry/out", **(env or {})},
            name="test",
        )

    return make


@pytest.fixture(autouse=True)
def no_leaked_threads_or_buses():
    """Like python-can's own suite: a test that leaves a thread or virtual channel behind fails."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    for t in leaked:
        t.join(2)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
    from can.interfaces import virtual

    assert not virtual.channels, f"virtual CAN channels left open: {list(virtual.channels)}"
