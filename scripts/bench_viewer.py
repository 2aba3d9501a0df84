"""Benchmark the viewer's Deep Zoom tile latency over HTTP, after the slide is open.

Builds a throw-away batch folder (a manifest only) around each slide, serves it with the
viewer app on 127.0.0.1 (threaded werkzeug server, as ``micromet view``), opens the slide
once through its DZI, then requests every tile of the top Deep Zoom levels in a shuffled
order, one at a time, and prints the median and 95th-percentile latency in ms.

    .venv/bin/python scripts/bench_viewer.py [SLIDE ...] [--levels 3] [--max-tiles 400]

Default slides: the real SVS files in ../shared/data/slides (if present).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from werkzeug.serving import make_server

from pipeline.batch.folder import STATUS_FAILED, Manifest, ManifestEntry, write_manifest
from pipeline.config import SHARED_DATA_DIR
from pipeline.review.viewer.app import create_app

SHARED_SLIDES = SHARED_DATA_DIR / "slides"
DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slides", nargs="*", type=Path, help="slide files")
    parser.add_argument("--levels", type=int, default=3, help="top Deep Zoom levels to fetch")
    parser.add_argument("--max-tiles", type=int, default=400, help="tiles per slide at most")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def fetch(url: str) -> tuple[float, int]:
    """(seconds, bytes) of one GET."""
    started = time.perf_counter()
    with urllib.request.urlopen(url) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def tile_urls(base: str, slide_id: str, dzi_xml: bytes, levels: int) -> list[str]:
    """Every tile URL of the top ``levels`` Deep Zoom levels."""
    image = ET.fromstring(dzi_xml)
    size = image.find(f"{DZI_NS}Size")
    assert size is not None
    width, height = int(size.get("Width", 0)), int(size.get("Height", 0))
    tile = int(image.get("TileSize", 254))
    top = (max(width, height) - 1).bit_length()  # ceil(log2(max side))
    urls = []
    for level in range(top, max(top - levels, -1), -1):
        scale = 2 ** (top - level)
        cols = -(-((width + scale - 1) // scale) // tile)
        rows = -(-((height + scale - 1) // scale) // tile)
        urls += [f"{base}/dz/{slide_id}_files/{level}/{c}_{r}.jpeg"
                 for c in range(cols) for r in range(rows)]
    return urls


def bench_slide(path: Path, levels: int, max_tiles: int, rng: random.Random) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        batch = Path(folder)
        entry = ManifestEntry(str(path.resolve()), STATUS_FAILED, output_dir="s", error="benchmark")
        write_manifest(batch, Manifest(micromet_version="bench", slides={"s": entry}))
        server = make_server("127.0.0.1", 0, create_app(batch), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            open_s, _ = fetch(f"{base}/dz/s.dzi")  # opens the slide
            with urllib.request.urlopen(f"{base}/dz/s.dzi") as response:
                urls = tile_urls(base, "s", response.read(), levels)
            rng.shuffle(urls)
            samples = [fetch(url) for url in urls[:max_tiles]]
        finally:
            server.shutdown()
            server.server_close()
    latencies_ms = sorted(seconds * 1000 for seconds, _ in samples)
    return {
        "open_ms": open_s * 1000,
        "tiles": len(latencies_ms),
        "median_ms": statistics.median(latencies_ms),
        "p95_ms": latencies_ms[min(len(latencies_ms) - 1, round(0.95 * (len(latencies_ms) - 1)))],
        "mean_kb": statistics.mean(size for _, size in samples) / 1024,
    }


def main() -> int:
    args = parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request log lines
    slides = args.slides or sorted(SHARED_SLIDES.glob("*.svs"))
    if not slides:
        print(f"no slides given and none in {SHARED_SLIDES}")
        return 2
    rng = random.Random(args.seed)
    print("| slide | first DZI (opens slide) ms | tiles | median ms | p95 ms | mean tile KB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path in slides:
        result = bench_slide(path, args.levels, args.max_tiles, rng)
        print(f"| {path.name} | {result['open_ms']:.1f} | {result['tiles']} | "
              f"{result['median_ms']:.1f} | {result['p95_ms']:.1f} | {result['mean_kb']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
