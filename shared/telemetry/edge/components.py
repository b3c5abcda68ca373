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

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from . import messages
from .aggregator import Aggregation, dbc_resolutions
from .clock import Clock, SystemClock
from .config import VehicleConfig, load_config, rules_matching_nothing
from .decode import DbcDecoder, Decoder
from .detector import Detector
from .errors import ConfigError, MessageError
from .frames import Frames
from .reader import ClockGuard, FrameBatcher, ReaderCore, batch_ends
from .sources import BusSource, FrameSource, LogSource
from .spool import MemorySpool, Spool, SqliteSpool
from .transport import CloudTransport, LocalTransport
from .uploader import Uploader

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


class MessageComponent:
    """Base of the components fed by pub/sub: decodes each event into its typed message and
    passes it to ``on_message``. A malformed event is refused at the decoder, counted by reason
    and logged, and never raises: one bad message must not stop a pinned function, and the next
    one is handled as if it had not been there (as Powertools' batch processor isolates records)."""

    accepts: tuple[str, ...] = ()
    MAX_REASONS = 32  # distinct reasons counted; hostile input must not grow memory

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()  # reason -> messages refused for it

    def handle(self, event: Any) -> None:
        try:
            message = messages.decode(event, *self.accepts)
        except MessageError as exc:
            self._refused(str(exc))
            return
        if isinstance(message, messages.Batch):
            for reason in message.refused:  # the batch's good items are handled all the same
                self._refused(reason)
        self.on_message(message)

    def _refused(self, reason: str) -> None:
        self.stats["malformed"] += 1
        self.malformed[reason if reason in self.malformed or len(self.malformed) < self.MAX_REASONS else "other"] += 1
        LOG.warning("%s: dropped malformed message: %s", type(self).__name__, reason)

    def on_message(self, message: Any) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, Any]:
        """What this component reports of itself: its totals and the reasons it refused messages."""
        return {"malformed": self.stats["malformed"], "malformed_reasons": dict(self.malformed)}

    def close(self) -> None:
        pass


class LambdaAdapter:
    """Turns a component class into a Lambda handler, and runs a pinned function's loop."""

    def __init__(self, factory: Callable[[Services], Any]) -> None:
        self._factory = factory
        self._services: Services | None = None
        self._component: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def host(self, services: Services) -> None:
        """Run with these services instead of Greengrass's (the local runtime, tests). The
        component is built here, so a bad configuration fails the start, visibly."""
        with self._lock:
            self._services = services
            self._component = None
        _ = self.component

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
        requires of code that runs forever in a pinned function. Outside Greengrass and unhosted
        (a plain import), or for a component without a loop, it starts nothing and says so."""
        if self._services is None and not on_greengrass():
            LOG.info("not on Greengrass and not hosted: %s not started", self._factory)
            return False
        if not hasattr(self.component, "run"):  # built here, so a bad configuration fails the start
            return False
        if self.thread is not None:
            return True
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


class CanReaderComponent:
    """The pinned CAN reader function: a loop started in a thread, reading frames from a source,
    batching them and publishing what the core (``reader.ReaderCore``) makes of each batch."""

    role = "source"  # its loop ends when a replayed log does

    def __init__(
        self,
        services: Services,
        source: FrameSource | None = None,
        decoder: Decoder | None = None,
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
        self.source = source if source is not None else self._source_from(services)
        self.core = ReaderCore(self.decoder, self.source.name, ClockGuard(cfg.clock_skew_seconds, cfg.clock_confirm_frames))
        self.batcher = FrameBatcher(cfg.batch_max_frames, cfg.batch_max_seconds)
        self.replay_batch = (cfg.replay_batch_frames, cfg.replay_batch_seconds)
        self.live = isinstance(self.source, BusSource)
        self.stats = self.core.totals
        self.finished = threading.Event()

    @staticmethod
    def _source_from(services: Services) -> FrameSource:
        cfg = services.config.reader
        log = services.env.get("TELEMETRY_LOG") or cfg.log
        if log:
            speed = float(services.env.get("TELEMETRY_REPLAY_SPEED", cfg.replay_speed))
            return LogSource(log, speed=speed, clock=services.clock)
        kwargs: dict[str, Any] = {
            "interface": services.env.get("TELEMETRY_CAN_INTERFACE", cfg.interface),
            "channel": services.env.get("TELEMETRY_CAN_CHANNEL", cfg.channel),
        }
        bitrate = services.env.get("TELEMETRY_CAN_BITRATE") or cfg.bitrate
        if bitrate:
            kwargs["bitrate"] = int(bitrate)
        return BusSource(idle_timeout=min(0.25, cfg.batch_max_seconds), **kwargs)

    def _flush(self) -> None:
        frames = self.batcher.take()
        if frames:
            self.services.local.publish(self.topic, self.core.batch_message(frames))

    def run(self, stop: threading.Event) -> None:
        if isinstance(self.source, LogSource) and self.source.speed <= 0:
            self._replay_columns(self.source, stop)
        else:
            self._read_frames(stop)

    def _replay_columns(self, log: LogSource, stop: threading.Event) -> None:
        """A replay as fast as possible: the log's frames arrive as columns, in chunks, and are
        cut into batches of ``replay_batch_frames`` / ``replay_batch_seconds`` exactly as the
        frame-by-frame loop would cut them (``batch_ends``)."""
        max_frames, max_seconds = self.replay_batch
        try:
            pending = Frames.empty()
            for chunk in log.frame_batches(stop):
                pending = Frames.concat([pending, chunk]) if len(pending) else chunk
                start = 0
                for end in batch_ends(pending.t, max_frames, max_seconds):
                    self.services.local.publish(self.topic, self.core.batch_message(pending.take(slice(start, end))))
                    start = end
                pending = pending.take(slice(start, None))
            if len(pending) and not stop.is_set():
                self.services.local.publish(self.topic, self.core.batch_message(pending))
            extra = {"bad_records": len(log.bad_records)}
            self.services.local.publish(self.topic, self.core.end_message(extra))
        finally:
            self.finished.set()

    def _read_frames(self, stop: threading.Event) -> None:
        clock = self.services.clock
        max_wait = self.batcher.max_seconds
        last_publish = clock.monotonic()
        try:
            for frame in self.source.frames(stop):
                now = clock.monotonic()
                if frame is None:
                    if self.batcher.frames and now - self.batcher.opened_at >= max_wait:
                        self._flush()
                        last_publish = now
                    elif not self.batcher.frames and now - last_publish >= max_wait:
                        # Live frames carry wall-clock timestamps, so wall-clock time is event time.
                        self.services.local.publish(self.topic, self.core.tick_message(clock.time()))
                        last_publish = now
                    continue
                full = self.batcher.add(frame, now)
                if full or (self.live and now - self.batcher.opened_at >= max_wait):
                    self._flush()
                    last_publish = now
            self._flush()
            extra = {"bad_records": len(self.source.bad_records)}
            self.services.local.publish(self.topic, self.core.end_message(extra))
        finally:
            self.finished.set()

    def counters(self) -> dict[str, Any]:
        """What was read and decoded, in totals and by CAN id."""
        core, totals, bad = self.core, self.core.totals, self.source.bad_records
        return {
            "frames_read": totals["read"], "error_frames": totals["error"], "remote_frames": totals["remote"],
            "frames_decoded": totals["decoded"], "frames_unknown_id": totals["unknown_id"],
            "decode_errors": totals["decode_error"], "fallback_frames": totals["fallback_frames"],
            "bad_lines": len(bad), "bad_records": [str(r) for r in bad],
            "unknown_ids": {f"0x{k:X}": n for k, n in core.unknown_ids.most_common()},
            "decode_error_ids": {f"0x{k:X}": n for k, n in core.decode_error_ids.most_common()},
            "dbc_collisions": [str(c) for c in getattr(self.decoder, "collisions", [])],
            "signal_samples": totals["signal_samples"], "non_finite_values": totals["non_finite_values"],
            "batches": totals["batches"], "event_start": core.first_time, "event_end": core.last_time,
            "dbc_renamed": list(getattr(self.decoder, "renamed", [])), "rules_matching_nothing": self.idle_rules,
            **core.faults(),
        }

    def handle(self, event: Any) -> None:
        # The reader has no event sources; an invocation is a no-op (Greengrass may still call a
        # pinned function's handler once when it starts it).
        return None

    def close(self) -> None:
        self.source.close()


class AggregatorComponent(MessageComponent):
    """Signal batches in, windowed statistics out (``aggregator.Aggregation``)."""

    accepts = (messages.SIGNALS, messages.END_OF_STREAM)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.topic = services.setting("TELEMETRY_OUTPUT_TOPIC")
        cfg = services.config
        self.core = Aggregation(cfg.aggregator, cfg.vehicle, res=dbc_resolutions(cfg.dbc) if cfg.dbc else None,
                                max_bytes=cfg.uploader.max_payload_bytes)

    def on_message(self, message: messages.Signals | messages.EndOfStream) -> None:
        out = self.core.publish(message)
        if len(out) > 1:  # the payloads one batch completed travel together: one invocation, one commit
            self.services.local.publish(self.topic, messages.Batch(messages.AGGREGATES, tuple(out)))
        elif out:
            self.services.local.publish(self.topic, out[0])
        self.stats["aggregates"] += len(out)

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

    def on_message(self, message: messages.Signals | messages.EndOfStream) -> None:
        for alert in self.core.process(message):
            self.services.local.publish(self.topic, alert)

    def counters(self) -> dict[str, Any]:
        stats = self.core.stats
        raised, updated, cleared = stats["alert_raised"], stats["alert_update"], stats["alert_cleared"]
        return {**super().counters(), "alerts": raised + updated + cleared, "alerts_raised": raised,
                "alerts_updated": updated, "alerts_cleared": cleared, "alerts_active_at_end": len(self.core.active)}


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
            wire.register(wire.Schema.of(dbc_resolutions(services.config.dbc)))
        self.core = Uploader(spool, services.cloud, cfg, vehicle=services.config.vehicle,
                             prefix=services.config.cloud_prefix, clock=services.clock)

    def on_message(self, message: messages.Aggregates | messages.Window | messages.Alert | messages.Batch) -> None:
        if isinstance(message, messages.Batch):
            self.core.accept_many([m for m in message.items if isinstance(m, (messages.Aggregates, messages.Alert))])
        else:
            self.core.accept(message)

    def run(self, stop: threading.Event) -> None:
        self.core.run(stop)

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
        self.core.close()
