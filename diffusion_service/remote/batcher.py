"""Micro-batching: merge concurrent requests into one model call, split results.

Requests of a few samples each waste a model call padded to a fixed
micro-batch (FeatureRecipe.micro_batch rows); merging the ones that arrive
together is the service's main throughput lever. :class:`MicroBatcher` holds a
BOUNDED queue (a full queue rejects at once: back-pressure, never unbounded
memory) and one worker thread that repeatedly

1. takes the oldest request,
2. waits up to ``max_wait`` seconds (a few ms) for ``max_batch`` samples of
   requests with its batch key to be queued (same recipe, input shape, prompt
   count and projection: only those can share one tensor),
3. runs them with one call of ``run`` and resolves each caller's future with
   its own slice.

Requests with other keys stay queued, in order, for the next rounds. A request
larger than ``max_batch`` runs alone. It knows nothing of gRPC or models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The request queue is full: the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Item:
    key: Hashable
    size: int
    payload: Any
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters since start (read by Info and the load benchmark)."""

    batches: int = 0
    requests: int = 0
    samples: int = 0
    rejected_full: int = 0
    largest_batch: int = 0

    def to_dict(self) -> dict[str, float]:
        """Plain JSON-able form, with the mean batch size in samples and requests."""
        b = max(self.batches, 1)
        return {
            "batches": self.batches,
            "requests": self.requests,
            "samples": self.samples,
            "rejected_full": self.rejected_full,
            "largest_batch": self.largest_batch,
            "mean_batch_samples": self.samples / b,
            "mean_batch_requests": self.requests / b,
        }


class MicroBatcher:
    """A bounded request queue drained by one worker that merges requests.

    Parameters
    ----------
    run : callable
        ``run(payloads) -> results``: one result per payload, same order. An
        exception fails every request of that batch with it.
    max_batch : int
        Samples merged into one call (1 = no merging).
    max_queue : int
        Requests waiting at most; :meth:`submit` beyond it raises
        :class:`QueueFullError`.
    max_wait : float
        Seconds the worker, once free, waits for more requests to join the
        oldest one (the added latency is at most this).
    """

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int = 64,
        max_queue: int = 256,
        max_wait: float = 0.005,
    ) -> None:  # noqa: D107
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(
                "max_batch and max_queue must be >= 1 and max_wait >= 0, got "
                f"{max_batch}, {max_queue}, {max_wait}"
            )
        self._run = run
        self.max_batch, self.max_queue, self.max_wait = max_batch, max_queue, max_wait
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._worker = threading.Thread(
            target=self._loop, name="guidance-batcher", daemon=True
        )
        self._worker.start()

    # ---------------------------------------------------------------- callers
    def submit(self, key: Hashable, size: int, payload: Any) -> Future:
        """Queue a request; its future resolves to its result (or exception)."""
        item = _Item(key, size, payload)
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the service is shutting down")
            if len(self._items) >= self.max_queue:
                self.stats.rejected_full += 1
                raise QueueFullError(
                    f"request queue full ({self.max_queue} requests waiting); retry "
                    "later or lower the request rate"
                )
            self._items.append(item)
            self._cond.notify_all()
        return item.future

    def qsize(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        with self._cond:
            return len(self._items)

    def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, finish the queued ones, stop the worker.

        Returns False if the worker was still busy after ``timeout`` seconds.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # ----------------------------------------------------------------- worker
    def _fill(self, first: _Item) -> int:
        """Samples of queued requests that could join ``first`` (lock held)."""
        total = 0
        for it in self._items:
            if it.key == first.key and (
                total == 0 or total + it.size <= self.max_batch
            ):
                total += it.size
        return total

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None  # closed and drained
            first = self._items[0]
            # Wait from when the worker is free, not from when `first` arrived:
            # callers answered by the previous batch need a moment to send their
            # next request, and a batch without them would run half empty.
            deadline = time.monotonic() + self.max_wait
            while not self._closed and self._fill(first) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, total, keep = [], 0, deque()
            for it in self._items:
                if it.key == first.key and (
                    not batch or total + it.size <= self.max_batch
                ):
                    batch.append(it)
                    total += it.size
                else:
                    keep.append(it)
            self._items = keep
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._run([it.payload for it in live])
                if len(results) != len(live):
                    raise RuntimeError(
                        f"run returned {len(results)} results for {len(live)} requests"
                    )
            except BaseException as exc:  # handed to every caller, never lost
                log.exception("batch of %d requests failed", len(live))
                for it in live:
                    it.future.set_exception(exc)
                continue
            size = sum(it.size for it in live)
            s = self.stats
            s.batches, s.requests, s.samples = (
                s.batches + 1,
                s.requests + len(live),
                s.samples + size,
            )
            s.largest_batch = max(s.largest_batch, size)
            for it, res in zip(live, results, strict=True):
                it.future.set_result(res)
