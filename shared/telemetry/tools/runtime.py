"""A local stand-in for the Greengrass nucleus, enough to run the four Lambda components on a
laptop exactly as their recipes define them.

It reads ``recipes/``, checks them, starts the components in dependency order, loads each
handler module once (as for a pinned function), and delivers every message published on a local
topic to the components whose PUB_SUB event sources name that topic, as the recipe's
``inputPayloadEncodingType`` says (json: the decoded object; binary: the payload's bytes), one
invocation at a time per component, through a bounded queue of the recipe's ``maxQueueSize``.
A publisher facing a full queue waits, so a replay slows down instead of losing data. Components
are stopped in reverse order.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from telemetry.edge.clock import Clock, SystemClock
from telemetry.edge.components import LambdaAdapter, Services
from telemetry.edge.config import VehicleConfig
from telemetry.edge.errors import RecipeError
from telemetry.edge.messages import Message, Shared, is_binary
from telemetry.edge.transport import CloudTransport, Handler
from telemetry.tools import affinity
from telemetry.tools.recipes import Recipe, check_recipes, import_handler, load_recipes

LOG = logging.getLogger(__name__)

_STOP = object()


@dataclass
class LambdaContext:
    """What a handler's ``context`` argument offers (the parts a Lambda handler may read)."""

    function_name: str
    function_version: str = "1"
    invoked_function_arn: str = ""
    aws_request_id: str = ""


class _Runner:
    """One component: its handler module, its queue and the worker that invokes it."""

    def __init__(self, recipe: Recipe, module: ModuleType, handler: Any) -> None:
        self.recipe = recipe
        self.module = module
        self.handler = handler
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=recipe.max_queue_size)
        self.stats: Counter[str] = Counter()
        self.errors: list[str] = []
        self.context = LambdaContext(function_name=str(recipe.function.get("FunctionName", recipe.name)))
        self.worker = threading.Thread(target=self._work, name=f"invoke-{recipe.name}", daemon=True)

    @property
    def adapter(self) -> Any:
        return getattr(self.module, "adapter", None)

    @property
    def component(self) -> Any:
        adapter = self.adapter
        return adapter.component if adapter is not None else None

    def _work(self) -> None:
        while True:
            event = self.queue.get()
            try:
                if event is _STOP:
                    return
                self._invoke(event)
            finally:
                self.queue.task_done()

    def _invoke(self, event: Any) -> None:
        started = time.monotonic()
        try:
            self.handler(event, self.context)
        except Exception as exc:  # Greengrass would log it and restart a pinned function
            self.stats["handler_errors"] += 1
            message = f"{self.recipe.name}: handler raised {type(exc).__name__}: {exc}"
            self.errors.append(message)
            LOG.exception("%s", message)
        elapsed = time.monotonic() - started
        self.stats["invocations"] += 1
        if elapsed > self.recipe.timeout:
            self.stats["timeouts"] += 1
            LOG.warning("%s: invocation took %.1f s, over its %.0f s timeout", self.recipe.name, elapsed, self.recipe.timeout)


def as_json_event(wire: bytes) -> Any:
    """What a function whose recipe takes JSON receives: the decoded object; what is not JSON
    reaches it as text, for its decoder to refuse."""
    try:
        return json.loads(wire)
    except ValueError:
        return wire.decode(errors="replace")


def load_hosted(recipe: Recipe, module_name: str) -> tuple[ModuleType, Any, LambdaAdapter]:
    """A recipe's handler module, its handler and its ``LambdaAdapter``, as the Lambda runtime
    would load them (by module name from the handler string)."""
    module, handler = import_handler(recipe, module_name)
    adapter = getattr(module, "adapter", None)
    if not isinstance(adapter, LambdaAdapter):
        raise RecipeError(f"{recipe.path.name}: handler module {module.__file__} has no LambdaAdapter named 'adapter'")
    return module, handler, adapter


def hosted_module_name(recipe: Recipe) -> str:
    return "_telemetry_local_" + re.sub(r"\W", "_", recipe.name)


class Nucleus:
    """What a local stand-in for the nucleus does whatever hosts the components: local pub/sub
    (routes per the recipes' event sources, taps, topic counters) and the drain of a replay.
    Subclasses say how an event reaches a route (``_hand``), when every route has handled what
    it was given (``_settle``) and which components still hold work of their own (``_holding``)."""

    shares_decoding = True  # subscribers in this process share a binary payload's decoding

    def __init__(self, recipes_dir: str | Path, config: VehicleConfig, cloud: CloudTransport, *,
                 env: Mapping[str, str] | None = None, root: str | Path | None = None, one_cpu: bool = False) -> None:
        self.recipes = load_recipes(recipes_dir, root)
        # whether the threads ``start`` makes in this process share one CPU (``affinity.py``), and which
        self.one_cpu = one_cpu
        self.pinned_cpu: int | None = None
        self.config = config
        self.cloud = cloud
        # A laptop has no place for the uploader's device spool: in memory unless told otherwise.
        self.env = {"TELEMETRY_SPOOL": ":memory:", **(env or {})}
        self.order: list[Recipe] = []
        self._routes: dict[str, list[Any]] = {}
        self._taps: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self.published: Counter[str] = Counter()
        self.published_bytes: Counter[str] = Counter()
        self.started: list[str] = []
        self.stopped: list[str] = []

    # -- the LocalTransport the components are given -------------------------------------------
    def publish(self, topic: str, message: Message) -> None:
        self.deliver(topic, message.to_bytes())

    def deliver(self, topic: str, wire: bytes) -> None:
        """Route a payload as published on ``topic``: what a component's publish becomes, and how
        a test or a tool puts any bytes (a malformed message too) on a local topic."""
        with self._lock:
            self.published[topic] += 1
            self.published_bytes[topic] += len(wire)
            routes = list(self._routes.get(topic, ()))
            taps = list(self._taps.get(topic, ()))
        if not routes and not taps:
            LOG.debug("no subscriber for %s", topic)
            return
        # JSON is decoded at most once for every subscriber that takes it here (they read it,
        # never change it), and a binary payload too (``Shared``: in this process only). A
        # function that takes binary gets the bytes, as Greengrass gives them.
        parsed: list[Any] = []

        def as_json() -> Any:
            if not parsed:
                parsed.append(as_json_event(wire))
            return parsed[0]

        binary = is_binary(wire)
        if binary and self.shares_decoding and len(routes) + len(taps) > 1:
            wire = Shared(wire)  # and a binary payload once, by the first that takes it
        for route in routes:
            if binary and not route.recipe.binary_input:  # Greengrass could not hand this over either
                route.stats["binary_to_json_function"] += 1
                LOG.warning("%s: binary payload on %s, but its inputPayloadEncodingType is json",
                            route.recipe.name, topic)
            self._hand(route, wire, as_json)
        for tap in taps:
            tap(wire if binary else as_json())

    def _hand(self, route: Any, wire: bytes, as_json: Callable[[], Any]) -> None:
        raise NotImplementedError

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Watch a topic from outside the components (tests, tools); called synchronously."""
        with self._lock:
            self._taps.setdefault(topic, []).append(handler)

    def close(self) -> None:
        pass

    # -- a replay's end -------------------------------------------------------------------------
    def drain(self, timeout: float = 120.0) -> None:
        """Wait until every message published so far, and everything it caused, is handled, and
        every component holding work of its own (the uploader's spool) has passed it on."""
        deadline = time.monotonic() + timeout
        while True:
            before = sum(self.published.values())
            self._settle(deadline)
            holding = self._holding()
            if not holding and sum(self.published.values()) == before:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"components still hold messages after {timeout:.0f} s: {holding}")
            if holding:
                time.sleep(0.01)

    def _settle(self, deadline: float) -> None:
        raise NotImplementedError

    def _holding(self) -> dict[str, int]:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class LocalRuntime(Nucleus):
    """Runs the components of ``recipes/`` in one process. Use as a context manager.

    With ``one_cpu``, every thread it starts (the functions' workers, the pinned functions'
    loops and the threads those start) runs on one CPU, the one ``start`` is called on
    (``affinity.py``: they share one interpreter lock, handed over far more cheaply on one core);
    ``pinned_cpu`` says which (None: not pinned). The caller's own thread is not pinned."""

    def __init__(
        self,
        recipes_dir: str | Path,
        config: VehicleConfig,
        cloud: CloudTransport,
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        root: str | Path | None = None,
        one_cpu: bool = False,
    ) -> None:
        super().__init__(recipes_dir, config, cloud, env=env, root=root, one_cpu=one_cpu)
        self.clock = clock or SystemClock()
        self.runners: dict[str, _Runner] = {}
        self._stopped: dict[str, _Runner] = {}

    def _hand(self, route: Any, wire: bytes, as_json: Callable[[], Any]) -> None:
        event = wire if route.recipe.binary_input else as_json()
        if route.queue.full():
            route.stats["publisher_waits"] += 1
        route.queue.put(event)  # blocks while the queue is full: back-pressure, not loss

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.order = check_recipes(self.recipes)
        for topic_owner in self.order:
            for topic in topic_owner.topics:
                self._routes.setdefault(topic, [])
        try:
            with affinity.one_cpu(self.one_cpu) as cpu:
                self.pinned_cpu = cpu  # the threads started here keep it; this one gets its own back
                for recipe in self.order:
                    self._start(recipe)
        except BaseException:
            self.stop()
            raise

    def _start(self, recipe: Recipe) -> None:
        env = {**recipe.environment, **self.env}
        services = Services(self, self.cloud, self.config, self.clock, env, recipe.name)
        module, handler, adapter = load_hosted(recipe, hosted_module_name(recipe))
        adapter.host(services)  # builds the component: a bad configuration (a broken DBC) fails here
        if recipe.pinned:
            adapter.start_pinned()  # a pinned function's loop, if its component has one
        runner = _Runner(recipe, module, handler)
        runner.worker.start()
        self.runners[recipe.name] = runner
        for topic in recipe.topics:
            self._routes[topic].append(runner)
        self.started.append(recipe.name)
        LOG.info("started %s", recipe.name)

    def component(self, name: str) -> Any:
        return self.runner(name).component

    def sources(self) -> list[Any]:
        """The adapters of pinned functions whose loop produces the data (the CAN reader), as
        opposed to loops that serve it (the uploader's sender)."""
        return [
            r.adapter for r in self.runners.values()
            if r.adapter is not None and r.adapter.thread is not None and getattr(r.component, "role", "") == "source"
        ]

    def wait_for_sources(self, timeout: float | None = None) -> None:
        """Wait until every source loop has ended (a replay has reached the end of its log)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for adapter in self.sources():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            adapter.thread.join(remaining)
            if adapter.thread.is_alive():
                raise TimeoutError("source still running")
            if adapter.error is not None:
                raise adapter.error

    def _settle(self, deadline: float) -> None:
        for recipe in self.order:
            self.runners[recipe.name].queue.join()

    def _holding(self) -> dict[str, int]:
        return {name: r.component.pending() for name, r in self.runners.items()
                if hasattr(r.component, "pending") and r.component.pending()}

    def stop(self) -> None:
        """Stop components in reverse start order (dependents before their dependencies). What
        a component was handed before it stops is handled before it closes: the windows the
        aggregator flushes as it stops reach the uploader, which is stopped after it, and are
        stored, not handed to a closed spool."""
        for recipe in reversed(self.order):
            runner = self.runners.pop(recipe.name, None)
            if runner is None:
                continue
            deadline = time.monotonic() + 10
            while runner.queue.unfinished_tasks and time.monotonic() < deadline and runner.worker.is_alive():
                time.sleep(0.005)
            if runner.adapter is not None:
                runner.adapter.stop(timeout=10)
            runner.queue.put(_STOP)
            runner.worker.join(10)
            self.stopped.append(recipe.name)
            LOG.info("stopped %s", recipe.name)
            self._stopped[recipe.name] = runner

    def runner(self, name: str) -> _Runner:
        return self.runners.get(name) or self._stopped[name]

    @property
    def errors(self) -> list[str]:
        runners = {**self._stopped, **self.runners}
        return [e for r in runners.values() for e in r.errors]
