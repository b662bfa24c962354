"""Checks on every client update before it may touch the global state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedrs.core.strategies.base import ClientUpdate

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


def spec_of(params: dict[str, np.ndarray], keys: tuple[str, ...]) -> Spec:
    return {k: (tuple(params[k].shape), params[k].dtype) for k in keys}


def validate_update(params: Any, num_examples: Any, spec: Spec) -> str | None:
    """None when the update is well-formed, else a one-line reason for rejecting it.

    Checks: a mapping with exactly the expected tensor names; each a numpy array of the expected
    shape and dtype with only finite values; a positive integer example count.
    """
    if not isinstance(params, dict):
        return f"update is a {type(params).__name__}, not a dict of tensors"
    got, want = set(params), set(spec)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        return f"tensor names differ (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in spec.items():
        value = params[name]
        if not isinstance(value, np.ndarray):
            return f"{name} is a {type(value).__name__}, not an array"
        if tuple(value.shape) != shape:
            return f"{name} has shape {tuple(value.shape)}, expected {shape}"
        if value.dtype != dtype:
            return f"{name} has dtype {value.dtype}, expected {dtype}"
        if not np.isfinite(value).all():
            return f"{name} has non-finite values"
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        return f"num_examples {num_examples!r} is not an integer"
    if num_examples <= 0:
        return f"num_examples {num_examples} is not positive"
    return None


def validate_extras(
    extras: Any,
    allowed: Callable[[str], bool],
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> str | None:
    """None when ``extras`` is a dict of finite numeric arrays under allowed names (and, when
    the method declares them, of the declared shapes), else a one-line reason for rejecting
    the update it came with."""
    if extras is None:
        return None
    if not isinstance(extras, dict):
        return f"extras are a {type(extras).__name__}, not a dict of arrays"
    for name, value in extras.items():
        if not isinstance(name, str) or not allowed(name) or (shapes and name not in shapes):
            return f"extra payload {name!r} is not one the method declares"
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            return f"extra payload {name} is not a numeric array"
        if shapes and tuple(value.shape) != tuple(shapes[name]):
            return f"extra payload {name} has shape {tuple(value.shape)}, expected {shapes[name]}"
        if not np.isfinite(value).all():
            return f"extra payload {name} has non-finite values"
    return None


def accept(
    method_cls: Any,
    cfg: Any,
    client_id: int,
    reply: dict[str, Any],
    sent: dict[str, np.ndarray],
    spec: dict[str, tuple[tuple[int, ...], Any]],
    extra_shapes: dict[str, tuple[int, ...]] | None,
) -> tuple[ClientUpdate | None, str | None]:
    """The update the server takes from a client's ``reply``, or None and why not (the one
    rule: the server runs it, and each site under secure aggregation).

    The extras are checked against what the method declares, compressed tensors are restored
    (``decode_upload``, given ``sent``: the tensors the client received), then the tensors are
    checked against ``spec`` (the names, shapes and dtypes it was to upload; finite values)."""
    params, extras = reply.get("params"), reply.get("extras")
    reason = validate_extras(extras, method_cls.extra_allowed, extra_shapes)
    if reason is None and isinstance(params, dict):
        try:  # compressed tensors (low-rank factors) restored, then validated
            params, extras = method_cls.decode_upload(cfg, sent, params, extras)
        except (KeyError, ValueError) as exc:
            reason = f"cannot decode the upload: {exc}"
    reason = reason or validate_update(params, reply.get("num_examples"), spec)
    if reason is not None:
        return None, reason
    update = ClientUpdate(
        client_id, params, int(reply["num_examples"]), reply.get("metrics", {}), extras or {}
    )
    return update, None
