"""Compare candidate default models at an equal wall-time budget on the real validation sets.

The comparison behind docs/benchmarks.md, "Choice of architecture and tile size": trains one
candidate for --minutes on the same seeded PCam split (75 % training, 10 % validation, 15 %
test) plus grid crops of the left half of the centre-3 CAMELYON17 tile, then prints the PCam
validation/test AUC, the AUC on the 57 level-0 CAMELYON16 patches (at 0.972 µm/px) and the
share of CAMELYON17 crops above a few thresholds. Needs ../shared/data.

Usage: python scripts/bench_model_choice.py --arch pcamnet --tile 96 --minutes 5
       (also: --arch pcamnet --tile 64; --arch micronet --tile 96)
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR  # noqa: E402
from pipeline.models import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from pipeline.training.augment import AugmentConfig, augment_batch  # noqa: E402
from pipeline.training.classify import roc_auc, to_model_input, unit_float  # noqa: E402
from pipeline.training.datasets import fit_to_tile, load_rgb  # noqa: E402


def _at_pcam_mpp(rgb: np.ndarray) -> np.ndarray:
    """A level-0 CAMELYON image brought to the PCam µm/px, keeping its field of view."""
    side_px = round(rgb.shape[0] * CAMELYON_LEVEL0_MPP / PCAM_MPP)
    return fit_to_tile(rgb, CAMELYON_LEVEL0_MPP, PCAM_MPP, side_px)


def load_data() -> dict[str, np.ndarray]:
    """The real data at 0.972 µm/px."""
    out = {}
    labels_csv = SHARED_DATA_DIR / "pcam_kaggle" / "labels.csv"
    rows = sorted(csv.DictReader(labels_csv.open()), key=lambda r: r["file"])
    out["pcam_x"] = np.stack([load_rgb(SHARED_DATA_DIR / "pcam_kaggle" / r["file"]) for r in rows])
    out["pcam_y"] = np.array([int(r["label"]) for r in rows])
    c16x, c16y, c16s = [], [], []
    for name, label in (("tumor", 1), ("normal", 0)):
        for p in sorted((SHARED_DATA_DIR / "camelyon16_patches" / name).glob("*.png")):
            rgb = load_rgb(p)
            c16x.append(_at_pcam_mpp(rgb))
            c16y.append(label)
            c16s.append(p.name[:9])
    out["c16_x"], out["c16_y"], out["c16_slide"] = np.stack(c16x), np.array(c16y), np.array(c16s)
    for p in sorted((SHARED_DATA_DIR / "camelyon17_tiles").glob("*.jpeg")):
        rgb = load_rgb(p)
        out["c17_" + p.stem[:8]] = _at_pcam_mpp(rgb)
    return out


ap = argparse.ArgumentParser()
ap.add_argument("--arch", default="pcamnet")
ap.add_argument("--tile", type=int, default=96)
ap.add_argument("--minutes", type=float, default=6)
ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--hed", type=float, default=0.1)
ap.add_argument("--c17", type=int, default=1, help="train on left half of centre_3")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
torch.manual_seed(args.seed)
torch.set_num_threads(2)
d = load_data()
rng = np.random.default_rng(0)
n = len(d["pcam_y"])
perm = rng.permutation(n)
test_idx, val_idx, train_idx = (
    perm[: int(0.15 * n)],
    perm[int(0.15 * n) : int(0.25 * n)],
    perm[int(0.25 * n) :],
)
X, Y = d["pcam_x"], d["pcam_y"]
T = args.tile


def center(x, size):
    h = x.shape[1]
    o = (h - size) // 2
    if o >= 0:
        return x[:, o : o + size, o : o + size]
    p = -o
    return np.pad(x, ((0, 0), (p, size - h - p), (p, size - h - p), (0, 0)), mode="symmetric")


def grid_crops(img, size, stride=32):
    h, w = img.shape[:2]
    return np.stack(
        [
            img[y : y + size, x : x + size]
            for y in range(0, h - size + 1, stride)
            for x in range(0, w - size + 1, stride)
        ]
    )


c3 = d["c17_centre_3"]
c17_train = grid_crops(c3[:, :256], T, 16) if args.c17 else np.zeros((0, T, T, 3), np.uint8)
evals = {
    "c17_centre_1": grid_crops(d["c17_centre_1"], T),
    "c17_centre_3_right": grid_crops(c3[:, 256:], T),
    "c17_centre_4": grid_crops(d["c17_centre_4"], T),
}
aug = AugmentConfig(
    hed_scale=args.hed,
    hed_shift=args.hed / 4,
    brightness=0.1,
    contrast=0.2,
    blur_probability=0.2,
    blur_max_sigma_px=1.0,
)
model = build_model(args.arch).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
gen = torch.Generator().manual_seed(args.seed)
Xtr, Ytr = X[train_idx], Y[train_idx]
budget = args.minutes * 60
start = time.perf_counter()
step = 0
losses = []
while True:
    el = time.perf_counter() - start
    frac = el / budget
    if frac >= 1:
        break
    lr = args.lr * (min(1, frac / 0.15) if frac < 0.15 else 0.5 * (1 + np.cos(np.pi * (frac - 0.15) / 0.85)))
    for g in opt.param_groups:
        g["lr"] = lr
    n_c17 = args.bs // 8 if len(c17_train) else 0
    idx = rng.integers(0, len(Ytr), args.bs - n_c17)
    if T < 96:
        off = rng.integers(16 - (T - 32) // 4, 16 + (T - 32) // 4 + 1, 2) if T > 32 else (32, 32)
        xb = Xtr[idx][:, off[0] : off[0] + T, off[1] : off[1] + T]
    else:
        xb = Xtr[idx]
    yb = Ytr[idx]
    if n_c17:
        j = rng.integers(0, len(c17_train), n_c17)
        xb = np.concatenate([xb, c17_train[j]])
        yb = np.concatenate([yb, np.zeros(n_c17, int)])
    model.train()
    t = augment_batch(unit_float(torch.from_numpy(np.ascontiguousarray(xb)), torch.device("cpu")), aug, gen)
    loss = functional.cross_entropy(
        model(to_model_input(t, IMAGENET_MEAN, IMAGENET_STD)), torch.from_numpy(yb).long()
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
    step += 1
    if step % 100 == 0:
        print(f"step {step} loss {np.mean(losses[-100:]):.3f} {el:.0f}s", flush=True)


@torch.inference_mode()
def score(x):
    model.eval()
    out = []
    for i in range(0, len(x), 256):
        t = unit_float(torch.from_numpy(np.ascontiguousarray(x[i : i + 256])), torch.device("cpu"))
        out.append(torch.softmax(model(to_model_input(t, IMAGENET_MEAN, IMAGENET_STD)), 1)[:, 1].numpy())
    return np.concatenate(out)


pv = score(center(X[val_idx], T))
pt = score(center(X[test_idx], T))
pc16 = score(center(d["c16_x"], T))
print(f"{args} steps {step} ({step * args.bs / len(Ytr):.1f} epochs)")
auc_val, auc_test = roc_auc(pv, Y[val_idx]), roc_auc(pt, Y[test_idx])
print(f"pcam val auc {auc_val:.4f} test auc {auc_test:.4f}  c16 auc {roc_auc(pc16, d['c16_y']):.4f}")


def mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


for slide in np.unique(d["c16_slide"]):
    on_slide = d["c16_slide"] == slide
    tumor = mean_or_nan(pc16[on_slide & (d["c16_y"] == 1)])
    normal = mean_or_nan(pc16[on_slide & (d["c16_y"] == 0)])
    print(f"  c16 {slide}: mean p tumor-labelled {tumor:.2f} normal {normal:.2f}")
pe = {k: score(v) for k, v in evals.items()}
for thr in (0.5, 0.7, 0.8, 0.9, 0.95):
    spec = np.mean(pv[Y[val_idx] == 0] < thr)
    sens = np.mean(pv[Y[val_idx] == 1] >= thr)
    c16s = np.mean(pc16[d["c16_y"] == 1] >= thr)
    c16sp = np.mean(pc16[d["c16_y"] == 0] < thr)
    fp = " ".join(f"{k[4:]}={np.mean(v >= thr):.3f}" for k, v in pe.items())
    print(
        f"thr {thr}: pcam val sens {sens:.3f} spec {spec:.3f} | c16 sens {c16s:.2f} "
        f"spec {c16sp:.2f} | FP {fp}"
    )
