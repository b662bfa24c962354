"""Read multi-modal remote-sensing data from MATLAB .mat files.

Two layouts are read:

* **Scenes** (Houston2013, Trento, MUUFL as usually redistributed): a hyperspectral cube
  H x W x B, a LiDAR raster H x W or H x W x L and a ground-truth map H x W (0 = unlabelled),
  all in one .mat file or one file per modality. Each role's variable is found by its name
  (``HSI``, ``LiDAR``, ``DSM``, ``gt``, ``TRLabel`` ...), failing that by its shape, or given
  explicitly (``--var ROLE=NAME`` / ``ROLE=FILE:NAME``).
* **Pixel tables** (the MDL-RS release of Houston2013): per-modality matrices N x F of pixels
  (``HSI_TrSet``, ``LiDAR_TeSet``), labels N x 1 (``TrLabel``, ``TeLabel``) and optionally
  patches N x (k*k*C) flattened in MATLAB column-major order.

MATLAB v4-v7 files are read with scipy, v7.3 files (HDF5) with h5py. Arrays inside structs
and cells (MUUFL's original ``hsi.Data`` / ``hsi.sceneLabels.labels`` / ``hsi.Lidar{1}.z``)
are read too, named by their MATLAB path; finding a role by name looks at every part of that
path. Every problem is one line: a :class:`~fedrs.errors.DataError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrs.errors import DataError

log = logging.getLogger(__name__)

ROLES = ("hsi", "lidar", "gt")
SPLIT_ROLES = ("gt_train", "gt_test")  # optional: a ground truth split into train/test maps
ALL_ROLES = ROLES + SPLIT_ROLES
HSI_MIN_BANDS = 10  # by shape, a 3-D array with fewer bands is LiDAR, with more a cube

# Known variable names per role (case-insensitive), best first.
KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "hsi": (
        "hsi", "hsi_data", "hsi_img", "hsi_image", "hyperspectral", "hs", "houston",
        "houston2013", "houston_hsi", "trento", "trento_hsi", "muufl", "muufl_hsi", "augsburg",
        "data", "img", "image", "cube",
    ),
    "lidar": (
        "lidar", "lidar_data", "lidar_img", "lidar_image", "lidar_dsm", "dsm", "ndsm", "dem",
        "houston_lidar", "trento_lidar", "muufl_lidar", "elevation", "height",
    ),
    "gt": (
        "gt", "ground_truth", "groundtruth", "gt_map", "gt_all", "all_gt", "houston_gt",
        "trento_gt", "muufl_gt", "label", "labels", "label_map", "labelmap", "class_map", "map",
    ),
    "gt_train": (
        "trlabel", "tr_label", "trlabels", "train_gt", "gt_train", "tr_gt", "train_label",
        "train_labels", "trainlabel", "trainlabels", "train_map", "train",
    ),
    "gt_test": (
        "tslabel", "ts_label", "tslabels", "telabel", "te_label", "telabels", "test_gt",
        "gt_test", "ts_gt", "te_gt", "test_label", "test_labels", "testlabel", "testlabels",
        "test_map", "test",
    ),
}  # fmt: skip

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NUMERIC_KINDS = frozenset("biuf")
_MATLAB_SKIP_CLASSES = frozenset({"char", "cell", "struct", "function_handle", "string"})
_TABLE_VAR = re.compile(r"(?P<mod>\w+?)_(?P<split>tr|te)set", re.IGNORECASE)
_TRAIN_LABELS = frozenset({"trlabel", "tr_label", "trlabels", "train_label", "train_labels"})
_TEST_LABELS = frozenset(
    {"telabel", "te_label", "telabels", "tslabel", "ts_label", "test_label", "test_labels"}
)


# --------------------------------------------------------------------------- reading .mat


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric variables of a MATLAB .mat file (v4-v7 or v7.3), in MATLAB's shapes.

    Text, cells and structs are skipped. Raises DataError when the file is missing, is not a
    .mat file, is truncated or holds no numeric array."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file")
    skipped: list[str] = []
    try:
        if p.is_dir():
            raise _Unreadable("a directory")
        if _has_hdf5_signature(p):
            variables = _load_hdf5(p, skipped)
        else:
            with p.open("rb") as fh:
                head = fh.read(128)
            if head.startswith(b"MATLAB 7.3"):
                raise _Unreadable("a v7.3 header without HDF5 data: truncated?")
            variables = _load_v5(p, skipped)
    except Exception as exc:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({_reason(exc)})") from None
    if not variables:
        reason = f"no numeric arrays, only {', '.join(skipped)}" if skipped else "no variables"
        if not skipped:
            reason += ": empty or truncated?"
        raise DataError(f"{path}: not a readable MATLAB .mat file ({reason})")
    if skipped:
        log.debug("%s: skipped non-numeric variables %s", path, ", ".join(skipped))
    return variables


class _Unreadable(Exception):
    """A reason why a file is not a .mat file, found before any reader ran."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Unreadable):
        return str(exc)
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _has_hdf5_signature(path: Path) -> bool:
    """HDF5's superblock signature at offset 0, 512, 1024, 2048 ... (a v7.3 file has a 512-byte
    MATLAB header as the HDF5 user block)."""
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as fh:
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


MAX_NESTING = 6  # struct / cell levels followed
MAX_CELL_ITEMS = 64  # a larger cell is skipped, not walked


def _load_v5(path: Path, skipped: list[str]) -> dict[str, np.ndarray]:
    import scipy.io

    out: dict[str, np.ndarray] = {}
    for name, value in scipy.io.loadmat(str(path), appendmat=False).items():
        if not name.startswith("__"):
            _walk_v5(name, value, out, skipped, 0)
    return out


def _walk_v5(
    name: str, value: object, out: dict[str, np.ndarray], skipped: list[str], depth: int
) -> None:
    """Numeric arrays under ``name``: the array itself, a 1 x 1 struct's fields
    (``name.field``) or a cell's items (``name{k}``, MATLAB's linear index)."""
    import scipy.sparse

    if scipy.sparse.issparse(value):
        value = value.toarray()
    dtype = getattr(value, "dtype", None)
    if isinstance(value, np.ndarray) and value.dtype.kind in _NUMERIC_KINDS:
        out[name] = value
    elif dtype is not None and dtype.names and value.size == 1 and depth < MAX_NESTING:
        record = value.reshape(-1)[0]
        for field in dtype.names:
            _walk_v5(f"{name}.{field}", record[field], out, skipped, depth + 1)
    elif (
        isinstance(value, np.ndarray)
        and dtype is not None
        and dtype.kind == "O"
        and 0 < value.size <= MAX_CELL_ITEMS
        and depth < MAX_NESTING
    ):
        for k, item in enumerate(value.ravel(order="F"), start=1):
            _walk_v5(f"{name}{{{k}}}", item, out, skipped, depth + 1)
    else:
        kind = type(value).__name__ if dtype is None else str(dtype)
        if dtype is not None:
            kind = {"U": "char", "S": "char", "O": "cell", "V": "struct"}.get(dtype.kind, kind)
        skipped.append(f"{name} ({kind})")


def _load_hdf5(path: Path, skipped: list[str]) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise _Unreadable("a v7.3 (HDF5) file, and h5py is not installed") from None
    out: dict[str, np.ndarray] = {}

    def walk(name: str, item: object, depth: int) -> None:
        """A struct is a group (``name.field``), a cell a dataset of references (``name{k}``)."""
        if isinstance(item, h5py.Group):
            if depth >= MAX_NESTING:
                skipped.append(f"{name} (struct)")
                return
            for field, sub in item.items():
                walk(f"{name}.{field}", sub, depth + 1)
            return
        assert isinstance(item, h5py.Dataset)
        cls = item.attrs.get("MATLAB_class", b"")
        cls = cls.decode() if isinstance(cls, bytes) else str(cls)
        if item.dtype == h5py.ref_dtype and 0 < item.size <= MAX_CELL_ITEMS and depth < MAX_NESTING:
            refs = np.asarray(item[()]).T.ravel(order="F")  # MATLAB's linear (column-major) index
            for k, ref in enumerate(refs, start=1):
                walk(f"{name}{{{k}}}", f[ref], depth + 1)
            return
        if cls in _MATLAB_SKIP_CLASSES or item.dtype.kind not in _NUMERIC_KINDS:
            skipped.append(f"{name} ({cls or item.dtype})")
            return
        if item.attrs.get("MATLAB_empty", 0):
            skipped.append(f"{name} (empty)")
            return
        value = np.asarray(item[()]).T  # HDF5 holds MATLAB's column-major arrays reversed
        out[name] = value.astype(bool) if cls == "logical" else value

    with h5py.File(path, "r") as f:
        for name, item in f.items():
            if not name.startswith("#"):  # "#refs#", "#subsystem#": cell / object storage
                walk(name, item, 0)
    return out


# --------------------------------------------------------------------------- finding roles


def _split_key(key: str) -> tuple[str, str]:
    """``"FILE:NAME"`` -> (FILE, NAME); ``"NAME"`` -> ("", NAME). MATLAB names have no colon."""
    file, sep, var = key.rpartition(":")
    return (file, var) if sep else ("", var)


def _file_id(name: str) -> str:
    base = Path(name).name
    return (base[:-4] if base.lower().endswith(".mat") else base).casefold()


def _describe(variables: Mapping[str, np.ndarray], limit: int = 12) -> str:
    items = [f"{k} {tuple(v.shape)} {v.dtype}" for k, v in variables.items()]
    if len(items) > limit:
        items = [*items[:limit], f"... and {len(items) - limit} more"]
    return ", ".join(items) if items else "no numeric variables"


def _is_integral(arr: np.ndarray) -> bool:
    if arr.dtype.kind in "biu":
        return True
    return bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))


def _fits(role: str, arr: np.ndarray) -> bool:
    """Whether a variable found by name has a shape the role can use."""
    if role == "hsi":
        return arr.ndim == 3
    if role == "lidar":
        return arr.ndim in (2, 3)
    return arr.ndim == 2


def _best(scored: Iterable[tuple[int, str]]) -> list[str]:
    scored = list(scored)
    if not scored:
        return []
    top = min(score for score, _ in scored)
    return [key for score, key in scored if score == top]


def _name_rank(key: str, known: tuple[str, ...]) -> int | None:
    """The variable's rank in ``known``: its own (last) name's, else, behind every such name,
    the best of its MATLAB path's other parts (``hsi.Lidar{1}.z``: z, then hsi or lidar); None
    when no part is known."""
    parts = re.sub(r"\{\d+\}", "", _split_key(key)[1].casefold()).split(".")
    if parts[-1] in known:
        return known.index(parts[-1])
    ranks = [known.index(p) for p in parts[:-1] if p in known]
    return len(known) + min(ranks) if ranks else None


def _by_name(variables: Mapping[str, np.ndarray], role: str) -> list[str]:
    """Variables with a known name of the role, best name first; a name whose array also has
    the role's shape (e.g. ``data`` with >= 10 bands for hsi) beats one that only fits."""
    known = KNOWN_NAMES[role]
    ranks = {key: _name_rank(key, known) for key in variables}
    named = {
        key: arr for key, arr in variables.items() if ranks[key] is not None and _fits(role, arr)
    }
    typical = set(_by_shape(named, "gt" if role in SPLIT_ROLES else role, best=False))
    return _best(
        (int(ranks[key] or 0) + (0 if key in typical else 2 * len(known)), key) for key in named
    )


def _by_shape(variables: Mapping[str, np.ndarray], role: str, best: bool = True) -> list[str]:
    """hsi: the 3-D array with the most bands (>= 10); gt: a 2-D array of integers >= 0
    (integer types first); lidar: a 3-D array with < 10 bands or a 2-D one (fractional values
    first). The best candidates, or with ``best=False`` every one that fits."""
    scored: list[tuple[int, str]] = []
    for key, arr in variables.items():
        if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2 or arr.dtype.kind == "b":
            continue
        if role == "hsi" and arr.ndim == 3 and arr.shape[2] >= HSI_MIN_BANDS:
            scored.append((-arr.shape[2], key))
        elif role == "lidar" and arr.ndim == 3 and arr.shape[2] < HSI_MIN_BANDS:
            scored.append((0, key))
        elif role == "lidar" and arr.ndim == 2:
            scored.append((int(_is_integral(arr)), key))
        elif role == "gt" and arr.ndim == 2 and _is_integral(arr) and arr.min() >= 0:
            scored.append((0 if arr.dtype.kind in "iu" else 1, key))
    return _best(scored) if best else [key for _, key in scored]


def _by_explicit(variables: Mapping[str, np.ndarray], role: str, name: str, where: str) -> str:
    file, var = _split_key(name)

    def matches(key: str, fold: bool) -> bool:
        kfile, kvar = _split_key(key)
        same_var = kvar.casefold() == var.casefold() if fold else kvar == var
        return same_var and (not file or _file_id(kfile) == _file_id(file))

    hits = [k for k in variables if matches(k, False)] or [k for k in variables if matches(k, True)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(f"{role}: no variable {name!r}{where} (found: {_describe(variables)})")
    raise DataError(f"{role}: {name!r} matches {', '.join(hits)}; give --var {role}=FILE:NAME")


def find_role(
    variables: dict[str, np.ndarray], role: str, name: str | None = None, where: str = ""
) -> tuple[str, np.ndarray]:
    """The (key, array) holding ``role`` among ``variables`` (keys ``NAME`` or ``FILE:NAME``).

    ``name`` (``NAME`` or ``FILE:NAME``) must exist; otherwise the variable is found by its
    known names, then (hsi, lidar, gt only) by shape. ``where`` (e.g. ``"in HSI.mat"``) goes
    into the error messages. Raises DataError when nothing or more than one variable fits."""
    if role not in ALL_ROLES:
        raise DataError(f"unknown role {role!r}; roles are {', '.join(ALL_ROLES)}")
    where = f" {where}" if where else ""
    if name:
        key = _by_explicit(variables, role, name, where)
        return key, variables[key]
    hits, how = _by_name(variables, role), "by name"
    if not hits and role in ROLES:
        hits, how = _by_shape(variables, role), "by shape"
    if len(hits) == 1:
        return hits[0], variables[hits[0]]
    if hits:
        raise DataError(
            f"{role}: {len(hits)} variables fit equally well {how}{where} "
            f"({_describe({k: variables[k] for k in hits})}); give --var {role}=NAME"
        )
    raise DataError(
        f"{role}: no variable found{where} (found: {_describe(variables)}); give --var {role}=NAME"
    )


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True, eq=False)
class Scene:
    """A co-registered scene: cube, LiDAR raster and ground truth (0 = unlabelled)."""

    hsi: np.ndarray  # (H, W, B) float32
    lidar: np.ndarray  # (H, W, L) float32
    gt: np.ndarray  # (H, W) int64, classes 1..C
    names: dict[str, str]  # role -> "file:variable"
    gt_train: np.ndarray | None = None  # (H, W) int64, when the release splits the ground truth
    gt_test: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.gt.max())


def _mat_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() == ".mat" and q.is_file())
            if not found:
                raise DataError(f"{path}: no .mat files in this folder")
            files.extend(found)
        else:
            files.append(p)
    return files


def _file_labels(files: list[Path]) -> dict[Path, str]:
    """Each file's name in variable keys: its base name, or its path where names repeat."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.name] = counts.get(f.name, 0) + 1
    return {f: f.name if counts[f.name] == 1 else str(f) for f in files}


def _float_array(arr: np.ndarray, role: str, key: str) -> np.ndarray:
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataError(f"{role} {key}: {bad} of {out.size} values are NaN or infinite")
    return out


def _label_array(arr: np.ndarray, role: str, key: str) -> np.ndarray:
    if arr.dtype.kind not in "biu" and not _is_integral(arr):
        raise DataError(f"{role} {key}: labels must be whole numbers (found fractions, NaN or inf)")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out.size and out.min() < 0:
        raise DataError(f"{role} {key}: labels must be >= 0 (found {out.min()})")
    return out


def read_scene(paths: list[str | Path], names: dict[str, str] | None = None) -> Scene:
    """Read a scene from one .mat file holding cube, LiDAR and ground truth, or several files
    (a folder stands for its .mat files). ``names`` maps a role (hsi, lidar, gt, gt_train,
    gt_test) to ``NAME`` or ``FILE:NAME``; other roles are found by name, then by shape. A
    ground truth split in train/test maps only gives ``gt`` = train where > 0, else test."""
    files = _mat_files(paths)
    if not files:
        raise DataError("no .mat files given")
    labels = _file_labels(files)
    variables = {f"{labels[f]}:{var}": arr for f in files for var, arr in load_mat(f).items()}
    where = "in " + ", ".join(labels.values())
    names = dict(names or {})
    unknown = sorted(set(names) - set(ALL_ROLES))
    if unknown:
        raise DataError(f"unknown role {unknown[0]!r}; roles are {', '.join(ALL_ROLES)}")

    found: dict[str, str] = {}  # role -> key
    for role, name in names.items():
        key, _ = find_role(variables, role, name, where)
        if key in found.values():
            raise DataError(f"{key} is given for two roles")
        found[role] = key

    def free() -> dict[str, np.ndarray]:
        return {k: v for k, v in variables.items() if k not in found.values()}

    for role in (*SPLIT_ROLES, "gt", "hsi", "lidar"):
        if role not in found and _by_name(free(), role):
            found[role], _ = find_role(free(), role, None, where)
    for role in ("hsi", "gt", "lidar"):
        if role in found or (role == "gt" and any(r in found for r in SPLIT_ROLES)):
            continue
        pool = free()
        if "hsi" in found:  # prefer rasters of the cube's size when guessing by shape
            hw = variables[found["hsi"]].shape[:2]
            same = {k: v for k, v in pool.items() if v.shape[:2] == hw}
            pool = same if _by_shape(same, role) else pool
        found[role], _ = find_role(pool, role, None, where)
    for role, key in found.items():
        arr = variables[key]
        log.info("%s <- %s %s %s", role, key, tuple(arr.shape), arr.dtype)

    raw = {role: variables[key] for role, key in found.items()}
    if raw["hsi"].ndim != 3:
        raise DataError(f"hsi {found['hsi']}: shape {raw['hsi'].shape}, expected H x W x B")
    if raw["lidar"].ndim not in (2, 3):
        raise DataError(
            f"lidar {found['lidar']}: shape {raw['lidar'].shape}, expected H x W or H x W x L"
        )
    for role in ("gt", *SPLIT_ROLES):
        if role in raw and raw[role].ndim != 2:
            raise DataError(f"{role} {found[role]}: shape {raw[role].shape}, expected H x W")
    if len({arr.shape[:2] for arr in raw.values()}) > 1:
        shapes = ", ".join(f"{r} {found[r]} {tuple(a.shape)}" for r, a in raw.items())
        raise DataError(f"height and width do not agree: {shapes}")

    hsi = _float_array(raw["hsi"], "hsi", found["hsi"])
    lidar = _float_array(raw["lidar"], "lidar", found["lidar"])
    if lidar.ndim == 2:
        lidar = lidar[:, :, None]
    maps = {r: _label_array(raw[r], r, found[r]) for r in ("gt", *SPLIT_ROLES) if r in raw}
    out_names = dict(found)
    if "gt" not in maps:
        train, test = maps.get("gt_train"), maps.get("gt_test")
        if train is not None and test is not None:
            maps["gt"] = np.where(train > 0, train, test)
        else:
            maps["gt"] = train if train is not None else test
        out_names["gt"] = " + ".join(found[r] for r in SPLIT_ROLES if r in found)
    if not np.any(maps["gt"] > 0):
        raise DataError(f"gt {out_names['gt']}: no labelled pixel (every value is 0)")
    return Scene(
        hsi=hsi,
        lidar=lidar,
        gt=maps["gt"],
        names=out_names,
        gt_train=maps.get("gt_train"),
        gt_test=maps.get("gt_test"),
    )


# --------------------------------------------------------------------------- pixel tables


@dataclass(frozen=True, eq=False)
class PixelTable:
    """Labelled pixels as per-modality feature matrices (or patches), plus an optional test
    set. Labels are 0-based."""

    modalities: dict[str, np.ndarray]  # name -> (N, F) or patches (N, C, k, k), float32
    labels: np.ndarray  # (N,) int64
    test_modalities: dict[str, np.ndarray]  # name -> (N_test, F), may be empty
    test_labels: np.ndarray | None  # (N_test,) int64
    names: dict[str, str]  # role (hsi, labels, lidar_test, test_labels ...) -> "file:variable"

    @property
    def num_classes(self) -> int:
        top = int(self.labels.max(initial=-1))
        if self.test_labels is not None:
            top = max(top, int(self.test_labels.max(initial=-1)))
        return top + 1


def reshape_patches(mat: np.ndarray, k: int) -> np.ndarray:
    """(N, k*k*C) rows, each a k x k x C MATLAB array flattened column-major (first index
    fastest) -> (N, C, k, k) float32 with ``[n, c, i, j]`` = MATLAB's ``A(i+1, j+1, c+1)``."""
    if k < 1:
        raise DataError(f"patch size must be >= 1, got {k}")
    if mat.ndim != 2:
        raise DataError(f"patches must be an N x (k*k*C) matrix, got shape {mat.shape}")
    n, width = mat.shape
    if width == 0 or width % (k * k):
        raise DataError(f"patch width {width} is not a multiple of k*k = {k * k} (k = {k})")
    # C order reads the flat index c*k*k + j*k + i as [c, j, i]: swap the last two axes.
    out = np.asarray(mat).reshape(n, width // (k * k), k, k).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _table_role(var: str) -> str | None:
    """The pixel-table role of a release variable name: ``hsi``, ``lidar_test``, ``labels``,
    ``test_labels`` ... or None."""
    m = _TABLE_VAR.fullmatch(var)
    if m:
        mod = m.group("mod").lower()
        return mod if m.group("split").lower() == "tr" else f"{mod}_test"
    folded = var.casefold()
    if folded in _TRAIN_LABELS:
        return "labels"
    if folded in _TEST_LABELS:
        return "test_labels"
    return None


def _label_vector(arr: np.ndarray, role: str, key: str) -> np.ndarray:
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) != 1):
        raise DataError(f"{role} {key}: shape {arr.shape}, expected a vector N x 1")
    return _label_array(arr.reshape(-1), role, key)


def _check_rows(kind: str, arrays: Mapping[str, tuple[str, np.ndarray]]) -> None:
    rows = {len(arr) for _, arr in arrays.values()}
    if len(rows) > 1:
        listed = ", ".join(f"{r} {key} {len(a)}" for r, (key, a) in arrays.items())
        raise DataError(f"{kind} rows do not agree: {listed}")


def _patch_variable(path: str | Path, modality: str) -> tuple[str, np.ndarray]:
    variables = {k: v for k, v in load_mat(path).items() if v.ndim == 2}
    if len(variables) == 1:
        return next(iter(variables.items()))
    named = [k for k in variables if _table_role(k) == modality]
    if len(named) == 1:
        return named[0], variables[named[0]]
    raise DataError(
        f"{modality} patches {path}: cannot tell which matrix holds them "
        f"({_describe(variables)}); keep one matrix per patch file"
    )


def read_pixel_table(
    folder: str | Path,
    names: dict[str, str] | None = None,
    patches: dict[str, tuple[str | Path, int]] | None = None,
) -> PixelTable:
    """Read the .mat files of ``folder`` as a pixel table.

    Release names are recognised case-insensitively: ``<MOD>_TrSet`` / ``<MOD>_TeSet`` (modality
    ``mod``), ``TrLabel`` / ``TeLabel``. ``names`` maps ``labels``, ``test_labels``, ``<mod>`` or
    ``<mod>_test`` to ``NAME`` or ``FILE:NAME``. ``patches`` maps a modality to (a .mat holding
    its N x (k*k*C) patches, k); they replace its pixel features, whose values must equal the
    patch centres. Labels become 0-based unless a 0 label is present."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".mat" and p.is_file())
    if not files:
        raise DataError(f"{folder}: no .mat files in this folder")
    variables = {f"{f.name}:{var}": arr for f in files for var, arr in load_mat(f).items()}
    where = f" in {folder}"

    candidates: dict[str, list[str]] = {}
    for key in variables:
        role = _table_role(_split_key(key)[1])
        if role is not None:
            candidates.setdefault(role, []).append(key)
    found: dict[str, str] = {}
    for role, name in (names or {}).items():
        found[role] = _by_explicit(variables, role, name, where)
    for role, keys in candidates.items():
        if role in found:
            continue
        if len(keys) > 1:
            raise DataError(f"{role}: {', '.join(keys)}{where}; give --var {role}=FILE:NAME")
        found[role] = keys[0]
    if "labels" not in found:
        raise DataError(
            f"no training labels (TrLabel){where} (found: {_describe(variables)}); "
            "give --var labels=NAME"
        )
    train_keys = {r: k for r, k in found.items() if r not in ("labels", "test_labels")}
    test_keys = {
        r[: -len("_test")]: train_keys.pop(r) for r in list(train_keys) if r.endswith("_test")
    }
    if not train_keys and not patches:
        raise DataError(
            f"no training features (<MOD>_TrSet){where} (found: {_describe(variables)}); "
            "give --var MOD=NAME"
        )

    def matrix(role: str, key: str) -> np.ndarray:
        arr = variables[key]
        if arr.ndim != 2:
            raise DataError(f"{role} {key}: shape {arr.shape}, expected N x F")
        return _float_array(arr, role, key)

    train = {m: matrix(m, k) for m, k in train_keys.items()}
    test = {m: matrix(f"{m}_test", k) for m, k in test_keys.items()}
    labels = _label_vector(variables[found["labels"]], "labels", found["labels"])
    test_labels = None
    if "test_labels" in found:
        test_labels = _label_vector(
            variables[found["test_labels"]], "test_labels", found["test_labels"]
        )
    out_names = dict(found)

    for mod, (path, k) in (patches or {}).items():
        if k % 2 == 0:
            raise DataError(f"{mod} patches {path}: k = {k}, expected an odd size (a centre)")
        pvar, pmat = _patch_variable(path, mod)
        pkey = f"{path}:{pvar}"
        cube = reshape_patches(_float_array(pmat, mod, pkey), k)
        if mod in train:
            _check_centres(mod, cube, train[mod], pkey, train_keys[mod])
        log.info("%s <- %s patches %s", mod, pkey, tuple(cube.shape))
        train[mod] = cube
        out_names[mod] = pkey

    _check_rows(
        "training",
        {"labels": (found["labels"], labels)} | {m: (out_names[m], a) for m, a in train.items()},
    )
    test_rows = {f"{m}_test": (test_keys[m], a) for m, a in test.items()}
    if test_labels is not None:
        test_rows["test_labels"] = (found["test_labels"], test_labels)
    _check_rows("test", test_rows)
    if test and test_labels is None:
        log.warning("test features %s%s have no test labels (TeLabel)", ", ".join(test), where)

    present = [labels] + ([test_labels] if test_labels is not None else [])
    if all(a.size for a in present) and min(int(a.min()) for a in present) > 0:
        labels = labels - 1  # MATLAB's 1-based classes
        test_labels = test_labels - 1 if test_labels is not None else None
    log.info(
        "pixel table %s: %d training rows (%s), %d test rows (%s)",
        folder, len(labels), ", ".join(f"{m} {a.shape[1:]}" for m, a in train.items()),
        0 if test_labels is None else len(test_labels), ", ".join(test),
    )  # fmt: skip
    return PixelTable(
        modalities=train,
        labels=labels,
        test_modalities=test,
        test_labels=test_labels,
        names=out_names,
    )


def _check_centres(mod: str, cube: np.ndarray, pixels: np.ndarray, pkey: str, key: str) -> None:
    """The centre of every patch must be the pixel's own feature vector."""
    if cube.shape[1] != pixels.shape[1] or len(cube) != len(pixels):
        raise DataError(
            f"{mod}: patches do not match the pixels ({pkey} {cube.shape[:2]} = rows x "
            f"channels, {key} {pixels.shape} = rows x features)"
        )
    c = cube.shape[-1] // 2
    centre = cube[:, :, c, c].astype(np.float64)
    diff = np.abs(centre - pixels.astype(np.float64))
    bad = diff > 1e-6 * np.maximum(1.0, np.abs(pixels))
    if np.any(bad):
        raise DataError(
            f"{mod}: patches do not match the pixels ({pkey} centres differ from {key} in "
            f"{int(np.any(bad, axis=1).sum())} of {len(pixels)} rows, by up to {diff.max():.3g})"
        )
