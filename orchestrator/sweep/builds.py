"""The data builds of a sweep's trials: one per distinct (sources, partition, seed, size),
made once under a file lock in ``DIR/builds`` by the first trial that needs it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fedrs.core.config import RunConfig
from fedrs.orchestrator.sweep.spec import MODAL_BUILD, SweepError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ data builds
def build_key(cfg: RunConfig, build: dict[str, Any]) -> str | None:
    """Which data build a trial needs (None: it names ``data.path`` itself). Trials with the
    same key share one build: sources and their options, partition, seed, image size."""
    if cfg.data.path:
        return None
    part = dataclasses.asdict(_partition(cfg, build))
    from fedrs.methods import method_class

    d = cfg.data
    what = (
        {"build": build}
        if build
        else {"synthetic": method_class(cfg.method.name).synthetic_data.key(d)}
    )
    if build and _mat_build(build):
        what["modal"] = [d.modal.patch_size, d.modal.client_modalities]
    blob = json.dumps({**what, "partition": part}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _mat_build(build: dict[str, Any]) -> bool:
    from fedrs.datasets.multimodal import is_mat_source
    from fedrs.datasets.sources import parse_source_arg

    return any(is_mat_source(parse_source_arg(s)[1]) for s in build.get("sources", []))


def _build_mat(cfg: RunConfig, build: dict[str, Any], out: Path, part: Any) -> None:
    """A [build] of one .mat source (scene or pixel table) with the trial's modal keys."""
    from fedrs.datasets import multimodal as mm
    from fedrs.datasets.sources import parse_source_arg

    if len(build["sources"]) != 1:
        raise SweepError("[build]: a .mat source (scene or pixel table) is built on its own")
    spec = mm.ModalBuildSpec(
        out=str(out),
        partition=part,
        test_fraction=build.get("test_fraction", 0.2),
        patch=mm.parse_patch_sizes(build.get("patch_size") or [str(cfg.data.modal.patch_size)]),
        client_modalities=cfg.data.modal.groups(),
        partners=cfg.data.modal.partners,
        tile=build.get("tile_size", 0),
    )
    names = dict(v.split("=", 1) for v in build.get("var", []))
    patches = mm.parse_patch_files(build.get("patches", []))
    mm.build_from_mat(*parse_source_arg(build["sources"][0]), spec, names, patches)


def _partition(cfg: RunConfig, build: dict[str, Any]) -> Any:
    """The trial's partition: its data.* keys, seeded by [build] seed or federation.seed."""
    from fedrs.orchestrator.spawn import data_partition

    part = data_partition(cfg, build.get("min_examples"))
    return dataclasses.replace(part, seed=build["seed"]) if "seed" in build else part


def ensure_build(cfg: RunConfig, build: dict[str, Any], builds: Path) -> str:
    """The data path of a trial: ``data.path``, or its shared build (made now, once: the
    first trial to need it builds it under a file lock, the others wait and reuse it)."""
    key = build_key(cfg, build)
    if key is None:
        return str(Path(cfg.data.path).resolve())
    from filelock import FileLock

    from fedrs.datasets.manifest import MANIFEST

    out = builds / key
    builds.mkdir(parents=True, exist_ok=True)
    with FileLock(str(builds / f"{key}.lock")):
        if not (out / MANIFEST).is_file():
            part = _partition(cfg, build)
            if build and _mat_build(build):
                _build_mat(cfg, build, out, part)
            elif build:
                from fedrs.datasets.builder import BuildSpec
                from fedrs.datasets.builder import build as build_data

                skip = ("sources", "min_examples", "seed", *MODAL_BUILD)
                options = {k: v for k, v in build.items() if k not in skip}
                build_data(
                    BuildSpec.from_args(build["sources"], str(out), partition=part, **options)
                )
            else:
                from fedrs.orchestrator.spawn import build_synthetic_default

                build_synthetic_default(cfg, out, part)
            log.info("built %s", out)
    return str(out.resolve())
