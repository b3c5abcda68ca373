"""The components: the four cores wired to transports as Greengrass Lambda handlers.

The cores (``reader``, ``aggregator``, ``detector``, ``uploader``) take messages and return
messages and know nothing of Lambda or Greengrass. Each component here is the thin adapter of
one core: it checks the event, calls its core, publishes what the core returns.

A handler module is three lines::

    from telemetry.edge.components import AggregatorComponent, LambdaAdapter
    adapter = LambdaAdapter(AggregatorComponent)
    function_handler = adapter.handle

On a Greengrass core device the adapter builds its services from the environment on first use
(IPC client, vehicle configuration). Anything else that runs the handler (the local runtime, a
test) hands the adapter its services with ``adapter.host(services)`` after importing the module;
importing a handler module off Greengrass does nothing at all.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from . import messages
from .aggregator import Aggregation, dbc_resolutions, register_dbc_schema
from .clock import Clock, SystemClock
from .component_config import config_from_component, watch
from .config import VehicleConfig, load_config, rules_matching_nothing
from .decode import DbcDecoder, Decoder
from .detector import Detector
from .errors import ConfigError, MessageError, SourceError, TransportError
from .frames import Frames
from .reader import ClockGuard, FrameBatcher, LimitCheck, ReaderCore, batch_ends
from .sources import BusSource, FrameSource, LogSource, bursts
from .spool import MemorySpool, Spool, SqliteSpool
from .transport import CloudTransport, LocalTransport
from .uploader import Uploader

LOG = logging.getLogger(__name__)

# Set by the Greengrass nucleus for every component that may use IPC.
GREENGRASS_ENV = ("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "SVCUID")
# What a running loop retries (with back-off) instead of dying: a bus that is down or bus-off
# (python-can raises OSError or a CanError), a bus that cannot be opened yet.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, can.CanError, SourceError)
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
STOP_SECONDS = 5.0  # what a stop (SIGTERM) gives a loop to flush; Greengrass allows a component more
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def bundled(path: str, base: Path | None) -> str:
    """A file the package carries (``vehicle.toml``, a log): an absolute path is used as it is, a
    relative one is found beside the handler module (``base``), never in the working directory
    (Greengrass starts a component in ``/greengrass/v2/work/<component>``, its code is elsewhere)."""
    if base is None or Path(path).is_absolute():
        return path
    return str(base / path)


def config_file(env: Mapping[str, str], base: Path | None) -> Path:
    """The vehicle configuration the package carries (``TELEMETRY_CONFIG``, else ``vehicle.toml``);
    a deployment's configuration names its DBCs relative to the folder it is in."""
    return Path(bundled(env.get("TELEMETRY_CONFIG") or "vehicle.toml", base))


def log_level(env: Mapping[str, str]) -> int:
    """``TELEMETRY_LOG_LEVEL`` (the recipes set it), INFO when unset; a wrong name is reported
    and INFO used (a typo in a level must not stop a car's telemetry)."""
    name = (env.get("TELEMETRY_LOG_LEVEL") or "INFO").strip().upper()
    if name not in LOG_LEVELS:
        LOG.warning("TELEMETRY_LOG_LEVEL=%r is not one of %s; using INFO", name, ", ".join(LOG_LEVELS))
        return logging.INFO
    return int(getattr(logging, name))


def configure_logging(env: Mapping[str, str]) -> None:
    """The package's log level from the environment; a handler on stderr (which Greengrass writes
    to the component's log file) if the process has none."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("telemetry").setLevel(log_level(env))


class Backoff:
    """Waits that double from ``first`` up to ``most``; ``reset`` after a success."""

    def __init__(self, first: float = RETRY_MIN_SECONDS, most: float = RETRY_MAX_SECONDS) -> None:
        self.first, self.most = first, most
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class SeqWatch:
    """Counts messages lost between processes: each producer numbers what it publishes 1, 2, 3, ...
    from its start (``seq``), so a jump is messages that never arrived (on a core, the nucleus
    drops a message whose topic has no subscriber yet, and a publish does not wait). The same
    number again is not a loss (a redelivery, or one message split in parts); a number that goes
    down is the producer restarting: counted, and its new run's first numbers that did not
    arrive are missed too. Before the first message seen from a producer nothing is
    known: a first ``seq`` above 1 is counted apart (``unseen_at_start``), as this process may be
    the one that restarted."""

    MAX_SOURCES = 32

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.missed = 0
        self.restarts = 0
        self.unseen_at_start = 0

    def see(self, source: str, seq: int) -> int:
        """Note a message; the number of messages found missing by it."""
        if seq <= 0:  # a producer that does not number its messages
            return 0
        if source not in self.last and len(self.last) >= self.MAX_SOURCES:
            source = "other"
        last = self.last.get(source)
        self.last[source] = seq
        if last is None:
            self.unseen_at_start += seq - 1
            return 0
        if seq == last:  # the same number again: a redelivery, or one message split in parts
            return 0
        if seq < last:
            self.restarts += 1
            missed = seq - 1
        else:
            missed = seq - last - 1
        self.missed += missed
        return missed


class StatusReporter:
    """A component's ``Status`` on the health topic (``<prefix>/health``, over its cloud
    transport): at once when its state changes, else at most every ``interval`` seconds while
    something new is to be said (``dirty``). Best effort: a failed publish is counted, and the
    next report says the same, newer."""

    def __init__(self, services: Services, component: str, interval: float | None = None) -> None:
        self.services = services
        self.component = component or "component"
        self.interval = services.config.uploader.health_seconds if interval is None else interval
        self.topic = f"{services.config.cloud_prefix}/{messages.Health.cloud_topic}"
        self.state = "running"
        self.dirty = False
        self.last_sent = -math.inf
        self.sent = 0
        self.failed = 0

    def report(self, state: str, counters: Mapping[str, int], detail: str = "", *, force: bool = False) -> bool:
        clock = self.services.clock
        now = clock.monotonic()
        changed = state != self.state
        self.state = state
        self.dirty = True
        if not (changed or force) and now - self.last_sent < self.interval:
            return False
        status = messages.Status(self.services.config.vehicle, self.component, clock.time(), state,
                                 {k: int(v) for k, v in counters.items()}, detail[:500])
        try:
            self.services.cloud.publish(self.topic, status.to_bytes())
        except TransportError as exc:
            self.failed += 1
            LOG.warning("%s: status not sent: %s", self.component, exc)
            return False
        self.sent += 1
        self.dirty = False
        self.last_sent = now
        return True


def publish_retrying(services: Services, topic: str, message: messages.Message, faults: Counter[str],
                     stop: threading.Event, *, attempts: int | None = None, backoff: Backoff | None = None) -> bool:
    """Publish on local pub/sub; a failing publish (the IPC connection) is retried with back-off,
    ``attempts`` times at most (None: until it works or ``stop`` is set, then three more tries).
    What is given up on is counted (``publish_lost``) and logged."""
    backoff = backoff or Backoff()
    tried = 0
    while True:
        try:
            services.local.publish(topic, message)
            return True
        except TransportError as exc:
            tried += 1
            faults["publish_retries"] += 1
            if (attempts is not None and tried >= attempts) or (stop.is_set() and tried >= 3):
                faults["publish_lost"] += 1
                LOG.error("%s: gave up publishing a %s message to %s after %d tries: %s",
                          services.name, message.kind, topic, tried, exc)
                return False
            delay = backoff.next()
            LOG.warning("%s: publish to %s failed (%s); retrying in %.1f s", services.name, topic, exc, delay)
            services.clock.wait(stop, delay)


@dataclass
class Services:
    """Everything a component talks to, handed in rather than looked up."""

    local: LocalTransport
    cloud: CloudTransport
    config: VehicleConfig
    clock: Clock = field(default_factory=SystemClock)
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    ipc: Any = None  # on a core: the IPC client (the component's configuration is read and followed with it)

    def setting(self, key: str) -> str:
        """A component setting from its environment (the recipe's environmentVariables)."""
        value = self.env.get(key)
        if not value:
            raise ConfigError(f"{self.name or 'component'}: environment variable {key} is not set (see its recipe)")
        return value

    @classmethod
    def greengrass(cls, env: Mapping[str, str] | None = None, base: Path | None = None, name: str = "") -> Services:
        """Services of a component running on a Greengrass core device. ``base``: the handler's
        own folder, where the package's bundled files are (see ``bundled``)."""
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        from .transport import IpcCloudTransport, IpcLocalTransport

        env = dict(os.environ if env is None else env)
        if env.get("TELEMETRY_LOG"):
            env["TELEMETRY_LOG"] = bundled(env["TELEMETRY_LOG"], base)
        path = config_file(env, base)
        client = GreengrassCoreIPCClientV2()
        # the deployment's configuration if it carries one (DBCs named relative to the artefact),
        # else the one bundled in the zip
        config = config_from_component(client, load_config(path), base=path.parent)
        cloud: CloudTransport = IpcCloudTransport(client)
        if env.get("TELEMETRY_CLOUD") == "legacy":
            import greengrasssdk

            from .transport import LegacyCloudTransport

            cloud = LegacyCloudTransport(greengrasssdk.client("iot-data"))
        return cls(IpcLocalTransport(client), cloud, config, SystemClock(), env,
                   env.get("AWS_LAMBDA_FUNCTION_NAME") or name, client)


def on_greengrass(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(key) for key in GREENGRASS_ENV)


class MessageComponent:
    """Base of the components fed by pub/sub: decodes each event into its typed message and
    passes it to ``on_message``. A malformed event is refused at the decoder, counted by reason
    and logged, and never raises: one bad message must not stop a pinned function, and the next
    one is handled as if it had not been there (as Powertools' batch processor isolates records)."""

    accepts: tuple[str, ...] = ()
    MAX_REASONS = 32  # distinct reasons counted; hostile input must not grow memory

    PUBLISH_ATTEMPTS = 3  # an invocation has a timeout: a failing publish is retried this often

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()  # reason -> messages refused for it
        self.faults: Counter[str] = Counter()  # publish_retries, publish_lost
        self.seq = SeqWatch()  # gaps in the numbers of what this component receives
        self.status = StatusReporter(services, services.name or type(self).__name__)
        self._never = threading.Event()

    def decode(self, event: Any) -> Any:
        """The event as its typed message (``messages.decode``); MessageError if malformed."""
        return messages.decode(event, *self.accepts)

    def handle(self, event: Any) -> None:
        try:
            message = self.decode(event)
        except MessageError as exc:
            self._refused(str(exc))
            return
        if isinstance(message, messages.Batch):
            for reason in message.refused:  # the batch's good items are handled all the same
                self._refused(reason)
        missed = sum(self.seq.see(*key) for key in self.numbered(message))
        if missed:
            LOG.warning("%s: %d message(s) missing before this one (lost between processes)", type(self).__name__, missed)
        self.on_message(message)
        if missed or self.status.dirty:
            self.status.report("running", self.lost_counters())

    def numbered(self, message: Any) -> list[tuple[str, int]]:
        """(producer, seq) of each message this one carries, for ``SeqWatch``."""
        return []

    def publish(self, topic: str, message: messages.Message) -> bool:
        return publish_retrying(self.services, topic, message, self.faults, self._never, attempts=self.PUBLISH_ATTEMPTS,
                                backoff=Backoff(0.1, 1.0))

    def lost_counters(self) -> dict[str, int]:
        return {"missed": self.seq.missed, "producer_restarts": self.seq.restarts,
                "unseen_at_start": self.seq.unseen_at_start, "publish_retries": self.faults["publish_retries"],
                "publish_lost": self.faults["publish_lost"], "malformed": self.stats["malformed"]}

    def _refused(self, reason: str) -> None:
        self.stats["malformed"] += 1
        self.malformed[reason if reason in self.malformed or len(self.malformed) < self.MAX_REASONS else "other"] += 1
        LOG.warning("%s: dropped malformed message: %s", type(self).__name__, reason)

    def on_message(self, message: Any) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, Any]:
        """What this component reports of itself: its totals and the reasons it refused messages."""
        return {"malformed": self.stats["malformed"], "malformed_reasons": dict(self.malformed),
                "missed_messages": self.seq.missed, "publish_lost": self.faults["publish_lost"]}

    def close(self) -> None:
        if self.status.dirty:  # the last word on what was lost
            self.status.report(self.status.state, self.lost_counters(), force=True)


class LambdaAdapter:
    """Turns a component class into a Lambda handler, and runs a pinned function's loop.

    On a core device (``serve``) it also owns the process's life: a loop that dies ends the
    process with status 1 so the nucleus restarts the component (a dead loop in a live process
    would show RUNNING while no data flows), and SIGTERM stops the loop, flushes what the
    component holds and exits 0 within ``STOP_SECONDS``."""

    def __init__(self, factory: Callable[[Services], Any], handler_file: str | None = None, *,
                 exit: Callable[[int], Any] = os._exit) -> None:
        self._factory = factory
        self.base = Path(handler_file).resolve().parent if handler_file else None
        self._services: Services | None = None
        self._component: Any = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._exit = exit
        self.exit_on_failure = False  # set on a core (serve): a dead loop ends the process
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._previous_sigterm: Any = None
        self._closed = False
        self.watcher: Any = None  # on a core: the ConfigurationWatcher

    @property
    def name(self) -> str:
        return getattr(self._factory, "__name__", "component")

    def host(self, services: Services, *, exit_on_failure: bool = False) -> None:
        """Run with these services instead of Greengrass's (the local runtime, tests). The
        component is built here, so a bad configuration fails the start, visibly."""
        with self._lock:
            self._services = services
            self._component = None
            self.exit_on_failure = exit_on_failure
        _ = self.component

    @property
    def component(self) -> Any:
        with self._lock:
            if self._component is None:
                if self._services is None:
                    self._services = Services.greengrass(base=self.base, name=self.name)
                self._component = self._factory(self._services)
            return self._component

    def handle(self, event: Any, context: Any = None) -> None:
        self.component.handle(event)

    def serve(self, env: Mapping[str, str] | None = None) -> bool:
        """What a handler module calls at import. On a core device (the nucleus's environment):
        the log level, the component built now (a bad configuration fails the start, in the
        log), SIGTERM handled, and a pinned function's loop started in a thread. Anywhere else
        it does nothing: whoever imports the module hosts it (``host``)."""
        env = os.environ if env is None else env
        if self._services is not None or not on_greengrass(env):
            return False
        configure_logging(env)
        self.exit_on_failure = True
        _ = self.component
        self.handle_sigterm()
        self.watch_configuration()
        return self.start_pinned()

    def watch_configuration(self) -> Any:
        """On a core: follow the deployment's configuration updates (``component_config``)."""
        services = self._services
        if services is None or services.ipc is None or self.watcher is not None:
            return self.watcher
        self.watcher = watch(services.ipc, self.component, services, base=config_file(services.env, self.base).parent)
        return self.watcher

    def start_pinned(self) -> bool:
        """Start the component's ``run`` loop in a thread and return at once, as Greengrass
        requires of code that runs forever in a pinned function. Outside Greengrass and unhosted
        (a plain import), or for a component without a loop, it starts nothing and says so."""
        if self._services is None and not on_greengrass():
            LOG.info("not on Greengrass and not hosted: %s not started", self._factory)
            return False
        if not hasattr(self.component, "run"):  # built here, so a bad configuration fails the start
            return False
        if self.thread is not None:
            return True
        self.thread = threading.Thread(target=self._run, name=f"pinned-{self.name}", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        try:
            self.component.run(self._stop)
        except BaseException as exc:  # what the loop does not retry: the process must not live on without it
            LOG.exception("pinned loop of %s failed", self.name)
            self.error = exc
            report = getattr(self.component, "report_failure", None)
            if report is not None:
                try:
                    report(exc)
                except Exception:  # the status is best effort; ending the process is not
                    LOG.exception("%s: could not report the failure", self.name)
            if self.exit_on_failure:
                LOG.critical("%s: exiting with status 1 so that Greengrass restarts the component", self.name)
                logging.shutdown()
                self._exit(1)

    def handle_sigterm(self) -> bool:
        """Stop and flush on SIGTERM (how the nucleus stops a component), then exit 0, or hand
        over to a handler installed before ours. Only the main thread may install one."""
        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: the Lambda runtime imported us elsewhere
            LOG.warning("%s: SIGTERM handler not installed (not imported in the main thread)", self.name)
            return False
        return True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        LOG.info("%s: SIGTERM: flushing and stopping", self.name)
        try:
            self.stop(timeout=STOP_SECONDS)
        finally:
            previous = self._previous_sigterm
            if callable(previous):
                previous(signum, frame)
            else:
                logging.shutdown()
                self._exit(0)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop (a reader flushes its open batch and says end of stream), then close the
        component (an aggregator publishes its open windows, the uploader closes its spool)."""
        self.exit_on_failure = False  # stopping: the loop's end is no failure
        self._stop.set()
        interrupt = getattr(self._component, "interrupt", None)
        if interrupt is not None:  # a loop asleep on a wait of its own (the uploader's sender, idle)
            interrupt()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        with self._lock:
            component, closing = self._component, not self._closed
            self._closed = True
        if self.watcher is not None:
            self.watcher.close()
        if component is not None and closing:
            component.close()


class CanReaderComponent:
    """The pinned CAN reader function: a loop started in a thread, reading frames from a source,
    batching them and publishing what the core (``reader.ReaderCore``) makes of each batch.

    A live bus is opened in that thread, not at import (a ``can0`` that is not up yet must not
    stop the function from starting): while it cannot be opened, or when it fails while reading
    (``READ_ERRORS``: the interface went down, bus-off), the loop reports it (log, a ``status`` on
    the health topic), waits with back-off and opens it again. A local publish that fails is
    retried the same way. Anything else ends the loop, and on a core the process with it."""

    role = "source"  # its loop ends when a replayed log does

    def __init__(
        self,
        services: Services,
        source: FrameSource | None = None,
        decoder: Decoder | None = None,
        open_bus: Callable[[], FrameSource] | None = None,
    ) -> None:
        self.services = services
        cfg = services.config.reader
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        # The DBCs first: a bad one is reported before a bus is opened.
        self.decoder = decoder if decoder is not None else DbcDecoder(services.config.dbc)
        matches = getattr(self.decoder, "matches", None)
        self.idle_rules = rules_matching_nothing(services.config.rules, matches) if matches is not None else []
        for problem in self.idle_rules:
            LOG.warning("%s: %s", services.config.path or "configuration", problem)
        self.source: FrameSource | None = source
        self._open_bus = open_bus
        name = source.name if source is not None else ""
        if source is None and open_bus is None:
            self.source, self._open_bus, name = self._source_from(services)
        self.core = ReaderCore(self.decoder, name or "can", ClockGuard(cfg.clock_skew_seconds, cfg.clock_confirm_frames))
        self.batcher = FrameBatcher(cfg.batch_max_frames, cfg.batch_max_seconds)
        self.admitted: list[Frames] = []  # frames of the open batch admitted so far (a live bus, a paced replay)
        self.limits = LimitCheck(services.config.rules)
        self.check_seconds = cfg.limit_check_seconds
        self.replay_batch = (cfg.replay_batch_frames, cfg.replay_batch_seconds)
        self.live = self._open_bus is not None or isinstance(self.source, BusSource)
        self.stats = self.core.totals
        self.faults: Counter[str] = Counter()  # bus_open_failures, bus_read_errors, publish_retries, publish_lost
        self.bus_state = "closed"
        self.status = StatusReporter(services, services.name or type(self).__name__)
        self.finished = threading.Event()
        self._stop = threading.Event()

    @staticmethod
    def _source_from(services: Services) -> tuple[FrameSource | None, Callable[[], FrameSource] | None, str]:
        """A log to replay (opened now), or how to open the live bus (later, in the loop)."""
        cfg = services.config.reader
        log = services.env.get("TELEMETRY_LOG") or cfg.log
        if log:
            speed = float(services.env.get("TELEMETRY_REPLAY_SPEED", cfg.replay_speed))
            source = LogSource(log, speed=speed, clock=services.clock)
            return source, None, source.name
        kwargs: dict[str, Any] = {
            "interface": services.env.get("TELEMETRY_CAN_INTERFACE", cfg.interface),
            "channel": services.env.get("TELEMETRY_CAN_CHANNEL", cfg.channel),
        }
        bitrate = services.env.get("TELEMETRY_CAN_BITRATE") or cfg.bitrate
        if bitrate:
            kwargs["bitrate"] = int(bitrate)
        idle = min(0.25, cfg.batch_max_seconds)
        return None, lambda: BusSource(idle_timeout=idle, **kwargs), f"{kwargs['interface']}:{kwargs['channel']}"

    def _publish(self, message: messages.Message) -> None:
        publish_retrying(self.services, self.topic, message, self.faults, self._stop)

    def _admit_pending(self) -> Frames | None:
        frames = self.batcher.take_pending()
        if not frames:
            return None
        admitted = self.core.admit(frames)
        self.admitted.append(admitted)
        return admitted

    def _limit_crossed(self, frames: Frames) -> bool:
        """Whether frames just read take a signal across a limit rule: only those that can carry
        one, and only their watched signals, are decoded for the check (the batch is decoded
        once, when published)."""
        return self.limits.check(frames, self.decoder)

    def _flush(self) -> None:
        """The open batch goes out: the frames admitted so far and those not yet admitted."""
        self._admit_pending()
        self.batcher.take()
        admitted, self.admitted = self.admitted, []
        if admitted:
            frames = admitted[0] if len(admitted) == 1 else Frames.concat(admitted)
            self._publish(self.core.message_of(frames))

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        try:
            if isinstance(self.source, LogSource) and self.source.speed <= 0:
                self._replay_columns(self.source, stop)
            elif self.live:
                self._read_live(stop)
            else:
                assert self.source is not None
                self._read_frames(self.source, stop)
                self._end()
        finally:
            self.finished.set()

    def _end(self) -> None:
        self._flush()
        extra = {"bad_records": len(self.source.bad_records) if self.source is not None else 0}
        self._publish(self.core.end_message(extra))

    def _replay_columns(self, log: LogSource, stop: threading.Event) -> None:
        """A replay as fast as possible: the log's frames arrive as columns, in chunks, and are
        cut into batches of ``replay_batch_frames`` / ``replay_batch_seconds`` exactly as the
        frame-by-frame loop would cut them (``batch_ends``)."""
        max_frames, max_seconds = self.replay_batch
        pending = Frames.empty()
        for chunk in log.frame_batches(stop):
            pending = Frames.concat([pending, chunk]) if len(pending) else chunk
            start = 0
            for end in batch_ends(pending.t, max_frames, max_seconds):
                self._publish(self.core.batch_message(pending.take(slice(start, end))))
                start = end
            pending = pending.take(slice(start, None))
        if len(pending) and not stop.is_set():
            self._publish(self.core.batch_message(pending))
        extra = {"bad_records": len(log.bad_records)}
        self._publish(self.core.end_message(extra))

    def _read_live(self, stop: threading.Event) -> None:
        """The live loop: (re)open the bus, read until stopped; a bus that fails is reported and
        opened again after a back-off. On stop: the open batch and an end of stream go out."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                if self.source is None:
                    assert self._open_bus is not None
                    self.source = self._open_bus()
                    self._bus_changed("up", "")
                    backoff.reset()
                self._read_frames(self.source, stop)
            except READ_ERRORS as exc:
                opening = self.source is None
                self.faults["bus_open_failures" if opening else "bus_read_errors"] += 1
                delay = backoff.next()
                LOG.warning("CAN bus %s: %s: %s; trying again in %.1f s",
                            "cannot be opened" if opening else "failed", type(exc).__name__, exc, delay)
                self._flush()  # what was read before the failure is not held back
                if not opening and self._open_bus is not None:
                    self._close_source()
                self._bus_changed("bus_down", f"{type(exc).__name__}: {exc}")
                self.services.clock.wait(stop, delay)
        self._end()

    def _bus_changed(self, state: str, detail: str) -> None:
        if state != self.bus_state:
            LOG.info("CAN bus %s: %s %s", self.core.source_name, state, detail)
        self.bus_state = state
        self.status.report("running" if state == "up" else state, self.fault_counters(), detail)

    def fault_counters(self) -> dict[str, int]:
        return {"bus_open_failures": self.faults["bus_open_failures"], "bus_read_errors": self.faults["bus_read_errors"],
                "publish_retries": self.faults["publish_retries"], "publish_lost": self.faults["publish_lost"],
                "frames_read": self.core.totals["read"], "batches": self.core.totals["batches"]}

    def report_failure(self, exc: BaseException) -> None:
        """The loop died (the adapter ends the process next): the last status says why."""
        self.status.report("failed", self.fault_counters(), f"{type(exc).__name__}: {exc}", force=True)

    def _close_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            try:
                source.close()
            except Exception as exc:  # a bus that failed may fail to shut down too
                LOG.warning("CAN bus: closing it failed: %s: %s", type(exc).__name__, exc)

    def _read_frames(self, source: FrameSource, stop: threading.Event) -> None:
        """Frames as they come (a live bus's in bursts, a paced replay's one by one) into batches.
        The open batch is admitted by the clock guard as it fills, every ``limit_check_seconds``,
        and its frames that can carry a limit rule's signal are decoded and checked. It is decoded
        and published when it is full, when it has been open ``batch_max_seconds`` (a live bus),
        or at once when what was just checked takes a signal across a limit rule
        (``LimitCheck``): long batches, which cost every component less, and limit alerts that do
        not wait for them."""
        clock = self.services.clock
        batcher = self.batcher
        max_wait = batcher.max_seconds
        last_publish = clock.monotonic()
        for burst in bursts(source, stop):  # a live bus's frames come in bursts, a paced replay's one by one
            now = clock.monotonic()
            if not burst:  # the bus was idle
                if batcher.count and now - batcher.opened_at >= max_wait:
                    self._flush()
                    last_publish = now
                    continue
                if not batcher.count and now - last_publish >= max_wait:
                    # Live frames carry wall-clock timestamps, so wall-clock time is event time.
                    self._publish(self.core.tick_message(clock.time()))
                    last_publish = now
                    continue
            while burst:
                taken, full = batcher.extend(burst, now)
                burst = burst[taken:]
                if full or (self.live and now - batcher.opened_at >= max_wait):
                    self._flush()
                    last_publish = now
            # self.limits is read here each time: a deployment can give the reader its first limit rule
            if batcher.frames and self.limits.evaluators and now - batcher.pending_since >= self.check_seconds:
                admitted = self._admit_pending()
                if admitted is not None and self._limit_crossed(admitted):
                    self._flush()
                    last_publish = now

    def counters(self) -> dict[str, Any]:
        """What was read and decoded, in totals and by CAN id."""
        core, totals = self.core, self.core.totals
        bad = self.source.bad_records if self.source is not None else []
        return {
            "frames_read": totals["read"], "error_frames": totals["error"], "remote_frames": totals["remote"],
            "frames_decoded": totals["decoded"], "frames_unknown_id": totals["unknown_id"],
            "decode_errors": totals["decode_error"], "fallback_frames": totals["fallback_frames"],
            "limit_flushes": self.limits.crossings,
            "bad_lines": len(bad), "bad_records": [str(r) for r in bad],
            "unknown_ids": {f"0x{k:X}": n for k, n in core.unknown_ids.most_common()},
            "decode_error_ids": {f"0x{k:X}": n for k, n in core.decode_error_ids.most_common()},
            "dbc_collisions": [str(c) for c in getattr(self.decoder, "collisions", [])],
            "signal_samples": totals["signal_samples"], "non_finite_values": totals["non_finite_values"],
            "batches": totals["batches"], "event_start": core.first_time, "event_end": core.last_time,
            "dbc_renamed": list(getattr(self.decoder, "renamed", [])), "rules_matching_nothing": self.idle_rules,
            **core.faults(),
            **{k: v for k, v in self.faults.items() if v},
        }

    def handle(self, event: Any) -> None:
        # The reader has no event sources; an invocation is a no-op (Greengrass may still call a
        # pinned function's handler once when it starts it).
        return None

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


class AggregatorComponent(MessageComponent):
    """Signal batches in, windowed statistics out (``aggregator.Aggregation``)."""

    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        cfg = services.config
        self.core = Aggregation(cfg.aggregator, cfg.vehicle, res=dbc_resolutions(cfg.dbc) if cfg.dbc else None,
                                max_bytes=cfg.uploader.max_payload_bytes, only_published=True)

    def numbered(self, message: Any) -> list[tuple[str, int]]:
        return [(message.source, message.seq)]

    def on_message(self, message: messages.Signals | messages.EndOfStream) -> None:
        self._send(self.core.publish(message))

    def _send(self, out: list[messages.Aggregates]) -> None:
        if len(out) > 1:  # the payloads one batch completed travel together: one invocation, one commit
            self.publish(self.topic, messages.Batch(messages.AGGREGATES, tuple(out)))
        elif out:
            self.publish(self.topic, out[0])
        self.stats["aggregates"] += len(out)

    def close(self) -> None:
        """Stopping (SIGTERM): the windows still open, and the publish periods they are in, go out
        as they are, not lost with the process."""
        out = self.core.publish(messages.EndOfStream("stopping", 0, None, {}))
        if out:
            LOG.info("%s: stopping: %d aggregates payload(s) flushed", type(self).__name__, len(out))
            self._send(out)
        super().close()

    def counters(self) -> dict[str, Any]:
        totals = self.core.totals()
        return {**super().counters(), "aggregates": self.stats["aggregates"], "windows": totals["windows"],
                "late_samples": totals["late_samples"], "forced_window_closes": totals["forced_closes"]}


class AnomalyDetectorComponent(MessageComponent):
    """Signal batches in, alerts out the moment they are raised (``detector.Detector``)."""

    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        cfg = services.config
        self.core = Detector(cfg.rules, cfg.vehicle, cfg.detector)
        self.alert_seq = 0

    def numbered(self, message: Any) -> list[tuple[str, int]]:
        return [(message.source, message.seq)]

    def on_message(self, message: messages.Signals | messages.EndOfStream) -> None:
        alerts = []
        for alert in self.core.process(message):
            self.alert_seq += 1  # numbered as published: the uploader counts what never arrived
            alerts.append(dataclasses.replace(alert, seq=self.alert_seq))
        if len(alerts) == 1:
            self.publish(self.topic, alerts[0])
        elif alerts:  # what one batch raised, at once and together: one spool commit, one bundle
            self.publish(self.topic, messages.Batch(messages.ALERT, tuple(alerts)))

    def counters(self) -> dict[str, Any]:
        stats = self.core.stats
        raised, updated, cleared = stats["alert_raised"], stats["alert_update"], stats["alert_cleared"]
        return {**super().counters(), "alerts": raised + updated + cleared, "alerts_raised": raised,
                "alerts_updated": updated, "alerts_cleared": cleared, "alerts_active_at_end": len(self.core.active)}


_SPOOLED = (messages.Aggregates, messages.CheckedAggregates, messages.Alert)  # what a batch brings the uploader


class UploaderComponent(MessageComponent):
    """Aggregates and alerts into the durable spool; its pinned loop is the sender
    (``uploader.Uploader``)."""

    accepts = (messages.AGGREGATES, messages.WINDOW, messages.ALERT, messages.BATCH)
    role = "worker"

    def __init__(self, services: Services, spool: Spool | None = None) -> None:
        super().__init__(services)
        cfg = services.config.uploader
        if spool is None:
            path = services.env.get("TELEMETRY_SPOOL") or cfg.spool_path
            spool = MemorySpool(clock=services.clock) if path == ":memory:" else SqliteSpool(path, clock=services.clock)
        if services.config.dbc:  # the aggregator's payloads number their signals in the DBC's schema
            register_dbc_schema(services.config.dbc)
        self.core = Uploader(spool, services.cloud, cfg, vehicle=services.config.vehicle,
                             prefix=services.config.cloud_prefix, clock=services.clock)

    def decode(self, event: Any) -> Any:
        """Aggregates payloads are checked, not read (``CheckedAggregates``): the spool keeps
        their bytes, and the cloud gets those; the same ones are refused, for the same reasons."""
        return messages.decode(event, *self.accepts, values=False)

    def numbered(self, message: Any) -> list[tuple[str, int]]:
        """The aggregator numbers its aggregates payloads (the parts of a split period share one),
        the detector its alerts."""
        items = message.items if isinstance(message, messages.Batch) else (message,)
        return [(f"{m.payload.vehicle}/aggregates", m.payload.seq) if isinstance(m, messages.Aggregates)
                else (f"{m.vehicle}/aggregates", m.seq) if isinstance(m, messages.CheckedAggregates)
                else (f"{m.vehicle}/alerts", m.seq) for m in items if isinstance(m, _SPOOLED)]

    def on_message(self, message: messages.Aggregates | messages.CheckedAggregates | messages.Window | messages.Alert
                   | messages.Batch) -> None:
        if isinstance(message, messages.Batch):
            self.core.accept_many([m for m in message.items if isinstance(m, _SPOOLED)])
        else:
            self.core.accept(message)

    def run(self, stop: threading.Event) -> None:
        self.core.run(stop)

    def interrupt(self) -> None:
        """Stopping: wake the sender from its idle wait (it sleeps until a message arrives),
        so the loop sees the stop now, not after its wait."""
        self.core.sender.wake.set()

    def pending(self) -> int:
        return self.core.pending()

    def totals(self) -> Counter[str]:
        """Every counter of the spool and the sender (the uploader command prints them)."""
        total = self.core.totals()
        total.update(self.stats)
        return total

    def counters(self) -> dict[str, Any]:
        totals = self.core.totals()
        return {**super().counters(), "uploaded_messages": totals["messages_sent"],
                "uploaded_raw_bytes": totals["raw_bytes_sent"], "bundles": totals["bundles_sent"],
                "spool_left": self.pending(), "evicted_messages": totals["evicted_messages"],
                "set_aside": totals["set_aside"], "retries": totals["retries"]}

    def close(self) -> None:
        super().close()
        self.core.close()
