"""The ``fedrs`` command line. Every FedrsError becomes one ``fedrs: error: ...`` line, exit 2."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fedrs.errors import ConfigError, DataError, FedrsError

DESCRIPTION = """\
Federated learning of CLIP on remote-sensing imagery, on Ray.

  fedrs data build|synth|show   make and inspect federated datasets (Arrow client shards)
  fedrs run [CONFIG]            run a federation (no arguments: synthetic data, tiny CLIP)
  fedrs sweep SWEEP.toml        many runs as Ray Tune trials; `fedrs sweep report DIR`
  fedrs methods | strategies    what can be run, with options and defaults
  fedrs config [CONFIG]         every config key with its value (defaults + CONFIG + --set)
  fedrs pretrain                pretrain a small CLIP on image-caption shards
  fedrs bench NAME              benchmarks that print and record figures
  fedrs deploy local|app|certs|key   on Flower's deployment runtime (real sites)

Mistakes are one line, `fedrs: error: ...`, with exit status 2."""

log = logging.getLogger("fedrs")


def _add_partition_args(p: argparse.ArgumentParser) -> None:
    """The partition flags; their defaults are ``PartitionSpec``'s (core/partition.py)."""
    from fedrs.core.partition import DIRICHLET_ALPHA, SCHEMES, PartitionSpec

    d = PartitionSpec()
    g = p.add_argument_group("partition")
    g.add_argument(
        "--partition",
        choices=SCHEMES,
        default=d.scheme,
        help=f"how training examples are split over clients (default {d.scheme})",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help=f"Dirichlet concentration (dirichlet/longtail default {DIRICHLET_ALPHA}; domain: "
        "Dirichlet inside each source when given)",
    )
    g.add_argument(
        "--classes-per-client",
        type=int,
        default=d.classes_per_client,
        help=f"pathological: classes each client holds (default {d.classes_per_client})",
    )
    g.add_argument(
        "--imbalance-factor",
        type=float,
        default=d.imbalance_factor,
        help=f"longtail: largest / smallest class size before the split (default "
        f"{d.imbalance_factor:g})",
    )
    g.add_argument(
        "--num-clients",
        type=int,
        default=d.num_clients,
        help=f"client shards (default {d.num_clients})",
    )
    g.add_argument(
        "--min-examples",
        type=int,
        default=d.min_examples,
        help=f"smallest training shard a client may get (default {d.min_examples})",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=PartitionSpec().seed,
        help="split and partition seed (default 0)",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="held-out global test share, stratified (default 0.2)",
    )
    g.add_argument("--workers", type=int, default=0, help="decode processes (0: one per core)")
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop unreadable images (counted in the manifest) instead of failing",
    )
    g.add_argument(
        "--exclude-near",
        metavar="BUILD",
        help="leave out images that are (near) duplicates of BUILD's test split (counted): "
        "pretraining data that must not contain those test images",
    )


def _add_modal_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-modal pixels (scenes, pixel tables, --multimodal)")
    g.add_argument(
        "--patch-size",
        action="append",
        default=[],
        metavar="K|MOD=K",
        help="k x k neighbourhood per pixel, odd (default 1); per modality as MOD=K",
    )
    g.add_argument(
        "--client-modalities",
        default="",
        metavar="GROUPS",
        help="modalities clients hold: 'hsi+lidar' every client paired (default), "
        "'hsi,lidar' alternating single-modality clients, 'hsi|lidar' partner organisations "
        "holding the two modalities of the same pixels (one pair per region)",
    )
    g.add_argument(
        "--tile-size",
        type=int,
        default=0,
        help="scenes: side of the square test tiles in pixels (default: about 100 tiles)",
    )


def _partition_spec(args: argparse.Namespace):
    from fedrs.core.partition import PartitionSpec

    return PartitionSpec(
        scheme=args.partition,
        num_clients=args.num_clients,
        seed=args.seed,
        alpha=args.alpha,
        classes_per_client=args.classes_per_client,
        imbalance_factor=args.imbalance_factor,
        min_examples=args.min_examples,
    )


def _modal_spec(args: argparse.Namespace):
    from fedrs.core.modal import partnered
    from fedrs.datasets.multimodal import (
        ModalBuildSpec,
        parse_client_modalities,
        parse_patch_sizes,
    )

    return ModalBuildSpec(
        out=args.out,
        partition=_partition_spec(args),
        test_fraction=args.test_fraction,
        patch=parse_patch_sizes(args.patch_size),
        client_modalities=(
            parse_client_modalities(args.client_modalities) if args.client_modalities else ()
        ),
        partners=partnered(args.client_modalities),
        tile=args.tile_size,
    )


def _print_modal(ds: Any) -> None:
    counts, m = ds.manifest["counts"], ds.manifest
    near = counts.get("dropped_near_test")
    regions = m.get("partners")
    orgs = " | ".join("+".join(g) for g in m["client_modalities"])
    print(
        f"built {ds.num_clients} client shards"
        + (f" ({len(regions)} regions x partner organisations {orgs})" if regions else "")
        + f" + test ({counts['train']} train, "
        f"{counts['test']} test pixels, {len(ds.classes)} classes; modalities "
        + ", ".join(
            f"{k} {v['bands']} bands {v['patch']}x{v['patch']}" for k, v in m["modalities"].items()
        )
        + (f"; {near} training pixels within a patch of the test split dropped" if near else "")
        + f") -> {ds.root}/manifest.json"
    )


def _cmd_data_build(args: argparse.Namespace) -> int:
    from fedrs.datasets.builder import BuildSpec, build
    from fedrs.datasets.multimodal import build_from_mat, is_mat_source, parse_patch_files
    from fedrs.datasets.sources import parse_source_arg

    sources = [parse_source_arg(s) for s in args.source]
    mat = [is_mat_source(path) for _, path in sources]
    if any(mat):
        if len(sources) != 1:
            raise DataError("a .mat source (a scene or a pixel table) is built on its own")
        names = dict(v.split("=", 1) for v in args.var if "=" in v)
        if len(names) != len(args.var):
            raise DataError("--var takes ROLE=NAME (e.g. --var hsi=HSI_TrSet)")
        ds = build_from_mat(*sources[0], _modal_spec(args), names, parse_patch_files(args.patches))
        _print_modal(ds)
        return 0

    spec = BuildSpec.from_args(
        args.source,
        args.out,
        partition=_partition_spec(args),
        test_fraction=args.test_fraction,
        image_size=args.image_size,
        class_map=args.class_map,
        caption_classes=args.caption_classes,
        workers=args.workers,
        skip_bad=args.skip_bad,
        exclude_near=args.exclude_near,
    )
    ds = build(spec)
    counts = ds.manifest["counts"]
    excluded = counts.get("excluded_near_test")
    print(
        f"built {ds.num_clients} client shards + test ({counts['train']} train, "
        f"{counts['test']} test, {len(ds.classes)} classes"
        + (f"; {excluded} images of {args.exclude_near}'s test split left out" if excluded else "")
        + f") -> {ds.root}/manifest.json"
    )
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from fedrs.datasets.synth import build_synthetic

    if args.multimodal:
        from fedrs.datasets.multimodal import build_synthetic_scene

        spec = _modal_spec(args)
        ds = build_synthetic_scene(spec, height=args.image_size, width=args.image_size)
        _print_modal(ds)
        return 0

    ds = build_synthetic(
        args.out,
        per_class=args.per_class,
        image_size=args.image_size,
        partition=_partition_spec(args),
        test_fraction=args.test_fraction,
        workers=args.workers,
    )
    print(
        f"synthetic RS scenes: {len(ds.classes)} classes, {ds.num_clients} clients -> "
        f"{ds.root}/manifest.json"
    )
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from fedrs.datasets.show import show

    png = show(args.dir)
    print(f"heatmap: {png}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from fedrs.core.config import load_config
    from fedrs.orchestrator.runner import run

    if args.dry_run:
        from fedrs.io import write_json
        from fedrs.orchestrator.plan import plan, render

        p = plan(load_config(args.config, args.set))
        print(render(p))
        if args.json:
            write_json(args.json, p)
        return 0
    if args.resume:
        if args.config:
            print("fedrs: error: give either CONFIG or --resume RUN_DIR, not both", file=sys.stderr)
            return 2
        if args.out or args.overwrite:
            print(
                "fedrs: error: --resume continues RUN_DIR in place: drop --out/--overwrite",
                file=sys.stderr,
            )
            return 2
        run(resume=args.resume, overrides=args.set)
    else:
        if args.overwrite and not args.out:
            print("fedrs: error: --overwrite needs --out RUN_DIR", file=sys.stderr)
            return 2
        run(load_config(args.config, args.set), out=args.out, overwrite=args.overwrite)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedrs.orchestrator import deploy

    what = args.deploy_command
    if what == "certs":
        c = deploy.make_certs(Path(args.out), args.host, args.days)
        print(f"CA {c.ca} (give it to every site), certificate {c.cert}, key {c.key}")
        return 0
    if what == "key":
        k = deploy.make_node_key(Path(args.path))
        print(f"private key {k} (stays on the site); register {k}.pub on the SuperLink")
        return 0
    from fedrs.core.config import load_config

    cfg = load_config(args.config, args.set)
    if what == "app":
        from fedrs.orchestrator.flower_app import deploy_config

        app = deploy.write_app(
            Path(args.app), deploy_config(cfg), Path(args.out), args.sites, args.wait, args.resume
        )
        print(f"{app}: run it with `flwr run {app} <connection>`")
        return 0
    deploy.local(cfg, args.sites, args.out, args.insecure, args.overwrite, timeout_s=args.timeout)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[:1] == ["report"]:
        stored = len(target) > 1 and all(t.endswith(".csv") for t in target[1:])
        if len(target) != 2 and not stored:
            print(
                "fedrs: error: usage: fedrs sweep report DIR | FILE.results.csv [FILE ...]",
                file=sys.stderr,
            )
            return 2
        from fedrs.orchestrator.sweep.report import report, stored_report

        if stored:  # a study's stored results (one or several files): the markdown, on stdout
            print(stored_report(target[1:], args.metric, args.also, args.compare, args.scale))
            return 0
        for name, path in report(
            target[1],
            x=args.x,
            y=args.y,
            metric=args.metric,
            also=args.also,
            compare=args.compare,
            scale=args.scale,
        ).items():
            print(f"{name}: {path}")
        return 0
    if target[:1] == ["tables"]:
        if len(target) != 2:
            print("fedrs: error: usage: fedrs sweep tables FILE.md [--check]", file=sys.stderr)
            return 2
        from fedrs.benchmarks.tables import blocks, regenerate

        stale = regenerate(target[1], check=args.check)
        if args.check and stale:
            print(
                f"fedrs: error: {len(stale)} of {len(blocks(target[1]))} tables in {target[1]} "
                f"differ from their stored results: {'; '.join(stale)}",
                file=sys.stderr,
            )
            return 1
        verb = "match" if args.check else "regenerated"
        print(f"{len(blocks(target[1]))} tables {verb} ({len(stale)} changed)")
        return 0
    from fedrs.orchestrator.sweep.run import run_sweep

    if bool(target) == bool(args.resume) or len(target) > 1:
        print("fedrs: error: give one sweep file or --resume DIR", file=sys.stderr)
        return 2
    if args.resume and args.out:
        print("fedrs: error: --resume continues DIR in place: drop --out", file=sys.stderr)
        return 2
    if args.resume and args.done:
        print(
            "fedrs: error: --done starts a new sweep from a sweep file: drop --resume",
            file=sys.stderr,
        )
        return 2
    result = run_sweep(
        target[0] if target else None,
        out=args.out,
        resume=args.resume,
        overrides=args.set,
        mlflow=args.mlflow,
        done=args.done,
    )
    if result.stopped:
        return 130  # as a stopped `fedrs run`
    # scripts see a sweep with failed trials, or one stopped before all trials ran
    return 1 if result.failed or result.finished < result.trials else 0


def _defaults(section: Any, keys: tuple[str, ...] | None = None) -> str:
    """``key=default, ...`` of ``keys`` of a config section (all its fields when None)."""
    import dataclasses

    keys = tuple(f.name for f in dataclasses.fields(section)) if keys is None else keys
    return ", ".join(f"{k}={getattr(section, k)!r}" for k in keys) or "no options"


def _print_registry(title: str, rows: list[tuple[str, str, str]]) -> int:
    """One entry per name: its one-line summary, then its options with defaults."""
    print(f"{title}\n")
    for name, summary, options in rows:
        print(f"{name:21} {summary}\n{'':21}   {options}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from fedrs.methods import METHODS

    rows = [
        (
            name,
            cls.summary,
            f"options (method.KEY): {_defaults(cls.Options())}"
            + (
                "; run defaults (its benchmark tables'): "
                + ", ".join(f"{k}={v!r}" for k, v in cls.run_defaults.items())
                if cls.run_defaults
                else ""
            ),
        )
        for name, cls in sorted(METHODS.items())
    ]
    return _print_registry("method.name           what trains and travels", rows)


def _cmd_strategies(args: argparse.Namespace) -> int:
    from fedrs.core.strategies import STRATEGIES

    rows = [  # each strategy's own Options, at their defaults
        (name, cls.summary, f"options (strategy.KEY): {_defaults(cls.Options())}")
        for name, cls in sorted(STRATEGIES.items())
    ]
    return _print_registry("strategy.name         what the server does", rows)


def _cmd_warm(args: argparse.Namespace) -> int:
    import ray

    from fedrs.orchestrator import warm
    from fedrs.orchestrator.preflight import check_ray_address

    if not os.environ.get("RAY_ADDRESS"):
        raise FedrsError(
            "fedrs warm: set RAY_ADDRESS to the cluster whose kept actors to show (a Ray "
            "started by `fedrs run` itself ends with the run and keeps none)"
        )
    check_ray_address()
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    reg = warm.registry(create=False)
    if reg is None:
        print("no actors kept on this cluster (resources.keep_warm_s was never set)")
        return 0
    if args.end:
        print(f"ended {ray.get(reg.evict.remote())} resting set(s)")
    sets = ray.get(reg.list.remote())
    print(f"{len(sets)} set(s) of actors kept (resources.keep_warm_s)")
    for w in sets:
        when = "in use by a run" if w["state"] == "lent" else f"ends in {w['ends_in_s']:.0f} s"
        print(
            f"  {w['sid']}  {w['state']:8} {w['actors']} client actor(s) of {w['arch']}, "
            f"{w['runs']} run(s) served, {when}"
        )
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from fedrs.core.config import load_config, to_toml

    print(to_toml(load_config(args.config, args.set)), end="")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fedrs.models.pretrain import PretrainConfig, pretrain

    report = pretrain(
        PretrainConfig(
            data=args.data,
            out=args.out,
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
    )
    print(
        f"checkpoint {args.out}: test image->text R@1 {report['test']['i2t_r1']:.3f}, "
        f"R@5 {report['test']['i2t_r5']:.3f} ({report['seconds']:.0f}s)"
    )
    return 0


BENCHMARKS = {
    "data-format": "fedrs.benchmarks.data_format",
    "vs-flower": "fedrs.benchmarks.vs_flower",
    "vs-sequential": "fedrs.benchmarks.vs_sequential",
    "robustness": "fedrs.benchmarks.robustness",
    "chaos": "fedrs.benchmarks.chaos",
    "scale-clients": "fedrs.benchmarks.scale_clients",
    "packing": "fedrs.benchmarks.packing",
    "flops": "fedrs.benchmarks.flops",
    "allocator": "fedrs.benchmarks.allocator",
    "retrieval": "fedrs.benchmarks.retrieval",
    "sweep": "fedrs.benchmarks.sweep",
    "cross-org": "fedrs.benchmarks.cross_org",
    "deploy": "fedrs.benchmarks.deploy",
    "system": "fedrs.benchmarks.system",
    "startup": "fedrs.benchmarks.startup",
}


def _literal(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"a,b"`` -> ["a", "b"], else text."""
    if "," in text:
        return [_literal(t) for t in text.split(",") if t]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(BENCHMARKS[args.name])
    kwargs = {"json_path": args.json}
    for key in ("data", "cache", "rounds"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    for assignment in args.set or []:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--set {assignment!r}: expected name=value")
        kwargs[key.strip()] = _literal(value.strip())
    try:
        module.main(**kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ConfigError(f"bench {args.name}: {exc}") from None
        raise
    return 0


def _cmd_bench_table(args: argparse.Namespace) -> int:
    from fedrs.benchmarks.table import render

    print(render(args), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrs", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build, generate and inspect federated datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    b = dsub.add_parser("build", help="ImageFolder / caption datasets -> Arrow client shards")
    b.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="an ImageFolder tree or a caption dataset (dataset.json); repeatable",
    )
    b.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="shorter side resized to this, centre-cropped square (default 224)",
    )
    b.add_argument(
        "--class-map", default=None, help='JSON file {"alias": "class"} merging synonyms'
    )
    b.add_argument(
        "--caption-classes",
        default=None,
        metavar="FILE|re:PATTERN|folder:DIR",
        help="caption data: each image's scene class, from a file (JSON {filename: class} or "
        "'filename,class' lines), a regex on the file name with a (?P<class>...) group, or "
        "folder:DIR, the ImageFolder the captions number (image k = DIR's k-th file in sorted "
        "(class, file) order, as UCM-Captions numbers UC Merced); "
        "enables label-skewed partitions of image-caption pairs",
    )
    b.add_argument(
        "--out", required=True, help="output folder (manifest.json + shards; replaced atomically)"
    )
    _add_partition_args(b)
    _add_modal_args(b)
    m = b.add_argument_group("multi-modal .mat sources (HSI + LiDAR scenes, pixel tables)")
    m.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="the .mat variable of a role (hsi, lidar, gt, gt_train, gt_test; pixel tables: "
        "labels, test_labels, <modality>) when not recognised; NAME or FILE:NAME",
    )
    m.add_argument(
        "--patches",
        action="append",
        default=[],
        metavar="MOD=PATH[:K]",
        help="pixel tables: a .mat with the modality's k x k patches (N x k*k*C, MATLAB "
        "column-major), replacing its pixel features",
    )
    b.set_defaults(func=_cmd_data_build)

    s = dsub.add_parser("synth", help="procedural RS scenes (3 sensors) -> client shards")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--per-class", type=int, default=40, help="images per class, largest sensor")
    s.add_argument("--image-size", type=int, default=64, help="scene size in pixels (default 64)")
    _add_partition_args(s)
    s.add_argument(
        "--multimodal",
        action="store_true",
        help="a co-registered HSI + LiDAR scene (--image-size its side) instead of images",
    )
    _add_modal_args(s)
    s.set_defaults(func=_cmd_data_synth)

    sh = dsub.add_parser("show", help="per-client class histograms + partition.png heatmap")
    sh.add_argument("dir", help="a built dataset folder (holds manifest.json)")
    sh.set_defaults(func=_cmd_data_show)

    r = sub.add_parser("run", help="run a federation (default: synthetic data, tiny CLIP)")
    r.add_argument("config", nargs="?", default=None, help="TOML config file")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set strategy.name=fedprox",
    )
    r.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/<timestamp>); an existing run there is an error",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="with --out: replace the results of the run already there",
    )
    r.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run from its last completed round",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (actors, parameters, bytes per client) without training",
    )
    r.add_argument("--json", default=None, help="with --dry-run: write the plan as JSON here")
    r.set_defaults(func=_cmd_run)

    sw = sub.add_parser(
        "sweep",
        help="many runs as Ray Tune trials (grid / random axes, seeds); `sweep report DIR`",
        description="fedrs sweep SWEEP.toml [--set k=v] [--out DIR] | fedrs sweep --resume DIR "
        "| fedrs sweep report DIR|FILE.results.csv [FILE ...] [--x AXIS --y AXIS --metric M "
        "--compare AXIS=A:B] | fedrs sweep tables FILE.md [--check]",
    )
    sw.add_argument(
        "target",
        nargs="*",
        metavar="SWEEP.toml | report DIR | tables FILE.md",
        help="a sweep file, report DIR (or stored FILE.results.csv files: pooled into one "
        "study, compared across files), or tables FILE.md",
    )
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [base] key; a [grid] axis: only that value (a table by label)",
    )
    sw.add_argument("--out", default=None, help="sweep directory (default sweeps/<name>-<time>)")
    sw.add_argument("--resume", default=None, metavar="DIR", help="run the unfinished trials")
    sw.add_argument(
        "--done",
        action="append",
        default=None,
        metavar="FILE.results.csv",
        help="take this sweep's trials finished in a stored results table as done (a study "
        "continued on another machine); their rows are copied, not re-run (repeatable: the "
        "first file that has a trial finished gives its row)",
    )
    sw.add_argument("--mlflow", default=None, metavar="URI", help="also log to MLflow at URI")
    sw.add_argument("--x", default=None, help="report: heatmap columns axis")
    sw.add_argument("--y", default=None, help="report: heatmap rows axis")
    sw.add_argument("--metric", default=None, help="report: metric (default the headline)")
    sw.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="METRIC",
        help="report: another final metric as a column (e.g. kappa, balanced_accuracy)",
    )
    sw.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="AXIS=A:B",
        help="report: differences A - B paired on every other axis, seeds included, with "
        "95%% Student-t intervals (repeatable; e.g. arm=creff:fedavg)",
    )
    sw.add_argument(
        "--scale", type=float, default=None, help="report: differences times this (100: points)"
    )
    sw.add_argument(
        "--check",
        action="store_true",
        help="tables: change nothing; exit 1 when a table differs from its stored results",
    )
    sw.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("pretrain", help="contrastive pretraining of a small CLIP on captions")
    p.add_argument("--data", required=True, help="a caption build (fedrs data build)")
    p.add_argument("--out", required=True, help="checkpoint path (loads as model.pretrained)")
    p.add_argument("--arch", default="fedrs-small", help="open_clip architecture (fedrs-small)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the captions (30)")
    p.add_argument("--batch-size", type=int, default=64, help="image-caption pairs per step (64)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (5e-4)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (0)")
    p.set_defaults(func=_cmd_pretrain)

    bench = sub.add_parser("bench", help="re-runnable benchmarks that print figures and ratios")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data", default=None, help="a built dataset directory (default: synthetic)"
    )
    common.add_argument("--json", default=None, help="write the result JSON here")
    common.add_argument("--cache", default=None, help="retrieval: builds / checkpoints cache")
    common.add_argument("--rounds", type=int, default=None, help="federated rounds")
    common.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a benchmark-specific option (see the benchmark's docstring), e.g. --set clients=20",
    )
    bsub = bench.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in sorted(BENCHMARKS):
        bsub.add_parser(name, parents=[common], help=f"the {name} benchmark (README: benchmarks)")
    for child in bsub.choices.values():
        child.set_defaults(func=_cmd_bench)
    from fedrs.benchmarks.table import add_arguments

    bt = bsub.add_parser(
        "table",
        help="a markdown table from stored results (--json files)",
        description="A markdown table from stored benchmark results: --rows KEY --columns "
        "a,b (records; several files add a first column) or --target 'PATH<=VALUE' (met?).",
    )
    add_arguments(bt)
    bt.set_defaults(func=_cmd_bench_table)

    dp = sub.add_parser("deploy", help="run on Flower's deployment runtime (real sites, TLS)")
    dsub2 = dp.add_subparsers(dest="deploy_command", required=True)
    dl = dsub2.add_parser("local", help="rehearse: a SuperLink + N SuperNodes on 127.0.0.1")
    dl.add_argument("config", nargs="?", default=None, help="TOML config file")
    dl.add_argument("--sites", type=int, required=True, help="SuperNodes (organisations)")
    dl.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    dl.add_argument("--out", default=None, help="run directory (default runs/<timestamp>)")
    dl.add_argument("--overwrite", action="store_true", help="with --out: replace a run there")
    dl.add_argument("--insecure", action="store_true", help="no TLS, no site authentication (loud)")
    dl.add_argument("--timeout", type=float, default=None, help="give up after this many s")
    dl.set_defaults(func=_cmd_deploy)
    dc = dsub2.add_parser("certs", help="a CA and a SuperLink certificate for a host name")
    dc.add_argument("--host", required=True, help="the SuperLink's DNS name or IP address")
    dc.add_argument("--out", required=True, help="directory for ca.crt, server.pem, server.key")
    dc.add_argument("--days", type=int, default=365, help="validity (365)")
    dc.set_defaults(func=_cmd_deploy)
    dk = dsub2.add_parser("key", help="a site's key pair for SuperNode authentication")
    dk.add_argument("path", help="private key path (PATH.pub: the key to register)")
    dk.set_defaults(func=_cmd_deploy)
    da = dsub2.add_parser("app", help="write the Flower App directory for `flwr run`")
    da.add_argument("config", nargs="?", default=None, help="TOML config file")
    da.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    da.add_argument("--sites", type=int, required=True, help="SuperNodes to wait for")
    da.add_argument("--out", required=True, help="the run directory on the SuperLink's machine")
    da.add_argument("--app", required=True, help="where to write the App (pyproject.toml)")
    da.add_argument("--resume", action="store_true", help="continue the run in --out")
    da.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the sites")
    da.set_defaults(func=_cmd_deploy)

    m = sub.add_parser("methods", help="list the methods, their options and defaults")
    m.set_defaults(func=_cmd_methods)
    st = sub.add_parser("strategies", help="list the aggregation strategies and their options")
    st.set_defaults(func=_cmd_strategies)
    w = sub.add_parser(
        "warm", help="the actors runs kept on this cluster (resources.keep_warm_s); --end them"
    )
    w.add_argument("--end", action="store_true", help="end every resting set now")
    w.set_defaults(func=_cmd_warm)
    c = sub.add_parser("config", help="print every config key with its value, as TOML")
    c.add_argument("config", nargs="?", default=None, help="TOML config file")
    c.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    c.set_defaults(func=_cmd_config)
    return parser


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(  # fedrs logs at INFO; libraries (open_clip logs to root) at WARNING
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("fedrs").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # output to a file or pipe: no colour codes around Ray's worker-log prefixes (rich
        # already leaves its own out); the user's own RAY_COLOR_PREFIX wins
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _terminate)  # `ray job stop`: as Ctrl-C (also after Ray)
    try:
        return int(args.func(args) or 0)
    except FedrsError as exc:
        print(f"fedrs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedrs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fedrs methods | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
