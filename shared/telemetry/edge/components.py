"""What a Lambda handler module needs: the services a component runs with, and the adapter that
turns a component into a Greengrass Lambda handler.

A handler module is three lines::

    from telemetry.component import LambdaAdapter
    from telemetry.windows import AggregatorComponent
    adapter = LambdaAdapter(AggregatorComponent)
    function_handler = adapter.handle

On a Greengrass core device the adapter builds its services from the environment on first use
(IPC client, vehicle configuration). The local runtime imports the same module inside
``hosting(services)``, so the adapter uses the runtime's in-memory transports instead: what runs
on the laptop is the same handler, wired differently. Importing a handler module anywhere else
does nothing at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import messages
from .clock import Clock, SystemClock
from .config import VehicleConfig, load_config
from .errors import ConfigError, MessageError
from .transport import CloudTransport, LocalTransport

LOG = logging.getLogger(__name__)

# Set by the Greengrass nucleus for every component that may use IPC.
GREENGRASS_ENV = ("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "SVCUID")


@dataclass
class Services:
    """Everything a component talks to, handed in rather than looked up."""

    local: LocalTransport
    cloud: CloudTransport
    config: VehicleConfig
    clock: Clock = field(default_factory=SystemClock)
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = ""

    def setting(self, key: str) -> str:
        """A component setting from its environment (the recipe's environmentVariables)."""
        value = self.env.get(key)
        if not value:
            raise ConfigError(f"{self.name or 'component'}: environment variable {key} is not set (see its recipe)")
        return value

    @classmethod
    def greengrass(cls, env: Mapping[str, str] | None = None) -> Services:
        """Services of a component running on a Greengrass core device."""
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        from .transport import IpcCloudTransport, IpcLocalTransport

        env = dict(os.environ if env is None else env)
        config = load_config(env.get("TELEMETRY_CONFIG", "vehicle.toml"))
        client = GreengrassCoreIPCClientV2()
        cloud: CloudTransport = IpcCloudTransport(client)
        if env.get("TELEMETRY_CLOUD") == "legacy":
            import greengrasssdk

            from .transport import LegacyCloudTransport

            cloud = LegacyCloudTransport(greengrasssdk.client("iot-data"))
        return cls(IpcLocalTransport(client), cloud, config, SystemClock(), env)


def on_greengrass(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(key) for key in GREENGRASS_ENV)


class Component(Protocol):
    stats: Counter[str]

    def handle(self, event: Any) -> None: ...

    def close(self) -> None: ...


class MessageComponent:
    """Base of the components fed by pub/sub: checks each event, counts and logs a malformed one
    (never raises: one bad message must not stop a pinned function), passes good ones on."""

    accepts: tuple[str, ...] = ()

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats: Counter[str] = Counter()

    def handle(self, event: Any) -> None:
        try:
            self.on_message(messages.parse(event, *self.accepts))
        except MessageError as exc:  # from parse, or from reading the columns of a message
            self.stats["malformed"] += 1
            LOG.warning("%s: dropped malformed message: %s", type(self).__name__, exc)

    def on_message(self, message: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


_hosted: Services | None = None


@contextlib.contextmanager
def hosting(services: Services) -> Iterator[None]:
    """While a local runtime imports a handler module, hand it these services."""
    global _hosted
    previous, _hosted = _hosted, services
    try:
        yield
    finally:
        _hosted = previous


class LambdaAdapter:
    """Turns a component class into a Lambda handler, and runs a pinned function's loop."""

    def __init__(self, factory: Callable[[Services], Any]) -> None:
        self._factory = factory
        self._services = _hosted
        self._component: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def component(self) -> Any:
        with self._lock:
            if self._component is None:
                services = self._services if self._services is not None else Services.greengrass()
                self._component = self._factory(services)
            return self._component

    def handle(self, event: Any, context: Any = None) -> None:
        self.component.handle(event)

    def start_pinned(self) -> bool:
        """Start the component's ``run`` loop in a thread and return at once, as Greengrass
        requires of code that runs forever in a pinned function. Outside Greengrass and a local
        runtime (a plain import), it starts nothing and says so."""
        if self._services is None and not on_greengrass():
            LOG.info("not on Greengrass and not hosted by a local runtime: %s not started", self._factory)
            return False
        self.component  # built here, so a bad configuration fails the start, visibly
        self.thread = threading.Thread(target=self._run, name=f"pinned-{getattr(self._factory, '__name__', 'fn')}", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        try:
            self.component.run(self._stop)
        except BaseException as exc:  # reported to whoever joins; Greengrass would restart us
            LOG.exception("pinned loop of %s failed", self._factory)
            self.error = exc

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
        if self._component is not None:
            self._component.close()
