"""``fedrs data synth``: a procedural remote-sensing scene dataset, the offline default.

Ten land-cover classes drawn as top-down scenes (field mosaics, tree-crown texture, meandering
rivers, street grids with roofs, ...) in three "sensors" that differ in appearance statistics
the way Fed-RSIC's three source archives do:

* ``aerial``    sharp, natural colour;
* ``satellite`` half the ground resolution (blurred), darker, bluish;
* ``hazy``      atmospheric haze (low contrast, bright), warm cast, sensor noise.

Images are written as an ImageFolder tree per sensor (``OUT/raw/<sensor>/<class>/*.png``) and
then built into shards by the normal builder, so the default run exercises the same path as
real data. Everything is deterministic in the seed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fedrs.datasets.builder import BuildSpec, build
from fedrs.datasets.manifest import FedDataset
from fedrs.datasets.partition import PartitionSpec
from fedrs.io import atomic_open, new_output_dir

log = logging.getLogger(__name__)

Scene = Callable[[np.random.Generator, int], np.ndarray]
DOMAINS = ("aerial", "satellite", "hazy")


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random ``cells x cells`` grid, bicubic-upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def _tint(base: tuple[float, float, float], shade: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32)[None, None, :] * shade[..., None], 0, 1)


def _coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle (so linear features take any direction)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a = rng.uniform(0, np.pi)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def farmland(rng: np.random.Generator, s: int) -> np.ndarray:
    palette = np.array(
        [
            [0.45, 0.62, 0.25],
            [0.78, 0.72, 0.35],
            [0.55, 0.42, 0.25],
            [0.35, 0.55, 0.2],
            [0.85, 0.8, 0.5],
        ],
        np.float32,
    )
    u, v = _coords(s, rng)
    n = rng.integers(2, 5)
    cell = (np.floor((u + 0.5) * n) * 7 + np.floor((v + 0.5) * n)).astype(int)
    colors = palette[rng.integers(0, len(palette), size=cell.max() + 1)]
    img = colors[cell]
    stripes = 0.9 + 0.1 * np.sin(v * s * rng.uniform(1.0, 2.0))
    return img * stripes[..., None]


def forest(rng: np.random.Generator, s: int) -> np.ndarray:
    crowns = _noise(rng, s, s // 3) * 0.6 + _noise(rng, s, s // 8) * 0.4
    return _tint((0.12, 0.38, 0.12), 0.55 + 0.8 * crowns)


def grassland(rng: np.random.Generator, s: int) -> np.ndarray:
    return _tint((0.5, 0.72, 0.32), 0.85 + 0.3 * _noise(rng, s, 4))


def desert(rng: np.random.Generator, s: int) -> np.ndarray:
    u, _ = _coords(s, rng)
    dunes = 0.85 + 0.15 * np.sin(u * s * rng.uniform(0.5, 0.9) + 3 * _noise(rng, s, 3))
    return _tint((0.9, 0.78, 0.55), dunes)


def _land(rng: np.random.Generator, s: int) -> np.ndarray:
    return _tint((0.42, 0.55, 0.3), 0.8 + 0.4 * _noise(rng, s, 6))


def river(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _coords(s, rng)
    center = 0.15 * np.sin(u * rng.uniform(6, 12) + rng.uniform(0, 6))
    width = rng.uniform(0.06, 0.12)
    water = np.abs(v - center) < width
    img = _land(rng, s)
    img[water] = (
        np.array([0.15, 0.3, 0.5], np.float32) * (0.9 + 0.2 * _noise(rng, s, 8))[water, None]
    )
    return img


def lake(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    r = np.hypot(x - cx, (y - cy) * rng.uniform(0.7, 1.4)) + 0.15 * _noise(rng, s, 4)
    img = _land(rng, s)
    water = r < rng.uniform(0.3, 0.42)
    img[water] = np.array([0.1, 0.22, 0.42], np.float32)
    return img


def beach(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _coords(s, rng)
    shore = v + 0.05 * np.sin(u * 20) + rng.uniform(-0.15, 0.15)
    img = np.where(
        (shore < 0)[..., None],
        _tint((0.92, 0.85, 0.62), 0.9 + 0.1 * _noise(rng, s, 8)),
        _tint((0.1, 0.4, 0.6), 0.85 + 0.3 * _noise(rng, s, 12)),
    )
    surf = np.abs(shore) < 0.025
    img[surf] = 0.95
    return img


def highway(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _coords(s, rng)
    img = _land(rng, s)
    road = np.abs(v) < rng.uniform(0.08, 0.12)
    img[road] = 0.38
    img[road & (np.abs(v) < 0.006) & (np.sin(u * 60) > 0)] = 0.95  # lane marking
    return img


def residential(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _tint((0.4, 0.58, 0.3), 0.9 + 0.2 * _noise(rng, s, 8))
    block = int(rng.integers(s // 6, s // 4))
    road = max(1, block // 5)
    y, x = np.mgrid[0:s, 0:s]
    img[(y % block < road) | (x % block < road)] = 0.55
    roofs = np.array([[0.7, 0.3, 0.25], [0.6, 0.6, 0.62], [0.75, 0.5, 0.3]], np.float32)
    for by in range(road + 1, s - 2, block):
        for bx in range(road + 1, s - 2, block):
            for _ in range(2):
                h = int(rng.integers(2, max(3, block // 3)))
                oy, ox = (
                    by + int(rng.integers(0, max(1, block - road - h))),
                    bx + int(rng.integers(0, max(1, block - road - h))),
                )
                img[oy : oy + h, ox : ox + h] = roofs[rng.integers(0, len(roofs))]
    return img


def industrial(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _tint((0.55, 0.55, 0.52), 0.9 + 0.2 * _noise(rng, s, 6))
    for _ in range(int(rng.integers(3, 6))):
        h, w = rng.integers(s // 6, s // 2.5, size=2)
        oy, ox = rng.integers(0, s - h), rng.integers(0, s - w)
        img[oy : oy + h, ox : ox + w] = rng.choice([0.85, 0.75, 0.95]) * np.array(
            [1.0, 1.0, rng.uniform(1.0, 1.2)], np.float32
        )
    return img


SCENES: dict[str, Scene] = {
    "farmland": farmland,
    "forest": forest,
    "river": river,
    "residential": residential,
    "industrial": industrial,
    "lake": lake,
    "desert": desert,
    "beach": beach,
    "highway": highway,
    "grassland": grassland,
}


def apply_domain(img: np.ndarray, domain: str, rng: np.random.Generator) -> np.ndarray:
    """Sensor appearance: resolution, radiometry, haze and noise per domain."""
    s = img.shape[0]
    if domain == "satellite":
        small = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize(
            (s // 2, s // 2), Image.Resampling.BILINEAR
        )
        img = np.asarray(small.resize((s, s), Image.Resampling.BILINEAR), np.float32) / 255.0
        img = np.clip(img, 0, 1) ** 1.25 * np.array([0.9, 0.97, 1.12], np.float32)
    elif domain == "hazy":
        haze = np.array([0.82, 0.8, 0.76], np.float32)
        img = 0.65 * img * np.array([1.1, 1.0, 0.85], np.float32) + 0.35 * haze
        img = img + rng.normal(0, 0.035, img.shape).astype(np.float32)
    elif domain != "aerial":
        raise ValueError(f"unknown synthetic domain {domain!r}")
    return np.clip(img * rng.uniform(0.92, 1.08), 0, 1)


def render(class_name: str, domain: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 scene of ``class_name`` as seen by ``domain``."""
    img = SCENES[class_name](rng, size).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.rot90(img, k=int(rng.integers(0, 4)))
    return (apply_domain(img, domain, rng) * 255 + 0.5).astype(np.uint8)


def write_imagefolders(
    out: str | os.PathLike[str], per_class: int, size: int, seed: int
) -> dict[str, str]:
    """Write ``OUT/raw/<domain>/<class>/*.png``; return ``{domain: folder}`` for the builder.

    Domains get unequal sizes (1.0x, 0.75x, 0.5x ``per_class``), as real archives do.
    """
    roots: dict[str, str] = {}
    for d, domain in enumerate(DOMAINS):
        root = Path(out) / "raw" / domain
        count = max(2, round(per_class * (1.0, 0.75, 0.5)[d]))
        for c, name in enumerate(SCENES):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, d, c, i])
                with atomic_open(folder / f"{name}_{i:04d}.png", "wb") as fh:
                    Image.fromarray(render(name, domain, rng, size)).save(fh, format="PNG")
        roots[domain] = str(root)
    log.info("synthetic scenes: %d classes x %d sensors under %s", len(SCENES), len(DOMAINS), out)
    return roots


def build_synthetic(
    out: str | os.PathLike[str],
    per_class: int = 40,
    image_size: int = 64,
    partition: PartitionSpec | None = None,
    test_fraction: float = 0.2,
    workers: int = 1,
) -> FedDataset:
    """Generate the scenes and build them into shards at ``out`` (the run's default data)."""
    with new_output_dir(out):  # a failed build leaves no new folder behind
        roots = write_imagefolders(out, per_class, image_size, (partition or PartitionSpec()).seed)
        spec = BuildSpec(
            sources=tuple(roots.items()),
            out=str(out),
            partition=partition or PartitionSpec(),
            test_fraction=test_fraction,
            image_size=image_size,
            workers=workers,
        )
        return build(spec)


CAPTION_TEMPLATES = (
    "a satellite photo of {scene}.",
    "an aerial image showing {scene} from the {sensor} sensor.",
    "{adjective} {scene} seen from above.",
    "a {sensor} view of a {scene} area.",
    "there is {adjective} {scene} in this image.",
)
ADJECTIVES = ("wide", "small", "dense", "sparse", "bright", "dark", "green", "grey")


def write_caption_folder(
    out: str | os.PathLike[str], per_class: int, size: int, seed: int
) -> tuple[str, str]:
    """Write ``OUT/raw/captions/images/*.png`` with ``dataset.json`` (five captions per image
    from ``CAPTION_TEMPLATES``, each naming the scene, a sensor and a drawn adjective; every
    fifth image of a class in the test split) and ``classes.json`` (file -> scene class);
    return (caption folder, classes file) for the builder."""
    root = Path(out) / "raw" / "captions"
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records, classes = [], {}
    for c, name in enumerate(SCENES):
        for i in range(max(5, per_class)):
            rng = np.random.default_rng([seed, 7, c, i])
            sensor = DOMAINS[i % len(DOMAINS)]
            filename = f"{name}_{i:04d}.png"
            with atomic_open(images / filename, "wb") as fh:
                Image.fromarray(render(name, sensor, rng, size)).save(fh, format="PNG")
            words = {"scene": name, "sensor": sensor}
            sentences = [
                {"raw": t.format(**words, adjective=ADJECTIVES[rng.integers(len(ADJECTIVES))])}
                for t in CAPTION_TEMPLATES
            ]
            split = "test" if i % 5 == 4 else "train"
            records.append({"filename": filename, "split": split, "sentences": sentences})
            classes[filename] = name
    with atomic_open(root / "dataset.json", "w") as fh:
        json.dump({"images": records}, fh)
    classes_file = Path(out) / "raw" / "classes.json"
    with atomic_open(classes_file, "w") as fh:
        json.dump(classes, fh)
    log.info("synthetic captions: %d images of %d scenes under %s", len(records), len(SCENES), root)
    return str(root), str(classes_file)


def build_synthetic_captions(
    out: str | os.PathLike[str],
    per_class: int = 40,
    image_size: int = 64,
    partition: PartitionSpec | None = None,
) -> FedDataset:
    """Generated captioned scenes built into caption shards (retrieval methods' default data);
    label-skewed partitions use the scene classes."""
    with new_output_dir(out):
        seed = (partition or PartitionSpec()).seed
        folder, classes = write_caption_folder(out, per_class, image_size, seed)
        spec = BuildSpec(
            sources=(("captions", folder),),
            out=str(out),
            partition=partition or PartitionSpec(),
            image_size=image_size,
            caption_classes=classes,
        )
        return build(spec)
