"""A corpus of damaged and hostile inputs, generated at test time from small valid files.

``write_corpus(folder, valid)`` writes at least 200 files in four groups: slides (truncated,
bit-flipped and header-garbled copies of a small pyramidal TIFF, other files given slide
names, empty files), annotations (GeoJSON, ASAP XML and CAMELYON16 JSON variants),
checkpoints (truncated, random, wrong payloads, damaged weights) and CSVs (node categories,
patient mappings, reference and stage CSVs). Each file is listed with ``may_be_valid``: True
where the damage may leave a readable file (a flipped bit in pixel data, a truncation after
the last byte a reader needs), so a test accepts either a clean result or a clean error.
Everything is deterministic (fixed seeds).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

Kind = str  # "slide", "annotation", "checkpoint", "categories_csv", "mapping_csv", ...


@dataclasses.dataclass(frozen=True)
class BadFile:
    """One generated input: its path, what it is for, and whether damage may leave it readable."""

    path: Path
    kind: Kind
    may_be_valid: bool = False


@dataclasses.dataclass(frozen=True)
class ValidInputs:
    """The small valid files the corpus is made from."""

    slide: Path  # a pyramidal TIFF with tissue and mpp
    checkpoint: Path  # a micronet checkpoint saved by save_checkpoint
    annotation_size_wh: tuple[int, int]  # level-0 size the annotations are drawn on


def _seeded(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- slides --------------------------------------------------------------------------------


def _patch(data: bytes, offset: int, payload: bytes) -> bytes:
    return data[:offset] + payload + data[offset + len(payload) :]


def _tag_patches(slide: Path) -> dict[str, Callable[[bytes], bytes]]:
    """Header edits that break the first directory of a little-endian classic TIFF."""
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        tags = {tag.name: tag.valueoffset for tag in page.tags.values()}
        ifd0 = page.offset
    ifd_entries = struct.unpack_from("<H", slide.read_bytes(), ifd0)[0]
    next_pointer = ifd0 + 2 + 12 * ifd_entries

    def put_u32(offset: int, value: int) -> Callable[[bytes], bytes]:
        return lambda data: _patch(data, offset, struct.pack("<I", value))

    def put_u16(offset: int, value: int) -> Callable[[bytes], bytes]:
        return lambda data: _patch(data, offset, struct.pack("<H", value))

    patches: dict[str, Callable[[bytes], bytes]] = {
        "magic_xx": lambda data: _patch(data, 0, b"XX"),
        "big_endian_mark": lambda data: _patch(data, 0, b"MM"),
        "version_0": put_u16(2, 0),
        "version_bigtiff": put_u16(2, 43),
        "first_ifd_zero": put_u32(4, 0),
        "first_ifd_past_end": put_u32(4, 10**9),
        "first_ifd_odd": put_u32(4, 9),
        "ifd_count_huge": put_u16(ifd0, 0xFFFF),
        "ifd_count_zero": put_u16(ifd0, 0),
        "ifd_loops_to_itself": put_u32(next_pointer, ifd0),
    }
    for name, value in (("width_0", 0), ("width_huge", 0xFFFF), ("width_1", 1)):
        patches[name] = put_u16(tags["ImageWidth"], value)  # SHORT or LONG: low half
    for name, value in (("length_0", 0), ("length_1", 1)):
        patches[name] = put_u16(tags["ImageLength"], value)
    if "TileWidth" in tags:
        patches["tile_width_0"] = put_u16(tags["TileWidth"], 0)
        patches["tile_width_odd"] = put_u16(tags["TileWidth"], 7)
    if "TileOffsets" in tags:
        patches["tile_offsets_past_end"] = put_u32(tags["TileOffsets"], 10**9)
    patches["compression_unknown"] = put_u16(tags["Compression"], 9999)
    patches["samples_per_pixel_9"] = put_u16(tags["SamplesPerPixel"], 9)
    return patches


def _every_level_doubled(slide: Path) -> bytes:
    """Every level's ImageWidth and ImageLength doubled: a consistent pyramid twice the size
    its tile tables cover (issue 22: read as 6000 x 4800 px with 4 deposits instead of 2)."""
    data = slide.read_bytes()
    with tifffile.TiffFile(slide) as tif:
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            for name in ("ImageWidth", "ImageLength"):
                tag = page.tags[name]
                packed = struct.pack("<H" if tag.dtype == 3 else "<I", tag.value * 2)
                data = _patch(data, tag.valueoffset, packed)
    return data


def _slide_files(folder: Path, slide: Path) -> list[BadFile]:
    data = slide.read_bytes()
    files: list[BadFile] = []

    def add(name: str, payload: bytes, may_be_valid: bool = False) -> None:
        path = folder / name
        path.write_bytes(payload)
        files.append(BadFile(path, "slide", may_be_valid))

    for size in (1, 4, 8, 16, 64, 256, 1024, 4096):
        add(f"truncated_{size}b.tif", data[:size])
    for fraction in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.995):
        add(f"truncated_{int(fraction * 1000)}permille.tif", data[: int(len(data) * fraction)], True)
    rng = _seeded(12)
    for index in range(24):
        flipped = bytearray(data)
        # header and first directories (first 2 KiB), then anywhere (pixel data too)
        span = 2048 if index < 16 else len(data)
        for _ in range(1 + index % 4):
            position = int(rng.integers(0, span))
            flipped[position] ^= 1 << int(rng.integers(0, 8))
        add(f"bitflip_{index:02d}.tif", bytes(flipped), True)
    for name, patch in _tag_patches(slide).items():
        add(f"header_{name}.tif", patch(data), name in ("width_1", "length_1"))
    add("header_every_level_doubled.tif", _every_level_doubled(slide))
    rng = _seeded(13)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format="JPEG")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("slide.svs", b"not a slide")
    others = {
        "text.svs": b"this is a text file, not a slide\n",
        "text.tif": b"II*\x00 but then text\n",
        "text.ndpi": b"hello\n",
        "text.mrxs": b"[GENERAL]\nnot really\n",
        "empty.svs": b"",
        "empty.tif": b"",
        "empty.ndpi": b"",
        "random_small.svs": rng.bytes(300),
        "random_large.tif": rng.bytes(50_000),
        "png_named.tif": png.getvalue(),
        "jpeg_named.svs": jpeg.getvalue(),
        "json_named.svs": b'{"slide": true}',
        "html_named.tif": b"<html><body>404</body></html>",
        "zip_named.svs": zipped.getvalue(),
        "gzip_named.tif": gzip.compress(data[:2000]),
        "tiff_magic_only.tif": b"II*\x00",
        "bigtiff_magic_only.tif": b"II+\x00\x08\x00\x00\x00",
        "nul_bytes.svs": b"\x00" * 4096,
    }
    for name, payload in others.items():
        add(name, payload)
    return files


# --- annotations ---------------------------------------------------------------------------


def _geojson(coordinates: str, kind: str = "Polygon") -> str:
    return (
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"name": "t", "classification": {"name": "Tumor"}}, "geometry": {"type": "'
        f'{kind}", "coordinates": {coordinates}}}}}]}}'
    )


def _c16(vertices: str, group: str = "positive") -> str:
    other = "negative" if group == "positive" else "positive"
    return f'{{"{group}": [{{"name": "t", "vertices": {vertices}}}], "{other}": []}}'


def _xml(xs: list[str], encoding: str = "utf-8", extra: str = "") -> str:
    ys = ["100", "100", "900", "900"]
    coordinates = "".join(
        f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    )
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>{extra}<ASAP_Annotations><Annotations>'
        f'<Annotation Name="t" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{coordinates}'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )


# Odd but readable: deep nesting inside a valid root holds no polygon (a negative slide).
READABLE_ANNOTATIONS = frozenset({"deep_in_asap.xml"})
HUGE = "9" * 400
DEEP = "[" * 100_000 + "]" * 100_000
SQUARE = "[[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]"


def _annotation_texts() -> dict[str, str | bytes]:
    texts: dict[str, str | bytes] = {
        # GeoJSON
        "features_null.geojson": '{"type": "FeatureCollection", "features": null}',
        "features_five.geojson": '{"type": "FeatureCollection", "features": 5}',
        "features_string.geojson": '{"type": "FeatureCollection", "features": "abc"}',
        "features_dict.geojson": '{"type": "FeatureCollection", "features": {"a": 1}}',
        "feature_null.geojson": '{"type": "FeatureCollection", "features": [null]}',
        "geometry_null.geojson": '{"type": "Feature", "geometry": null, "properties": {}}',
        "geometry_list.geojson": '{"type": "Feature", "geometry": [1, 2], "properties": {}}',
        "coordinates_null.geojson": _geojson("null"),
        "coordinates_number.geojson": _geojson("7"),
        "coordinates_flat.geojson": _geojson("[1, 2, 3, 4]"),
        "ring_of_numbers.geojson": _geojson("[[1, 2, 3]]"),
        "ring_of_strings.geojson": _geojson('[["a", "b", "c"]]'),
        "point_strings.geojson": _geojson('[[["1", "2"], ["3", "4"], ["5", "1"]]]'),
        "point_booleans.geojson": _geojson("[[[true, false], [true, true], [false, true]]]"),
        "point_nulls.geojson": _geojson("[[[null, null], [1, 2], [3, 1]]]"),
        "point_one_value.geojson": _geojson("[[[1], [2], [3]]]"),
        "point_nested.geojson": _geojson("[[[[1, 2]], [[3, 4]], [[5, 6]]]]"),
        "huge_int.geojson": _geojson(f"[[[0, 0], [{HUGE}, 0], [0, 10], [0, 0]]]"),
        "e300.geojson": _geojson("[[[0, 0], [1e300, 0], [0, 1e300], [0, 0]]]"),
        "e15.geojson": _geojson("[[[0, 0], [1e15, 0], [1e15, 1e15], [0, 1e15], [0, 0]]]"),
        "nan.geojson": _geojson("[[[0, 0], [NaN, 0], [0, 10], [0, 0]]]"),
        "infinity.geojson": _geojson("[[[0, 0], [Infinity, 0], [0, 10], [0, 0]]]"),
        "negative_e9.geojson": _geojson("[[[-1e9, 0], [0, 0], [0, 10], [-1e9, 0]]]"),
        "multipolygon_null_parts.geojson": _geojson("[null, 5]", "MultiPolygon"),
        "multipolygon_deep.geojson": _geojson(DEEP, "MultiPolygon"),
        "deep.geojson": DEEP,
        "deep_object.geojson": '{"a": ' * 50_000 + "1" + "}" * 50_000,
        "type_number.geojson": '{"type": 5, "features": []}',
        "top_level_number.geojson": "42",
        "top_level_string.geojson": '"FeatureCollection"',
        "truncated.geojson": _geojson(f"[{SQUARE}]")[:70],
        "empty.geojson": "",
        "whitespace.geojson": "   \n\t ",
        "latin1.geojson": b'{"type": "FeatureCollection", "features": [], "name": "\xe9\xff"}',
        "binary.geojson": bytes(range(256)),
        "bom_garbage.geojson": b"\xef\xbb\xbf\xff\xfe{",
        # CAMELYON16 JSON
        "positive_null.json": '{"positive": null, "negative": []}',
        "negative_null.json": '{"positive": [], "negative": null}',
        "positive_number.json": '{"positive": 3}',
        "positive_string.json": '{"positive": "abc"}',
        "item_null.json": '{"positive": [null]}',
        "item_list.json": '{"positive": [[1, 2]]}',
        "vertices_null.json": _c16("null"),
        "vertices_string.json": _c16('"0,0 1,1 2,0"'),
        "vertices_dict.json": _c16('{"x": 1}'),
        "vertices_booleans.json": _c16("[[true, true], [false, true], [false, false]]"),
        "vertices_strings.json": _c16('[["1", "2"], ["3", "4"], ["5", "1"]]'),
        "vertices_huge_int.json": _c16(f"[[0, 0], [{HUGE}, 0], [0, 10]]"),
        "vertices_e300.json": _c16("[[0, 0], [1e300, 0], [0, 1e300]]"),
        "vertices_e15.json": _c16("[[0, 0], [1e15, 0], [1e15, 1e15], [0, 1e15]]"),
        "vertices_minus_e15.json": _c16("[[0, 0], [-1e15, 0], [-1e15, -1e15]]"),
        "vertices_nan.json": _c16("[[0, 0], [NaN, 0], [0, 10]]"),
        "vertices_deep.json": _c16(DEEP),
        "vertices_ragged.json": _c16("[[0, 0], [1], [0, 10, 3, 4]]"),
        "exclusion_e15.json": _c16("[[0, 0], [1e15, 0], [0, 1e15]]", "negative"),
        "deep.json": DEEP,
        "truncated.json": _c16(SQUARE)[:40],
        "empty.json": "",
        "binary.json": bytes(range(255, -1, -1)),
        # ASAP XML
        "klingon.xml": _xml(["100", "900", "900", "100"], encoding="klingon"),
        "utf7.xml": _xml(["100", "900", "900", "100"], encoding="utf-7"),
        "x_e300.xml": _xml(["100", "1e300", "900", "100"]),
        "x_e15.xml": _xml(["100", "1e15", "1e15", "100"]),
        "x_huge_digits.xml": _xml(["100", HUGE, "900", "100"]),
        "x_inf.xml": _xml(["100", "inf", "900", "100"]),
        "x_nan.xml": _xml(["100", "nan", "900", "100"]),
        "x_true.xml": _xml(["100", "true", "900", "100"]),
        "x_empty.xml": _xml(["100", "", "900", "100"]),
        "x_hex.xml": _xml(["100", "0x10", "900", "100"]),
        "entity_expansion.xml": _xml(
            ["100", "&b;", "900", "100"],
            extra='<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>',
        ),
        "external_entity.xml": _xml(
            ["100", "&x;", "900", "100"], extra='<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        ),
        "deep.xml": "<a>" * 50_000 + "</a>" * 50_000,
        "deep_in_asap.xml": "<ASAP_Annotations>" + "<a>" * 50_000 + "</a>" * 50_000 + "</ASAP_Annotations>",
        "wrong_root.xml": "<svg><Annotation/></svg>",
        "truncated.xml": _xml(["100", "900", "900", "100"])[:120],
        "empty.xml": "",
        "binary.xml": bytes(range(256)),
        "not_xml.xml": "{}",
        "latin1_declared_utf8.xml": _xml(["100", "900", "900", "100"]).encode().replace(
            b'Name="t"', b'Name="\xe9"'
        ),
    }
    return texts


def _annotation_files(folder: Path) -> list[BadFile]:
    files = []
    for name, text in _annotation_texts().items():
        path = folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        files.append(BadFile(path, "annotation", may_be_valid=name in READABLE_ANNOTATIONS))
    # bit flips of a valid ASAP file: a readable outcome (a moved vertex) is allowed
    valid = _xml(["100", "900", "900", "100"]).encode()
    rng = _seeded(21)
    for index in range(12):
        flipped = bytearray(valid)
        position = int(rng.integers(0, len(valid)))
        flipped[position] ^= 1 << int(rng.integers(0, 8))
        path = folder / f"bitflip_{index:02d}.xml"
        path.write_bytes(bytes(flipped))
        files.append(BadFile(path, "annotation", may_be_valid=True))
    return files


# --- checkpoints ---------------------------------------------------------------------------


def _checkpoint_files(folder: Path, checkpoint: Path) -> list[BadFile]:
    import torch

    data = checkpoint.read_bytes()
    files: list[BadFile] = []

    def add(name: str, payload: bytes) -> None:
        path = folder / name
        path.write_bytes(payload)
        files.append(BadFile(path, "checkpoint"))

    def save(name: str, obj: object) -> None:
        path = folder / name
        torch.save(obj, path)
        files.append(BadFile(path, "checkpoint"))

    for fraction in (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        add(f"truncated_{int(fraction * 100):02d}.pt", data[: int(len(data) * fraction)])
    rng = _seeded(31)
    add("random.pt", rng.bytes(len(data)))
    add("text.pt", b"not a checkpoint\n")
    add("zip_of_text.pt", _zip_bytes({"archive/data.pkl": b"garbage"}))
    # the pickle payload of a malicious file: os.system via __reduce__ (weights_only refuses it)
    add("pickle_exec.pt", b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system"
        b"\x94\x93\x94\x8c\x05true\x94\x85\x94R\x94.")
    payload = torch.load(checkpoint, weights_only=True)
    save("list.pt", [1, 2, 3])
    save("tensor.pt", torch.zeros(3))
    save("empty_dict.pt", {})
    save("state_dict_only.pt", payload["state_dict"])
    save("no_card.pt", {k: v for k, v in payload.items() if k != "card"})
    save("no_weights.pt", {k: v for k, v in payload.items() if k != "state_dict"})
    for name, change in (
        ("card_arch_unknown", {"architecture": "nope"}),
        ("card_tile_text", {"tile_size_px": "big"}),
        ("card_tile_zero", {"tile_size_px": 0}),
        ("card_mpp_negative", {"mpp": -1.0}),
        ("card_mpp_zero", {"mpp": 0.0}),
        ("card_std_tiny", {"std": [1e-300, 1e-300, 1e-300]}),
        ("card_classes", {"class_names": ["a"]}),
        ("card_threshold", {"threshold": 7.0}),
        ("card_stain_bogus", {"stain_normalization": "bogus"}),
    ):
        save(f"{name}.pt", {**payload, "card": {**payload["card"], **change}})
    save("card_not_dict.pt", {**payload, "card": "micronet"})
    weights = payload["state_dict"]
    first = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    for name, tensor in (
        ("weights_nan", torch.full_like(weights[first], float("nan"))),
        ("weights_inf", torch.full_like(weights[first], float("inf"))),
        ("weights_int64", weights[first].to(torch.int64)),
        ("weights_shape", torch.zeros(3, 3)),
        ("weights_huge", torch.full_like(weights[first], -6.5e10)),
    ):
        save(f"{name}.pt", {**payload, "state_dict": {**weights, first: tensor}})
    fewer = {key: value for key, value in weights.items() if key != first}
    save("weights_missing_key.pt", {**payload, "state_dict": fewer})
    save("weights_extra_key.pt", {**payload, "state_dict": {**weights, "extra.weight": torch.zeros(2)}})
    # a flipped byte in the weights (the stored digest no longer matches)
    stored = bytearray(data)
    position = data.find(b"data/0") + 200
    for offset in range(3):
        stored[len(data) // 2 + 64 * offset] ^= 0x40
    add("weights_bytes_flipped.pt", bytes(stored))
    stored = bytearray(data)
    stored[position] ^= 0xFF
    add("weights_byte_flipped_early.pt", bytes(stored))
    return files


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


# --- CSVs ----------------------------------------------------------------------------------


def _csv_files(folder: Path) -> list[BadFile]:
    categories: dict[str, str | bytes] = {
        "empty.csv": "",
        "header_only.csv": "slide,category\n",
        "unknown_category.csv": "slide,category\npatient_001_node_0.tif,huge\n",
        "formula_category.csv": 'slide,category\npatient_001_node_0.tif,=HYPERLINK("x")\n',
        "missing_column.csv": "slide\npatient_001_node_0.tif\n",
        "wrong_header.csv": "a,b\n1,2\n",
        "binary.csv": bytes(range(256)),
        "latin1.csv": b"slide,category\npatient_001_node_0\xe9.tif,macro\n",
        "nul_bytes.csv": b"slide,category\npatient_001_node_0.tif,mac\x00ro\n",
        "unbalanced_quote.csv": 'slide,category\n"patient_001_node_0.tif,macro\n',
        "duplicate_slide.csv": (
            "slide,category\npatient_001_node_0.tif,macro\npatient_001_node_0.tif,negative\n"
        ),
        "empty_cells.csv": "slide,category\n,\n,\n",
        "huge_field.csv": "slide,category\n" + "x" * 200_000 + ",macro\n",
        "json.csv": '{"slide": "category"}',
        "stage_only.csv": "patient,stage\npatient_001.zip,pN1\n",
    }
    mappings: dict[str, str | bytes] = {
        "map_empty.csv": "",
        "map_header_only.csv": "slide,patient\n",
        "map_unknown_slide.csv": "slide,patient\nnot_in_batch.tif,P1\n",
        "map_missing_column.csv": "slide\npatient_001_node_0.tif\n",
        "map_binary.csv": bytes(range(256)),
        "map_empty_patient.csv": "slide,patient\npatient_001_node_0.tif,\n",
        "map_two_patients.csv": "slide,patient\npatient_001_node_0.tif,P1\npatient_001_node_0.tif,P2\n",
    }
    references: dict[str, str | bytes] = {
        "ref_empty.csv": "",
        "ref_bad_class.csv": "slide,class\nTest_001,Maybe\n",
        "ref_binary.csv": bytes(range(256)),
        "ref_header_only.csv": "slide,class\n",
        "ref_latin1.csv": b"slide,class\nTest_001,Tum\xe9r\n",
    }
    files = []
    for kind, group in (("categories_csv", categories), ("mapping_csv", mappings),
                        ("reference_csv", references)):
        for name, text in group.items():
            path = folder / name
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text, encoding="utf-8")
            files.append(BadFile(path, kind))
    return files


def write_corpus(folder: Path, valid: ValidInputs) -> list[BadFile]:
    """Write every bad input under ``folder`` (one subfolder per group); returns them all."""
    from bad_configs import write_settings_corpus

    groups = {
        "slides": lambda f: _slide_files(f, valid.slide),
        "annotations": _annotation_files,
        "checkpoints": lambda f: _checkpoint_files(f, valid.checkpoint),
        "csv": _csv_files,
        "settings": write_settings_corpus,
    }
    files: list[BadFile] = []
    for name, make in groups.items():
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        files.extend(make(sub))
    return files
