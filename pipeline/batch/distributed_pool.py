"""Batch runs on a Ray cluster, the driver's pool: hands slides to worker actors and retries.

Reads ``WorkItem``s and a way to make worker actors (``distributed_worker.SlideWorker`` run
by Ray); produces (item, ``WorkResult``, attempts) as slides finish. An actor lost with its
slide (process crash, node death, Ray's memory monitor) is replaced while the cluster has
room, and its slide is queued again up to a bounded number of tries; a slide whose worker
dies on every try gets a failure record. Ray is imported only inside functions.
"""

from __future__ import annotations

import logging
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.batch.distributed_worker import WorkItem, WorkResult
from pipeline.batch.folder import partial_folder
from pipeline.errors import MicrometError

# Records keep the name of the module users run, ``pipeline.batch.distributed``.
log = logging.getLogger("pipeline.batch.distributed")

# Ray exception names meaning "the worker went away", not "the slide is bad": the slide is
# retried on a fresh actor. RayActorError covers ActorDiedError and ActorUnavailableError;
# ObjectLostError covers OwnerDiedError; OutOfMemoryError is Ray's memory monitor killing it.
LOST_WORKER_ERRORS = (
    "RayActorError",
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OutOfMemoryError",
)


def is_lost_worker(exc: BaseException) -> bool:
    """True when ``exc`` says the worker (process or node) went away, not the slide failed."""
    import ray.exceptions

    lost = tuple(getattr(ray.exceptions, name) for name in LOST_WORKER_ERRORS)
    return isinstance(exc, lost)


class ActorPool:
    """Worker actors with one slide in flight each; an actor that dies is replaced while the
    cluster still has room for it.
    """

    def __init__(self, ray: Any, make_actor: Callable[[], Any], size: int, capacity: Callable[[], int]):
        self._ray = ray
        self._make_actor = make_actor
        self._capacity = capacity
        self._idle: list[Any] = [make_actor() for _ in range(size)]
        self._running: dict[Any, tuple[Any, WorkItem]] = {}

    @property
    def has_idle(self) -> bool:
        """True when an actor can take a slide now."""
        return bool(self._idle)

    @property
    def busy(self) -> bool:
        """True while some slide is in flight."""
        return bool(self._running)

    def submit(self, item: WorkItem) -> None:
        """Hand ``item`` to an idle actor."""
        actor = self._idle.pop()
        reference = actor.analyze.remote(str(item.path), item.slide_id)
        self._running[reference] = (actor, item)

    def next_finished(self) -> tuple[WorkItem, WorkResult | BaseException]:
        """Wait for any slide in flight; returns it with its result or the lost-worker error."""
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        actor, item = self._running.pop(ready[0])
        try:
            result: WorkResult = self._ray.get(ready[0])
        except Exception as exc:  # sorted below: lost worker (retry) or a bug (raise)
            if not is_lost_worker(exc):
                raise
            self._replace(actor)
            return item, exc
        self._idle.append(actor)
        return item, result

    def release_idle(self) -> None:
        """Stop idle actors: with no slide left to hand out, their resources can go to
        replacement actors still waiting for room.
        """
        for actor in self._idle:
            self._kill(actor)
        self._idle.clear()

    def _replace(self, dead: Any) -> None:
        self._kill(dead)
        alive = len(self._idle) + len(self._running)
        if alive < self._capacity():
            self._idle.append(self._make_actor())
        elif alive == 0:
            raise MicrometError(
                "the Ray cluster has no room left for a worker (nodes lost?); "
                "add nodes and re-run the same command to resume"
            )
        else:
            log.warning("cluster shrank: continuing with %d workers", alive)

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception as exc:  # the actor may already be gone
            log.debug("could not kill actor: %s", exc)

    def shutdown(self) -> None:
        """Stop every actor (slides in flight are abandoned; their staging folders stay)."""
        for actor, _ in list(self._running.values()):
            self._kill(actor)
        for actor in self._idle:
            self._kill(actor)
        self._idle.clear()
        self._running.clear()


def lost_worker_result(item: WorkItem, attempts: int, exc: BaseException, out_dir: Path) -> WorkResult:
    """A failure record for a slide whose worker died on every attempt; removes its staging."""
    shutil.rmtree(partial_folder(out_dir, item.slide_id), ignore_errors=True)
    summary = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = (
        f"{item.path}: the worker died {attempts} times while analysing this slide "
        f"({type(exc).__name__}: {summary[:300]}); the slide may crash the reader or need more "
        "memory than a worker has"
    )
    return WorkResult(item.slide_id, None, message, 0.0, "")


def dispatch(
    pool: ActorPool, items: Sequence[WorkItem], max_attempts: int, out_dir: Path
) -> Iterator[tuple[WorkItem, WorkResult, int]]:
    """Run ``items`` on ``pool``; yields (item, result, attempts) as slides finish.

    A lost worker puts its slide back in the queue until it has had ``max_attempts`` tries.
    """
    queue = deque(items)
    attempts: dict[str, int] = {}
    while queue or pool.busy:
        while queue and pool.has_idle:
            item = queue.popleft()
            attempts[item.slide_id] = attempts.get(item.slide_id, 0) + 1
            pool.submit(item)
        if not queue:
            pool.release_idle()
        if not pool.busy:
            raise MicrometError("no Ray worker is left to run the remaining slides; re-run to resume")
        item, result = pool.next_finished()
        tries = attempts[item.slide_id]
        if isinstance(result, BaseException):
            if tries < max_attempts:
                log.warning("%s: worker lost (%s); retrying", item.slide_id, type(result).__name__)
                queue.append(item)
                continue
            result = lost_worker_result(item, tries, result, out_dir)
        if result.fatal:
            raise MicrometError(f"{result.error}; fix the node and re-run the same command to resume")
        yield item, result, tries
