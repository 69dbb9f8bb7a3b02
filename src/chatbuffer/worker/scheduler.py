"""The worker loop: claim what is due, process it concurrently, sleep exactly until the next due.

Latency comes from the wake-ups, not from polling: the loop sleeps until the earliest due time or
lease expiry it knows of, and a new buffer due sooner (NOTIFY or in-process poke) cuts the sleep
short. ``BUFFER_PROCESSING_INTERVAL_MS`` only bounds the sleep as a safety sweep.

One heartbeat loop renews every lease the worker holds in one statement (on the store's own
heartbeat connection) and learns which it lost; a buffer whose lease is lost (another worker took
it over, or a human took the conversation over) is abandoned at once, its model call cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from chatbuffer.domain.ports import ClaimedJob, Clock, JobQueue
from chatbuffer.worker.pipeline import Pipeline
from chatbuffer.worker.waits import wait_all, wait_any
from chatbuffer.worker.waker import Waker

logger = logging.getLogger(__name__)

ERROR_BACKOFF_S = 1.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    concurrency: int
    lease: timedelta
    sweep_interval: timedelta
    shutdown_grace: timedelta = timedelta(seconds=20)
    #: Look for due work again as each buffer ends: its end may have released a newer buffer
    #: of its conversation, or scheduled a retry. Off where the store's wake-ups already say so
    #: (PostgreSQL: a completion, retry or failure NOTIFYs the due time it releases), which
    #: saves a claim and a next-wake query per buffer; a full worker looks again as a slot frees
    #: up either way.
    wake_on_finish: bool = True

    @property
    def heartbeat_every(self) -> timedelta:
        # Three heartbeats per lease: one lost or slow round trip does not cost the lease.
        return self.lease / 3


class Scheduler:
    def __init__(
        self,
        *,
        queue: JobQueue,
        pipeline: Pipeline,
        clock: Clock,
        waker: Waker,
        config: SchedulerConfig,
        owner: str | None = None,
    ) -> None:
        self._queue = queue
        self._pipeline = pipeline
        self._clock = clock
        self._waker = waker
        self._config = config
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self._in_flight: set[asyncio.Task[None]] = set()
        self._held: dict[uuid.UUID, tuple[ClaimedJob, asyncio.Task[None]]] = {}
        self._lost: set[uuid.UUID] = set()

    async def run(self, stop: asyncio.Event) -> None:
        logger.info("worker %s started (concurrency %d)", self.owner, self._config.concurrency)
        heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeat")
        try:
            while not stop.is_set():
                try:
                    await self._tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("worker loop error (%s); retrying", type(exc).__name__)
                    await self._clock.sleep(ERROR_BACKOFF_S)
        finally:
            try:
                await self._drain()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _tick(self) -> None:
        free = self._config.concurrency - len(self._in_flight)
        sweep = self._config.sweep_interval.total_seconds()
        if free <= 0:
            await wait_any(self._clock, self._in_flight, sweep)
            return
        claimed = await self._queue.claim_due(
            self._clock.now(), self.owner, self._config.lease, free
        )
        for job in claimed:
            task = asyncio.create_task(self._run_job(job), name=f"buffer-{job.buffer_id}")
            self._in_flight.add(task)
            self._held[job.job_id] = (job, task)
            task.add_done_callback(self._finished)
        if len(claimed) == free:
            return  # more may be due right now
        wake_at = await self._queue.next_wake_at(self._clock.now())
        await self._waker.sleep_until(wake_at, sweep)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._config.wake_on_finish:
            # A finished buffer may release a newer one of its conversation that was waiting
            # for it, or have scheduled its retry.
            self._waker.poke()

    async def _run_job(self, job: ClaimedJob) -> None:
        try:
            await self._pipeline.process(job, self.owner)
        except asyncio.CancelledError:
            if job.job_id in self._lost:
                # The heartbeat cancelled it: someone else holds the buffer now, and what this
                # worker would still do (the model call above all) is wasted.
                logger.warning("lost the lease on buffer %s; abandoned it", job.buffer_id)
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                return
            # Shutting down past the grace period: hand the buffer back now, so another worker
            # takes it at once instead of after the lease runs out.
            await self._pipeline.hand_back(job, self.owner, "the worker shut down before finishing")
            raise
        except Exception:
            logger.exception("buffer %s could not be processed", job.buffer_id)
        finally:
            self._held.pop(job.job_id, None)
            self._lost.discard(job.job_id)

    async def _heartbeats(self) -> None:
        """Renew every held lease each third of the lease; abandon the buffers it lost."""
        every = self._config.heartbeat_every.total_seconds()
        while True:
            await self._clock.sleep(every)
            await self._beat()

    async def _beat(self) -> None:
        held = dict(self._held)
        if not held:
            return
        jobs = [job for job, _ in held.values()]
        try:
            kept = await self._queue.heartbeat(
                self.owner, jobs, self._config.lease, self._clock.now()
            )
        except Exception as exc:
            logger.warning("lease heartbeat failed (%s)", type(exc).__name__)
            return
        for job_id, (_, task) in held.items():
            # A job that finished meanwhile is no longer ours to cancel.
            if job_id not in kept and job_id in self._held:
                self._lost.add(job_id)
                task.cancel()

    async def _drain(self) -> None:
        """Let in-flight buffers finish within the grace period; hand back the rest."""
        if not self._in_flight:
            return
        grace = self._config.shutdown_grace.total_seconds()
        logger.info("worker %s draining %d buffers", self.owner, len(self._in_flight))
        unfinished = await wait_all(self._clock, self._in_flight, grace)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            logger.info("worker %s handed back %d buffers", self.owner, len(unfinished))
