"""Decode TIFF / JPEG / PNG images of any size into fixed-size uint8 RGB arrays.

Done once, at build time, so training never decodes an image (see ``benchmarks/data_format.py``
for the measurement behind that choice). The geometry follows CLIP's preprocessing: resize the
shorter side to ``size`` (bicubic), then centre-crop to ``size x size``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fedrs.errors import DataError

_TIFF = {".tif", ".tiff"}


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a 16-bit / float band stack to uint8 with a 2-98 percentile stretch per band."""
    arr = arr.astype(np.float32, copy=False)
    lo = np.nanpercentile(arr, 2, axis=(0, 1), keepdims=True)
    hi = np.nanpercentile(arr, 98, axis=(0, 1), keepdims=True)
    scaled = (arr - lo) / np.maximum(hi - lo, 1e-6)
    return (np.nan_to_num(np.clip(scaled, 0.0, 1.0)) * 255.0 + 0.5).astype(np.uint8)


def _to_rgb_array(arr: np.ndarray) -> np.ndarray:
    """HxW, HxWxC or CxHxW band stack -> HxWx3 uint8 (first three bands; grey replicated)."""
    if arr.ndim == 3 and arr.shape[0] < arr.shape[-1] and arr.shape[0] <= 16:
        arr = np.moveaxis(arr, 0, -1)  # channels-first GeoTIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"unsupported array shape {arr.shape}")
    arr = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)
    return arr if arr.dtype == np.uint8 else _stretch_to_uint8(arr)


def _open_rgb(path: str, size: int) -> Image.Image:
    suffix = Path(path).suffix.lower()
    try:
        img = Image.open(path)
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            img.draft("RGB", (size, size))  # DCT-domain downscale: large JPEGs decode fast
        img.load()
    except Exception:
        if suffix not in _TIFF:
            raise
        import tifffile  # multi-band / float GeoTIFFs that PIL cannot open

        return Image.fromarray(_to_rgb_array(tifffile.imread(path)))
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_rgb_array(np.asarray(img)))
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str, size: int) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 array or raise a one-line DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open_rgb(path, size)
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for bad files; report them all alike
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"corrupt or unreadable image {path}: {reason}") from None
    if arr.shape != (size, size, 3):
        raise DataError(f"image {path} decoded to shape {arr.shape}, expected {(size, size, 3)}")
    return arr


def decode_into(
    paths: list[str], start: int, out_path: str, total: int, size: int
) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows ``start:start+len(paths)`` of a uint8 memmap at ``out_path``.

    Runs in worker processes; returns ``(row, error)`` for images that failed instead of raising,
    so one bad file does not hide the others.
    """
    out = np.memmap(out_path, dtype=np.uint8, mode="r+", shape=(total, size, size, 3))
    errors: list[tuple[int, str]] = []
    for offset, path in enumerate(paths):
        try:
            out[start + offset] = load_image(path, size)
        except DataError as exc:
            errors.append((start + offset, str(exc)))
    out.flush()
    del out
    return errors
