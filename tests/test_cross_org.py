"""FedDiff's own setting (issue 30): one scene split by modality across partner
organisations ("hsi|lidar"), each region's pixels held by an HSI and a LiDAR organisation that
share pixel ids and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrs.core.config import from_dict
from fedrs.core.modal import client_groups
from fedrs.datasets.manifest import FedDataset
from fedrs.datasets.multimodal import (
    ModalBuildSpec,
    build_pixel_table,
    build_synthetic_scene,
    parse_client_modalities,
)
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import ConfigError, DataError


def _spec(tmp: Path, groups: str, scheme: str = "spatial", regions: int = 3) -> ModalBuildSpec:
    return ModalBuildSpec(
        out=str(tmp),
        partition=PartitionSpec(scheme, regions, 0, min_examples=5),
        patch={"*": 3},
        client_modalities=parse_client_modalities(groups),
        partners="|" in groups,
    )


def _partners_agree(ds: FedDataset, regions: int) -> None:
    """Each region: two organisations, the same pixels (ids, labels, local test), one modality
    each; regions disjoint."""
    m = ds.manifest
    assert m["partners"] == [[2 * r, 2 * r + 1] for r in range(regions)]
    assert ds.num_clients == 2 * regions
    seen: set[int] = set()
    for r in range(regions):
        h, li = ds.client(2 * r), ds.client(2 * r + 1)
        assert "hsi" in h.arrays and "lidar" not in h.arrays
        assert "lidar" in li.arrays and "hsi" not in li.arrays
        np.testing.assert_array_equal(h.ids, li.ids)
        np.testing.assert_array_equal(h.labels, li.labels)
        np.testing.assert_array_equal(ds.client_test(2 * r).ids, ds.client_test(2 * r + 1).ids)
        assert m["clients"][2 * r]["partners"] == [2 * r + 1]
        assert m["clients"][2 * r + 1]["region"] == r
        ids = set(h.ids.tolist())
        assert not ids & seen  # regions hold different pixels
        seen |= ids


def test_a_scene_split_across_partner_organisations(tmp_path: Path) -> None:
    ds = build_synthetic_scene(_spec(tmp_path / "x", "hsi|lidar"), height=32, width=32)
    _partners_agree(ds, 3)
    # the test split stays spatially disjoint from every organisation's training patches
    tr = np.concatenate([ds.client(c).arrays["coords"] for c in range(6)]).astype(int)
    te = ds.test_shard().arrays["coords"].astype(int)
    assert np.abs(tr[:, None, :] - te[None, :, :]).max(-1).min() >= 3
    # the same scene without partners: one client per region holding both, the same pixels
    paired = build_synthetic_scene(_spec(tmp_path / "p", "hsi+lidar"), height=32, width=32)
    for r in range(3):
        np.testing.assert_array_equal(paired.client(r).ids, ds.client(2 * r).ids)


def test_a_pixel_table_split_across_partner_organisations(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    table = {"hsi": rng.normal(size=(300, 8)), "lidar": rng.normal(size=(300, 1))}
    ds = build_pixel_table(table, labels, _spec(tmp_path / "t", "hsi|lidar", "dirichlet", 2))
    _partners_agree(ds, 2)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hsi|lidar,hsi", "do not mix"),
        ("hsi|hsi+lidar", "different modalities"),
        ("hsi|", "give e.g."),
    ],
)
def test_a_malformed_partner_spec_is_one_line(text: str, why: str) -> None:
    with pytest.raises(DataError, match=why):
        parse_client_modalities(text)
    with pytest.raises(ConfigError, match=why):
        from_dict({}, [f"data.modal.client_modalities={text}"])


def test_the_run_config_names_partners_in_the_same_grammar() -> None:
    modal = from_dict({}, ["data.modal.client_modalities=hsi|lidar"]).data.modal
    assert modal.partners and modal.groups() == (("hsi",), ("lidar",))
    assert not from_dict({}, ["data.modal.client_modalities=hsi,lidar"]).data.modal.partners
    assert client_groups("hsi+lidar") == (("hsi", "lidar"),)
