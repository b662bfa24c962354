"""Multi-modal pixel data (hyperspectral + LiDAR) -> per-client Arrow shards.

Two kinds of input, one output format:

* a **scene**: co-registered rasters (HSI cube ``H x W x B``, LiDAR ``H x W x L``, ground-truth
  map; ``datasets/matfile.py`` reads them from .mat files, ``synth_scene`` generates one).
  Every labelled pixel becomes an example with a ``k x k`` patch per modality (reflect padding
  at the borders). The global test split is a random set of square tiles; training pixels
  within ``k - 1`` pixels of a test pixel are dropped (counted), so no training patch overlaps
  a test patch. ``--partition spatial`` gives each client a disjoint region of the scene.
* a **pixel table**: per-modality matrices of the same pixels without positions (the Houston
  2013 release), optionally with patch matrices; test split stratified per class.

Each band is standardised with the mean and standard deviation of the training pixels only.
Clients hold the modalities ``client_modalities`` assigns them, cycling over the clients:
``(("hsi", "lidar"),)`` every client paired; ``(("hsi",), ("lidar",))`` FedDiff's two kinds of
organisation. A client simply has no column for a modality it does not hold.

Shard arrays: ``<modality>``: ``(C, k, k)`` float32 per pixel; ``coords``: ``(2,)`` uint16 (row,
column; scenes only). The image column holds a false-colour RGB of the centre pixel
(``1 x 1 x 3``), for previews. The manifest (``kind = "multimodal"``) adds ``modalities``
(``{name: {"bands", "patch"}}``), ``scene`` (height, width, tile, buffer; null for a pixel
table) and per client its ``modalities``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fedrs
from fedrs.core.modal import client_groups, regions_of
from fedrs.datasets.builder import _local_test, _stratified_test_split
from fedrs.datasets.manifest import FORMAT, MANIFEST, FedDataset
from fedrs.datasets.partition import PartitionSpec, partition
from fedrs.datasets.shards import write_shard
from fedrs.errors import DataError, PartitionError
from fedrs.io import new_output_dir, write_json

log = logging.getLogger(__name__)

COORDS = "coords"  # the shard array of pixel positions (not a modality)
# GRSS DFC 2013 class order (labels 1..15), as the Houston 2013 release documents it
HOUSTON2013_CLASSES = (
    "healthy grass",
    "stressed grass",
    "synthetic grass",
    "trees",
    "soil",
    "water",
    "residential",
    "commercial",
    "road",
    "highway",
    "railway",
    "parking lot 1",
    "parking lot 2",
    "tennis court",
    "running track",
)


@dataclass(frozen=True)
class ModalBuildSpec:
    """How multi-modal pixels become client shards (validated)."""

    out: str
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    test_fraction: float = 0.2
    patch: dict[str, int] = field(default_factory=dict)  # modality -> k (default 1)
    # modality sets assigned to clients in turn; empty: every client holds every modality
    client_modalities: tuple[tuple[str, ...], ...] = ()
    # partner organisations ("hsi|lidar"): each partition part (a region) is held by one
    # client per group, with the same pixels; else the groups go to clients in turn
    partners: bool = False
    tile: int = 0  # scenes: side of the test tiles in pixels (0: about 100 tiles)
    source: str = "scene"  # a name for the domain column and the manifest

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        for name, k in self.patch.items():
            if k < 1 or k % 2 == 0:
                raise DataError(f"--patch-size {name}={k}: must be an odd number >= 1")
        if self.tile < 0:
            raise DataError(f"--tile-size must be >= 0, got {self.tile}")
        if self.partners and len(self.client_modalities) < 2:
            raise DataError("partner organisations need two modality groups ('hsi|lidar')")

    def patch_size(self, modality: str) -> int:
        return self.patch.get(modality, self.patch.get("*", 1))

    def modalities_of(self, cid: int, available: Sequence[str]) -> list[str]:
        """What client ``cid`` holds (under ``partners``: ``cid`` is an organisation's index
        within its region)."""
        if not self.client_modalities:
            return list(available)
        chosen = self.client_modalities[cid % len(self.client_modalities)]
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise DataError(
                f"--client-modalities names {unknown}, the data has modalities {list(available)}"
            )
        return list(chosen)


def _regions(spec: ModalBuildSpec, parts: int) -> list[list[int]]:
    """Under ``partners``: the client ids of each region (organisation g of region r is client
    ``r * G + g``)."""
    return regions_of(parts, len(spec.client_modalities))


def _holders(
    spec: ModalBuildSpec, parts: int, names: Sequence[str]
) -> list[tuple[int, int, list[str], list[int]]]:
    """``(client id, partition part, modalities, partner ids)`` of every client: one per part,
    or under ``partners`` one per part and modality group."""
    if not spec.partners:
        return [(cid, cid, spec.modalities_of(cid, names), []) for cid in range(parts)]
    out = []
    for part, ids in enumerate(_regions(spec, parts)):
        for g, cid in enumerate(ids):
            out.append((cid, part, spec.modalities_of(g, names), [i for i in ids if i != cid]))
    return out


def parse_client_modalities(text: str) -> tuple[tuple[str, ...], ...]:
    """``"hsi+lidar"`` -> every client paired; ``"hsi,lidar"`` -> alternating single-modality
    clients; ``"hsi+lidar,hsi,lidar"`` -> thirds."""
    try:
        return client_groups(text)
    except ValueError as exc:
        raise DataError(f"--client-modalities {exc}") from None


def parse_patch_sizes(values: Sequence[str]) -> dict[str, int]:
    """``["7"]`` -> every modality 7; ``["hsi=1", "lidar=7"]`` -> per modality."""
    out: dict[str, int] = {}
    for v in values:
        name, _, k = v.rpartition("=")
        try:
            out[name or "*"] = int(k)
        except ValueError:
            raise DataError(f"--patch-size {v!r}: give K or MODALITY=K") from None
    return out


# ---------------------------------------------------------------------------------------------
# Pure pieces: normalisation, patches, the spatial test split


def band_stats(cube: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-band mean and standard deviation over the given pixels of an ``H x W x C`` cube."""
    x = cube[rows, cols].astype(np.float64)
    std = x.std(0)
    return x.mean(0), np.where(std > 1e-12, std, 1.0)


def extract_patches(cube: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """``(n, C, k, k)`` float32 patches of an ``H x W x C`` cube centred on the given pixels,
    reflect-padded at the borders (the pixel itself is the centre, ``[:, :, k//2, k//2]``)."""
    r = k // 2
    padded = np.pad(cube, ((r, r), (r, r), (0, 0)), mode="reflect") if r else cube
    out = np.empty((len(rows), cube.shape[2], k, k), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = padded[rows + i, cols + j]
    return out


def tile_test_split(
    rows: np.ndarray,
    cols: np.ndarray,
    shape: tuple[int, int],
    fraction: float,
    tile: int,
    buffer: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(test, train, dropped) indices into the labelled pixels: whole square tiles drawn at
    random until they hold ``fraction`` of the pixels; training pixels within ``buffer``
    pixels (Chebyshev distance) of a test pixel are dropped, so ``k x k`` patches with
    ``buffer = k - 1`` never overlap across the split."""
    from scipy.ndimage import maximum_filter

    tile_id = (rows // tile) * (-(-shape[1] // tile)) + cols // tile
    tiles = np.unique(tile_id)
    goal, taken, chosen = fraction * len(rows), 0, []
    for t in rng.permutation(tiles):
        if taken >= goal:
            break
        chosen.append(t)
        taken += int((tile_id == t).sum())
    is_test = np.isin(tile_id, chosen)
    mask = np.zeros(shape, dtype=bool)
    mask[rows[is_test], cols[is_test]] = True
    near = maximum_filter(mask, size=2 * buffer + 1) if buffer else mask
    too_close = near[rows, cols] & ~is_test
    train = np.flatnonzero(~is_test & ~too_close)
    return np.flatnonzero(is_test), train, int(too_close.sum())


def false_colour(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 1, 1, 3)`` uint8 previews of the centre pixels: three bands of the widest
    modality at a quarter, half and three quarters of its range, each stretched to 0..255."""
    name = max(arrays, key=lambda m: (arrays[m].shape[1], m))
    x = arrays[name]
    c, k = x.shape[1], x.shape[2] // 2
    bands = x[:, [c // 4, c // 2, (3 * c) // 4], k, k].astype(np.float64)
    lo, hi = np.percentile(bands, 2, axis=0), np.percentile(bands, 98, axis=0)
    scaled = np.clip((bands - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return (scaled * 255).astype(np.uint8)[:, None, None, :]


# ---------------------------------------------------------------------------------------------
# Builds


def build_scene(
    hsi_lidar: dict[str, np.ndarray],
    gt: np.ndarray,
    spec: ModalBuildSpec,
    classes: Sequence[str] | None = None,
    origin: dict[str, Any] | None = None,
) -> FedDataset:
    """Build client shards from co-registered rasters ``{modality: H x W x C}`` and a ground
    truth ``H x W`` (0 unlabelled, classes 1..C)."""
    h, w = gt.shape
    for name, cube in hsi_lidar.items():
        if cube.shape[:2] != (h, w):
            raise DataError(f"modality {name} is {cube.shape[:2]}, the ground truth {(h, w)}")
    rows, cols = np.nonzero(gt > 0)
    labels = gt[rows, cols].astype(np.int64) - 1
    num_classes = int(gt.max())
    kmax = max(spec.patch_size(m) for m in hsi_lidar)
    tile = spec.tile or max(2 * kmax + 1, round((h * w / 100) ** 0.5))
    rng = np.random.default_rng(spec.partition.seed)
    test, train, dropped = tile_test_split(
        rows, cols, (h, w), spec.test_fraction, tile, kmax - 1, rng
    )
    arrays = {}
    for name, cube in hsi_lidar.items():
        mean, std = band_stats(cube, rows[train], cols[train])
        norm = ((cube - mean) / std).astype(np.float32)
        arrays[name] = extract_patches(norm, rows, cols, spec.patch_size(name))
    coords = np.stack([rows, cols], 1).astype(np.uint16)
    scene = {"height": h, "width": w, "tile": tile, "buffer": kmax - 1}
    return _write_build(
        spec,
        arrays,
        labels,
        coords,
        train,
        test,
        classes or [f"class {c}" for c in range(1, num_classes + 1)],
        scene,
        {"dropped_near_test": dropped, **(origin or {})},
    )


def build_pixel_table(
    modalities: dict[str, np.ndarray],
    labels: np.ndarray,
    spec: ModalBuildSpec,
    classes: Sequence[str] | None = None,
    origin: dict[str, Any] | None = None,
) -> FedDataset:
    """Build client shards from paired per-pixel matrices ``{modality: (N, F) or (N, C, k,
    k)}`` and 0-based ``labels``; the test split is stratified per class."""
    n = len(labels)
    rng = np.random.default_rng(spec.partition.seed)
    is_test = _stratified_test_split(labels, spec.test_fraction, rng)
    test, train = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    arrays = {}
    for name, x in modalities.items():
        if len(x) != n:
            raise DataError(f"modality {name} has {len(x)} rows, the labels {n}")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None, None]
        centre = x[train, :, x.shape[2] // 2, x.shape[3] // 2]
        std = centre.std(0)
        mean, std = centre.mean(0), np.where(std > 1e-12, std, 1.0)
        arrays[name] = ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    num_classes = int(labels.max()) + 1
    return _write_build(
        spec,
        arrays,
        labels.astype(np.int64),
        None,
        train,
        test,
        classes or [f"class {c}" for c in range(1, num_classes + 1)],
        None,
        origin or {},
    )


def _write_build(
    spec: ModalBuildSpec,
    arrays: dict[str, np.ndarray],
    labels: np.ndarray,
    coords: np.ndarray | None,
    train: np.ndarray,
    test: np.ndarray,
    classes: Sequence[str],
    scene: dict[str, Any] | None,
    origin: dict[str, Any],
) -> FedDataset:
    """Partition ``train`` over clients and write shards + manifest (atomically, as
    ``builder.build``: a new shard folder, then the manifest, then old folders removed)."""
    for name, x in arrays.items():
        if not np.isfinite(x).all():
            raise DataError(f"modality {name}: {int((~np.isfinite(x)).sum())} non-finite values")
    if len(classes) < int(labels.max()) + 1:
        raise DataError(f"{len(classes)} class names for {int(labels.max()) + 1} classes")
    p = spec.partition
    domains = np.full(len(train), spec.source)
    try:
        parts = partition(p, labels[train], domains, None if coords is None else coords[train])
    except PartitionError:
        raise
    client_rows = [train[q] for q in parts]
    names = sorted(arrays)
    previews = false_colour(arrays)
    out = Path(spec.out)
    build_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    final_dir = f"shards-{build_id}"
    with new_output_dir(out):
        staging = out / f".staging-{build_id}"
        staging.mkdir()
        try:

            def write(name: str, rows: np.ndarray, mods: Sequence[str]) -> dict[str, Any]:
                chosen = {m: arrays[m][rows] for m in mods}
                if coords is not None:
                    chosen[COORDS] = coords[rows]
                info = write_shard(
                    staging / name,
                    images=previews[rows],
                    ids=rows,
                    labels=labels[rows],
                    domains=[spec.source] * len(rows),
                    paths=[""] * len(rows),
                    arrays=chosen,
                )
                counts = np.bincount(labels[rows], minlength=len(classes))
                return {"shard": f"{final_dir}/{name}", **info, "class_counts": counts.tolist()}

            test_entry = write("test.arrow", test, names)
            clients = []
            for cid, part, mods, partners in _holders(spec, len(client_rows), names):
                rows = client_rows[part]
                local = _local_test(  # partners draw the same local test pixels
                    rows,
                    test,
                    labels.astype(str),
                    spec.test_fraction,
                    np.random.default_rng([p.seed, part if spec.partners else cid]),
                )
                clients.append(
                    {
                        "id": cid,
                        **write(f"client_{cid:05d}.arrow", rows, mods),
                        "modalities": mods,
                        "domain_counts": {spec.source: len(rows)},
                        "local_test": write(f"client_{cid:05d}_test.arrow", local, mods),
                        **({"region": part, "partners": partners} if spec.partners else {}),
                    }
                )
                log.info(
                    "client %d: %d train (%s), %d local test", cid, len(rows), mods, len(local)
                )
            os.replace(staging, out / final_dir)
            manifest = {
                "format": FORMAT,
                "kind": "multimodal",
                "classes": list(classes),
                "image": {"size": 1, "channels": 3, "layout": "HWC", "dtype": "uint8"},
                "modalities": {
                    m: {"bands": int(arrays[m].shape[1]), "patch": int(arrays[m].shape[2])}
                    for m in names
                },
                "scene": scene,
                "partition": p.as_dict(),
                "client_modalities": [list(g) for g in spec.client_modalities] or [names],
                # partner organisations: the clients of each region (same pixels, each with
                # its own modalities; every organisation holds the labels)
                "partners": _regions(spec, len(client_rows)) if spec.partners else None,
                "seed": p.seed,
                "test_fraction": spec.test_fraction,
                "sources": [{"name": spec.source, **origin.get("source", {})}],
                "counts": {
                    "found": len(labels),
                    "test": len(test),
                    "train": int(sum(len(r) for r in client_rows)),
                    "dropped": len(train) - int(sum(len(r) for r in client_rows)),
                    **{k: v for k, v in origin.items() if k != "source"},
                },
                "clients": clients,
                "test": test_entry,
                "build_id": build_id,
                "created_by": f"fedrs {fedrs.__version__}",
            }
            write_json(out / MANIFEST, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for old in out.iterdir():
        if old.is_dir() and old.name != final_dir and old.name.startswith(("shards-", ".staging-")):
            shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %s", out / MANIFEST)
    return FedDataset(out, verify=False)


# ---------------------------------------------------------------------------------------------
# A generated scene: the offline default for FedDiff


def synth_scene(
    height: int = 64,
    width: int = 64,
    bands: int = 32,
    lidar_bands: int = 2,
    materials: int = 3,
    heights: int = 2,
    seed: int = 0,
    noise: float = 0.35,
) -> dict[str, np.ndarray]:
    """A co-registered HSI + LiDAR scene with ``materials x heights`` classes.

    * class map: a Voronoi partition of the scene into ~``height * width / 60`` cells, each a
      class at random (spatially coherent regions of many sizes);
    * HSI: a class's material fixes its spectrum, a mixture of smooth random endmembers; each
      pixel varies its abundances and adds Gaussian noise;
    * LiDAR: a class's height level fixes the mean elevation; noise on every pixel, and an
      intensity band tied to the material only weakly.

    Classes that share a material differ only in height and vice versa, so neither modality
    alone separates every class: fusion has something to win. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    num_classes = materials * heights
    cells = max(num_classes, height * width // 60)
    centres = rng.uniform([0, 0], [height, width], size=(cells, 2))
    cell_class = rng.integers(0, num_classes, size=cells)
    yy, xx = np.mgrid[0:height, 0:width]
    d2 = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    cls = cell_class[d2.argmin(-1)]
    material, level = cls % materials, cls // materials
    grid = np.linspace(0, 1, bands)
    endmembers = np.stack(
        [
            0.3 + 0.25 * np.sin(2 * np.pi * (grid * rng.uniform(0.5, 2) + rng.uniform()))
            for _ in range(4)
        ]
    )
    mix = rng.dirichlet(np.ones(len(endmembers)) * 2, size=materials)
    abundance = mix[material] + rng.normal(0, 0.12, size=(height, width, len(endmembers)))
    hsi = abundance @ endmembers + rng.normal(0, noise * 0.1, size=(height, width, bands))
    elevation = level * 1.0 + rng.normal(0, noise * 1.2, size=(height, width))
    intensity = 0.2 * material + rng.normal(0, noise * 1.5, size=(height, width))
    lidar = np.stack([elevation, intensity][:lidar_bands], -1)
    return {
        "hsi": hsi.astype(np.float32),
        "lidar": lidar.astype(np.float32),
        "gt": (cls + 1).astype(np.int64),
    }


def synthetic_modalities(patch: int) -> dict[str, dict[str, int]]:
    """The manifest's ``modalities`` of ``synth_scene``'s defaults built with patch side
    ``patch`` (what a run on the synthetic default will find)."""
    return {"hsi": {"bands": 32, "patch": patch}, "lidar": {"bands": 2, "patch": patch}}


def build_synthetic_scene(spec: ModalBuildSpec, **scene_kwargs: Any) -> FedDataset:
    """``fedrs data synth --multimodal``: ``synth_scene`` built into client shards."""
    scene = synth_scene(seed=spec.partition.seed, **scene_kwargs)
    gt = scene.pop("gt")
    names = [
        f"material {m} / level {lv}"
        for lv in range(scene_kwargs.get("heights", 2))
        for m in range(scene_kwargs.get("materials", 3))
    ]
    return build_scene(scene, gt, spec, names, {"source": {"kind": "synthetic scene"}})


# ---------------------------------------------------------------------------------------------
# .mat sources (``fedrs data build --source NAME=PATH``)


def is_mat_source(path: str | os.PathLike[str]) -> bool:
    """A .mat file, or a folder holding .mat files (and no image class folders)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".mat"
    if not p.is_dir():
        return False
    entries = list(p.iterdir())
    return any(e.suffix.lower() == ".mat" for e in entries) and not any(e.is_dir() for e in entries)


def _variable_names(files: list[Path]) -> list[str]:
    """Variable names of .mat files without loading their arrays (v5: ``whosmat``; v7.3:
    the HDF5 keys)."""
    from scipy.io import whosmat

    names: list[str] = []
    for f in files:
        try:
            names += [n for n, _, _ in whosmat(f)]
        except Exception:  # v7.3 (HDF5) or unreadable: load_mat gives the one-line error
            import h5py

            try:
                with h5py.File(f, "r") as h5:
                    names += [k for k in h5 if not k.startswith("#")]
            except OSError:
                from fedrs.datasets.matfile import load_mat

                names += list(load_mat(f))
    return names


def parse_patch_files(values: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """``["lidar=PATH"]`` or ``["lidar=PATH:7"]`` -> ``{"lidar": (PATH, 7 or None)}``."""
    out: dict[str, tuple[str, int | None]] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise DataError(f"--patches {v!r}: give MODALITY=PATH or MODALITY=PATH:K")
        path, _, k = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
        out[name] = (path, int(k) if k else None)
    return out


def build_from_mat(
    name: str,
    path: str,
    spec: ModalBuildSpec,
    names: dict[str, str] | None = None,
    patch_files: dict[str, tuple[str, int | None]] | None = None,
) -> FedDataset:
    """A scene (rasters + ground-truth map) or a pixel table (``<MOD>_TrSet`` + ``TrLabel``,
    as the Houston 2013 release) read from .mat files, built into client shards."""
    import re

    from fedrs.datasets.matfile import read_pixel_table, read_scene

    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.suffix.lower() == ".mat")
    table = any(
        re.fullmatch(r"(?i)\w+_(tr|te)set|trlabel|telabel", n) for n in _variable_names(files)
    )
    origin = {
        "source": {"path": os.path.abspath(path), "kind": "pixel table" if table else "scene"}
    }
    spec = dataclasses.replace(spec, source=name)
    if table:
        patches = {}
        for mod, (file, k) in (patch_files or {}).items():
            patches[mod] = (file, k or _infer_patch(file, p if p.is_dir() else p.parent, mod))
        t = read_pixel_table(p if p.is_dir() else p.parent, names, patches)
        houston = t.names.get("labels", "").endswith("TrLabel") and t.num_classes == 15
        log.info("pixel table %s: %s", path, {m: x.shape for m, x in t.modalities.items()})
        return build_pixel_table(
            t.modalities, t.labels, spec, HOUSTON2013_CLASSES if houston else None, origin
        )
    if patch_files:
        raise DataError(
            "--patches applies to pixel tables; a scene's patches are cut by --patch-size"
        )
    scene = read_scene(files, names)
    log.info("scene %s: hsi %s, lidar %s", path, scene.hsi.shape, scene.lidar.shape)
    return build_scene({"hsi": scene.hsi, "lidar": scene.lidar}, scene.gt, spec, None, origin)


def _infer_patch(file: str, folder: Path, modality: str) -> int:
    """k of an (N, k*k*C) patch matrix whose modality's pixel matrix (N, C) is in ``folder``."""
    from fedrs.datasets.matfile import load_mat, read_pixel_table

    width = max(v.shape[1] for v in load_mat(file).values() if v.ndim == 2)
    bands = read_pixel_table(folder).modalities.get(modality)
    if bands is None:
        raise DataError(f"--patches {modality}={file}: give the patch side, {modality}=PATH:K")
    k = round((width / bands.shape[1]) ** 0.5)
    if k * k * bands.shape[1] != width:
        raise DataError(f"--patches {modality}: width {width} is not k*k*{bands.shape[1]}")
    return k
