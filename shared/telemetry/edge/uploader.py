"""The uploader: store and forward to AWS IoT Core, losing nothing it does not account for.

The handler only writes each aggregate or alert into the durable spool (committed before it
returns). A sender loop, started with the pinned function, takes the spool's messages in
priority order (alerts and gap reports first, then aggregates, oldest first), packs several of
one kind into a *bundle* of at most ``max_payload_bytes`` (optionally compressed: deflate with a
preset dictionary, marked ``zd1``), publishes it at QoS 1 and deletes its messages only once the
transport has confirmed it.

It stays within AWS IoT Core's per-connection limits (publishes and bytes per second) and the
vehicle's data budget (bytes per hour on cellular; alerts may go over it). A failed publish is
retried with exponential backoff; a bundle the broker rejects for good (not authorised, too
large, invalid) is split and its messages set aside, reported, never retried forever; so is a
message too large for any publish (over ``max_payload_bytes`` or IoT Core's 128 KB), before it is
sent. Past the spool's size cap, or on a full disk, the oldest aggregates are evicted, and each
run of evictions is itself uploaded as one ``gap`` message; a message that cannot be stored at
all fails the handler (acknowledged means stored). The sender outlives a spool error (a full
disk): it backs off and goes on. Health (spool depth, oldest message, bytes sent, retries, evictions) goes to
``<prefix>/health`` at a fixed interval.
"""

from __future__ import annotations

import base64
import logging
import math
import random
import threading
import zlib
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from .. import wire
from . import messages
from .clock import Clock
from .config import UploaderConfig
from .errors import DroppedError, RejectedError, TransportError
from .spool import Entry, Spool, SpoolError
from .transport import CloudTransport

LOG = logging.getLogger(__name__)


# what the uploader spools: an aggregates payload (read, or only checked: its bytes are stored as
# they came either way), a window (made an aggregates payload of its own), an alert
Accepted = messages.Aggregates | messages.CheckedAggregates | messages.Window | messages.Alert

_ALONE = tuple(kind for kind, cls in messages.KINDS.items() if not cls.bundled)  # aggregates


def cloud_topic(prefix: str, kind: str) -> str:
    """The IoT Core topic of a kind's messages: ``<prefix>/<the kind's cloud_topic>``."""
    suffix = messages.KINDS[kind].cloud_topic
    if suffix is None:
        raise ValueError(f"{kind} messages are not sent to the cloud")
    return f"{prefix}/{suffix}"


def cloud_topics(prefix: str) -> list[str]:
    """Every IoT Core topic the uploader publishes to (least-privilege access control)."""
    return sorted(f"{prefix}/{cls.cloud_topic}" for cls in messages.KINDS.values() if cls.cloud_topic)


def pack(entries: list[Entry], *, vehicle: str, spool_id: str, compress: bool) -> bytes:
    """One bundle of spooled messages of one kind, each with the id the cloud de-duplicates by:
    ``<vehicle>:<kind>:<key>``, where the key is the message's own identity (so a message sent
    twice, even spooled twice, has one id). The spooled bytes are embedded as they are."""
    items = tuple((_item_id(e, vehicle, spool_id), e.payload) for e in entries)
    return messages.Bundle(vehicle, entries[0].kind, items, compress).to_bytes()


def _item_id(entry: Entry, vehicle: str, spool_id: str) -> str:
    """The id an item carries in a bundle: none for an alert (it follows from the alert:
    docs/MESSAGES.md, "bundle"; the readers put it back)."""
    if entry.kind == messages.ALERT and entry.key:
        return ""
    return f"{vehicle}:{entry.kind}:{entry.key or f'{spool_id}-{entry.id}'}"


IOT_CORE_MAX_PAYLOAD = 131_072  # AWS IoT Core: 128 KB per MQTT payload

_DEFLATE_TAIL = 16  # at most what "]" and the end of the stream add after a sync flush (a few bytes)


def _item(entry: Entry, vehicle: str, spool_id: str, compress: bool, prefix: bytes | None = None) -> bytes:
    """A spooled message as a bundle item; compressed, without the bundle's ``prefix`` (made here
    if not given: a bundle's items share it)."""
    if compress and prefix is None:
        prefix = messages.Bundle.prefix(vehicle, entry.kind)
    return messages.Bundle.item(_item_id(entry, vehicle, spool_id), entry.payload, prefix if compress else None)


def fit(entries: list[Entry], *, vehicle: str, spool_id: str, compress: bool, max_bytes: int) -> tuple[bytes, int]:
    """The bundle of as many of ``entries`` (in order, at least one) as fit in ``max_bytes``,
    and how many: ``pack`` of them, made in one pass. Uncompressed, sizes add up exactly;
    compressed, each message goes through deflate once (``_deflate_fitting``)."""
    of = entries[0].kind  # the spool gives messages of one kind at a time
    prefix = messages.Bundle.prefix(vehicle, of) if compress else None
    items = [_item(e, vehicle, spool_id, compress, prefix) for e in entries]
    room = max_bytes - len(messages.Bundle.head(vehicle, of, len(items)))  # the widest count
    if not compress:
        room -= len(messages.Bundle.PLAIN_OPEN) + len(messages.Bundle.PLAIN_CLOSE)
        n, used = 0, 0
        for item in items:
            used += len(item) + (1 if n else 0)  # and its comma
            if n and used > room:
                break
            n += 1
        return messages.Bundle.head(vehicle, of, n) + messages.Bundle.PLAIN_OPEN + b",".join(items[:n]) + messages.Bundle.PLAIN_CLOSE, n
    zmax = (room - len(messages.Bundle.ZD1_OPEN) - len(messages.Bundle.ZD1_CLOSE)) // 4 * 3  # base64: 4 bytes per 3
    data, n = _deflate_fitting(items, zmax)
    if data is None and n > 1:  # the last ones compressed far worse than those before: again, measuring each
        data, n = _deflate_fitting(items[:n], zmax, guess=False)
    if data is None:  # the first alone is over the limit: it goes alone (and is refused, and set aside)
        return pack(entries[:1], vehicle=vehicle, spool_id=spool_id, compress=True), 1
    return messages.Bundle.head(vehicle, of, n) + messages.Bundle.ZD1_OPEN + base64.b64encode(data) + messages.Bundle.ZD1_CLOSE, n


class _Deflate:
    """A ``zd1`` stream (raw deflate, preset dictionary) written piece by piece. Its size is
    known exactly only after a sync flush (which ends a deflate block: a few bytes more each
    time, so used sparingly), and it can be taken back to such a point (``mark``, ``undo``: a
    copy of the compressor's state). Pieces are compressed together when the size is next
    needed: one zlib call for many small ones."""

    def __init__(self) -> None:
        self.z = messages.zd1_compressor()  # as pack compresses: what fits here fits there
        self.parts: list[bytes] = []
        self.waiting: list[bytes] = []  # fed, not yet through zlib
        self.size = 0  # bytes out so far: the stream's size when pending is 0
        self.fed = 0  # bytes in
        self.pending = 0  # bytes in since the last sync flush

    def feed(self, data: bytes) -> None:
        self.waiting.append(data)
        self.fed += len(data)
        self.pending += len(data)

    def _compress(self) -> None:
        if self.waiting:
            out = self.z.compress(b"".join(self.waiting))
            self.waiting.clear()
            if out:
                self.parts.append(out)
                self.size += len(out)

    def sync(self) -> None:
        if self.pending:
            self._compress()
            out = self.z.flush(zlib.Z_SYNC_FLUSH)
            self.parts.append(out)
            self.size += len(out)
            self.pending = 0

    def mark(self) -> tuple[Any, int, int, int]:
        self.sync()
        return self.z.copy(), len(self.parts), self.size, self.fed

    def undo(self, mark: tuple[Any, int, int, int]) -> None:
        self.z, n, self.size, self.fed = mark
        del self.parts[n:]
        self.waiting.clear()
        self.pending = 0

    def tail_size(self) -> int:
        """What ``"]"`` and the end of the stream would add now (measured on a copy)."""
        self._compress()
        end = self.z.copy()
        return len(end.compress(b"]")) + len(end.flush())

    def finish(self) -> bytes:
        self._compress()
        self.parts.append(self.z.flush())
        return b"".join(self.parts)


def _surely_fits(raw: int, zmax: int) -> bool:
    """Whether ``raw`` bytes fit in ``zmax`` whatever deflate makes of them (stored blocks: a
    few bytes per block more than their data)."""
    return raw + (raw >> 10) + 64 + _DEFLATE_TAIL <= zmax


def _deflate_fitting(items: list[bytes], zmax: int, *, guess: bool = True) -> tuple[bytes | None, int]:
    """``[item,item,...]`` compressed (``zd1``) into at most ``zmax`` bytes, with as many items as
    fit (at least one), each compressed once, and how many; None if the first n overshot (the
    caller packs again).""

    While even uncompressed the next item would fit, it goes in without a look. Past that, the
    size is measured with a sync flush and the ratio so far predicts the next items; they go in
    unmeasured while the prediction stays clear of the limit (by 1/32; never more than a quarter
    of it, nor more than the limit uncompressed, unmeasured). Near the limit each item is tried:
    marked, fed, measured, and taken back if it does not fit; without ``guess``, every item that
    may not fit is (slower, never overshoots)."""
    raw = sum(map(len, items)) + len(items) + 1
    if _surely_fits(raw, zmax):  # all of them, however badly they compress (a bundle of a few)
        return messages.zd1_compress(b"[" + b",".join(items) + b"]"), len(items)
    z = _Deflate()
    z.feed(b"[")
    n, ratio, margin = 0, 0.0, zmax // 32

    def predictable(ahead: int) -> bool:  # ``ahead`` more bytes in, unmeasured, stay clear of the limit
        out = ahead * ratio
        return guess and ratio > 0 and z.size + out + margin <= zmax and out <= zmax / 4 and ahead <= zmax

    def over() -> bool:  # the stream so far, ended now, would not fit (measured only near the limit)
        return z.size + _DEFLATE_TAIL > zmax and z.size + z.tail_size() > zmax

    for item in items:
        piece = b"," + item if n else item
        ahead = z.pending + len(piece)
        if n and not _surely_fits(z.size + ahead, zmax) and not predictable(ahead):
            z.sync()
            ratio = z.size / z.fed
            if over():
                return None, n
            if z.size + _DEFLATE_TAIL > zmax:
                break  # exactly full (an item taken measured left less than the margin)
            if not predictable(len(piece)):  # near the limit: try it
                mark = z.mark()
                z.feed(piece)
                z.sync()
                if over():
                    z.undo(mark)
                    break
                n += 1
                continue
        z.feed(piece)
        n += 1
    z.feed(b"]")
    data = z.finish()
    return (data, n) if len(data) <= zmax else (None, n)


class TokenBucket:
    """``rate`` per second with a burst of ``burst``; ``wait_time(n)`` says how long until n fit."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock.monotonic()

    def _refill(self) -> None:
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_time(self, n: float) -> float:
        self._refill()
        need = min(n, self.burst) - self.tokens
        return 0.0 if need <= 0 else need / self.rate

    def take(self, n: float) -> None:
        self._refill()
        self.tokens -= n


class Sender:
    """The sender loop: spool in, bundles out, within the limits."""

    def __init__(self, spool: Spool, cloud: CloudTransport, cfg: UploaderConfig, *, vehicle: str, prefix: str,
                 clock: Clock) -> None:
        self.spool, self.cloud, self.cfg, self.clock = spool, cloud, cfg, clock
        self.vehicle, self.prefix = vehicle, prefix
        self.publishes = self._publish_bucket(cfg)
        self.bandwidth = self._byte_bucket(cfg)
        self.sent_log: deque[tuple[float, int]] = deque()  # (monotonic time, bytes) of the last hour
        self._sent_last_hour = 0
        self.stats: Counter[str] = Counter()
        self.wake = threading.Event()
        self.failures = 0  # consecutive
        self.last_health = -math.inf
        self.rng = random.Random(0)
        self.idle = False
        self.drops: dict[int, int] = {}  # spool id -> times the line dropped with it in flight
        self.singles = 0  # after a refused bundle: how many messages to send one at a time
        self._last_spool_error = ""

    # -- the budget ------------------------------------------------------------------------------
    def _publish_bucket(self, cfg: UploaderConfig) -> TokenBucket:
        return TokenBucket(cfg.max_publishes_per_second, max(1.0, cfg.max_publishes_per_second), self.clock)

    def _byte_bucket(self, cfg: UploaderConfig) -> TokenBucket:
        return TokenBucket(cfg.max_bytes_per_second, max(cfg.max_bytes_per_second, cfg.max_payload_bytes), self.clock)

    def retune(self, cfg: UploaderConfig) -> None:
        """New settings while running (budget, retries, rates): a rate that changed gets a new
        token bucket, one that did not keeps its own."""
        if cfg.max_publishes_per_second != self.cfg.max_publishes_per_second:
            self.publishes = self._publish_bucket(cfg)
        if cfg.max_bytes_per_second != self.cfg.max_bytes_per_second:
            self.bandwidth = self._byte_bucket(cfg)
        self.cfg = cfg

    def budget_used(self) -> int:
        hour_ago = self.clock.monotonic() - 3600.0
        while self.sent_log and self.sent_log[0][0] < hour_ago:
            self._sent_last_hour -= self.sent_log.popleft()[1]
        return self._sent_last_hour

    def over_budget(self) -> bool:
        return bool(self.cfg.budget_bytes_per_hour) and self.budget_used() >= self.cfg.budget_bytes_per_hour

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> float:
        """Send at most one bundle. Returns how long to wait before the next step (0: go on)."""
        kinds = None
        if self.over_budget():
            if not self.cfg.budget_exempt_alerts:
                self.stats["budget_waits"] += 1
                return 1.0
            kinds = (messages.ALERT, messages.GAP)
        raw_limit = self.cfg.max_payload_bytes * (8 if self.cfg.compress else 1)
        entries = self.spool.take(max_bytes=raw_limit, max_count=1 if self.singles else 1000, kinds=kinds, alone=_ALONE)
        self.idle = not entries
        if not entries:
            if kinds is not None and self.spool.depth()[0]:
                self.stats["budget_waits"] += 1
                self.idle = False
                return 1.0
            return self.cfg.poll_seconds
        if entries[0].kind in _ALONE:  # a payload of its own: sent as stored, or thinned
            payload = self._thinned(entries[0].payload)
            if payload is None:
                self.stats["budget_waits"] += 1
                return 1.0
        else:
            payload, n = self._fit(entries)
            entries = entries[:n]
        wait = max(self.publishes.wait_time(1), self.bandwidth.wait_time(len(payload)))
        if wait > 0:
            self.stats["rate_waits"] += 1
            return wait
        if len(payload) > self.publish_limit():  # never sent over the limit, whatever packed it
            fitted = self._within_limit(entries, payload)
            if fitted is None:
                return 0.0
            payload, entries = fitted
        self.publishes.take(1)
        self.bandwidth.take(len(payload))
        topic = cloud_topic(self.prefix, entries[0].kind)
        ids = [e.id for e in entries]
        try:
            self.cloud.publish(topic, payload)
        except RejectedError as exc:
            self.failures = 0
            return self._rejected(entries, exc)
        except DroppedError as exc:
            # A broker may hang up instead of answering a publish it refuses (AWS IoT Core does
            # for a topic the policy denies). The same message dropping the line again and again
            # is refused: find it and set it aside instead of retrying it forever.
            for e in entries:
                self.drops[e.id] = self.drops.get(e.id, 0) + 1
            if min(self.drops[e.id] for e in entries) >= self.cfg.max_drops:
                for e in entries:
                    self.drops.pop(e.id, None)
                return self._rejected(entries, RejectedError(f"the broker hung up on it {self.cfg.max_drops} times: {exc}"))
            return self._backoff(ids, topic, exc)
        except TransportError as exc:
            return self._backoff(ids, topic, exc)
        self.failures = 0
        self._last_spool_error = ""
        self.singles = max(0, self.singles - len(ids))
        for i in ids:
            self.drops.pop(i, None)
        self.spool.ack(ids)
        self.sent_log.append((self.clock.monotonic(), len(payload)))
        self._sent_last_hour += len(payload)
        self.stats["bundles_sent"] += 1
        self.stats["messages_sent"] += len(entries)
        self.stats[f"sent_{entries[0].kind}"] += len(entries)
        self.stats["bytes_sent"] += len(payload)
        self.stats["raw_bytes_sent"] += sum(len(e.payload) for e in entries)
        return 0.0

    def _spool_failed(self, exc: SpoolError) -> float:
        """The spool cannot be read or written (a full disk, an I/O error): the sender does not
        stop; it says so (once per kind of failure) and tries again after a back-off. Sent
        messages it could not delete are sent again later, under the same ids."""
        self.stats["spool_errors"] += 1
        self.failures += 1
        reason = str(exc)
        if reason != self._last_spool_error:
            LOG.error("sender: %s; trying again", reason)
            self._last_spool_error = reason
        self.idle = False
        return min(self.cfg.retry_max_seconds, self.cfg.retry_min_seconds * 2 ** (self.failures - 1))

    def _backoff(self, ids: list[int], topic: str, exc: Exception) -> float:
        """A failure worth another try: exponential back-off with jitter."""
        self.spool.retry(ids)
        self.stats["retries"] += 1
        self.failures += 1
        delay = min(self.cfg.retry_max_seconds, self.cfg.retry_min_seconds * 2 ** (self.failures - 1))
        delay *= 0.5 + self.rng.random() / 2  # jitter
        LOG.info("publish to %s failed (%s); retry in %.1f s", topic, exc, delay)
        return delay

    def publish_limit(self) -> int:
        """The most bytes one publish may carry: ``max_payload_bytes``, and never more than AWS
        IoT Core takes, whatever the broker advertises."""
        return min(self.cfg.max_payload_bytes, IOT_CORE_MAX_PAYLOAD)

    def _within_limit(self, entries: list[Entry], payload: bytes) -> tuple[bytes, list[Entry]] | None:
        """A publish of ``entries`` is over the limit: fewer of them, halving until it fits.
        One message too large for any publish is set aside (kept in the spool file, with the
        reason), never sent: None."""
        limit = self.publish_limit()
        while len(payload) > limit and len(entries) > 1:
            payload, n = self._fit(entries[:len(entries) // 2])
            entries = entries[:n]
        if len(payload) <= limit:
            return payload, entries
        reason = (f"too large to publish: {len(payload)} bytes in one publish, over the limit of {limit} "
                  f"([uploader] max_payload_bytes {self.cfg.max_payload_bytes}; AWS IoT Core takes {IOT_CORE_MAX_PAYLOAD})")
        self.spool.set_aside([entries[0].id], reason)
        self.singles = max(0, self.singles - 1)
        self.stats["set_aside"] += 1
        self.stats["too_large"] += 1
        LOG.error("message %s set aside: %s", entries[0].id, reason)
        return None

    def _fit(self, entries: list[Entry]) -> tuple[bytes, int]:
        """Pack as many of ``entries`` as fit in max_payload_bytes (at least one)."""
        return fit(entries, vehicle=self.vehicle, spool_id=self.spool.instance, compress=self.cfg.compress,
                   max_bytes=self.cfg.max_payload_bytes)

    # Budget thinning: coarser windows first (statistics merged exactly), then only count and mean.
    THINNING: tuple[tuple[int, tuple[str, ...] | None], ...] = ((2, None), (5, None), (10, None), (10, ("count", "mean")),
                                                                (60, ("count", "mean")))

    def _thinned(self, payload: bytes) -> bytes | None:
        """The payload as it may go under the data budget: as it is while it fits its share of
        the budget (the hourly budget pro rata of the period it covers), else thinned down the
        ``THINNING`` ladder until it does; None if even the thinnest would overrun the hour."""
        budget = self.cfg.budget_bytes_per_hour
        if not budget:
            return payload
        used = self.budget_used()
        decoded = wire.decode(payload)
        share = budget * (decoded.end - decoded.start) / 3600.0
        if len(payload) <= share and used + len(payload) <= budget:
            return payload
        best = payload
        for factor, stats in self.THINNING:
            best = wire.encode(wire.thin(decoded, factor, stats), codec=wire.codec_of(payload))
            if len(best) <= share:
                break
        if used + len(best) > budget:
            return None
        self.stats["thinned_payloads"] += 1
        self.stats["thinned_bytes_saved"] += len(payload) - len(best)
        return best

    def _rejected(self, entries: list[Entry], exc: Exception) -> float:
        if len(entries) > 1:
            # Which message is the problem? The next ones go one per publish until we know.
            self.stats["bundles_split"] += 1
            self.singles = len(entries)
            return 0.0
        self.spool.set_aside([entries[0].id], str(exc))
        self.singles = max(0, self.singles - 1)
        self.stats["set_aside"] += 1
        LOG.error("message %s set aside: the broker rejects it for good: %s", entries[0].id, exc)
        return 0.0

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> messages.Health:
        count, size = self.spool.depth()
        oldest = self.spool.oldest()
        return messages.Health(
            vehicle=self.vehicle, t=self.clock.time(),
            spool={"messages": count, "bytes": size,
                   "oldest_age_seconds": None if oldest is None else max(0.0, self.clock.time() - oldest),
                   "by_kind": self.spool.depth_by_kind(),
                   # damaged spool files moved aside (kept, each reported by a gap message)
                   "damaged": [{"at": d.at, "kept": d.kept, "reason": d.reason} for d in self.spool.damaged[-5:]],
                   "errors": self.stats["spool_errors"]},
            sent={"bundles": self.stats["bundles_sent"], "messages": self.stats["messages_sent"],
                  "bytes": self.stats["bytes_sent"]},
            retries=self.stats["retries"],
            evicted={"messages": self.spool.stats["evicted_messages"], "gaps": self.spool.stats["gaps"]},
            set_aside=self.stats["set_aside"],
            budget={"bytes_last_hour": self.budget_used(), "limit": self.cfg.budget_bytes_per_hour or None,
                    "thinned": self.stats["thinned_payloads"]},
        )

    def maybe_health(self) -> None:
        now = self.clock.monotonic()
        if now - self.last_health < self.cfg.health_seconds:
            return
        self.last_health = now
        try:
            self.cloud.publish(cloud_topic(self.prefix, messages.HEALTH), self.health().to_bytes())
            self.stats["health_sent"] += 1
        except (TransportError, SpoolError):  # health is best effort: the next one will say the same, newer
            self.stats["health_failed"] += 1

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.maybe_health()
            self.wake.clear()  # before looking: a message spooled from now on wakes the wait below
            try:
                delay = self.step()
            except SpoolError as exc:
                delay = self._spool_failed(exc)
            if delay <= 0:
                continue
            if self.idle:
                if stop.is_set():  # a stop's wake may have come before the clear above: not slept on
                    continue
                self.clock.wait(self.wake, delay)  # nothing to send: until a message arrives (or a stop)
            else:
                self.clock.wait(stop, delay)  # back-off or rate limit: only stopping cuts it short


class Uploader:
    """The uploader's core: accepts aggregates and alerts into the spool (committed before
    ``accept`` returns), and a ``Sender`` that forwards them. Knows nothing of Lambda or
    Greengrass: it is handed a spool, a cloud transport and a clock."""

    def __init__(self, spool: Spool, cloud: CloudTransport, cfg: UploaderConfig, *, vehicle: str, prefix: str,
                 clock: Clock) -> None:
        self.spool = spool
        self.cfg = cfg
        self.vehicle = vehicle
        self.stats: Counter[str] = Counter()
        self.sender = Sender(spool, cloud, cfg, vehicle=vehicle, prefix=prefix, clock=clock)
        self._evict()  # a damaged spool file found at open is reported (a gap) at once

    def accept(self, message: Accepted) -> None:
        self.accept_many([message])

    def accept_many(self, batch: Sequence[Accepted]) -> None:
        """Spool several messages in one transaction: one commit (one fsync) for all of them,
        all committed when this returns. A redelivered message (a key already waiting, or twice
        in ``batch``) is stored once. A single ``window`` becomes an aggregates payload of its own."""
        if not batch:
            return
        batch = [messages.Aggregates.of_window(m) if isinstance(m, messages.Window) else m for m in batch]
        rows = [(m.kind, m.event_time, m.to_bytes(), m.key) for m in batch]  # encoded once: bundles embed these bytes
        try:
            self._store(rows)
        except SpoolError as exc:
            if len(batch) == 1:
                self.stats["not_stored"] += 1
                self.stats[f"not_stored_{batch[0].kind}"] += 1
                LOG.error("%s; the message is not stored", exc)
                raise
            # Each on its own: keep all that can be kept; the handler still fails for the rest.
            failed: list[SpoolError] = []
            for message in batch:
                try:
                    self.accept(message)
                except SpoolError as one:
                    failed.append(one)
            if failed:
                raise SpoolError(f"{len(failed)} of {len(batch)} messages not stored: {failed[0]}",
                                 full=failed[0].full) from exc
            return
        self.stats["spooled"] += len(batch)
        self._evict()
        self.sender.wake.set()

    def _store(self, rows: Sequence[tuple[str, float, bytes, str | None]]) -> None:
        """Commit the rows, or raise. A full disk: evict the oldest aggregates (a gap says so;
        alerts only with ``evict_alerts``) until they fit, or nothing is left to evict."""
        need = sum(len(row[2]) for row in rows)
        while True:
            try:
                self.spool.put_many(rows)
                return
            except SpoolError as exc:
                if not exc.full or self.spool.make_room(need, self.vehicle, self.cfg.evict_alerts) is None:
                    raise

    def _evict(self) -> None:
        """Keep the spool under its cap (and report a damaged file found). Its failure does not
        fail the handler: the message is stored already, and the next call tries again."""
        try:
            self.spool.evict(self.cfg.spool_max_bytes, self.vehicle, self.cfg.evict_alerts)
        except SpoolError as exc:
            self.stats["evict_failed"] += 1
            LOG.error("%s; will try again", exc)

    def run(self, stop: threading.Event) -> None:
        self.sender.run(stop)

    def pending(self) -> int:
        return self.spool.depth()[0]

    def totals(self) -> Counter[str]:
        total = Counter(self.stats)
        total.update(self.sender.stats)
        total.update(self.spool.stats)
        return total

    def close(self) -> None:
        self.sender.wake.set()
        self.spool.close()
