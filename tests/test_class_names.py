"""Class folders named in any script: kept as written (NFC, lower case), used verbatim in the
manifest and in prompts; only characters no class name can hold are refused, named."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

from conftest import make_imagefolder
from fedrs.datasets.sources import normalize_class_name
from fedrs.errors import DataError

FEDRS = [sys.executable, "-m", "fedrs.cli"]


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("aGrass", "grass"),  # RSSCN7's release prefix
        ("Parking_Lot", "parkinglot"),
        ("Rivère", "rivère"),
        (unicodedata.normalize("NFD", "rivère"), "rivère"),  # macOS writes names decomposed
        ("农田", "农田"),
        ("Лес 2", "лес2"),
    ],
)
def test_class_names_keep_every_script(folder: str, name: str) -> None:
    assert normalize_class_name(folder) == name


def test_unprintable_characters_are_refused_by_name() -> None:
    with pytest.raises(DataError, match="U\\+0007"):
        normalize_class_name("bell\x07")
    with pytest.raises(DataError, match="no letters or digits"):
        normalize_class_name("__--")


def test_a_build_keeps_accented_and_chinese_class_names_through_prompts(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {"rivère": 6, "农田": 6, "forest": 6})
    out = tmp_path / "built"
    proc = subprocess.run(
        [
            *FEDRS,
            "data",
            "build",
            "--source",
            f"mine={src}",
            "--partition",
            "iid",
            "--num-clients",
            "2",
            "--min-examples",
            "1",
            "--image-size",
            "16",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    classes = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["classes"]
    assert sorted(classes) == sorted(["rivère", "农田", "forest"])
    from fedrs.models.backbone import load_backbone
    from fedrs.models.prompt import class_prompts

    backbone = load_backbone("fedrs-tiny")
    tokens = class_prompts(backbone, classes, "a photo of {}.")
    plain = class_prompts(backbone, ["rivre", "", "forest"], "a photo of {}.")
    # the letters reach the tokenizer: the accented and Chinese names are not the stripped ones
    by_name = dict(zip(classes, tokens, strict=True))
    assert not torch.equal(by_name["rivère"], plain[0])
    assert not torch.equal(by_name["农田"], plain[1])
