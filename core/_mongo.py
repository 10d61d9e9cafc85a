"""MongoDB sink: runs, task attempts and agent telemetry as documents (needs the ``mongo`` extra).

The coordinator tells the sink what happens (it is a :class:`CoordinatorListener`);
the sink only records it in a bounded in-memory buffer and returns. A background
task writes the buffer in batches (``bulk_write`` of upserts keyed by ``_id``) every
``batch_size`` documents or ``flush_interval`` seconds, whichever comes first.

Invariants:
    * The coordinator never waits for MongoDB: every hook is a dict update.
    * One buffered entry per document: a later change of the same run or task attempt
      is merged into the entry still waiting (later fields win), so an outage grows the
      buffer by documents, not by changes.
    * Writes are ``$set`` upserts keyed by a deterministic ``_id``: a batch that is
      retried after an error (even one the server partly applied) never duplicates.
    * A failed batch goes back to the front of the buffer, so documents are delivered
      in the order they were first buffered, and changes to one document in the order
      they happened.
    * The buffer holds at most ``max_buffer`` documents (plus one batch being retried);
      when full, the oldest telemetry sample is dropped first, and only when no
      telemetry is left a new run or task document. Drops are counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from dagon.core._events import RunTransition, TaskTransition
from dagon.core._listeners import CoordinatorListener
from dagon.core._states import RUN_TERMINAL, TERMINAL
from dagon.protocol import ConfigError, Telemetry

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

    from dagon.core._listeners import RunSnapshot, TaskSnapshot

__all__ = ["MongoSink", "MongoSinkStats", "redact_mongo_url"]

log = logging.getLogger(__name__)

RUNS: Final = "runs"
TASKS: Final = "tasks"
TELEMETRY: Final = "telemetry"
_COLLECTIONS: Final = (RUNS, TASKS, TELEMETRY)
_INSTALL: Final = "the MongoDB sink needs pymongo: pip install 'dagon-engine[mongo]'"


def redact_mongo_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``, for logs and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable MongoDB URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def _load_pymongo() -> Any:
    try:
        import pymongo
    except ImportError as exc:
        raise ConfigError(_INSTALL) from exc
    if not hasattr(pymongo, "AsyncMongoClient"):
        raise ConfigError(
            f"pymongo {pymongo.version} has no AsyncMongoClient; pip install 'dagon-engine[mongo]' (≥ 4.10)"
        )
    return pymongo


@dataclass(frozen=True, slots=True)
class MongoSinkStats:
    """What the sink has done so far (for metrics and logs).

    Attributes:
        buffered: documents waiting to be written.
        written: documents written (a document changed twice while buffered counts once).
        dropped: documents lost because the buffer was full or the server refused them.
        failures: write or index attempts that failed (each is retried).
        up: the last attempt to reach MongoDB succeeded.
        last_error: the last failure, credentials redacted ("" when none).
    """

    buffered: int
    written: int
    dropped: int
    failures: int
    up: bool
    last_error: str


class MongoSink(CoordinatorListener):
    """Writes ``runs``, ``tasks`` and ``telemetry`` documents to MongoDB without ever blocking.

    Use as an async context manager around the coordinator's lifetime and register it
    with ``coordinator.add_listener(sink)``.

    Args:
        url: a MongoDB connection string (``mongodb://user:pass@host:27017/?authSource=admin``).
        database: database name.
        batch_size: write as soon as this many documents are buffered.
        flush_interval: seconds a buffered document waits at most for its batch to fill.
        max_buffer: documents kept while MongoDB is unreachable (see the module docstring).
        min_backoff, max_backoff: retry delay after a failure, doubling up to the cap (jittered).
        server_timeout: seconds the driver looks for a server before an attempt fails.
        log_every: seconds between repeated "still unreachable" warnings.
        close_timeout: seconds spent writing what is left when the sink closes.

    Raises:
        ConfigError: pymongo is not installed, or an argument is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        database: str = "dagon",
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_buffer: int = 100_000,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        server_timeout: float = 5.0,
        log_every: float = 60.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._pymongo = _load_pymongo()
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(
                f"--mongo-url {redact_mongo_url(url)!r} is not a MongoDB URL: use mongodb://HOST:PORT or mongodb+srv://…"
            )
        if not database or any(c in database for c in '/\\. "$\x00'):
            raise ConfigError(f"--mongo-db {database!r} is not a valid MongoDB database name")
        if batch_size < 1 or max_buffer < batch_size:
            raise ConfigError(f"need 1 ≤ batch_size ≤ max_buffer, got batch_size={batch_size}, max_buffer={max_buffer}")
        if flush_interval <= 0 or server_timeout <= 0 or not 0 < min_backoff <= max_backoff:
            raise ConfigError("flush_interval, server_timeout and 0 < min_backoff ≤ max_backoff must be positive")
        self.url = url
        self.where = redact_mongo_url(url)
        self.database = database
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.server_timeout = server_timeout
        self.log_every = log_every
        self.close_timeout = close_timeout
        self._buffer: dict[str, OrderedDict[str, dict[str, Any]]] = {name: OrderedDict() for name in _COLLECTIONS}
        self._size = 0
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error = ""
        self.up = False
        self.indexed = False
        self._down_since: float | None = None
        self._last_warning = 0.0
        self._drop_warning = 0.0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set while the buffer is empty
        self._drained.set()
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            self._client = self._pymongo.AsyncMongoClient(
                self.url,
                serverSelectionTimeoutMS=int(self.server_timeout * 1000),
                connectTimeoutMS=int(self.server_timeout * 1000),
                appname="dagon-coordinator",
            )
        except (self._pymongo.errors.PyMongoError, ValueError, TypeError) as exc:  # bad URI or options; nothing sent
            raise ConfigError(f"--mongo-url {self.where}: {self._describe(exc)}") from None
        self._loop_task = asyncio.get_running_loop().create_task(self._write_loop(), name="mongo-sink")
        log.info("MongoDB sink writing to %s, database %s", self.where, self.database)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        try:
            if self._size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.close_timeout):
                        await self._write_all()
                        self.up = True
        except Exception as exc:
            self._record_failure(exc)
        finally:
            if self._size:
                log.warning(
                    "MongoDB sink closing with %d document(s) not written to %s (%s)",
                    self._size,
                    self.where,
                    self.last_error or "no time left",
                )
            if self._client is not None:
                await self._client.close()

    def stats(self) -> MongoSinkStats:
        return MongoSinkStats(self._size, self.written, self.dropped, self.failures, self.up, self.last_error)

    async def flushed(self) -> None:
        """Wait until everything buffered so far is written (bound it with ``asyncio.timeout``)."""
        self._wake.set()
        await self._drained.wait()

    # -- listener hooks (synchronous, cheap) -----------------------------------

    def run_changed(self, transition: RunTransition, run: RunSnapshot) -> None:
        view = run
        doc: dict[str, Any] = {
            "run_id": view.id,
            "workflow": view.workflow,
            "state": view.state.value,
            "cause": view.cause or transition.cause,
            "submitted_at": view.submitted_at,
            "tasks": view.tasks,
            "counts": dict(view.counts),
            "updated_at": transition.at,
        }
        if transition.new in RUN_TERMINAL:
            doc["finished_at"] = view.finished_at if view.finished_at is not None else transition.at
            doc["energy_joules"] = view.energy_joules
        else:
            doc["started_at"] = transition.at
            doc["finished_at"] = None  # a resumed run is running again
        self._put(RUNS, view.id, doc)

    def task_changed(self, transition: TaskTransition, task: TaskSnapshot) -> None:
        t = transition
        view = task
        doc: dict[str, Any] = {
            "run_id": t.run,
            "workflow": view.workflow,
            "task": t.task,
            "attempt": t.attempt,
            "state": t.new.value,
            "cause": t.cause[:2000],
            "runtime": view.runtime,
            f"{t.new.value}_at": t.at,
            "updated_at": t.at,
        }
        if t.agent is not None:
            doc["agent"] = t.agent
        result = view.result
        if t.new in TERMINAL and result is not None and result.attempt == t.attempt:
            doc.update(
                status=result.status.value,
                exit_code=result.exit_code,
                started_at=result.started_at,
                finished_at=result.finished_at,
                duration=result.duration,
                cpu_time=result.cpu_time,
                max_rss=result.max_rss,
                energy_joules=result.energy_joules,
                power_watts=result.power_watts,
                energy_measured=result.energy_measured,
                energy_source=result.energy_source,
                error=result.error[:2000],
                outputs=len(result.outputs),
            )
        self._put(TASKS, f"{t.run}:{t.task}:{t.attempt}", doc)

    def agent_telemetry(self, sample: Telemetry) -> None:
        s = sample
        doc: dict[str, Any] = {
            "agent": s.agent,
            "ts": s.sampled_at,
            "cpu_percent": s.cpu_percent,
            "per_core_percent": list(s.per_core_percent),
            "load_avg": list(s.load_avg),
            "memory_used": s.memory_used,
            "memory_total": s.memory_total,
            "running": s.running,
            "disk_read_bps": s.disk_read_bps,
            "disk_write_bps": s.disk_write_bps,
            "net_recv_bps": s.net_recv_bps,
            "net_sent_bps": s.net_sent_bps,
            # a list, not a map: sensor names contain dots, which MongoDB treats as paths
            "temperatures": [{"sensor": k, "celsius": v} for k, v in s.temperatures.items()],
            "power": None
            if s.power_watts is None
            else {"watts": s.power_watts, "source": s.power_source, "measured": s.power_measured},
            "energy_joules_total": s.energy_joules_total,
        }
        self._put(TELEMETRY, f"{s.agent}@{s.sampled_at:.6f}", doc)

    # -- buffer ----------------------------------------------------------------

    def _put(self, collection: str, key: str, fields: dict[str, Any]) -> None:
        bucket = self._buffer[collection]
        waiting = bucket.get(key)
        if waiting is not None:
            waiting.update(fields)
            return
        if self._size >= self.max_buffer and not self._evict(collection):
            return
        bucket[key] = fields
        self._size += 1
        self._drained.clear()
        if self._size == 1 or self._size >= self.batch_size:
            self._wake.set()

    def _evict(self, collection: str) -> bool:
        """Make room for one document of ``collection``; ``False`` when it must be dropped instead."""
        telemetry = self._buffer[TELEMETRY]
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_warning >= self.log_every:
            self._drop_warning = now
            log.warning(
                "MongoDB sink buffer full (%d documents, %s unreachable): dropping %s; %d dropped so far",
                self.max_buffer,
                self.where,
                "the oldest telemetry" if telemetry else f"new {collection} documents",
                self.dropped,
            )
        if not telemetry:
            return False
        telemetry.popitem(last=False)
        self._size -= 1
        return True

    def _requeue(self, collection: str, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Put a batch that was not written back in front; newer changes buffered meanwhile win."""
        bucket = self._buffer[collection]
        for key, fields in reversed(batch):
            newer = bucket.get(key)
            if newer is None:
                bucket[key] = fields
                self._size += 1
            else:
                fields.update(newer)
                bucket[key] = fields
            bucket.move_to_end(key, last=False)

    # -- background writer -----------------------------------------------------

    async def _write_loop(self) -> None:
        backoff = self.min_backoff
        while True:
            await self._wait_for_work()
            try:
                if not self.indexed:
                    await self._create_indexes()
                await self._write_all()
            except Exception as exc:  # any failure: keep the documents, retry later
                self._record_failure(exc)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # jitter, not crypto
                backoff = min(self.max_backoff, backoff * 2)
                continue
            backoff = self.min_backoff
            self._record_success()

    async def _wait_for_work(self) -> None:
        """Return when indexes are missing, a batch is full, or the oldest document waited ``flush_interval``."""
        if not self.indexed:
            return
        while not self._size:
            self._wake.clear()
            await self._wake.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_interval
        while self._size < self.batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    def _db(self) -> Any:
        assert self._client is not None
        return self._client[self.database]

    async def _create_indexes(self) -> None:
        asc = self._pymongo.ASCENDING
        db = self._db()
        await db[RUNS].create_index([("run_id", asc)], unique=True, name="run_id")
        await db[RUNS].create_index([("state", asc), ("submitted_at", asc)], name="state_submitted")
        await db[TASKS].create_index([("run_id", asc), ("task", asc), ("attempt", asc)], name="run_task_attempt")
        await db[TASKS].create_index([("agent", asc), ("finished_at", asc)], name="agent_finished")
        await db[TELEMETRY].create_index([("agent", asc), ("ts", asc)], name="agent_ts")
        self.indexed = True

    async def _write_all(self) -> None:
        db = self._db()
        for name in _COLLECTIONS:
            bucket = self._buffer[name]
            while bucket:
                batch = [bucket.popitem(last=False) for _ in range(min(self.batch_size, len(bucket)))]
                self._size -= len(batch)
                await self._write(db[name], name, batch)
        if not self._size:
            self._drained.set()

    async def _write(self, collection: Any, name: str, batch: list[tuple[str, dict[str, Any]]]) -> None:
        update_one = self._pymongo.UpdateOne
        ops = [update_one({"_id": key}, {"$set": fields}, upsert=True) for key, fields in batch]
        try:
            await collection.bulk_write(ops, ordered=True)
        except self._pymongo.errors.BulkWriteError as exc:
            # The server refused one document (ordered: those before it are written, none after).
            errors = exc.details.get("writeErrors") or [{}]
            bad = int(errors[0].get("index", 0))
            self.written += bad
            self.dropped += 1
            log.error(
                "MongoDB refused %s document %r: %s; dropped it", name, batch[bad][0], errors[0].get("errmsg", exc)
            )
            self._requeue(name, batch[bad + 1 :])  # written by the caller's next round
            return
        except BaseException:  # unreachable, timeout, cancelled: nothing is lost
            self._requeue(name, batch)
            raise
        self.written += len(batch)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).split(", Timeout:", 1)[0]  # the driver appends a long topology description
        text = text.replace(self.url, self.where)
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.password:
            text = text.replace(parsed.password, "***")
        return f"{type(exc).__name__}: {text[:300]}"

    def _record_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.up = False
        self.last_error = self._describe(exc)
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._last_warning = now
            log.warning(
                "MongoDB at %s unreachable (%s): %d document(s) buffered, %d dropped; retrying with backoff up to %gs",
                self.where, self.last_error, self._size, self.dropped, self.max_backoff,
            )  # fmt: skip
        elif now - self._last_warning >= self.log_every:
            self._last_warning = now
            log.warning(
                "MongoDB at %s still unreachable after %.0fs (%s): %d document(s) buffered, %d dropped",
                self.where, now - self._down_since, self.last_error, self._size, self.dropped,
            )  # fmt: skip

    def _record_success(self) -> None:
        self.up = True
        if self._down_since is not None:
            log.warning(
                "MongoDB at %s reachable again after %.0fs; %d document(s) written so far, %d dropped",
                self.where, time.monotonic() - self._down_since, self.written, self.dropped,
            )  # fmt: skip
            self._down_since = None
