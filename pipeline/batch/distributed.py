"""Batch runs on a Ray cluster: reads a list of slides, produces the same per-slide folders,
``manifest.json`` and ``summary.csv`` as ``pipeline.batch.local``, one slide per worker at a time.

Each worker slot is a Ray actor (``distributed_worker.SlideWorker``) that loads the model
once, in its constructor, from the run's plain picklable ``AnalysisSettings``
(``pipeline.batch.settings``, the same object a local run builds its context from); the model
is never pickled from the driver. A worker builds a slide's files in ``OUT/.<slide_id>.partial``
and renames the folder into place (``pipeline.batch.local.run_slide_safely``); only the driver
writes the manifest. A slide whose worker is lost (process crash, node death) is retried a bounded
number of times on a fresh actor (``distributed_pool``); a slide that fails by itself (a
``MicrometError``, returned as data) is recorded and not retried. Ray is imported only inside
functions: without ``--ray`` nothing of it loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.batch.distributed_pool import ActorPool, dispatch
from pipeline.batch.distributed_worker import SlideWorker, WorkItem, WorkResult
from pipeline.batch.folder import Manifest, read_or_start_manifest, unique_slide_ids
from pipeline.batch.local import (
    SlideOutcome,
    is_done,
    lock_batch_folder,
    record_outcome,
    settings_key,
    skipped_outcome,
    start_run,
)
from pipeline.batch.settings import AnalysisSettings
from pipeline.errors import ConfigError
from pipeline.outputs import check_writable_folder

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install micromet[ray]"


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    address: "auto" (the cluster this machine belongs to) or HEAD_HOST:PORT / ray://...
    gpus_per_slide: GPUs each worker slot asks for; None: 1 if the cluster has GPUs, else 0.
        Fractions share a GPU (0.5 puts two workers on one GPU).
    cpus_per_slide: CPUs each worker slot asks for; None: 1. Count the reader processes
        (``--workers``) too.
    max_attempts: tries per slide when its worker is lost (1 = no retry).
    """

    address: str = "auto"
    gpus_per_slide: float | None = None
    cpus_per_slide: float | None = None
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("address='' is not allowed; use auto or HOST:PORT")
        if self.gpus_per_slide is not None and not (0.0 <= self.gpus_per_slide <= 64.0):
            raise ValueError(f"gpus_per_slide={self.gpus_per_slide!r} is out of range; allowed 0 to 64")
        if self.cpus_per_slide is not None and not (0.0 < self.cpus_per_slide <= 1024.0):
            raise ValueError(
                f"cpus_per_slide={self.cpus_per_slide!r} is out of range; allowed above 0 up to 1024"
            )
        if not (1 <= self.max_attempts <= 100):
            raise ValueError(f"max_attempts={self.max_attempts!r} is out of range; allowed 1 to 100")


def import_ray() -> ModuleType:
    """The ``ray`` module; raises ConfigError telling how to install it when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs the Ray library, which is not installed ({exc}); "
            f"run `{RAY_INSTALL_HINT}` on every node, or leave out --ray to run on this machine"
        ) from exc
    return ray


def connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` unless already connected; True if this call connected.

    Raises ConfigError when no cluster answers.
    """
    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
            "`ray start --head --port=6379` and pass --ray auto or --ray HEAD_HOST:6379"
        ) from exc
    return True


# How long a named head node may take to accept a connection; Ray itself retries for ever.
RAY_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Raise ConfigError unless HOST:PORT (or ray://HOST:PORT) accepts a TCP connection within
    ``timeout_s`` seconds; "auto" and addresses without a port are left to Ray."""
    import socket

    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        reason = "no answer" if isinstance(exc, TimeoutError) else reason
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} within {timeout_s:g} s ({reason}); start one "
            "with `ray start --head --port=6379` and pass --ray auto or --ray HEAD_HOST:6379"
        ) from exc


def slot_resources(ray: Any, options: RayOptions, cpu_only: bool = False) -> tuple[float, float]:
    """(cpus, gpus) each worker slot asks for, defaults resolved against the cluster.

    cpu_only: the run was told ``--device cpu``, so no GPU is reserved unless asked for.
    """
    cluster = ray.cluster_resources()
    cpus = options.cpus_per_slide if options.cpus_per_slide is not None else 1.0
    gpus = options.gpus_per_slide
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0.0) > 0 and not cpu_only else 0.0
    if gpus > 0 and cluster.get("GPU", 0.0) <= 0:
        raise ConfigError(
            f"--gpus-per-slide {gpus:g}: the Ray cluster has no GPUs; start GPU nodes with "
            "`ray start --address=HEAD:6379` on them, or use --gpus-per-slide 0"
        )
    return cpus, gpus


def cluster_capacity(ray: Any, cpus: float, gpus: float) -> int:
    """How many worker slots of (cpus, gpus) the live nodes hold, counted node by node (a slot
    never spans two nodes).
    """
    slots = 0
    for node in ray.nodes():
        if not node.get("Alive", False):
            continue
        resources = node.get("Resources", {})
        fits = math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            fits = min(fits, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
        slots += fits
    return int(slots)


def record_result(
    manifest: Manifest, out_dir: Path, item: WorkItem, result: WorkResult, key: str, attempts: int
) -> SlideOutcome:
    """Write one slide's manifest entry (``pipeline.batch.local.record_outcome``) and return its outcome."""
    if result.report is None:
        log.warning("%s failed: %s", item.slide_id, result.error)
    return record_outcome(
        manifest, out_dir, item.path, item.slide_id, key, result.report, result.error, result.seconds,
        extra={"attempts": attempts, "node": result.node},
    )


def plan_work(
    slides: Sequence[Path], out_dir: Path, manifest: Manifest, key: str, overwrite: bool
) -> tuple[dict[str, SlideOutcome], list[WorkItem], list[str]]:
    """Split slides into finished ones (skipped outcomes) and work items; also every id in order."""
    skipped: dict[str, SlideOutcome] = {}
    items: list[WorkItem] = []
    order: list[str] = []
    for path, slide_id in unique_slide_ids(slides).items():
        order.append(slide_id)
        if not overwrite and is_done(manifest, out_dir, slide_id, path, key):
            skipped[slide_id] = skipped_outcome(manifest, slide_id, path)
        else:
            items.append(WorkItem(path, slide_id))
    return skipped, items, order


def run_batch_on_ray(
    slides: Sequence[Path],
    out_dir: Path,
    settings: AnalysisSettings,
    options: RayOptions,
    overwrite: bool = False,
    on_slide_done: Callable[[SlideOutcome], None] | None = None,
    worker_class: type[SlideWorker] = SlideWorker,
) -> list[SlideOutcome]:
    """Analyse ``slides`` into ``out_dir`` on a Ray cluster; returns outcomes in slide order.

    Same outputs, manifest, resume and failure semantics as ``run_local_batch``. Every node
    must see the slides, the model and ``out_dir`` at the same paths. ``on_slide_done`` is
    called in the driver as each slide finishes (skipped ones first). ``worker_class`` is the
    actor class (a ``SlideWorker`` subclass, e.g. to inject faults in tests). Raises
    ConfigError when Ray is missing or no cluster answers, OutputError when ``out_dir`` is not
    writable, CheckpointError/ConfigError for a bad model or config (before any work starts).
    """
    from pipeline.review.report import write_summary_csv

    ray = import_ray()
    if not ray.is_initialized():
        check_reachable(options.address)  # before the batch folder is made or touched
    out_dir = out_dir.expanduser().resolve()
    check_writable_folder(out_dir)
    with lock_batch_folder(out_dir):
        settings = settings.absolute()
        # Resolve the settings on the driver (CPU, never pickled): validates model and config
        # before the cluster is touched, and gives the resume key.
        resolved = settings.build(device="cpu").settings()
        key = settings_key(resolved)
        manifest = read_or_start_manifest(out_dir)
        start_run(manifest, resolved, key)
        skipped, items, order = plan_work(slides, out_dir, manifest, key, overwrite)
        outcomes = dict(skipped)
        for outcome in skipped.values():
            if on_slide_done is not None:
                on_slide_done(outcome)
        finished = _run_on_cluster(ray, items, out_dir, settings, options, key, manifest, worker_class)
        try:
            with contextlib.closing(finished):  # stops the actors at once if anything below raises
                for outcome in finished:
                    outcomes[outcome.slide_id] = outcome
                    if on_slide_done is not None:
                        on_slide_done(outcome)
        finally:
            write_summary_csv(out_dir, manifest)  # once, also for an interrupted run
        return [outcomes[slide_id] for slide_id in order]


def _run_on_cluster(
    ray: Any,
    items: Sequence[WorkItem],
    out_dir: Path,
    settings: AnalysisSettings,
    options: RayOptions,
    key: str,
    manifest: Manifest,
    worker_class: type[SlideWorker],
) -> Generator[SlideOutcome, None, None]:
    if not items:
        return
    connected_here = connect(ray, options.address)
    pool: ActorPool | None = None
    try:
        cpus, gpus = slot_resources(ray, options, cpu_only=settings.device == "cpu")
        capacity = cluster_capacity(ray, cpus, gpus)
        if capacity < 1:
            raise ConfigError(
                f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for one slide (the cluster has "
                f"{ray.cluster_resources()}); lower --cpus-per-slide or --gpus-per-slide"
            )
        actor_class = ray.remote(worker_class).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        size = min(len(items), capacity)
        log.info("running %d slides on %d Ray workers (%g CPU, %g GPU each)", len(items), size, cpus, gpus)

        def make_actor() -> Any:
            return actor_class.remote(settings, str(out_dir), key)

        pool = ActorPool(ray, make_actor, size, lambda: cluster_capacity(ray, cpus, gpus))
        for item, result, attempts in dispatch(pool, items, options.max_attempts, out_dir):
            yield record_result(manifest, out_dir, item, result, key, attempts)
    finally:
        if pool is not None:
            pool.shutdown()
        if connected_here:
            ray.shutdown()
