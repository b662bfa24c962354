"""Discover examples in the dataset layouts remote-sensing users have.

Two layouts are read:

* **ImageFolder**: ``ROOT/<class>/**/<image>`` with TIFF, JPEG or PNG images of any size
  (UC Merced, RSSCN7, NWPU-RESISC45, AID, Optimal-31, EuroSAT RGB, ...).
* **Caption datasets** in the common ``dataset.json`` format
  (``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``: UCM-Captions, RSICD,
  RSITMD, Sydney-Captions), with the images in ``ROOT/images/`` or another folder under ROOT.

Class names are normalised so several sources share one label space: the RSSCN7 release prefix
(``aGrass`` -> ``grass``) is removed, then the name is lower-cased with separators dropped
(``Parking_Lot`` -> ``parkinglot``). A class map merges synonyms on top of that.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrs.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
CAPTION_FILE = "dataset.json"
_RELEASE_PREFIX = re.compile(r"[a-z]([A-Z].*)")  # RSSCN7: aGrass, bField, dRiverLake, ...
# dataset.json split names; Karpathy-style "restval" is training data.
_SPLITS = {"train": "train", "restval": "train", "val": "test", "test": "test"}


@dataclass(frozen=True)
class Example:
    """One image of a source: where it is, its class (None for captions) and its captions."""

    path: str
    label_name: str | None
    domain: str
    relpath: str
    captions: tuple[str, ...] = ()
    split: str | None = None  # the caption file's own split ("train" / "test"), if any


@dataclass(frozen=True)
class Source:
    """A named dataset on disk and the examples found in it."""

    name: str
    path: str
    kind: str  # "imagefolder" | "captions"
    examples: tuple[Example, ...]


def normalize_class_name(folder: str) -> str:
    """Turn a class folder name into the merge key used across sources (and the name prompts
    use): Unicode NFC, lower case, letters and digits of any script kept, separators and
    punctuation dropped. Control and other unprintable characters are refused, named.

    >>> normalize_class_name("aGrass"), normalize_class_name("Parking_Lot")
    ('grass', 'parkinglot')
    >>> normalize_class_name("Rivère"), normalize_class_name("农田")
    ('rivère', '农田')
    """
    folder = unicodedata.normalize("NFC", folder)
    bad = sorted({c for c in folder if unicodedata.category(c)[0] == "C"})
    if bad:
        named = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in bad)
        raise DataError(f"class folder {folder!r} holds characters a class name cannot: {named}")
    match = _RELEASE_PREFIX.fullmatch(folder)
    if match:
        folder = match.group(1)
    name = "".join(c for c in folder.lower() if c.isalnum())
    if not name:
        raise DataError(f"class folder {folder!r} has no letters or digits to name a class")
    return name


def load_class_map(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """Read a class map: a JSON object ``{"alias": "canonical", ...}``; names are normalised."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"cannot read class map {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"class map {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise DataError(f'class map {path} must be a JSON object of names: {{"alias": "name"}}')
    mapping = {normalize_class_name(k): normalize_class_name(v) for k, v in raw.items()}
    for alias, target in mapping.items():
        if target in mapping and mapping[target] != target:
            raise DataError(f"class map {path}: {alias!r} -> {target!r}, which is itself mapped")
    return mapping


def load_caption_classes(spec: str | None) -> Any:
    """The image -> class mapping of caption datasets (``--caption-classes``): ``re:PATTERN``,
    a regular expression on the image file name whose group ``class`` (or first group) is the
    class; ``folder:DIR``, an ImageFolder tree the captions number: image ``k.<ext>`` is the
    k-th file (from 1) of DIR in sorted (class, file) order, as UCM-Captions numbers UC Merced
    and Sydney-Captions numbers Sydney; or a file mapping file names to classes, a JSON object
    or ``filename,class`` lines. Returns a callable ``filename -> class or None``; None when
    not given."""
    if spec is None:
        return None
    if spec.startswith("folder:"):
        return numbered_folder_classes(spec[len("folder:") :])
    if spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as exc:
            raise DataError(
                f"--caption-classes {spec!r}: not a regular expression: {exc}"
            ) from None
        if not pattern.groups:
            raise DataError(f"--caption-classes {spec!r}: the pattern needs a group for the class")

        def by_rule(filename: str) -> str | None:
            m = pattern.search(filename)
            if m is None:
                return None
            return m.group("class") if "class" in pattern.groupindex else m.group(1)

        return by_rule
    try:
        text = Path(spec).read_text()
    except OSError as exc:
        raise DataError(f"cannot read --caption-classes {spec}: {exc.strerror or exc}") from None
    try:
        table = json.loads(text) if spec.endswith(".json") else None
    except json.JSONDecodeError as exc:
        raise DataError(f"--caption-classes {spec} is not valid JSON: {exc}") from None
    if table is None:
        table = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, cls = line.replace("\t", ",").partition(",")
            if not sep or not cls.strip():
                raise DataError(f"--caption-classes {spec}:{n}: expected 'filename,class'")
            table[name.strip()] = cls.strip()
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(
            f'--caption-classes {spec} must map file names to classes: {{"1.jpg": "x"}}'
        )
    return table.get


def numbered_folder_classes(root: str) -> Any:
    """``k.<ext> -> class`` for the k-th file (from 1) of the ImageFolder ``root`` in sorted
    (class, file) order; ``--caption-classes folder:DIR``."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"--caption-classes folder:{root}: not a folder")
    classes = sorted(c for c in os.listdir(base) if (base / c).is_dir())
    order = [c for c in classes for _ in sorted(os.listdir(base / c))]
    if not order:
        raise DataError(f"--caption-classes folder:{root}: no class folders with files")

    def by_number(filename: str) -> str | None:
        stem = Path(filename).stem
        k = int(stem) if stem.isdigit() else 0
        return order[k - 1] if 1 <= k <= len(order) else None

    return by_number


def parse_source_arg(arg: str) -> tuple[str, str]:
    """Split ``NAME=PATH`` (a bare PATH takes its folder name as NAME)."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = Path(arg.rstrip("/")).name, arg
    if not name or not path:
        raise DataError(f"--source {arg!r}: expected NAME=PATH")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DataError(f"--source {arg!r}: NAME may hold only letters, digits, '_', '-', '.'")
    return name, path


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"source directory does not exist: {path}") from None
    except NotADirectoryError:
        raise DataError(f"source is not a directory: {path}") from None
    except PermissionError:
        raise DataError(f"cannot read directory {path}: permission denied") from None
    except OSError as exc:
        raise DataError(f"cannot read directory {path}: {exc.strerror or exc}") from None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _walk_images(root: str) -> list[str]:
    """All image files under ``root`` (recursively), sorted; unreadable folders are errors."""
    found: list[str] = []
    for entry in _scandir(root):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_walk_images(entry.path))
        elif entry.is_file() and _is_image(entry.name):
            found.append(entry.path)
    return found


def scan_imagefolder(name: str, root: str, class_map: dict[str, str]) -> Source:
    """Read an ImageFolder tree: one sub-folder per class."""
    class_dirs = [e for e in _scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if not class_dirs:
        raise DataError(f"source {name!r}: no class folders in {root} (expected ROOT/<class>/)")
    examples: list[Example] = []
    for entry in class_dirs:
        label = normalize_class_name(entry.name)
        label = class_map.get(label, label)
        files = _walk_images(entry.path)
        if not files:
            log.warning("source %s: class folder %s holds no images; skipped", name, entry.name)
        examples.extend(
            Example(path=f, label_name=label, domain=name, relpath=os.path.relpath(f, root))
            for f in files
        )
    if not examples:
        raise DataError(f"source {name!r}: no TIFF/JPEG/PNG images found under {root}")
    return Source(name=name, path=str(root), kind="imagefolder", examples=tuple(examples))


def _find_image_dir(root: Path, first_file: str) -> Path:
    for candidate in [root / "images", root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (candidate / first_file).is_file():
            return candidate
    raise DataError(f"caption dataset {root}: cannot find the folder holding {first_file!r}")


def scan_captions(name: str, root: str, classes: Any = None) -> Source:
    """Read a caption dataset in the ``dataset.json`` format; ``classes`` (from
    ``load_caption_classes``) gives each image a scene class, for label-skewed partitions."""
    root_path = Path(root)
    meta_path = root_path / CAPTION_FILE
    try:
        meta = json.loads(meta_path.read_text())
        records = meta["images"]
        if not isinstance(records, list) or not records:
            raise ValueError("'images' must be a non-empty list")
        image_dir = _find_image_dir(root_path, str(records[0]["filename"]))
        examples = []
        for rec in records:
            captions = tuple(str(s["raw"]).strip() for s in rec["sentences"])
            if not captions:
                raise ValueError(f"image {rec['filename']!r} has no sentences")
            path = image_dir / str(rec["filename"])
            label = None
            if classes is not None:
                label = classes(str(rec["filename"]))
                if label is None:
                    raise DataError(
                        f"--caption-classes gives no class for image {rec['filename']!r} of {root}"
                    )
                label = normalize_class_name(label)
            examples.append(
                Example(
                    path=str(path),
                    label_name=label,
                    domain=name,
                    relpath=os.path.relpath(path, root_path),
                    captions=captions,
                    split=_SPLITS.get(str(rec.get("split", "train")), "train"),
                )
            )
    except OSError as exc:
        raise DataError(f"cannot read {meta_path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"caption file {meta_path} is malformed: {exc!r}") from None
    return Source(name=name, path=str(root), kind="captions", examples=tuple(examples))


def scan_source(
    name: str, path: str, class_map: dict[str, str] | None = None, caption_classes: Any = None
) -> Source:
    """Detect the layout of ``path`` and read its examples."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CAPTION_FILE)):
        return scan_captions(name, path, caption_classes)
    return scan_imagefolder(name, path, class_map or {})
