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


# ---------------------------------------------------------------------- the exchange, pure
def test_features_cross_as_per_block_truncated_svds() -> None:
    from fedrs.methods.feddiff import compress_rows, feature_shapes, restore_rows

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(70, 64)).astype(np.float32)
    sent = compress_rows(feats, 4, 32)  # blocks of 32, 32 and 6 rows
    assert {k: v.shape for k, v in sent.items()} == feature_shapes(70, 32, 4)
    assert sent["features/v"].shape == (3, 4, 64)
    back = restore_rows(sent, 32)
    for lo, hi in ((0, 32), (32, 64), (64, 70)):  # each block: its best rank-4 approximation
        u, s, vt = np.linalg.svd(feats[lo:hi].astype(np.float64), full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vt[:4]
        np.testing.assert_allclose(back[lo:hi], best, atol=1e-4)
    assert not np.allclose(back[:32], feats[:32], atol=1e-2)  # rank 4 of 32 x 64 is lossy
    # fewer numbers than the features, and rank 0 sends them as they are
    assert sum(v.size for v in sent.values()) < feats.size
    np.testing.assert_array_equal(restore_rows(compress_rows(feats, 0, 32), 32), feats)


def _plan(shapes: dict | None = None):
    from fedrs.orchestrator.partners import plan_round

    class Sharer:
        @classmethod
        def partner_shapes(cls, cfg, client, rnd):
            return {"f": (client["num_examples"], 2)} if client.get("partners") else None

    records = [
        {"id": 0, "num_examples": 3, "partners": [1]},
        {"id": 1, "num_examples": 3, "partners": [0]},
        {"id": 2, "num_examples": 5, "partners": [3]},
        {"id": 3, "num_examples": 5, "partners": [2]},
    ]
    return plan_round(Sharer, None, records, [0, 1, 2, 3], 1)


def test_the_plan_checks_routes_and_skips_a_region_whose_partner_failed() -> None:
    from fedrs.orchestrator.partners import check_share, lost, route

    plan = _plan()
    assert plan.partners == {0: (1,), 1: (0,), 2: (3,), 3: (2,)}
    assert plan.bytes_sent(2) == 5 * 2 * 4
    ok = np.zeros((3, 2), np.float32)
    assert check_share({"f": ok}, plan.shapes[0]) is None
    bad = {
        "names": {"g": ok},
        "shape": {"f": np.zeros((4, 2), np.float32)},
        "float32": {"f": ok.astype(np.float64)},
        "non-finite": {"f": np.full((3, 2), np.nan, np.float32)},
    }
    for why, payload in bad.items():
        assert check_share(payload, plan.shapes[0]) is not None, why
    assert "non-finite" in check_share(bad["non-finite"], plan.shapes[0])
    # client 1 failed to share: region {0, 1} skips the round, region {2, 3} goes on
    out = lost(plan, {0, 2, 3}, {1: "timed out"})
    assert out == {
        0: "partner 1 could not share: timed out",
        1: "could not share with its partners: timed out",
    }
    assert route(plan, {0: "h0", 2: "h2", 3: "h3"}, [2, 3]) == {2: {3: "h3"}, 3: {2: "h2"}}


def test_regions_are_sampled_whole() -> None:
    from fedrs.core.sampling import sample_cohort

    cfg = from_dict({}, ["federation.clients_per_round=2", "federation.seed=3"])
    groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
    for rnd in range(1, 6):
        picked = sample_cohort(cfg, 8, 8, frozenset(), rnd, groups)
        assert len(picked) == 4 and all((c ^ 1) in picked for c in picked)  # pairs only
        assert picked == sample_cohort(cfg, 8, 8, frozenset(), rnd, groups)  # replayable
    # a region with an organisation left out (damaged shard) is never sampled
    for rnd in range(1, 6):
        assert not {2, 3} & set(sample_cohort(cfg, 8, 8, {3}, rnd, groups))


# ---------------------------------------------------------------------- FedDiff across orgs
def _orgs(tmp: Path, groups: str = "hsi|lidar") -> Path:
    build_synthetic_scene(_spec(tmp, groups, regions=2), height=48, width=48)
    return tmp


def _cfg(data: Path, **sets: object):
    base = {
        "method.name": "feddiff",
        "method.diffusion": False,
        "data.path": str(data),
        "federation.rounds": 3,
        "federation.clients_per_round": 2,
        "client.local_epochs": 2,
        "resources.num_actors": 2,
        **sets,
    }
    return from_dict({}, [f"{k}={v}" for k, v in base.items()])


def test_the_joint_prediction_at_full_rank_is_the_paired_one(tmp_path: Path) -> None:
    """Organisations predicting together through an uncompressed exchange compute what one
    paired client would; compressed, what crosses the boundary changes the logits."""
    import torch

    from fedrs.methods.feddiff import FedDiff

    orgs = _orgs(tmp_path / "orgs")
    paired = _orgs(tmp_path / "paired", "hsi+lidar")
    ds = FedDataset(orgs)
    torch.manual_seed(0)
    full = FedDiff(_cfg(orgs, **{"method.feature_rank": 0}), ds.classes)
    params = {
        k: (v + np.random.default_rng(1).normal(0, 0.3, v.shape)).astype(np.float32)
        for k, v in full.init_global(0).items()
    }
    test = ds.test_shard()

    def scores(method: FedDiff) -> dict:
        return method.evaluate_rows(params, {}, test, 0, len(test))

    alone = FedDiff(_cfg(paired), ds.classes)
    assert full.partnered and not alone.partnered
    a, b = scores(full), scores(alone)
    assert a["correct"] == b["correct"] and abs(a["loss_sum"] - b["loss_sum"]) < 1e-3
    lossy = scores(FedDiff(_cfg(orgs, **{"method.feature_rank": 1}), ds.classes))
    assert abs(lossy["loss_sum"] - a["loss_sum"]) > 1e-3


@pytest.mark.usefixtures("ray_cluster")
def test_organisations_exchange_features_and_train_the_fusion(tmp_path: Path) -> None:
    import io
    import json

    from rich.console import Console

    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.plan import plan
    from fedrs.orchestrator.runner import run

    data = _orgs(tmp_path / "orgs")
    quiet = Console(file=io.StringIO())
    cfg = _cfg(data)
    planned = plan(cfg)["partner_bytes_per_round"]
    run(cfg, out=str(tmp_path / "x"), console=quiet)
    rounds = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    assert [r["partner_bytes"] for r in rounds] == planned
    # by hand: per organisation, rank-8 factors U (n x 8) + V (ceil(n / 32) x 8 x 64), float32,
    # to its one partner; every organisation every round
    sizes = [c["num_examples"] for c in FedDataset(data).manifest["clients"]]
    by_hand = sum((n * 8 + -(-n // 32) * 8 * 64) * 4 for n in sizes)
    assert planned == [by_hand] * 3
    assert all(r["clients_ok"] == 4 and r["regions_skipped"] == 0 for r in rounds)
    assert rounds[-1]["accuracy"] > rounds[-1]["accuracy_hsi"]  # the exchange helps here
    # each organisation alone (its partner absent at test time): OA, AA and kappa
    for m in ("hsi", "lidar"):
        assert rounds[-1][f"balanced_accuracy_{m}"] is not None, m
        assert -1 <= rounds[-1][f"kappa_{m}"] < rounds[-1]["kappa"], m
    _, trained, _ = checkpoint.load(tmp_path / "x")
    assert np.abs(trained["fuse.heads.0.weight"]).sum() > 0  # organisations train the fusion
    # each organisation alone: nothing crosses, nobody trains the fusion heads
    alone_cfg = _cfg(data, **{"method.exchange": False, "federation.rounds": 1})
    run(alone_cfg, out=str(tmp_path / "n"), console=quiet)
    alone = [json.loads(x) for x in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    assert all("partner_bytes" not in r for r in alone)
    _, untrained, _ = checkpoint.load(tmp_path / "n")
    assert np.abs(untrained["fuse.heads.0.weight"]).sum() == 0
    # an organisation that fails to share: its region skips the round, counted; nothing hangs
    faulty = _cfg(data, **{"federation.faults": "share@2:1=raise"})
    run(faulty, out=str(tmp_path / "f"), console=quiet)
    hit = [json.loads(x) for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    assert [r["regions_skipped"] for r in hit] == [0, 1, 0]
    assert hit[1]["clients_ok"] == 2 and set(hit[1]["failures"]) == {"0", "1"}
    assert set(hit[1]["partner_bytes_by_client"]) == {"2", "3"}  # only what was relayed


def test_each_head_alone_gets_oa_aa_and_kappa_from_its_own_counts() -> None:
    """Per-variant AA and kappa, by hand: 6 test pixels of 3 classes over two partials; the
    HSI head alone says class 0 four times and class 1 twice."""
    from fedrs.methods.feddiff import FedDiff

    def partial(labels: list[int], joint: list[int], hsi: list[int], teacher: int) -> dict:
        y = np.array(labels)

        def counts(pred: list[int]) -> tuple[float, np.ndarray, np.ndarray]:
            hit = (np.array(pred) == y).astype(float)
            return hit.sum(), np.bincount(y, hit, 3), np.bincount(pred, minlength=3) * 1.0

        correct, class_correct, class_pred = counts(joint)
        correct_hsi, class_correct_hsi, class_pred_hsi = counts(hsi)
        return {
            "correct": correct,
            "loss_sum": 1.0,
            "n": float(len(y)),
            "class_correct": class_correct,
            "class_n": np.bincount(y, minlength=3) * 1.0,
            "class_pred": class_pred,
            "correct_hsi": correct_hsi,
            "class_correct_hsi": class_correct_hsi,
            "class_pred_hsi": class_pred_hsi,
            "correct_teacher": float(teacher),  # a variant without per-class counts: OA only
        }

    first = partial([0, 0, 1, 2], joint=[0, 1, 1, 2], hsi=[0, 0, 0, 0], teacher=1)
    second = partial([1, 2], joint=[1, 2], hsi=[1, 1], teacher=0)
    out = FedDiff.reduce_eval([first, second])
    assert out["accuracy_hsi"] == 0.5
    assert out["balanced_accuracy_hsi"] == 0.5  # per class 2/2, 1/2, 0/2
    # p_o = 1/2, p_e = (2 x 4 + 2 x 2 + 2 x 0) / 36 = 1/3: kappa = (1/2 - 1/3) / (2/3) = 1/4
    assert out["kappa_hsi"] == pytest.approx(0.25)
    assert out["accuracy_teacher"] == pytest.approx(1 / 6)
    assert "balanced_accuracy_teacher" not in out and "kappa_teacher" not in out


def test_a_mat_scene_of_our_own_splits_across_organisations(tmp_path: Path) -> None:
    """An HSI + DSM scene with its own variable names, named with --var, built for partner
    organisations from the command line."""
    import scipy.io

    from fedrs.cli import main

    rng = np.random.default_rng(4)
    gt = np.repeat(np.repeat(rng.integers(1, 4, size=(4, 4)), 8, 0), 8, 1)  # 32 x 32 blocks
    cube = rng.normal(size=(32, 32, 10)) + gt[..., None]
    dsm = rng.normal(size=(32, 32)) + 2.0 * gt
    scipy.io.savemat(tmp_path / "site.mat", {"refl": cube, "height": dsm, "truth": gt})
    argv = ["data", "build", "--source", f"site={tmp_path / 'site.mat'}"]
    argv += ["--var", "hsi=refl", "--var", "lidar=height", "--var", "gt=truth"]
    argv += ["--client-modalities", "hsi|lidar", "--partition", "spatial", "--num-clients", "2"]
    argv += ["--patch-size", "3", "--min-examples", "5", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    ds = FedDataset(tmp_path / "b")
    _partners_agree(ds, 2)
    assert ds.manifest["modalities"]["lidar"]["bands"] == 1


def test_dp_with_partner_organisations_is_refused_in_one_line(tmp_path: Path) -> None:
    """Regions are sampled as units and partners exchange features: DP covers neither (a
    method whose uploads DP could protect, FedDiff sending no extras, still refused)."""
    from fedrs.methods.feddiff import FedDiff
    from fedrs.orchestrator.plan import plan

    class Plain(FedDiff):
        @classmethod
        def sent_extras(cls, cfg):
            return ()

    data = _orgs(tmp_path / "orgs")
    dp = {"privacy.mode": "local", "method.exchange": False}
    with pytest.raises(ConfigError, match=r"with partner organisations .* not supported"):
        plan(_cfg(data, **dp), method_cls=Plain)
    paired = _orgs(tmp_path / "paired", "hsi+lidar")
    assert plan(_cfg(paired, **dp), method_cls=Plain)["clients"]["sampling"] == "poisson"


def test_more_regions_per_round_than_the_data_has_is_one_line(tmp_path: Path) -> None:
    """``clients_per_round`` counts regions with partner organisations: the default (4) on a
    build of 2 regions says so, and what to set."""
    from fedrs.orchestrator.plan import plan

    data = _orgs(tmp_path / "orgs")
    with pytest.raises(ConfigError, match=r"exceeds the data's 2 regions .* set it to 2 or less"):
        plan(_cfg(data, **{"federation.clients_per_round": 4}))
