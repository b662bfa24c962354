"""What a run without ``data.path`` builds: each method names its synthetic default
(``Method.synthetic_data``), one of the objects here. Each says what its data holds (for
preflight's data-kind check), what distinguishes one build from another (a sweep shares
builds by it) and how to build it into a run's folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SyntheticDefault:
    name: str  # "images" | "captions" | "scene"
    holds: frozenset[str]  # what Method.needs may ask of it
    key: Callable[[Any], list[Any]]  # data config -> what makes two builds differ
    make: Callable[[Any, Path, Any], None]  # (data config, out, partition) -> build at out

    def build(self, data: Any, out: Path, partition: Any) -> None:
        self.make(data, out, partition)


def _images(data: Any, out: Path, part: Any) -> None:
    from fedrs.datasets.synth import build_synthetic

    build_synthetic(out, per_class=data.per_class, image_size=data.image_size, partition=part)


def _captions(data: Any, out: Path, part: Any) -> None:
    from fedrs.datasets.synth import build_synthetic_captions

    build_synthetic_captions(
        out, per_class=data.per_class, image_size=data.image_size, partition=part
    )


def _scene(data: Any, out: Path, part: Any) -> None:
    from fedrs.datasets.multimodal import (
        ModalBuildSpec,
        build_synthetic_scene,
    )

    spec = ModalBuildSpec(
        out=str(out),
        partition=part,
        patch={"*": data.modal.patch_size},
        client_modalities=data.modal.groups(),
        partners=data.modal.partners,
    )
    build_synthetic_scene(spec, height=data.image_size, width=data.image_size)


# land-cover scenes of 10 classes from 3 sensors (``fedrs data synth``)
IMAGES = SyntheticDefault(
    "images", frozenset({"labels"}), lambda d: [d.per_class, d.image_size], _images
)
# the same scenes of one sensor each with five generated captions (retrieval methods)
CAPTIONS = SyntheticDefault(
    "captions",
    frozenset({"labels", "captions"}),
    lambda d: ["captions", d.per_class, d.image_size],
    _captions,
)
# a co-registered HSI + LiDAR scene (``fedrs data synth --multimodal``; FedDiff)
SCENE = SyntheticDefault(
    "scene",
    frozenset({"labels", "modalities"}),
    lambda d: ["scene", d.image_size, d.modal.patch_size, d.modal.client_modalities],
    _scene,
)
