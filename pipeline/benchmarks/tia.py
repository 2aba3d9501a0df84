"""Speed benchmark, TIAToolbox side: its own virtual environment, and its run on our tiles.

TIAToolbox is never a micromet dependency. ``ensure_tiatoolbox`` (called by ``speed`` in
micromet's environment) makes ``<work-dir>/tiatoolbox-venv``: TIAToolbox and its requirements
from PyPI, but torch and torchvision (and their CUDA/triton wheels) linked from micromet's
environment, so there is no second torch download. TIAToolbox pins torch below the version
in ``requirements/constraints.txt``, so it is installed with ``--no-deps`` and its other
requirements separately; ``opencv-python`` becomes ``opencv-python-headless`` (no libGL).

Run as a script with that environment's Python, this file scores the planned tiles with
``PatchPredictor`` (WSI mode, ``patch_mode=False``): our checkpoint's weights in our
architecture wrapped as a TIAToolbox ``ModelABC``, the same tile size, resolution, batch size,
workers and device, and a mask with exactly our planned tiles (``variants.tile_mask``),
so both score the same tiles. Its result goes to ``--result`` as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
# Distributions linked from micromet's environment instead of installed again.
LINKED_DISTRIBUTIONS = ("torch", "torchvision", "triton")
LINKED_PREFIXES = ("nvidia-", "nvidia_")
# TIAToolbox requirements replaced: torch comes linked, opencv without its GUI libraries.
SKIPPED_REQUIREMENTS = ("torch", "torchvision")
RENAMED_REQUIREMENTS = {"opencv-python": "opencv-python-headless"}
INSTALL_TIMEOUT_S = 3600.0
_LOG_TAIL_LINES = 25
_PIP_CHATTER = ("WARNING: Location", "Looking in indexes", "Looking in links")


class InstallError(RuntimeError):
    """A step of the TIAToolbox environment set-up failed; the message holds its output."""


@dataclasses.dataclass(frozen=True)
class TiaEnv:
    """TIAToolbox's environment: its Python, the versions found, or why it is unusable."""

    python: Path | None
    versions: str = ""
    error: str | None = None


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of pip's output that say something (no index/location chatter)."""
    kept = [line for line in text.strip().splitlines() if not line.startswith(_PIP_CHATTER)]
    return "\n".join(kept[-lines:])


def _run_logged(command: list[str], log_path: Path, what: str) -> str:
    """Run ``command``, append its output to ``log_path``; raise InstallError on failure."""
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {exc}") from exc
    output = done.stdout + done.stderr
    with log_path.open("a", encoding="utf-8") as log:
        log.write(output)
    if done.returncode != 0:
        raise InstallError(f"{what} failed (exit {done.returncode}; full log {log_path}):\n{_tail(output)}")
    return done.stdout


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string ("Click<8,>=7" -> "click")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def tia_requirements(requires: list[str]) -> list[str]:
    """TIAToolbox's declared requirements minus torch/torchvision and extras, opencv headless."""
    kept = []
    for requirement in requires:
        name = requirement_name(requirement)
        if not name or "extra ==" in requirement or name in SKIPPED_REQUIREMENTS:
            continue
        renamed = RENAMED_REQUIREMENTS.get(name)
        kept.append(renamed + requirement.strip()[len(name):] if renamed else requirement.strip())
    return kept


def _linked_entries() -> list[Path]:
    """Top-level files and folders of torch, torchvision, triton and the nvidia wheels."""
    from importlib import metadata

    entries: set[Path] = set()
    for dist in metadata.distributions():
        name = requirement_name(dist.metadata["Name"] or "")
        if name not in LINKED_DISTRIBUTIONS and not name.startswith(LINKED_PREFIXES):
            continue
        base = Path(str(dist.locate_file("")))
        for file in dist.files or ():
            parts = Path(str(file)).parts
            if parts and parts[0] != "..":
                entries.add(base / parts[0])
    return sorted(entry for entry in entries if entry.exists())


def _link_torch(venv: Path) -> None:
    """Expose micromet's torch family to the venv through a folder of links and a .pth file."""
    link_dir = venv / "linked-site-packages"
    if link_dir.exists():
        shutil.rmtree(link_dir)  # removes the links only; rmtree does not follow them
    link_dir.mkdir()
    for entry in _linked_entries():
        (link_dir / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "micromet-linked-torch.pth").write_text(f"{link_dir}\n", encoding="utf-8")


def _pinned(name: str) -> str:
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if requirement_name(line) == name:
            return line.split("#")[0].strip()
    return name


def _probe(python: Path) -> str:
    code = ("import tiatoolbox, torch; from tiatoolbox.models.engine.patch_predictor import PatchPredictor; "
            "print(f'tiatoolbox {tiatoolbox.__version__}, torch {torch.__version__}')")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise InstallError(f"importing tiatoolbox in {python} failed:\n{_tail(done.stderr)}")
    return done.stdout.strip()


def _install(venv: Path, version: str, log_path: Path) -> None:
    python = str(venv / "bin" / "python")
    if not (venv / "bin" / "python").exists():
        _run_logged([sys.executable, "-m", "venv", str(venv)], log_path, "creating the venv")
    _link_torch(venv)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    _run_logged([*pip, "--no-deps", f"tiatoolbox=={version}"], log_path, f"pip install tiatoolbox=={version}")
    code = "import importlib.metadata as m; print('\\n'.join(m.requires('tiatoolbox')))"
    listing = _run_logged([python, "-c", code], log_path, "reading tiatoolbox's requirements")
    requirements = tia_requirements(listing.splitlines())
    pins = [_pinned("torch"), _pinned("torchvision")]
    _run_logged([*pip, "-c", str(CONSTRAINTS), *pins, *requirements], log_path,
                "pip install of tiatoolbox's requirements")


def ensure_tiatoolbox(work_dir: Path, version: str) -> TiaEnv:
    """TIAToolbox ``version`` in ``work_dir/tiatoolbox-venv``, installed on first use.

    Never raises for install problems: the returned ``TiaEnv.error`` says what failed (with the
    tail of pip's output; the whole log is ``work_dir/tiatoolbox-install.log``).
    """
    venv = (work_dir / "tiatoolbox-venv").resolve()
    python = venv / "bin" / "python"
    log_path = (work_dir / "tiatoolbox-install.log").resolve()
    try:
        if python.exists():
            _link_torch(venv)  # again: micromet's torch may have been upgraded since
            found = _probe(python)
            if f"tiatoolbox {version}," in found:
                return TiaEnv(python, found)
        work_dir.mkdir(parents=True, exist_ok=True)
        _install(venv, version, log_path)
        return TiaEnv(python, _probe(python))
    except (InstallError, OSError, StopIteration, subprocess.TimeoutExpired) as exc:
        return TiaEnv(None, error=f"TIAToolbox {version} could not be installed or imported: {exc}")


# ---- the runner, executed by the TIAToolbox environment's Python -------------------------


def normalise_tile(image: Any, mean: Any, std: Any) -> Any:
    """(H, W, 3) uint8 -> float32 scaled to 0-1 and normalised with the card's mean and std."""
    import numpy as np

    return ((np.asarray(image, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)


def make_tia_model(net: Any, card: Any) -> Any:
    """Our ``nn.Module`` as a TIAToolbox ``ModelABC``: softmax output, preprocessing in workers.

    Follows TIAToolbox's own patch classifiers (``CNNModel``): ``infer_batch`` moves the NHWC
    batch to the device, permutes it to NCHW and runs it under ``inference_mode`` in fp32.
    """
    import numpy as np
    import torch

    model_abc: Any = importlib.import_module("tiatoolbox.models.models_abc").ModelABC

    class MicrometTiaModel(model_abc):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            mean = np.asarray(card.mean, dtype=np.float32)
            std = np.asarray(card.std, dtype=np.float32)
            self.preproc_func = functools.partial(normalise_tile, mean=mean, std=std)

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(imgs), dim=-1)

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> Any:
            batch = batch_data.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
            model.eval()
            with torch.inference_mode():
                return model(batch).cpu().numpy()

    return MicrometTiaModel()


def _tia_scores_on_grid(zarr_path: Path, heatmap_rc: Any, stride_px: int) -> tuple[Any, int, int]:
    """(scores in grid order with NaN where TIAToolbox scored none, tiles it scored, common)."""
    import numpy as np

    group = importlib.import_module("zarr").open(str(zarr_path), mode="r")
    probabilities = np.asarray(group["probabilities"])
    coordinates = np.asarray(group["coordinates"])
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(heatmap_rc)}
    scores = np.full(len(heatmap_rc), np.nan, dtype=np.float32)
    common = 0
    for probability, (x0, y0, _x1, _y1) in zip(probabilities, coordinates, strict=True):
        key = (round(float(y0) / stride_px), round(float(x0) / stride_px))
        if key in index:
            scores[index[key]] = probability[1]
            common += 1
    return scores, len(probabilities), common


def run_tiatoolbox(spec: Any, out_dir: Path) -> tuple[int, dict[str, Any]]:
    """Score the planned tiles with TIAToolbox's PatchPredictor; returns (tiles, facts)."""
    import numpy as np

    from pipeline.benchmarks.variants import load_grid_arrays, tile_mask

    tiatoolbox = importlib.import_module("tiatoolbox")
    ioconfig_class = importlib.import_module("tiatoolbox.models.engine.io_config").IOPatchPredictorConfig
    predictor_class = importlib.import_module("tiatoolbox.models.engine.patch_predictor").PatchPredictor
    reader_class = importlib.import_module("tiatoolbox.wsicore.wsireader").WSIReader

    from pipeline.models import choose_device, load_checkpoint

    arrays, _ = load_grid_arrays(Path(spec.grid))
    device = choose_device(spec.device)
    net, card = load_checkpoint(spec.model, device="cpu")
    reader = reader_class.open(spec.slide)
    model_shape = reader.slide_dimensions(resolution=card.mpp, units="mpp")
    stride_px = spec.stride_px or card.tile_size_px
    mask = tile_mask(arrays["heatmap_rc"], (float(model_shape[0]), float(model_shape[1])), stride_px)
    ioconfig = ioconfig_class(
        input_resolutions=[{"units": "mpp", "resolution": card.mpp}],
        patch_input_shape=(card.tile_size_px, card.tile_size_px),
        stride_shape=(stride_px, stride_px),
    )
    save_dir = out_dir / "tiatoolbox_out"
    shutil.rmtree(save_dir, ignore_errors=True)
    started = time.perf_counter()
    predictor = predictor_class(model=make_tia_model(net, card), batch_size=spec.batch_size,
                               num_workers=spec.reader_count, device=device.type, verbose=False)
    output = predictor.run([Path(spec.slide)], masks=[mask], ioconfig=ioconfig, patch_mode=False,
                           save_dir=save_dir, overwrite=True, output_type="zarr",
                           return_probabilities=True, auto_get_mask=False)
    seconds = time.perf_counter() - started
    scores, n_scored, common = _tia_scores_on_grid(Path(next(iter(output.values()))), arrays["heatmap_rc"],
                                                   stride_px)
    np.save(out_dir / "tiatoolbox_scores.npy", scores)
    facts = {"seconds": seconds, "tiatoolbox": tiatoolbox.__version__, "reader": type(reader).__name__,
             "torch_threads": importlib.import_module("torch").get_num_threads(),
             "tiles_common_with_grid": common, "grid_tiles": len(arrays["heatmap_rc"]), "device": str(device)}
    return n_scored, facts


def main(argv: list[str] | None = None) -> int:
    """Run TIAToolbox on ``--spec`` and write a ``RunResult`` to ``--result``."""
    parser = argparse.ArgumentParser(description="TIAToolbox side of scripts/bench.py")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    # Run by path, this file's folder comes first on sys.path, where its siblings would shadow
    # installed modules: drop it. The checkout is appended, not prepended, for the same reason.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    sys.path.append(str(REPO_ROOT))
    from pipeline.benchmarks.variants import BenchSpec, measured

    spec = BenchSpec.load(args.spec)
    result = measured("tiatoolbox", lambda: run_tiatoolbox(spec, Path(spec.out_dir)))
    result.save(args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
