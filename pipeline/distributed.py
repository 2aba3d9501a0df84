"""Batch runs on a Ray cluster: reads a list of slides, produces the same per-slide folders,
``manifest.json`` and ``summary.csv`` as ``pipeline.batch``, one slide per worker at a time.

Each worker slot is a Ray actor that loads the model once, in its constructor, from plain
picklable settings (``ContextSpec``); the model is never pickled from the driver. A worker
builds a slide's files in ``OUT/.<slide_id>.partial`` and renames the folder into place
(``pipeline.batch.run_slide_safely``); only the driver writes the manifest. A slide whose
worker is lost (process crash, node death) is retried a bounded number of times on a fresh
actor; a slide that fails by itself (a ``MicrometError``, returned as data) is recorded and
not retried. Ray is imported only inside functions: without ``--ray`` nothing of it loads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.batch import (
    SlideOutcome,
    is_done,
    read_manifest,
    record_outcome,
    run_slide_safely,
    settings_key,
    skipped_outcome,
)
from pipeline.errors import ConfigError, MicrometError
from pipeline.outputs import check_writable_folder, unique_slide_ids

if TYPE_CHECKING:
    from pipeline.analyze import AnalysisContext

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install micromet[ray]"
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


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    """Picklable recipe for an ``AnalysisContext``: what ``build_context`` takes, no model.

    model_path, config_path: files every node sees at the same path (None: the defaults).
    overrides: flag values per config section ("inference", "tiling", "deposits"); None
        values mean "not given". mpp_override: µm/px forced on every slide, or None.
        force_mpp, mpp_by_slide, whole_slide: as in ``build_context``.
    """

    model_path: Path | None
    config_path: Path | None
    overrides: Mapping[str, Mapping[str, Any]]
    mpp_override: float | None = None
    force_mpp: bool = False
    mpp_by_slide: Mapping[str, float] | None = None
    whole_slide: bool = False

    def absolute(self) -> ContextSpec:
        """The same spec with absolute paths, so workers with another cwd find the files."""
        from pipeline.models import resolve_model_path

        config = self.config_path.expanduser().resolve() if self.config_path else None
        return dataclasses.replace(
            self, model_path=resolve_model_path(self.model_path).resolve(), config_path=config
        )

    def build(self, device: str | None = None) -> AnalysisContext:
        """Load the model and resolve the configs; ``device`` replaces the inference device."""
        from pipeline.analyze import build_context

        overrides = {section: dict(values) for section, values in self.overrides.items()}
        if device is not None:
            overrides["inference"] = {**overrides.get("inference", {}), "device": device}
        return build_context(
            self.model_path,
            self.config_path,
            overrides,
            self.mpp_override,
            self.force_mpp,
            self.mpp_by_slide,
            self.whole_slide,
        )


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


@dataclasses.dataclass(frozen=True)
class WorkResult:
    """What a worker sends back for one slide: a report or an error message, never an exception.

    fatal: the worker itself cannot run (model or settings differ on its node); the run stops.
    """

    slide_id: str
    report: dict[str, Any] | None
    error: str | None
    seconds: float
    node: str
    fatal: bool = False


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One slide to analyse: its path (as every node sees it) and its output folder name."""

    path: Path
    slide_id: str


class SlideWorker:
    """One worker slot (run as a Ray actor): loads the model once, then analyses slides.

    out_dir: the batch folder, absolute, on storage every node shares. expected_key: the
    driver's settings key; a node that resolves other settings (another model file, config or
    micromet version at the same path) refuses to work rather than write mismatched results.
    """

    def __init__(self, spec: ContextSpec, out_dir: str, expected_key: str) -> None:
        self.out_dir = Path(out_dir)
        self.node = socket.gethostname()
        self.context: AnalysisContext | None = None
        self.setup_error: str | None = None
        try:
            self.context = spec.build()
        except MicrometError as exc:
            self.setup_error = f"worker on node {self.node} cannot load the model or settings: {exc}"
            return
        key = settings_key(self.context.settings())
        if key != expected_key:
            self.setup_error = (
                f"worker on node {self.node} resolved settings key {key}, the driver {expected_key}: "
                f"the model file, config file or micromet version ({__version__}) differs between "
                "nodes; every node needs the same files at the same paths"
            )

    def analyze(self, path: str, slide_id: str) -> WorkResult:
        """Analyse one slide into ``OUT/<slide_id>`` (staged, then renamed into place)."""
        started = time.perf_counter()
        if self.setup_error is not None:
            return WorkResult(slide_id, None, self.setup_error, 0.0, self.node, fatal=True)
        report, error = run_slide_safely(self.analyze_into, Path(path), slide_id, self.out_dir)
        seconds = round(time.perf_counter() - started, 3)
        return WorkResult(slide_id, report, error, seconds, self.node)

    def analyze_into(self, path: Path, slide_id: str, folder: Path) -> dict[str, Any]:
        """Write one slide's files into ``folder``; returns its report dict."""
        from pipeline.analyze import analyze_slide

        assert self.context is not None  # set whenever setup_error is None
        return analyze_slide(self.context, path, slide_id, folder)


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
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
            "`ray start --head --port=6379` and pass --ray auto or --ray HEAD_HOST:6379"
        ) from exc
    return True


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
    shutil.rmtree(out_dir / f".{item.slide_id}.partial", ignore_errors=True)
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


def record_result(
    manifest: dict[str, Any], out_dir: Path, item: WorkItem, result: WorkResult, key: str, attempts: int
) -> SlideOutcome:
    """Write one slide's manifest entry (``pipeline.batch.record_outcome``) and return its outcome."""
    if result.report is None:
        log.warning("%s failed: %s", item.slide_id, result.error)
    return record_outcome(
        manifest, out_dir, item.path, item.slide_id, key, result.report, result.error, result.seconds,
        extra={"attempts": attempts, "node": result.node},
    )


def plan_work(
    slides: Sequence[Path], out_dir: Path, manifest: dict[str, Any], key: str, overwrite: bool
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


def run_ray_batch(
    slides: Sequence[Path],
    out_dir: Path,
    spec: ContextSpec,
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
    from pipeline.report import write_summary_csv

    ray = import_ray()
    out_dir = out_dir.expanduser().resolve()
    check_writable_folder(out_dir)
    spec = spec.absolute()
    # Resolve the settings on the driver (CPU, never pickled): validates model and config
    # before the cluster is touched, and gives the resume key.
    settings = spec.build(device="cpu").settings()
    key = settings_key(settings)
    manifest = read_manifest(out_dir)
    manifest.update({"micromet_version": __version__, "settings": settings, "settings_key": key})
    skipped, items, order = plan_work(slides, out_dir, manifest, key, overwrite)
    outcomes = dict(skipped)
    for outcome in skipped.values():
        if on_slide_done is not None:
            on_slide_done(outcome)
    finished = _run_on_cluster(ray, items, out_dir, spec, options, key, manifest, worker_class)
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
    spec: ContextSpec,
    options: RayOptions,
    key: str,
    manifest: dict[str, Any],
    worker_class: type[SlideWorker],
) -> Generator[SlideOutcome, None, None]:
    if not items:
        return
    connected_here = connect(ray, options.address)
    pool: ActorPool | None = None
    try:
        device = str(spec.overrides.get("inference", {}).get("device") or "auto")
        cpus, gpus = slot_resources(ray, options, cpu_only=device == "cpu")
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
            return actor_class.remote(spec, str(out_dir), key)

        pool = ActorPool(ray, make_actor, size, lambda: cluster_capacity(ray, cpus, gpus))
        for item, result, attempts in dispatch(pool, items, options.max_attempts, out_dir):
            yield record_result(manifest, out_dir, item, result, key, attempts)
    finally:
        if pool is not None:
            pool.shutdown()
        if connected_here:
            ray.shutdown()


def spec_from_args(args: argparse.Namespace) -> ContextSpec:
    """The ``ContextSpec`` for ``micromet infer`` options (same flags as a local run)."""
    from pipeline.analyze import stage_overrides

    options = vars(args)
    return ContextSpec(
        options.get("model"),
        options.get("config"),
        stage_overrides(options),
        options.get("mpp"),
        bool(options.get("force_mpp")),
        options.get("mpp_by_slide"),
        bool(options.get("whole_slide")),
    )


def run_batch_on_ray(
    slides: Sequence[Path],
    args: argparse.Namespace,
    on_slide_done: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """``micromet infer ... --ray ADDRESS``: ``run_ray_batch`` with the command's options."""
    try:
        options = RayOptions(
            address=str(args.ray),
            gpus_per_slide=getattr(args, "gpus_per_slide", None),
            cpus_per_slide=getattr(args, "cpus_per_slide", None),
        )
    except ValueError as exc:
        raise ConfigError(f"--ray options: {exc}") from exc
    overwrite = bool(getattr(args, "overwrite", False))
    return run_ray_batch(slides, Path(args.out), spec_from_args(args), options, overwrite, on_slide_done)
