"""Hostile file contents for the hostile-input sweep (issue 22): damaged copies of a small
pyramidal TIFF, CSVs, TOML settings, checkpoints and annotations.

Every generator is deterministic (seeded) and returns ``(name, payload, must_refuse)``:
``must_refuse`` is True only where any reading of the file must end in a refusal (a header
that is no TIFF, a duplicate row, a NaN resolution); damage a reader may survive (a truncation
after the last byte it needs, a flipped bit in pixel data) is False and only has to end
without a traceback, a hang or lost data.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "annotation_payloads",
    "checkpoint_payloads",
    "csv_payloads",
    "index_payloads",
    "slide_payloads",
    "toml_payloads",
]

Payload = tuple[str, bytes, bool]
DEEP_TOML = "a = " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000
HUGE_DIGITS = "9" * 400


def _patch(data: bytes, offset: int, payload: bytes) -> bytes:
    return data[:offset] + payload + data[offset + len(payload) :]


# --- slides -----------------------------------------------------------------------------------


def _put(offset: int, payload: bytes) -> Callable[[bytes], bytes]:
    return lambda blob: _patch(blob, offset, payload)


def _tag_edits(slide: Path) -> Iterator[tuple[str, Callable[[bytes], bytes], bool]]:
    """Header and tag edits of a little-endian classic TIFF: (name, edit, must_refuse)."""
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        pages = [page for page in tif.pages if isinstance(page, tifffile.TiffPage)]
        first = pages[0]
        tags = {tag.name: (tag.valueoffset, tag.dtype, tag.count) for tag in first.tags.values()}
        ifd0 = first.offset
        levels = [{tag.name: (tag.valueoffset, tag.dtype, tag.count) for tag in page.tags.values()}
                  for page in pages]
    data = slide.read_bytes()
    entries = struct.unpack_from("<H", data, ifd0)[0]
    next_pointer = ifd0 + 2 + 12 * entries

    def u16(offset: int, value: int) -> Callable[[bytes], bytes]:
        return lambda blob: _patch(blob, offset, struct.pack("<H", value))

    def u32(offset: int, value: int) -> Callable[[bytes], bytes]:
        return lambda blob: _patch(blob, offset, struct.pack("<I", value))

    yield "magic_xx", lambda blob: _patch(blob, 0, b"XX"), True
    yield "big_endian_mark", lambda blob: _patch(blob, 0, b"MM"), True
    yield "version_0", u16(2, 0), True
    yield "version_bigtiff", u16(2, 43), True
    yield "first_ifd_zero", u32(4, 0), True
    yield "first_ifd_past_end", u32(4, 10**9), True
    yield "first_ifd_odd", u32(4, 9), False
    yield "ifd_count_huge", u16(ifd0, 0xFFFF), False
    yield "ifd_count_zero", u16(ifd0, 0), True
    yield "ifd_loops_to_itself", u32(next_pointer, ifd0), False
    for name, value, refuse in (("0", 0, True), ("1", 1, False), ("huge", 0xFFFF, False), ("odd", 333,
        False)):
        yield f"width_{name}", u16(tags["ImageWidth"][0], value), refuse
        yield f"length_{name}", u16(tags["ImageLength"][0], value), refuse
    if "TileWidth" in tags:
        yield "tile_width_0", u16(tags["TileWidth"][0], 0), True
        yield "tile_width_7", u16(tags["TileWidth"][0], 7), False
        yield "tile_length_0", u16(tags["TileLength"][0], 0), True
    yield "compression_9999", u16(tags["Compression"][0], 9999), False
    yield "samples_per_pixel_9", u16(tags["SamplesPerPixel"][0], 9), False
    yield "bits_per_sample_3", u16(tags["BitsPerSample"][0], 3), False
    yield "photometric_7", u16(tags["PhotometricInterpretation"][0], 7), False
    for level, level_tags in enumerate(levels):
        for tag_name in ("TileOffsets", "TileByteCounts"):
            if tag_name not in level_tags:
                continue
            offset, _dtype, count = level_tags[tag_name]
            if count == 1:
                continue  # the value sits in the directory entry itself
            yield f"level{level}_{tag_name}_zeroed", _put(offset, bytes(4 * count)), False
            yield f"level{level}_{tag_name}_past_end", _put(offset, struct.pack("<I", 10**9) * count), False
    for name in ("XResolution", "YResolution"):
        if name in tags:
            yield f"{name}_zero", _put(tags[name][0], struct.pack("<II", 0, 1)), False
            yield f"{name}_denominator_zero", _put(tags[name][0], struct.pack("<II", 1, 0)), False


def _other_files(data: bytes, rng: np.random.Generator) -> Iterator[Payload]:
    """Files given a slide's name that are not slides."""
    from PIL import Image

    png, jpeg, zipped = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format="JPEG")
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("slide.svs", b"not a slide")
    yield from (
        ("empty", b"", True),
        ("text", b"this is a text file, not a slide\n", True),
        ("tiff_magic_then_text", b"II*\x00 but then text\n", True),
        ("tiff_magic_only", b"II*\x00", True),
        ("bigtiff_magic_only", b"II+\x00\x08\x00\x00\x00", True),
        ("random_300b", rng.bytes(300), True),
        ("random_50kb", rng.bytes(50_000), True),
        ("png", png.getvalue(), True),
        ("jpeg", jpeg.getvalue(), True),
        ("zip", zipped.getvalue(), True),
        ("gzip", gzip.compress(data[:2000]), True),
        ("html", b"<html><body>404</body></html>", True),
        ("nul_4kb", b"\x00" * 4096, True),
    )


def slide_payloads(slide: Path, seed: int) -> list[Payload]:
    """Damaged copies of ``slide`` (a pyramidal TIFF from write_pyramid_tiff): truncations at many
    offsets, zeroed and random byte ranges, bit flips, header and tag edits, and other files."""
    data = slide.read_bytes()
    rng = np.random.default_rng(seed)
    header_end = 256  # the TIFF header and the start of the first directory
    payloads: list[Payload] = []
    for size in (1, 2, 3, 4, 7, 8, 9, 15, 16, 32, 64, 128, 200):
        payloads.append((f"truncated_{size}b", data[:size], True))
    for permille in range(25, 1000, 25):
        payloads.append((f"truncated_{permille}permille", data[: len(data) * permille // 1000], False))
    payloads.append(("truncated_last_byte", data[:-1], False))
    for index in range(30):
        start = int(rng.integers(0, len(data) - 1))
        length = int(rng.integers(1, 4096))
        payloads.append((f"zeroed_{index:02d}_{start}+{length}", _patch(data, start,
            bytes(length))[: len(data)], False))
    for index in range(30):
        start = int(rng.integers(0, len(data) - 1))
        length = int(rng.integers(1, 2048))
        noise = rng.bytes(length)
        payloads.append((f"random_{index:02d}_{start}+{length}", _patch(data, start, noise)[: len(data)],
            False))
    for index in range(24):
        flipped = bytearray(data)
        span = 2048 if index < 16 else len(data)
        for _ in range(1 + index % 4):
            flipped[int(rng.integers(0, span))] ^= 1 << int(rng.integers(0, 8))
        payloads.append((f"bitflip_{index:02d}", bytes(flipped), False))
    payloads.append(("header_zeroed", bytes(header_end) + data[header_end:], True))
    for name, edit, refuse in _tag_edits(slide):
        payloads.append((f"tag_{name}", edit(data), refuse))
    for name, payload, refuse in _other_files(data, rng):
        payloads.append((f"other_{name}", payload, refuse))
    return payloads


# --- CSVs -------------------------------------------------------------------------------------

BINARY = bytes(range(256))


def csv_payloads(kind: str, slide_id: str) -> list[Payload]:
    """CSVs for one reader: mpp_csv, patients, categories, stages, reference or index."""
    s = slide_id
    common: list[Payload] = [
        ("empty", b"", True),
        ("binary", BINARY, True),
        ("nul_only", b"\x00" * 64, True),
        ("utf16", "slide,x\n".encode("utf-16"), True),
        ("long_line", b"a," * 200_000 + b"\n", True),
    ]
    tables: dict[str, list[tuple[str, str, bool]]] = {
        "mpp_csv": [
            ("bom", f"\ufeffslide,mpp\n{s},0.5\n", False),
            ("header_only", "slide,mpp\n", False),
            ("duplicate_slide", f"slide,mpp\n{s},0.5\n{s},0.25\n", True),
            ("duplicate_column", f"slide,mpp,mpp\n{s},0.5,0.25\n", True),
            ("extra_cell", f"slide,mpp\n{s},0.5,0.25\n", True),
            ("missing_cell", f"slide,mpp\n{s}\n", True),
            ("no_mpp_column", f"slide\n{s}\n", True),
            ("nan", f"slide,mpp\n{s},nan\n", True),
            ("inf", f"slide,mpp\n{s},inf\n", True),
            ("negative", f"slide,mpp\n{s},-0.5\n", True),
            ("zero", f"slide,mpp\n{s},0\n", True),
            ("underscore", f"slide,mpp\n{s},0_5\n", True),
            ("tiny", f"slide,mpp\n{s},1e-308\n", True),
            ("huge", f"slide,mpp\n{s},1e308\n", True),
            ("text", f"slide,mpp\n{s},half\n", True),
            ("nul_in_name", f"slide,mpp\n{s}\x00,0.5\n", True),
            ("empty_name", "slide,mpp\n,0.5\n", True),
            ("unbalanced_quote", f'slide,mpp\n"{s},0.5\n', True),
            ("semicolons", f"slide;mpp\n{s};0.5\n", True),
        ],
        "patients": [
            ("bom", f"\ufeffslide,patient\n{s},patient_000\n", False),
            ("duplicate_slide", f"slide,patient\n{s},patient_000\n{s},patient_001\n", True),
            ("missing_cell", f"slide,patient\n{s}\n", True),
            ("no_patient_column", f"slide,who\n{s},patient_000\n", True),
            ("empty_patient", f"slide,patient\n{s},\n", True),
            ("nul", f"slide,patient\n{s},pat\x00ient\n", True),
            ("unbalanced_quote", f'slide,patient\n"{s},patient_000\n', True),
            ("latin1", f"slide,patient\n{s},patient_\xe9\n", False),
        ],
        "categories": [
            ("bom", f"\ufeffslide,category\n{s},negative\n", False),
            ("duplicate_slide", f"slide,category\n{s},negative\n{s},macro\n", True),
            ("unknown_category", f"slide,category\n{s},huge\n", True),
            ("missing_cell", f"slide,category\n{s}\n", True),
            ("header_only", "slide,category\n", True),
            ("no_category_column", f"slide,kind\n{s},negative\n", True),
            ("nul", f"slide,category\n{s},nega\x00tive\n", True),
            ("stage_as_category", f"slide,category\n{s},pN2\n", True),
        ],
        "stages": [
            ("bom", f"\ufeffpatient,stage\n{s},negative\n", False),
            ("duplicate_patient", "patient,stage\npatient_000.zip,pN0\npatient_000.zip,pN2\n", True),
            ("duplicate_slide", f"patient,stage\n{s},negative\n{s},macro\n", True),
            ("unknown_stage", "patient,stage\npatient_000.zip,pN9\n", True),
            ("missing_cell", f"patient,stage\n{s}\n", True),
            ("header_only", "patient,stage\n", True),
            ("nul", f"patient,stage\n{s},nega\x00tive\n", True),
            ("latin1", "patient,stage\npatient_000.zip,pN\xe90\n", True),
        ],
        "reference": [
            ("bom", f"\ufeff{s},Normal\n", False),
            ("duplicate_slide", f"{s},Tumor\n{s},Normal\n", True),
            ("duplicate_other_case", f"{s},Tumor\n{s}.tif,Normal\n", True),
            ("unknown_class", f"{s},Maybe\n", True),
            ("missing_cell", f"{s}\n", True),
            ("nul", f"{s},Tum\x00or\n", True),
        ],
    }
    texts = tables.get(kind, [])
    return common + [(name, text.encode("utf-8", "surrogatepass"), refuse) for name, text, refuse in texts]


def index_payloads(valid_index: bytes) -> list[Payload]:
    """``train --index`` sample indexes: damaged copies of a valid one."""
    text = valid_index.decode("utf-8")
    lines = text.splitlines()
    header, rows = lines[0], lines[1:]
    first = rows[0] if rows else ""
    cells = first.split(",")
    payloads: list[Payload] = [
        ("empty", b"", True),
        ("binary", BINARY, True),
        ("header_only", (header + "\n").encode(), True),
        ("bom", ("\ufeff" + text).encode("utf-8"), False),
        ("short_row", (header + "\n" + ",".join(cells[:2]) + "\n").encode(), True),
        ("extra_cell", (header + "\n" + first + ",9\n").encode(), True),
        ("unknown_header", ("who,what\n" + first + "\n").encode(), True),
        ("nul", (header + "\n" + first.replace(",", "\x00,", 1) + "\n").encode(), True),
        ("duplicated", (header + "\n" + "\n".join(rows + rows) + "\n").encode(), False),
        ("crlf", text.replace("\n", "\r\n").encode(), False),
    ]
    for column, value in (("nan", "nan"), ("inf", "inf"), ("negative", "-5"), ("text", "abc"), ("huge",
        HUGE_DIGITS)):
        for position in range(1, min(len(cells), 6)):
            changed = list(cells)
            changed[position] = value
            payloads.append((f"cell{position}_{column}", (header + "\n" + ",".join(changed) + "\n").encode(),
                False))
    return payloads


# --- TOML -------------------------------------------------------------------------------------

INFER_TOML: dict[str, str | bytes] = {
    "section_number": "tissue = 5\n", "section_string": "tiling = 'x'\n",
        "section_list": "inference = [1, 2]\n",
    "unknown_section": "[model]\npath = 'x'\n", "unknown_key": "[tissue]\nmask_um = 8\n", "deep": DEEP_TOML,
    "not_toml": "[tissue\nmask_mpp = \n", "binary": BINARY, "latin1": b"[tissue]\nmask_mpp = 8 # \xe9\n",
    "cascade_string": "[inference]\ncascade = 'false'\n", "cascade_number": "[inference]\ncascade = 0\n",
    "batch_size_float": "[inference]\nbatch_size = 16.5\n",
        "batch_size_zero": "[inference]\nbatch_size = 0\n",
    "batch_size_bool": "[inference]\nbatch_size = true\n",
        "batch_size_negative": "[inference]\nbatch_size = -4\n",
    "device_bogus": "[inference]\ndevice = 'tpu'\n", "device_number": "[inference]\ndevice = 1\n",
    "precision_bogus": "[inference]\nprecision = 'fp8'\n",
        "screen_nan": "[inference]\ncascade_screen_threshold = nan\n",
    "screen_two": "[inference]\ncascade_screen_threshold = 2.0\n",
        "stride_float": "[tiling]\nstride_px = 16.5\n",
    "stride_zero": "[tiling]\nstride_px = 0\n", "stride_string": "[tiling]\nstride_px = '16'\n",
    "stride_negative": "[tiling]\nstride_px = -16\n",
        "tissue_fraction_2": "[tiling]\nmin_tissue_fraction = 2.0\n",
    "tissue_fraction_nan": "[tiling]\nmin_tissue_fraction = nan\n",
        "mask_mpp_inf": "[tissue]\nmask_mpp = inf\n",
    "mask_mpp_negative": "[tissue]\nmask_mpp = -8.0\n", "mask_mpp_zero": "[tissue]\nmask_mpp = 0.0\n",
    "reject_pen_string": "[tissue]\nreject_pen = 'yes'\n",
        "saturation_nan": "[tissue]\nmin_saturation = nan\n",
    "threshold_2": "[deposits]\nthreshold = 2.0\n", "threshold_nan": "[deposits]\nthreshold = nan\n",
    "threshold_negative": "[deposits]\nthreshold = -0.5\n",
        "threshold_string": "[deposits]\nthreshold = '0.5'\n",
    "refine_string": "[deposits]\nrefine = 'false'\n", "cell_rule_bogus": "[deposits]\ncell_rule = 'loose'\n",
    "cells_diameter_nan": "[deposits]\nmax_cell_count_diameter_mm = nan\n",
    "qc_accept_string": "[qc]\naccept_qc_failures = 'true'\n", "qc_tiles_float": "[qc]\nmax_tiles = 4.5\n",
    "qc_focus_negative": "[qc]\nmin_focus = -1.0\n", "qc_unknown": "[qc]\nstain = 'any'\n",
    "qc_tile_mpp_zero": "[qc]\ntile_mpp = 0.0\n", "qc_dark_string": "[qc]\nmax_dark_fraction = 'half'\n",
    "workers_negative": "[inference]\nnum_workers = -1\n",
        "workers_float": "[inference]\nnum_workers = 1.5\n",
    "hole_area_inf": "[tissue]\nmax_hole_area_mm2 = inf\n", "deposits_list": "deposits = ['threshold']\n",
    "qc_number": "qc = 1\n", "empty_key": "[tissue]\n'' = 1\n",
        "date_value": "[deposits]\nthreshold = 1979-05-27\n",
    "inline_table": "[deposits]\nthreshold = { a = 1 }\n", "nested_tables": "[tissue.inner.deeper]\nx = 1\n",
    "utf16": "[tissue]\nmask_mpp = 8\n".encode("utf-16"), "nul": b"[tissue]\nmask_mpp = 8\x00\n",
    "empty_section_name": "[\"\"]\nx = 1\n", "huge_int": f"[inference]\nbatch_size = {2**63 - 1}\n",
}
TRAIN_TOML: dict[str, str | bytes] = {
    "train_number": "train = 5\n", "data_string": "data = 'x'\n", "sampling_list": "sampling = [1]\n",
    "sampling_tissue_number": "[sampling]\ntissue = 5\n", "unknown_section": "[model]\narch = 'x'\n",
    "unknown_key": "[train]\nlearning_rate = 0.1\n", "deep": DEEP_TOML, "not_toml": "[train\n",
        "binary": BINARY,
    "momentum_nan": "[train]\noptimizer = 'sgd'\nmomentum = nan\n",
        "momentum_negative": "[train]\nmomentum = -1.0\n",
    "momentum_two": "[train]\nmomentum = 2.0\n", "lr_nan": "[train]\nlr = nan\n",
        "lr_inf": "[train]\nlr = inf\n",
    "lr_negative": "[train]\nlr = -0.1\n", "lr_string": "[train]\nlr = '1e-3'\n",
        "epochs_float": "[train]\nepochs = 2.5\n",
    "epochs_zero": "[train]\nepochs = 0\n", "epochs_negative": "[train]\nepochs = -3\n",
    "seed_huge": f"[train]\nseed = {2**63 - 1}\n", "seed_negative": "[train]\nseed = -1\n",
    "deterministic_string": "[train]\ndeterministic = 'false'\n",
        "optimizer_bogus": "[train]\noptimizer = 'lion'\n",
    "scheduler_bogus": "[train]\nscheduler = 'step'\n",
        "architecture_bogus": "[train]\narchitecture = 'vit_huge'\n",
    "tile_size_huge": "[train]\ntile_size_px = 200000\n", "tile_size_zero": "[train]\ntile_size_px = 0\n",
    "model_mpp_zero": "[train]\nmpp = 0.0\n", "model_mpp_nan": "[train]\nmpp = nan\n",
    "max_steps_zero": "[train]\nmax_steps = 0\n", "batch_size_zero": "[train]\nbatch_size = 0\n",
    "weight_decay_nan": "[train]\nweight_decay = nan\n", "patch_mpp_string": "[data]\npatch_mpp = 'x'\n",
    "patch_mpp_zero": "[data]\npatch_mpp = 0.0\n", "patch_mpp_inf": "[data]\npatch_mpp = inf\n",
    "patch_mpp_huge": "[data]\npatch_mpp = 1e308\n", "slide_mpp_negative": "[data]\nslide_mpp = -0.5\n",
    "index_number": "[data]\nindex = 5\n", "val_fraction_one": "[data]\nval_fraction = 1.0\n",
    "val_fraction_nan": "[data]\nval_fraction = nan\n", "patches_number": "[data]\npatches = 5\n",
    "tumor_per_slide_float": "[sampling]\ntumor_per_slide = 2.5\n",
        "margin_nan": "[sampling]\nnormal_margin_um = nan\n",
    "augment_unknown": "[augment]\nspin = true\n", "augment_string": "augment = 'all'\n",
}
STAGE_TOML: dict[str, str | bytes] = {
    "staging_number": "staging = 5\n", "scheme_bogus": "[staging]\nscheme = 'tnm9'\n",
    "scheme_number": "[staging]\nscheme = 3\n", "unknown_key": "[staging]\nrule = 'x'\n", "deep": DEEP_TOML,
    "not_toml": "[staging\n", "binary": BINARY, "unknown_section": "[stage]\nscheme = 'ajcc'\n",
}


def toml_payloads(kind: str) -> list[Payload]:
    """Settings files for ``infer --config`` (kind "infer"), ``train --config`` or ``stage --config``,
    each one a file that must be refused."""
    tables = {"infer": INFER_TOML, "train": TRAIN_TOML, "stage": STAGE_TOML}
    return [(name, text if isinstance(text, bytes) else text.encode("utf-8"), True)
            for name, text in tables[kind].items()]


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_payloads(checkpoint: Path, seed: int) -> list[Payload]:
    """Damaged copies of a checkpoint written by save_checkpoint, and other payloads; each one a
    file every loader must refuse (the pickle payload must not run)."""
    import torch

    data = checkpoint.read_bytes()
    rng = np.random.default_rng(seed)
    payloads: list[Payload] = []
    for permille in (0, 1, 10, 50, 100, 300, 500, 700, 900, 990, 999):
        payloads.append((f"truncated_{permille}permille", data[: len(data) * permille // 1000], True))
    payloads.append(("random", rng.bytes(len(data)), True))
    payloads.append(("text", b"not a checkpoint\n", True))
    # os.system("touch PWNED") via __reduce__: weights_only loading must refuse it
    payloads.append(("pickle_exec",
        b"\x80\x04\x95\x23\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system"
                     b"\x94\x93\x94\x8c\x0btouch PWNED\x94\x85\x94R\x94.", True))
    payload = torch.load(checkpoint, weights_only=True)

    def saved(obj: object) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    payloads += [("list", saved([1, 2, 3]), True), ("tensor", saved(torch.zeros(3)), True),
                 ("empty_dict", saved({}), True), ("state_dict_only", saved(payload["state_dict"]), True),
                 ("no_card", saved({k: v for k, v in payload.items() if k != "card"}), True),
                 ("no_weights", saved({k: v for k, v in payload.items() if k != "state_dict"}), True)]
    for name, change in (("arch_unknown", {"architecture": "nope"}), ("tile_text", {"tile_size_px": "big"}),
                         ("tile_zero", {"tile_size_px": 0}), ("tile_huge", {"tile_size_px": 10**9}),
                         ("mpp_negative", {"mpp": -1.0}), ("mpp_zero", {"mpp": 0.0}), ("mpp_nan",
                             {"mpp": float("nan")}),
                         ("mpp_inf", {"mpp": float("inf")}), ("std_zero", {"std": [0.0, 0.0, 0.0]}),
                         ("classes", {"class_names": ["a"]}), ("threshold_7", {"threshold": 7.0}),
                         ("threshold_nan", {"threshold": float("nan")}), ("stain_bogus",
                             {"stain_normalization": "x"}),
                         ("stride_zero", {"stride_px": 0}), ("seed_threshold_2", {"seed_threshold": 2.0})):
        card = {**payload["card"], **change}
        payloads.append((f"card_{name}", saved({**payload, "card": card}), True))
    weights = dict(payload["state_dict"])
    first = next(iter(weights))
    payloads.append(("weights_nan", saved({**payload, "state_dict": {**weights,
        first: weights[first] * float("nan")}}), True))
    payloads.append(("weights_wrong_shape", saved({**payload, "state_dict": {**weights,
        first: torch.zeros(1)}}), True))
    payloads.append(("digest_wrong", saved({**payload,
        **{k: "0" * 64 for k in payload if "sha" in k or "digest" in k}}), False))
    return payloads


# --- annotations ------------------------------------------------------------------------------


def _geojson(coordinates: str) -> str:
    return ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"classification":'
            ' {"name": "Tumor"}}, "geometry": {"type": "Polygon", "coordinates": ' + coordinates + "}}]}")


def _xml(xs: list[str], extra: str = "") -> str:
    points = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />'
                     for i, (x, y) in enumerate(zip(xs, ["10", "10", "90", "90"], strict=True)))
    return (f'<?xml version="1.0" encoding="utf-8"?>{extra}<ASAP_Annotations><Annotations>'
            f'<Annotation Name="t" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{points}</Coordinates>'
            "</Annotation></Annotations></ASAP_Annotations>")


def annotation_payloads() -> list[tuple[str, str, bytes, bool]]:
    """Damaged annotation files: (name, suffix, payload, must_refuse)."""
    square = "[[[10, 10], [90, 10], [90, 90], [10, 90], [10, 10]]]"
    geo: dict[str, str | bytes] = {
        "features_null": '{"type": "FeatureCollection", "features": null}',
            "features_five": '{"type": "FeatureCollection", "features": 5}',
        "feature_null": '{"type": "FeatureCollection", "features": [null]}',
            "coordinates_null": _geojson("null"),
        "coordinates_flat": _geojson("[1, 2, 3, 4]"), "ring_of_strings": _geojson('[["a", "b", "c"]]'),
        "point_nulls": _geojson("[[[null, null], [1, 2], [3, 1]]]"),
            "huge_int": _geojson(f"[[[0, 0], [{HUGE_DIGITS}, 0], [0, 10], [0, 0]]]"),
        "e300": _geojson("[[[0, 0], [1e300, 0], [0, 1e300], [0, 0]]]"),
            "nan": _geojson("[[[0, 0], [NaN, 0], [0, 10], [0, 0]]]"),
        "infinity": _geojson("[[[0, 0], [Infinity, 0], [0, 10], [0, 0]]]"), "deep": DEEP_JSON,
        "deep_object": '{"a": ' * 50_000 + "1" + "}" * 50_000, "top_level_number": "42",
        "truncated": _geojson(square)[:70], "empty": "", "binary": BINARY,
            "bom_garbage": b"\xef\xbb\xbf\xff\xfe{",
    }
    xml: dict[str, str | bytes] = {
        "klingon": _xml(["10", "90", "90", "10"]).replace("utf-8", "klingon"), "x_e300": _xml(["10", "1e300",
            "90", "10"]),
        "x_huge_digits": _xml(["10", HUGE_DIGITS, "90", "10"]), "x_inf": _xml(["10", "inf", "90", "10"]),
        "x_nan": _xml(["10", "nan", "90", "10"]), "x_empty": _xml(["10", "", "90", "10"]),
        "entity_expansion": _xml(["10", "&b;", "90", "10"],
            '<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'),
        "external_entity": _xml(["10", "&x;", "90", "10"],
            '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'),
        "deep": "<a>" * 50_000 + "</a>" * 50_000, "wrong_root": "<svg><Annotation/></svg>",
        "truncated": _xml(["10", "90", "90", "10"])[:120], "empty": "", "binary": BINARY, "not_xml": "{}",
    }
    out: list[tuple[str, str, bytes, bool]] = []
    for suffix, table in ((".geojson", geo), (".xml", xml)):
        for name, text in table.items():
            out.append((name, suffix, text if isinstance(text, bytes) else text.encode("utf-8"), True))
    return out
