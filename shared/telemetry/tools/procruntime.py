"""The local Greengrass runtime with each component in its own process, as on a core device.

``LocalRuntime`` runs the four components as threads of one interpreter, so they share one
interpreter lock: a replay uses about one core. ``ProcessRuntime`` has the same lifecycle and
the same answers (``wait_for_sources``, ``drain``, ``component(name).counters()``, ``errors``,
``published``), but it starts one child process per component and plays the nucleus itself:

* A child imports its recipe's handler module, hands the adapter its services and starts the
  pinned loop, exactly as ``LocalRuntime`` does, in dependency order; a component that fails
  to build fails the start with its own exception (a broken DBC names the file).
* What a component publishes locally goes, as its wire bytes, over the child's pipe to the
  parent, which counts it and forwards the bytes to every child whose recipe subscribes to the
  topic; the child hands them to its handler as its ``inputPayloadEncodingType`` says (json: the
  decoded object; binary: the bytes), one invocation at a time. The parent lets at most
  ``maxQueueSize`` events wait per child (plus the one being handled, as a ``queue.Queue`` of
  that size and its worker): a publisher facing a full child waits. Back-pressure, never loss.
* A cloud publish is forwarded to the parent's ``CloudTransport`` and answered: it succeeds
  only once the parent's transport has taken it (an ``OutboxFile`` line is written), and what
  that transport raises is raised in the child. Any transport works, the component never knows.

Children are ``multiprocessing`` processes of the ``forkserver`` context (the parent has threads,
so no plain fork; the server imports numpy, cantools and python-can once, then forks each child;
``forkserver.start_forkserver`` starts it early), talking over ``Pipe`` connections whose socket
buffers hold a large batch whole where the system allows; an event goes to a child as its bytes,
not pickled, and each end reads a message whole in one call (``_Frames``). Each end writes from
one thread of its own, in order (the parent: one per child for its events; a child: one for all it says), so that
neither a publisher nor a component's worker waits on a busy reader at the other end. Stopping
goes in reverse start order, each child told once the one before has answered; their processes'
ends are then waited for together, and a child that does not stop in time is terminated, then killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import resource
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

from telemetry.edge.aggregator import register_dbc_schema
from telemetry.edge.clock import SystemClock
from telemetry.edge.components import LambdaAdapter, Services
from telemetry.edge.config import VehicleConfig
from telemetry.edge.errors import RecipeError, TransportError
from telemetry.edge.messages import Message
from telemetry.edge.transport import CloudTransport, Handler
from telemetry.tools import affinity
from telemetry.tools.forkserver import start_forkserver
from telemetry.tools.recipes import Recipe, check_recipes, load_recipes
from telemetry.tools.runtime import LambdaContext, Nucleus, as_json_event, hosted_module_name, load_hosted

LOG = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # building a component: importing numpy and cantools, loading DBCs
STOP_TIMEOUT = 30.0  # a child's own stop waits up to 10 s for its loop and 10 s for its worker
_STOP = object()
OUTBOX = 4  # messages a child has said and its sender thread has not yet written
SOCKET_BUFFER = 4 << 20  # bytes each way of a child's connection, if the system allows (``_widen``)


def _widen(conn: Connection) -> None:
    """Let the connection's socket hold a large signals batch whole (as far as the system allows:
    ``net.core.wmem_max``/``rmem_max``): written in one call, read in one, instead of in 200 kB
    turns of the writer and the reader (each a wait for the reader's GIL in a busy child)."""
    try:
        sock = socket.socket(fileno=conn.fileno())
    except OSError:  # not a socket (another start method's pipe): as it is
        return
    try:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    except OSError:
        pass
    finally:
        sock.detach()


_EVENT = b"E"  # an event's frame: this byte, then the payload's bytes as published (not pickled)
_HEADER = struct.Struct("!i")  # a frame's length, as ``Connection.send_bytes`` writes it
_LONG_HEADER = struct.Struct("!Q")  # after a length of -1: a frame of 2 GB or more


class _Frames:
    """The messages of one end of a connection, read whole, and events written without pickling.

    ``Connection.recv`` reads a large frame in as many ``read`` calls as the data arrives in,
    each taking the GIL back (in a child, from a worker busy with the batch before) and copying
    the chunk twice more (into a buffer, then out of the pickle). Here a frame is read by one
    ``recv_into`` that waits, without the GIL, until the whole frame is there, into the buffer
    it stays in. An event (``send_event``) is framed as ``_EVENT`` and the payload's bytes, written
    by one ``sendmsg`` with no copy; every other message, and an event that is not ``bytes``, is
    a pickled tuple (its first byte is pickle's PROTO opcode, never ``_EVENT``). The frames are
    ``Connection``'s own (a length, then the bytes), so either side may use the plain methods.
    Over a connection that is no socket, the plain methods are used."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._sock: socket.socket | None = None
        fd = os.dup(conn.fileno())  # its own descriptor of the connection: closed by ``close`` alone
        try:
            self._sock = socket.socket(fileno=fd)
        except OSError:  # not a socket (another start method's pipe)
            os.close(fd)

    def recv(self) -> tuple[Any, ...]:
        """The next message; EOFError once the other end has closed, OSError if this one was."""
        if self._sock is None:
            data: Any = self.conn.recv_bytes()
        else:
            size = _HEADER.unpack(self._read(_HEADER.size, first=True))[0]
            if size == -1:
                size = _LONG_HEADER.unpack(self._read(_LONG_HEADER.size))[0]
            data = memoryview(self._read(size))
        if data[:1] == _EVENT:
            return ("event", bytes(data[1:]))
        return tuple(ForkingPickler.loads(data))

    def _read(self, size: int, first: bool = False) -> bytearray:
        assert self._sock is not None
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self._sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if n == 0:
                if first and got == 0:
                    raise EOFError
                raise OSError("got end of file during message")
            got += n
        return buf

    def send_event(self, wire: Any) -> None:
        """An event's payload, to be received as ``("event", wire)`` (the caller holds the
        connection's send lock)."""
        if type(wire) is not bytes:  # received as it was sent: pickled
            self.conn.send(("event", wire))
            return
        size = len(wire) + 1
        if self._sock is None or size > 0x7FFFFFFF:
            self.conn.send_bytes(_EVENT + wire)
            return
        parts = [_HEADER.pack(size) + _EVENT, wire]
        total = _HEADER.size + size
        sent = self._sock.sendmsg(parts)
        if sent < total:  # interrupted part way (a signal): the rest, in order
            self._sock.sendall(b"".join(parts)[sent:])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling (ours do), else one that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RecipeError(f"{type(exc).__name__}: {exc}")


# -- the child: one component -------------------------------------------------------------------

@dataclass(frozen=True)
class _ChildSpec:
    recipes_dir: str
    root: str | None
    name: str
    config: VehicleConfig
    env: Mapping[str, str]
    log_level: int
    cpus: frozenset[int] | None = None  # its CPUs: the nucleus's before it pinned its own threads


class _Child:
    """A component's process: its handler, its inbox and worker, and the transports that turn
    its publishes into messages to the parent.

    Parent -> child: ("event", wire), ("start",), ("call", "counters" | "pending"),
    ("cloud_done", None | exception), ("stop",).
    Child -> parent: ("built", info) | ("failed", exception), ("started", info),
    ("publish", topic, wire), ("cloud", topic, payload), ("done", seconds, error | None),
    ("source_done", None | exception), ("reply", value), ("stopped",).

    What the child sends is pickled by the caller (as it is at that moment) and written by one
    thread, in order: the worker goes on with its next event instead of waiting to get its GIL
    back after each write (another thread of the child, reading the next large batch, has it).
    A handler's publishes reach the parent before its "done", a source's before "source_done".
    """

    def __init__(self, conn: Connection, spec: _ChildSpec) -> None:
        self.conn = conn
        self.spec = spec
        self._cloud_lock = threading.Lock()
        self.inbox: queue.Queue[Any] = queue.Queue()  # bounded by the parent's slots
        self.control: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.cloud_answers: queue.Queue[BaseException | None] = queue.Queue()
        # bounded: a publisher ahead of the parent waits, as it waited on the connection before
        self._outbox: queue.Queue[memoryview | None] = queue.Queue(maxsize=OUTBOX)
        self._sender = threading.Thread(target=self._send_all, name="to-nucleus", daemon=True)
        self._broken = False  # the parent is gone: what is said now reaches no one

    def send(self, message: tuple[Any, ...]) -> None:
        data = ForkingPickler.dumps(message)
        while not self._broken:
            try:
                self._outbox.put(data, timeout=0.5)
                return
            except queue.Full:
                continue

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError):  # the parent is gone: nothing more reaches it
                self._broken = True
                return

    # the LocalTransport and the CloudTransport of the component
    def publish(self, topic: str, message: Message) -> None:
        self.send(("publish", topic, message.to_bytes()))

    def subscribe(self, topic: str, handler: Handler) -> None:
        raise RecipeError(f"{self.spec.name}: a component subscribes through its recipe's eventSources")

    def close(self) -> None:
        pass

    def cloud_publish(self, topic: str, payload: bytes) -> None:
        with self._cloud_lock:  # one publish in flight: the answer read next is this one's
            self.send(("cloud", topic, bytes(payload)))
            error = self.cloud_answers.get()
        if error is not None:
            raise error

    def serve(self) -> None:
        self._sender.start()
        try:
            self._serve()
        finally:  # everything said reaches the parent before the connection closes
            try:
                self._outbox.put(None, timeout=10)
            except queue.Full:  # the parent has stopped reading: the process ends anyway
                pass
            self._sender.join(10)

    def _serve(self) -> None:
        receiver = threading.Thread(target=self._receive, name="from-nucleus", daemon=True)
        receiver.start()
        try:
            recipe, handler, adapter = self._build()
        except BaseException as exc:
            LOG.debug("%s failed to build", self.spec.name, exc_info=True)
            self.send(("failed", _portable(exc)))
            return
        component = adapter.component
        self.send(("built", {"class": type(component).__name__, "pending": hasattr(component, "pending")}))
        worker = threading.Thread(target=self._work, args=(recipe, handler), name=f"invoke-{recipe.name}", daemon=True)
        worker.start()
        while True:
            kind, *args = self.control.get()
            if kind == "start":
                try:
                    if recipe.pinned:
                        adapter.start_pinned()
                except BaseException as exc:
                    self.send(("failed", _portable(exc)))
                    continue
                source = adapter.thread is not None and getattr(component, "role", "") == "source"
                if source:
                    threading.Thread(target=self._watch_source, args=(adapter,), name="source-watch", daemon=True).start()
                self.send(("started", {"source": source}))
            elif kind == "call":
                what = args[0]
                if what == "counters":
                    self.send(("reply", component.counters()))
                elif what == "pending":
                    self.send(("reply", component.pending()))
                elif what == "cpu":
                    self.send(("reply", cpu_seconds_used()))
                else:  # "peak_rss": this process's, in kB
                    self.send(("reply", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            elif kind in ("stop", "eof"):
                adapter.stop(timeout=10)
                self.inbox.put(_STOP)
                worker.join(10)
                if kind == "stop":
                    self.send(("stopped",))
                return

    def _build(self) -> tuple[Recipe, Any, LambdaAdapter]:
        spec = self.spec
        recipes = load_recipes(spec.recipes_dir, spec.root)
        recipe = next(r for r in recipes if r.name == spec.name)
        _, handler, adapter = load_hosted(recipe, hosted_module_name(recipe))
        cloud = _CloudProxy(self)
        env = {**recipe.environment, **spec.env}
        adapter.host(Services(self, cloud, spec.config, SystemClock(), env, recipe.name))
        return recipe, handler, adapter

    def _receive(self) -> None:
        frames = _Frames(self.conn)
        while True:
            try:
                message = frames.recv()
            except (EOFError, OSError):  # the parent is gone: stop as if told to
                frames.close()
                self.cloud_answers.put(TransportError("the runtime's process has gone"))
                self.control.put(("eof",))
                return
            kind = message[0]
            if kind == "event":
                self.inbox.put(message[1])
            elif kind == "cloud_done":
                self.cloud_answers.put(message[1])
            else:
                self.control.put(message)

    def _work(self, recipe: Recipe, handler: Any) -> None:
        context = LambdaContext(function_name=str(recipe.function.get("FunctionName", recipe.name)))
        while True:
            wire = self.inbox.get()
            if wire is _STOP:
                return
            event = wire if recipe.binary_input else as_json_event(wire)
            started = time.monotonic()
            error = None
            try:
                handler(event, context)
            except Exception as exc:  # Greengrass would log it and restart a pinned function
                error = f"{recipe.name}: handler raised {type(exc).__name__}: {exc}"
                LOG.exception("%s", error)
            self.send(("done", time.monotonic() - started, error))

    def _watch_source(self, adapter: LambdaAdapter) -> None:
        assert adapter.thread is not None
        adapter.thread.join()
        self.send(("source_done", None if adapter.error is None else _portable(adapter.error)))


class _CloudProxy:
    def __init__(self, child: _Child) -> None:
        self._child = child

    def publish(self, topic: str, payload: bytes) -> None:
        self._child.cloud_publish(topic, payload)

    def close(self) -> None:
        pass


def cpu_seconds_used() -> float:
    """This process's CPU seconds so far, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_main(conn: Connection, spec: _ChildSpec) -> None:
    if spec.cpus:  # a fork or spawn of a pinned thread would be pinned too; a component is not
        os.sched_setaffinity(0, spec.cpus)
    logging.basicConfig(level=spec.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        _Child(conn, spec).serve()
    finally:
        conn.close()


# -- the parent: the nucleus --------------------------------------------------------------------

class _Process:
    """The parent's side of one child: its pipe, its queue slots and what it reported."""

    def __init__(self, runtime: ProcessRuntime, recipe: Recipe, ctx: Any, spec: _ChildSpec) -> None:
        self.runtime = runtime
        self.recipe = recipe
        self.conn, child_conn = ctx.Pipe(duplex=True)
        _widen(self.conn)
        _widen(child_conn)
        self.process = ctx.Process(target=_child_main, args=(child_conn, spec), name=f"component-{recipe.name}", daemon=True)
        self.process.start()
        child_conn.close()
        self._send_lock = threading.Lock()
        self._frames = _Frames(self.conn)
        self._call_lock = threading.Lock()
        # maxQueueSize events waiting, plus the one being handled (LocalRuntime's queue and worker)
        self._slots = threading.Semaphore(recipe.max_queue_size + 1)
        self._idle = threading.Condition()
        self.in_flight = 0
        self.stats: Counter[str] = Counter()
        self.errors: list[str] = []
        self.info: dict[str, Any] = {}
        self.control: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.source_done = threading.Event()
        self.source_error: BaseException | None = None
        self.gone = False
        self.stopping = False  # told to stop, or failed (it exits by itself)
        self.asked = False  # told to stop (``ask_to_stop``)
        self.ended = False  # its process has ended and been waited for
        self.receiver = threading.Thread(target=self._receive, name=f"from-{recipe.name}", daemon=True)
        self.receiver.start()
        # Events (and the stop after them) are written to the child by a thread of their own: a
        # publisher's thread hands an event over and goes back to its own pipe, instead of waiting
        # while a busy child reads a large batch (its receiving thread needs the child's GIL for
        # every chunk). The slots still bound what is in flight; the order is kept.
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_events, name=f"to-{recipe.name}", daemon=True)
        self.sender.start()

    @property
    def name(self) -> str:
        return self.recipe.name

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            if message[0] == "event":
                self._frames.send_event(message[1])
            else:
                self.conn.send(message)

    def expect(self, *kinds: str, timeout: float) -> tuple[Any, ...]:
        """The child's next control message, which must be one of ``kinds`` (or "failed")."""
        try:
            message = self.control.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer from its process in {timeout:.0f} s") from None
        if message[0] == "failed":
            raise message[1]
        if message[0] == "gone":
            raise RecipeError(f"{self.name}: its process exited (exit code {self.process.exitcode})")
        if message[0] not in kinds:
            raise RecipeError(f"{self.name}: unexpected {message[0]!r} from its process")
        return message

    def call(self, what: str, timeout: float = 60.0) -> Any:
        with self._call_lock:
            self.send(("call", what))
            return self.expect("reply", timeout=timeout)[1]

    # -- events in ---------------------------------------------------------------------------
    def put(self, wire: bytes) -> None:
        if not self._slots.acquire(blocking=False):
            self.stats["publisher_waits"] += 1
            while not self._slots.acquire(timeout=0.2):  # blocks while the queue is full
                if self.gone:
                    self.stats["lost_to_exit"] += 1
                    return
        with self._idle:
            self.in_flight += 1
        self._outbox.put(("event", wire))

    def _send_events(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self.send(message)
            except (OSError, ValueError):  # it has exited (or been closed): counted, drain() does not wait for it
                if message[0] == "event":
                    self.stats["lost_to_exit"] += 1
                    self._slots.release()
                    with self._idle:
                        self.in_flight -= 1
                        self._idle.notify_all()

    def wait_idle(self, deadline: float) -> None:
        with self._idle:
            while self.in_flight and not self.gone:
                if not self._idle.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic()))) and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: {self.in_flight} events still being handled")

    # -- messages out --------------------------------------------------------------------------
    def _receive(self) -> None:
        while True:
            try:
                message = self._frames.recv()
            except (EOFError, OSError):
                break
            try:
                self._dispatch(message)
            except Exception as exc:  # a tap that raised, a child gone mid-answer: reported, not fatal
                error = f"{self.name}: runtime failed on its {message[0]!r}: {type(exc).__name__}: {exc}"
                self.errors.append(error)
                LOG.exception("%s", error)
        self.gone = True
        if not self.stopping:
            self.process.join(1)  # for its exit code
            error = f"{self.name}: its process exited unexpectedly (exit code {self.process.exitcode})"
            self.errors.append(error)
            LOG.error("%s", error)
        self.source_done.set()
        self.control.put(("gone",))
        with self._idle:
            self._idle.notify_all()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "publish":
            self.runtime.deliver(message[1], message[2])
        elif kind == "cloud":
            self._cloud(message[1], message[2])
        elif kind == "done":
            self._done(message[1], message[2])
        elif kind == "source_done":
            self.source_error = message[1]
            self.source_done.set()
        else:
            if kind == "failed":  # it exits next: not an unexpected exit
                self.stopping = True
            self.control.put(message)

    def _cloud(self, topic: str, payload: bytes) -> None:
        error: BaseException | None = None
        try:
            self.runtime.cloud.publish(topic, payload)
        except Exception as exc:  # the component's to handle (retry, set aside), as in one process
            error = _portable(exc)
        self.send(("cloud_done", error))

    def _done(self, seconds: float, error: str | None) -> None:
        self.stats["invocations"] += 1
        if error is not None:
            self.stats["handler_errors"] += 1
            self.errors.append(error)
        if seconds > self.recipe.timeout:
            self.stats["timeouts"] += 1
            LOG.warning("%s: invocation took %.1f s, over its %.0f s timeout", self.name, seconds, self.recipe.timeout)
        self._slots.release()
        with self._idle:
            self.in_flight -= 1
            self._idle.notify_all()

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the child to stop and wait for its process to end; once."""
        self.ask_to_stop(timeout)
        self.end()

    def ask_to_stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the child to stop (unless it has failed: then it is ending by itself) and wait for
        its answer: what it published as it stopped has been routed when this returns. Once."""
        if self.ended or self.asked:
            return
        self.asked = True
        failed, self.stopping = self.stopping, True
        if not self.gone and not failed:
            try:
                self._outbox.put(("stop",))  # after every event handed over before it
                # a start given up on (another component failed) may leave its "built" or
                # "started" unread: it comes before the answer to "stop"
                while self.expect("stopped", "built", "started", timeout=timeout)[0] != "stopped":
                    pass
            except Exception as exc:  # it is ended below either way
                LOG.warning("%s: did not stop cleanly: %s", self.name, exc)

    def end(self) -> None:
        """Wait for its process to end (terminated, then killed, if it does not); once."""
        if self.ended:
            return
        self.stopping = True
        self.process.join(5)
        if self.process.is_alive():
            LOG.warning("%s: terminating its process", self.name)
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._outbox.put(None)
        self.sender.join(5)
        self.conn.close()
        self.receiver.join(5)
        self._frames.close()
        self.ended = True


class RemoteComponent:
    """What the parent can ask of a component in a child: its ``counters()`` (and ``pending()``
    for one that holds work of its own). ``class_name`` is the component's class name."""

    def __init__(self, process: _Process) -> None:
        self._process = process
        self.class_name = str(process.info.get("class", process.name))

    def counters(self) -> dict[str, Any]:
        return dict(self._process.call("counters"))

    def pending(self) -> int:
        return int(self._process.call("pending"))


class ProcessRuntime(Nucleus):
    """Runs the components of ``recipes/``, each in its own process. Use as a context manager.

    The configuration crosses to the children pickled, and each child has its own system clock:
    there is no ``clock`` to hand in (a fake clock cannot be shared between processes)."""

    shares_decoding = False  # each child decodes its own copy, as on a core

    def __init__(
        self,
        recipes_dir: str | Path,
        config: VehicleConfig,
        cloud: CloudTransport,
        *,
        env: Mapping[str, str] | None = None,
        root: str | Path | None = None,
        method: str = "forkserver",
        one_cpu: bool = False,
    ) -> None:
        super().__init__(recipes_dir, config, cloud, env=env, root=root, one_cpu=one_cpu)
        self.recipes_dir = Path(recipes_dir)
        self.root = None if root is None else str(root)
        self.method = method
        self.runners: dict[str, _Process] = {}  # started, by name
        self._processes: dict[str, _Process] = {}  # every child, started or not

    def _hand(self, route: Any, wire: bytes, as_json: Callable[[], Any]) -> None:
        route.put(wire)  # the child decodes it as its recipe says

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.order = check_recipes(self.recipes)
        ctx = multiprocessing.get_context(self.method)
        if self.method == "forkserver":
            # The server imports the heavy modules once (forkserver.PRELOAD); each child is a fork of it,
            # ready. A replay has usually started it already (``start_forkserver``).
            start_forkserver()
        level = logging.getLogger().getEffectiveLevel()
        cpus = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        try:
            # Every child builds its component at once (imports, DBCs: the slow part, in
            # parallel); they start in dependency order, as LocalRuntime starts them. With
            # ``one_cpu``, the threads that relay to and from each child (and the replay's taps
            # they call) share one CPU, as LocalRuntime's do; the children run on any.
            with affinity.one_cpu(self.one_cpu) as cpu:
                self.pinned_cpu = cpu
                for recipe in self.order:
                    spec = _ChildSpec(str(self.recipes_dir), self.root, recipe.name, self.config, self.env, level,
                                      cpus if cpu is not None else None)
                    self._processes[recipe.name] = _Process(self, recipe, ctx, spec)
            for recipe in self.order:
                process = self._processes[recipe.name]
                process.info.update(process.expect("built", timeout=START_TIMEOUT)[1])
            if self.config.dbc:
                # The aggregator's payloads number their signals in the DBC's schema. In one
                # process the components register it where the taps listen; here they register
                # it in their own processes, so the nucleus does for whoever listens in this one
                # (a replay's taps). Once every component is built: a broken DBC is theirs to report.
                register_dbc_schema(self.config.dbc)
            for recipe in self.order:
                process = self._processes[recipe.name]
                process.send(("start",))
                process.info.update(process.expect("started", timeout=START_TIMEOUT)[1])
                self.runners[recipe.name] = process
                with self._lock:
                    for topic in recipe.topics:
                        self._routes.setdefault(topic, []).append(process)
                self.started.append(recipe.name)
                LOG.info("started %s in process %s", recipe.name, process.process.pid)
        except BaseException:
            self.stop()
            raise

    def component(self, name: str) -> RemoteComponent:
        return RemoteComponent(self.runner(name))

    def wait_for_sources(self, timeout: float | None = None) -> None:
        """Wait until every source loop has ended (a replay has reached the end of its log)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for process in self.runners.values():
            if not process.info.get("source"):
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not process.source_done.wait(remaining):
                raise TimeoutError("source still running")
            if process.source_error is not None:
                raise process.source_error
            if process.gone:
                raise RecipeError(f"{process.name}: its process exited (exit code {process.process.exitcode})")

    def _settle(self, deadline: float) -> None:
        for recipe in self.order:
            self.runners[recipe.name].wait_idle(deadline)

    def _holding(self) -> dict[str, int]:
        return {name: n for name, p in self.runners.items()
                if p.info.get("pending") and not p.gone and (n := p.call("pending"))}

    def stop(self) -> None:
        """Stop components in reverse start order (dependents before their dependencies); every
        child process has ended when this returns. A component is told to stop once the one
        before it has answered (what that one published as it stopped has been routed to it);
        the processes' ends are waited for after, together."""
        names = [r.name for r in self.order if r.name in self._processes]
        for name in reversed(names):
            process = self._processes[name]
            if process.ended:
                continue
            process.ask_to_stop()  # one that failed to start too: its process is waited for below
            if self.runners.pop(name, None) is not None:
                self.stopped.append(name)
                LOG.info("stopped %s", name)
        for name in reversed(names):
            self._processes[name].end()

    def runner(self, name: str) -> _Process:
        return self._processes[name]

    def peak_rss_mb(self) -> dict[str, float]:
        """Each running component's process: its peak resident memory, in MB."""
        return {name: round(p.call("peak_rss") / 1024, 1) for name, p in self.runners.items() if not p.gone}

    def cpu_seconds(self) -> dict[str, float]:
        """Each running component's process: the CPU it has used (user and system), in seconds."""
        return {name: round(p.call("cpu"), 2) for name, p in self.runners.items() if not p.gone}

    def pids(self) -> list[int]:
        return [p.process.pid for p in self._processes.values() if p.process.pid is not None]

    @property
    def errors(self) -> list[str]:
        return [e for p in self._processes.values() for e in p.errors]
