"""FedDiff (arXiv 2401.02433): multi-modal (HSI + LiDAR) federated learning with dual-branch
diffusion features, fused classification heads and a low-rank communication module.

As ../shared/METHODS.md section 4 gives the paper and its code (networks: ``models/feddiff.py``):

* **stage 1, diffusion** (rounds ``1..diffusion_rounds``): a DDPM (T = ``diffusion_steps``,
  linear beta ``1e-4 -> 0.02``, L1 noise-prediction loss, Adam lr ``diffusion_lr``) with one
  U-Net per modality on ``size x size`` patches (k x k neighbourhoods resized), trained
  federatedly among the clients that hold that modality (``unet.<m>.*``);
* **stage 2, classification** (the remaining rounds): the U-Nets frozen; the diffusion feature
  of a pixel is the pooled middle-block output at ``feature_timesteps``, the noised inputs of all
  timesteps in one batch, with noise fixed per (example id, timestep), so it is computed once
  per shard and U-Net and kept (``feature cache``, hits counted); per modality a raw-patch CNN
  plus projected diffusion features (``clf.<m>.*``), the cross-branch projections, three FR
  fusion blocks and three logit heads (``fuse.*``);
* loss: cross-entropy of each logit head + ``mse_weight`` x the MSE between the fused heads'
  logits and their mean (consistency) + ``weight_reg`` x the squared L2 norm of the weights;
* **communication module**: with ``rank`` > 0 a client uploads each matrix-shaped tensor's
  update (``W_local - W_received``, reshaped to ``(out, in)``) as its rank-``rank`` truncated
  SVD factors ``U S`` and ``V^T`` (extras ``lowrank/<name>/u|v``); the server restores
  ``W_received + U S V^T`` (``decode_upload``). ``bytes_up`` counts what was sent.

**Across organisations** (the paper's setting: "one organisation holds HSI, another LiDAR of
the same scene"; a build with ``--client-modalities 'hsi|lidar'``): each region's pixels are held
by an HSI and a LiDAR organisation with the same pixel ids. From stage 2 on, each round each
organisation first sends its partner its branch features of their shared pixels (computed
with the received classifier), compressed per block of ``client.batch_size`` aligned rows to
rank ``feature_rank`` (truncated SVD factors; 0: as they are); the orchestrator checks and
relays them (``orchestrator/partners.py``, ``partner_bytes`` per round and organisation). Each
organisation then trains its branch, its own logit head and the fusion blocks and heads on its
own features and the partner's; same-modality branches and the fusion part are averaged across
regions by the strategy (vertical within a region, horizontal across regions). Stage 1 trains
each organisation's U-Net as before. The joint prediction (global test split) averages the two
organisations' fusion heads, each computed from its own features and the partner's as they
cross (compressed), plus both own heads; ``accuracy_<m>`` is each organisation alone.

Which parts are the paper's and which are our reading (the paper does not give them):

* the paper's: the two organisations, dual-branch diffusion features, bilateral connections,
  a low-rank communication module between clients, CE + MSE + weight regularisation;
* ours: features cross once per round (a snapshot before local training), not per step,
  and no gradient flows back across the boundary: each side treats the partner's features
  as constants, so nothing but compressed features ever leaves an organisation (never pixels,
  labels or gradients); hence both organisations of a region hold the labels (with labels on
  one side only, the other could not train without gradients crossing: not an option here);
  the low-rank module is read as compressing these features, and separately (``rank``) the
  uploads to the server; three fusion heads + one head per branch (the code's three heads
  plus the branches' own heads, which let one organisation predict alone); the MSE term as
  consistency between the fusion heads' logits.

Where the paper is silent, the standard reading, documented here:

* clients are sites (horizontal FL); a client holding one modality trains that modality's
  U-Net and branch with the branch's own logit head (``clf.<m>.head``) and never receives or
  sends the other modality's tensors; paired clients train everything. The logit heads start
  at zero, so a fusion part no client trained adds nothing: the prediction is the sum of the
  logits of every head whose inputs the example has;
* the classifier is trained by the run's local optimiser (``client.lr``, momentum, weight
  decay: SGD), the diffusion stage by Adam as the authors' code;
* feature timesteps ``(5, 50, 100)`` and the U-Net width 32 (the code's sizes are not given);
* the paper's "bilateral connections between the branches at complementary denoising steps"
  are read as the cross-branch projections of the branch features (each of which carries its
  modality's diffusion features at every feature timestep); the U-Nets themselves are not
  connected (a client holding one modality could not train a connected pair);
* the frozen U-Nets go down with every stage-2 round (``bytes_down`` counts them each time;
  a deployment would keep them after the first).

Evaluation: ``accuracy`` (OA), ``balanced_accuracy`` (AA), ``kappa``, per-class accuracy;
beside them ``accuracy_<m>``, ``balanced_accuracy_<m>`` and ``kappa_<m>`` (one modality's head
alone: across organisations, an organisation whose partner is absent at test time) and, for
paired examples, the same three of ``fused`` (the three fusion heads alone).

``early_fusion``: one CNN over the modalities' bands concatenated (patches resized to the
largest), FedAvg; ``modalities = ["hsi"]`` makes it single-modality FedAvg.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrs.datasets.defaults import SCENE, SyntheticDefault
from fedrs.methods.base import (
    FitOptions,
    FitOutput,
    Method,
    Params,
    batched_eval,
    check,
    local_sgd,
)
from fedrs.models.feddiff import DDPM, WIDTH, Branch, FusionHead, UNet, resize_patches

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig

LOWRANK = "lowrank/"
EVAL_BATCH = 512
FEATURE_BATCH = 256


@dataclass(frozen=True)
class FedDiffOptions:
    modalities: tuple[str, ...] = ("hsi", "lidar")  # the two branches (data modality names)
    diffusion: bool = True  # False: no diffusion stage, no diffusion features (ablation)
    diffusion_rounds: int = 5  # stage 1; the rest of federation.rounds is stage 2
    diffusion_steps: int = 500  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    diffusion_lr: float = 1e-4  # Adam, stage 1
    diffusion_epochs: int = 1  # local epochs of stage 1 (stage 2: client.local_epochs)
    unet_width: int = 32
    patch_size: int = 8  # U-Net input side (patches resized)
    feature_timesteps: tuple[int, ...] = (5, 50, 100)
    mse_weight: float = 1.0  # consistency of the fused heads' logits
    weight_reg: float = 1e-4  # squared L2 norm of the classifier's weights
    rank: int = 0  # communication module: rank of the uploaded factors (0: full tensors)
    # partner organisations (a 'hsi|lidar' build): each sends its partner its branch features
    # of their shared pixels, as rank-feature_rank factors per block of client.batch_size rows
    # (0: the features as they are); exchange = false: each organisation trains alone
    exchange: bool = True
    feature_rank: int = 8

    def __post_init__(self) -> None:
        check(len(self.modalities) == 2, "method.modalities: FedDiff has two branches")
        check(len(set(self.modalities)) == 2, "method.modalities must be two different names")
        for name in ("diffusion_steps", "unet_width", "diffusion_epochs"):
            check(getattr(self, name) >= 1, f"method.{name} must be >= 1")
        check(self.diffusion_rounds >= 0, "method.diffusion_rounds must be >= 0")
        check(self.patch_size >= 4 and self.patch_size % 4 == 0, "method.patch_size: 4, 8, ...")
        check(0 < self.beta_start < self.beta_end < 1, "method.beta_start < beta_end in (0, 1)")
        check(
            all(0 <= t < self.diffusion_steps for t in self.feature_timesteps)
            and len(self.feature_timesteps) >= 1,
            "method.feature_timesteps must lie in [0, diffusion_steps)",
        )
        check(self.rank >= 0, "method.rank must be >= 0")
        check(0 <= self.feature_rank <= WIDTH, f"method.feature_rank must be in [0, {WIDTH}]")
        for name in ("mse_weight", "weight_reg", "diffusion_lr"):
            check(getattr(self, name) >= 0, f"method.{name} must be >= 0")

    @property
    def stage1_rounds(self) -> int:
        return self.diffusion_rounds if self.diffusion else 0


@dataclass(frozen=True)
class EarlyFusionOptions:
    modalities: tuple[str, ...] = ("hsi", "lidar")  # concatenated bands (one name: unimodal)
    weight_reg: float = 1e-4
    rank: int = 0

    def __post_init__(self) -> None:
        check(len(self.modalities) >= 1, "method.modalities: at least one")
        check(self.rank >= 0 and self.weight_reg >= 0, "method.rank / weight_reg must be >= 0")


# ---------------------------------------------------------------------------------------------
# Small pure pieces (tested by hand)


def fused_loss(
    logits: list[torch.Tensor], fused: int, y: torch.Tensor, mse_weight: float
) -> torch.Tensor:
    """Mean CE over the heads' logits + ``mse_weight`` x MSE of the first ``fused`` heads
    (the fusion heads) against their mean."""
    ce = sum(F.cross_entropy(z, y) for z in logits) / len(logits)
    if fused < 2 or not mse_weight:
        return ce
    stack = torch.stack(logits[:fused])
    return ce + mse_weight * ((stack - stack.mean(0, keepdim=True)) ** 2).mean()


def low_rank(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` truncated SVD of ``delta`` as ``(out, in)``: factors ``U S`` and ``V^T``."""
    mat = delta.reshape(delta.shape[0], -1).astype(np.float64)
    u, s, vt = np.linalg.svd(mat, full_matrices=False)
    r = min(rank, len(s))
    return (u[:, :r] * s[:r]).astype(np.float32), vt[:r].astype(np.float32)


def compressible(shape: tuple[int, ...], rank: int) -> bool:
    """Factors are smaller than the tensor: matrix-shaped and ``rank (out + in) < out x in``."""
    if rank <= 0 or len(shape) < 2:
        return False
    out, inner = shape[0], int(np.prod(shape[1:]))
    return rank * (out + inner) < out * inner


def encode_upload(local: Params, received: Params, rank: int) -> tuple[Params, Params]:
    """(params, extras) a client sends: compressible tensors as low-rank factors of their
    update, the rest as they are."""
    params, extras = {}, {}
    for name, value in local.items():
        if compressible(value.shape, rank):
            u, v = low_rank(value - received[name], rank)
            extras[f"{LOWRANK}{name}/u"], extras[f"{LOWRANK}{name}/v"] = u, v
        else:
            params[name] = value
    return params, extras


def decode_lowrank(sent: Params, params: Params, extras: Params) -> tuple[Params, Params]:
    """Restore ``received + U V`` for every factored tensor (the server's side)."""
    params, rest = dict(params), {}
    for name, value in extras.items():
        if not name.startswith(LOWRANK):
            rest[name] = value
            continue
        key, part = name[len(LOWRANK) :].rsplit("/", 1)
        if part != "u":
            continue
        u, v = value, extras[f"{LOWRANK}{key}/v"]
        base = sent[key]
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
            raise ValueError(f"{key}: factors {u.shape} x {v.shape} do not multiply")
        if u.shape[0] * v.shape[1] != base.size or u.shape[0] != base.shape[0]:
            raise ValueError(f"{key}: factors {u.shape} x {v.shape} do not give {base.shape}")
        params[key] = (base + (u.astype(np.float64) @ v).reshape(base.shape)).astype(base.dtype)
    return params, rest


def feature_shapes(rows: int, batch: int, rank: int) -> dict[str, tuple[int, ...]]:
    """What an organisation sends its partner for ``rows`` pixels: the ``(rows, WIDTH)``
    branch features, or (``rank`` > 0) per block of ``batch`` rows the factors ``U S`` (rows
    stacked) and ``V^T`` of their rank-``rank`` truncated SVD."""
    if rank == 0:
        return {"features": (rows, WIDTH)}
    return {"features/u": (rows, rank), "features/v": (-(-rows // batch), rank, WIDTH)}


def compress_rows(feats: np.ndarray, rank: int, batch: int) -> Params:
    """``feature_shapes``' payload for ``feats`` (``(rows, WIDTH)``); a block with fewer rows
    than ``rank`` pads its factors with zeros."""
    if rank == 0:
        return {"features": np.ascontiguousarray(feats, dtype=np.float32)}
    shapes = feature_shapes(len(feats), batch, rank)
    u = np.zeros(shapes["features/u"], np.float32)
    v = np.zeros(shapes["features/v"], np.float32)
    for b in range(v.shape[0]):
        block = feats[b * batch : (b + 1) * batch].astype(np.float64)
        left, sing, right = np.linalg.svd(block, full_matrices=False)
        r = min(rank, len(sing))
        u[b * batch : b * batch + len(block), :r] = left[:, :r] * sing[:r]
        v[b, :r] = right[:r]
    return {"features/u": u, "features/v": v}


def restore_rows(payload: Params, batch: int) -> np.ndarray:
    """The ``(rows, WIDTH)`` features a partner's ``compress_rows`` payload carries."""
    if "features" in payload:
        return payload["features"]
    u, v = payload["features/u"], payload["features/v"]
    out = np.empty((len(u), v.shape[2]), np.float32)
    for b in range(v.shape[0]):
        out[b * batch : (b + 1) * batch] = u[b * batch : (b + 1) * batch] @ v[b]
    return out


def _manifest(cfg: RunConfig) -> dict[str, Any]:
    """The data's manifest ({} for the synthetic default before it is built, or unreadable)."""
    try:
        return json.loads((Path(cfg.data.path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _exchanges(cfg: RunConfig, client: dict[str, Any]) -> bool:
    """The client is a partner organisation that exchanges features (``method.exchange``)."""
    return bool(client.get("partners")) and cfg.method.options.exchange


def _modalities(cfg: RunConfig) -> dict[str, dict[str, int]]:
    """The data's modalities (``{name: {"bands", "patch"}}``) from its manifest."""
    from fedrs.errors import ConfigError

    if not cfg.data.path:  # the synthetic default scene, built when the run starts
        from fedrs.datasets.multimodal import synthetic_modalities

        found = synthetic_modalities(cfg.data.modal.patch_size)
    else:
        try:
            text = (Path(cfg.data.path) / "manifest.json").read_text()
            found = json.loads(text).get("modalities") or {}
        except (OSError, ValueError):
            found = {}
    wanted = cfg.method.options.modalities
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ConfigError(
            f"method {cfg.method.name} needs modalities {list(wanted)}; the data at "
            f"{cfg.data.path or '(none)'} has {sorted(found) or 'none'} (build multi-modal data "
            f"with `fedrs data synth --multimodal` or a .mat source)"
        )
    return {m: found[m] for m in wanted}


def _digest(params: Params, prefix: str) -> str:
    h = hashlib.sha256()
    for k in sorted(k for k in params if k.startswith(prefix)):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


class _PixelMethod(Method):
    """What FedDiff and early fusion share: modules named by prefix, their tensors as global
    params, the staged upload groups, low-rank uploads, OA / AA / kappa."""

    synthetic_data: ClassVar[SyntheticDefault] = SCENE
    needs: ClassVar[frozenset[str]] = frozenset({"labels", "modalities"})
    # the schedule of the FedDiff tables (benchmarks/sweeps/feddiff_*.toml): 30 classifier
    # rounds x 2 local epochs, SGD lr 0.05, 4 clients (synthetic scene), all every round
    run_defaults: ClassVar[dict[str, Any]] = {
        "federation.rounds": 30,
        "client.local_epochs": 2,
        "client.lr": 0.05,
        "data.num_clients": 4,
        "federation.clients_per_round": 4,
    }
    extra_keys = (LOWRANK,)
    nets: nn.ModuleDict

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        with torch.device("meta"):
            nets = cls.build_nets(cfg, _modalities(cfg), num_classes)
        return {
            "global": {f"{k}": tuple(v.shape) for k, v in nets.state_dict().items()},
            "private": {},
        }

    @classmethod
    def build_nets(
        cls, cfg: RunConfig, modalities: dict[str, dict[str, int]], num_classes: int
    ) -> nn.ModuleDict:
        raise NotImplementedError

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        self.opts = cfg.method.options
        self.bands = _modalities(cfg)
        self.nets = self.build_nets(cfg, self.bands, len(classes)).to(self.device)

    def init_global(self, seed: int) -> Params:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            fresh = self.build_nets(self.cfg, self.bands, len(self.classes))
        return {k: v.detach().cpu().numpy().copy() for k, v in fresh.state_dict().items()}

    def _load(self, params: Params) -> None:
        """Copy the received tensors into the modules (others keep their values)."""
        state = self.nets.state_dict()
        with torch.no_grad():
            for k, v in params.items():
                if k in state:
                    state[k].copy_(torch.from_numpy(np.array(v, dtype=np.float32)))

    def _upload(
        self, names: tuple[str, ...], received: Params, options: FitOptions
    ) -> tuple[Params, Params]:
        state = {
            k: v.detach().cpu().numpy().copy()
            for k, v in self.nets.state_dict().items()
            if k in names and k in options.upload_keys
        }
        return encode_upload(state, received, self.opts.rank)

    @classmethod
    def decode_upload(
        cls, cfg: RunConfig, sent: Params, params: Params, extras: Params
    ) -> tuple[Params, Params]:
        return decode_lowrank(sent, params, extras)

    @classmethod
    def wire_size(cls, cfg: RunConfig, shape: tuple[int, ...]) -> int:
        rank = cfg.method.options.rank
        if compressible(shape, rank):
            return rank * (shape[0] + int(np.prod(shape[1:])))
        return int(np.prod(shape))

    def _inputs(self, shard: Any, rows: Any, names: list[str]) -> dict[str, torch.Tensor]:
        return {
            m: torch.from_numpy(np.array(shard.arrays[m][rows], dtype=np.float32)).to(self.device)
            for m in names
        }

    def _evaluate(
        self, logits_of: Any, shard: Any, start: int, stop: int, names: list[str]
    ) -> dict[str, Any]:
        labels = shard.labels[start:stop]
        rows = np.arange(start, stop)
        memo: dict[tuple[int, int], Any] = {}  # each batch's logits computed once, not per variant

        def once(r: np.ndarray) -> Any:
            key = (int(r[0]), len(r))
            if key not in memo:
                memo[key] = logits_of(r)
            return memo[key]

        out = batched_eval(lambda r: once(r)[0], rows, labels, EVAL_BATCH)
        for variant in once(rows[:EVAL_BATCH])[1] if len(rows) else {}:
            part = batched_eval(lambda r, v=variant: once(r)[1][v], rows, labels, EVAL_BATCH)
            out[f"correct_{variant}"] = part["correct"]  # OA, AA and kappa of each head alone
            out[f"class_correct_{variant}"] = part["class_correct"]
            out[f"class_pred_{variant}"] = part["class_pred"]
        return out


def predict(logits_fn: Any, rows: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Argmax class of each row, in batches."""
    with torch.no_grad():
        parts = [
            logits_fn(rows[s : s + batch]).argmax(1).cpu().numpy()
            for s in range(0, len(rows), batch)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class FedDiff(_PixelMethod):
    name = "feddiff"
    summary = "HSI + LiDAR: federated DDPM U-Nets, diffusion features, FR fusion, low-rank upload"
    Options = FedDiffOptions
    # its 5 diffusion rounds (method.diffusion_rounds) come before the 30 classifier rounds
    run_defaults: ClassVar[dict[str, Any]] = {**_PixelMethod.run_defaults, "federation.rounds": 35}

    @classmethod
    def check_run(cls, cfg: RunConfig) -> list[str]:
        """Rule: the classifier trains only after the diffusion stage, so federation.rounds
        must exceed its rounds (else every round predicts one class)."""
        from fedrs.errors import ConfigError

        stage1 = cfg.method.options.stage1_rounds
        if cfg.federation.rounds <= stage1:
            raise ConfigError(
                f"federation.rounds={cfg.federation.rounds} leaves FedDiff's classifier untrained: "
                f"its first method.diffusion_rounds={stage1} rounds train only the diffusion "
                f"U-Nets; set federation.rounds above {stage1} or lower method.diffusion_rounds"
            )
        return []

    @classmethod
    def build_nets(
        cls, cfg: RunConfig, modalities: dict[str, dict[str, int]], num_classes: int
    ) -> nn.ModuleDict:
        opts: FedDiffOptions = cfg.method.options
        nets: dict[str, nn.Module] = {}
        feat = 0
        if opts.diffusion:
            for m, info in modalities.items():
                nets[f"unet_{m}"] = UNet(info["bands"], opts.unet_width)
            feat = 2 * opts.unet_width * len(opts.feature_timesteps)
        for m, info in modalities.items():
            nets[f"clf_{m}"] = Branch(info["bands"], num_classes, feat)
        nets["fuse"] = FusionHead(num_classes)
        return nn.ModuleDict(nets)

    def __init__(self, cfg: RunConfig, classes: list[str], device: str = "cpu") -> None:
        super().__init__(cfg, classes, device)
        o = self.opts
        # the data's clients are partner organisations ('hsi|lidar'): the joint prediction
        # carries each one's features to the other as they cross the boundary (``_joint``)
        self.partnered = bool(_manifest(cfg).get("partners"))
        self.ddpm = DDPM(o.diffusion_steps, o.beta_start, o.beta_end)
        self.cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self.cache_hits = self.cache_misses = 0

    # ----------------------------------------------------------------- who sends what, when
    @classmethod
    def _groups(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> tuple[tuple, tuple]:
        """(download prefixes, upload prefixes) of a client holding ``client["modalities"]``."""
        opts: FedDiffOptions = cfg.method.options
        held = [m for m in opts.modalities if m in client.get("modalities", opts.modalities)]
        unets = tuple(f"unet_{m}." for m in held) if opts.diffusion else ()
        if round <= opts.stage1_rounds:
            return unets, unets
        train = tuple(f"clf_{m}." for m in held)
        if len(held) == len(opts.modalities) or _exchanges(cfg, client):
            train += ("fuse.",)  # a partner's features complete the pair
        return unets + train, train

    @classmethod
    def partner_shapes(
        cls, cfg: RunConfig, client: dict[str, Any], round: int
    ) -> dict[str, tuple[int, ...]] | None:
        """Stage 2, partner organisations: the branch features of the shared pixels."""
        opts: FedDiffOptions = cfg.method.options
        if round <= opts.stage1_rounds or not _exchanges(cfg, client):
            return None
        return feature_shapes(client["num_examples"], cfg.client.batch_size, opts.feature_rank)

    def share(
        self, global_params: Params, private: Params, shard: Any, options: FitOptions
    ) -> Params:
        """This organisation's branch features of its training pixels (the received
        classifier, its modality's diffusion features), compressed for the partner."""
        self._load(global_params)
        self.nets.eval()
        (m,) = [m for m in self.opts.modalities if m in shard.arrays]
        diff = self.diffusion_features(shard, m, global_params)
        with torch.no_grad():
            feats = [
                self._features(shard, np.arange(s, min(s + EVAL_BATCH, len(shard))), m, diff)
                for s in range(0, len(shard), EVAL_BATCH)
            ]
        rows = torch.cat(feats).cpu().numpy() if feats else np.zeros((0, WIDTH), np.float32)
        return compress_rows(rows, self.opts.feature_rank, options.batch_size)

    def _features(self, shard: Any, rows: np.ndarray, m: str, diff: Any) -> torch.Tensor:
        d = None if diff is None else torch.from_numpy(diff[rows]).to(self.device)
        return self.nets[f"clf_{m}"](self._inputs(shard, rows, [m])[m], d)

    @classmethod
    def upload_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        return _PrefixSet(cls._groups(cfg, client, round)[1])

    @classmethod
    def download_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        return _PrefixSet(cls._groups(cfg, client, round)[0])

    # ----------------------------------------------------------------- local training
    def fit(
        self, global_params: Params, private: Params, shard: Any, options: FitOptions
    ) -> FitOutput:
        held = [m for m in self.opts.modalities if m in shard.arrays]
        self._load(global_params)
        if options.round <= self.opts.stage1_rounds:
            return self._fit_diffusion(global_params, shard, options, held)
        return self._fit_classifier(global_params, shard, options, held)

    def _fit_diffusion(
        self, received: Params, shard: Any, options: FitOptions, held: list[str]
    ) -> FitOutput:
        unets = {m: self.nets[f"unet_{m}"] for m in held}
        params = {f"unet_{m}.{k}": p for m, u in unets.items() for k, p in u.named_parameters()}
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence(options.rng_seed).generate_state(1)[0])
        )
        size, steps = self.opts.patch_size, self.ddpm.steps

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            x = self._inputs(shard, rows, held)
            loss = torch.zeros((), device=self.device)
            for m, unet in unets.items():
                x0 = resize_patches(x[m], size)
                t = torch.randint(0, steps, (len(rows),), generator=gen).to(self.device)
                noise = torch.randn(x0.shape, generator=gen).to(self.device)
                loss = loss + F.l1_loss(unet(self.ddpm.q_sample(x0, t, noise), t), noise)
            return loss, 0

        for u in unets.values():
            u.train()
        metrics = local_sgd(
            params,
            step,
            len(shard),
            dataclasses.replace(options, epochs=self.opts.diffusion_epochs),
            received.keys(),
            optimizer=lambda ps: torch.optim.Adam(ps, lr=self.opts.diffusion_lr),
        )
        up, extras = self._upload(tuple(self.nets.state_dict()), received, options)
        return FitOutput(
            params=up,
            num_examples=len(shard),
            metrics={"train_loss": metrics["train_loss"], "stage": 1.0},
            extras=extras,
        )

    def diffusion_features(self, shard: Any, modality: str, received: Params) -> np.ndarray | None:
        """``(N, len(timesteps) * 2w)`` middle-block features of the frozen U-Net, computed
        once per (shard, modality, U-Net) and kept in this actor."""
        if not self.opts.diffusion:
            return None
        key = (
            str(getattr(shard, "path", id(shard))),
            modality,
            _digest(received, f"unet_{modality}."),
        )
        feats = self.cache.get(key)
        if feats is not None:
            self.cache_hits += 1
            self.cache.move_to_end(key)
            return feats
        self.cache_misses += 1
        unet = self.nets[f"unet_{modality}"].eval()
        ts = self.opts.feature_timesteps
        ids = np.asarray(shard.ids)
        parts = []
        with torch.no_grad():
            for s in range(0, len(shard), FEATURE_BATCH):
                x0 = resize_patches(
                    self._inputs(shard, slice(s, s + FEATURE_BATCH), [modality])[modality],
                    self.opts.patch_size,
                )
                n = len(x0)
                noise = torch.from_numpy(
                    np.stack(
                        [
                            np.random.default_rng([int(i), int(t)]).standard_normal(x0[0].shape)
                            for t in ts
                            for i in ids[s : s + n]
                        ]
                    ).astype(np.float32)
                ).to(self.device)
                t = torch.tensor([tt for tt in ts for _ in range(n)], device=self.device)
                xt = self.ddpm.q_sample(x0.repeat(len(ts), 1, 1, 1), t, noise)
                f = unet(xt, t, features=True)  # all timesteps in one batch
                parts.append(torch.cat(f.split(n), 1).cpu().numpy())
        feats = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        self.cache[key] = feats
        while len(self.cache) > 64:
            self.cache.popitem(last=False)
        return feats

    def logits(
        self,
        x: dict[str, torch.Tensor],
        diff: dict[str, torch.Tensor | None],
        partner: dict[str, torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], int]:
        """Every head's logits the example's modalities allow (fusion heads first) and how
        many of them are fusion heads. ``partner``: the other modality's branch features as
        a partner organisation sent them (constants here: no gradient crosses to it)."""
        own = {m: self.nets[f"clf_{m}"](x[m], diff.get(m)) for m in x}
        feats = {**(partner or {}), **own}
        out: list[torch.Tensor] = []
        fused = 0
        if len(feats) == 2:
            a, b = self.opts.modalities
            out = self.nets["fuse"](feats[a], feats[b])
            fused = len(out)
        out += [self.nets[f"clf_{m}"].head(f) for m, f in own.items()]
        return out, fused

    def _fit_classifier(
        self, received: Params, shard: Any, options: FitOptions, held: list[str]
    ) -> FitOutput:
        misses = self.cache_misses
        diff = {m: self.diffusion_features(shard, m, received) for m in held}
        partner = self._partner(options, held, len(shard))
        names = tuple(k for k in self.nets.state_dict() if k.startswith(("clf_", "fuse")))
        train = {n for n in names if n in options.upload_keys}
        params = {k: p for k, p in self.nets.named_parameters() if k in train}
        for name in ("clf_" + m for m in held):
            self.nets[name].train()
        reg = [p for k, p in params.items() if k.endswith("weight")]
        opts = self.opts

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            x = self._inputs(shard, rows, held)
            d = {
                m: None if f is None else torch.from_numpy(f[rows]).to(self.device)
                for m, f in diff.items()
            }
            p = None if partner is None else {m: f[rows] for m, f in partner.items()}
            out, fused = self.logits(x, d, p)
            y = torch.as_tensor(shard.labels[rows], device=self.device)
            loss = fused_loss(out, fused, y, opts.mse_weight)
            if opts.weight_reg:
                loss = loss + opts.weight_reg * sum((w**2).sum() for w in reg)
            return loss, int((sum(out).argmax(1) == y).sum())

        metrics = local_sgd(params, step, len(shard), options, received.keys())
        up, extras = self._upload(names, received, options)
        metrics |= {"stage": 2.0, "feature_cache_miss": float(self.cache_misses > misses)}
        return FitOutput(params=up, num_examples=len(shard), metrics=metrics, extras=extras)

    def _partner(
        self, options: FitOptions, held: list[str], rows: int
    ) -> dict[str, torch.Tensor] | None:
        """The partner's branch features of this shard's pixels (by modality), restored from
        what it shared; None without a partner exchange."""
        if not options.partners:
            return None
        (payload,) = options.partners.values()  # FedDiff: two modalities, one partner
        (other,) = [m for m in self.opts.modalities if m not in held]
        feats = restore_rows(payload, options.batch_size)
        if len(feats) != rows:
            raise ValueError(f"partner features for {len(feats)} pixels, the shard has {rows}")
        return {other: torch.from_numpy(feats).to(self.device)}

    def _predictor(self, global_params: Params, shard: Any) -> tuple[Any, list[str]]:
        """``rows -> (summed logits, {variant: logits})`` with the received model."""
        self._load(global_params)
        self.nets.eval()
        held = [m for m in self.opts.modalities if m in shard.arrays]
        diff = {m: self.diffusion_features(shard, m, global_params) for m in held}

        def logits_of(rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            x = self._inputs(shard, rows, held)
            d = {
                m: None if f is None else torch.from_numpy(f[rows]).to(self.device)
                for m, f in diff.items()
            }
            if self.partnered and self.opts.exchange and len(held) == 2:
                out, fused = self._joint(x, d, rows)
            else:
                out, fused = self.logits(x, d)
            variants = {m: out[fused + i] for i, m in enumerate(held)}
            if fused:
                variants["fused"] = sum(out[:fused])
            return sum(out), variants

        return logits_of, held

    def _joint(
        self, x: dict[str, torch.Tensor], d: dict[str, Any], rows: np.ndarray
    ) -> tuple[list[torch.Tensor], int]:
        """Partner organisations predicting together: each computes the fusion heads from its
        own features and the partner's as they cross the boundary (compressed per block of
        ``client.batch_size`` rows, as in training); the joint logits average the two views'
        fusion heads, then each organisation's own head. At ``feature_rank`` 0 this is the
        paired prediction exactly."""
        a, b = self.opts.modalities
        batch, rank = self.cfg.client.batch_size, self.opts.feature_rank
        own = {m: self.nets[f"clf_{m}"](x[m], d.get(m)) for m in (a, b)}
        crossed = {  # each organisation's features as its partner receives them
            m: torch.from_numpy(
                restore_rows(compress_rows(f.detach().cpu().numpy(), rank, batch), batch)
            ).to(self.device)
            for m, f in own.items()
        }
        fuse = self.nets["fuse"]
        views = (fuse(own[a], crossed[b]), fuse(crossed[a], own[b]))  # a's view, b's view
        fused = [(p + q) / 2 for p, q in zip(*views, strict=True)]
        return [*fused, *(self.nets[f"clf_{m}"].head(own[m]) for m in (a, b))], 3

    def evaluate_rows(
        self, global_params: Params, private: Params, shard: Any, start: int, stop: int
    ) -> dict[str, Any]:
        logits_of, held = self._predictor(global_params, shard)
        return self._evaluate(logits_of, shard, start, stop, held)

    def predict_rows(self, global_params: Params, shard: Any, start: int, stop: int) -> np.ndarray:
        logits_of, _ = self._predictor(global_params, shard)
        return predict(lambda r: logits_of(r)[0], np.arange(start, stop))


class _PrefixSet:
    """A set of tensor names given by prefixes (``"clf_hsi." in group``)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.startswith(self.prefixes)


class EarlyFusion(_PixelMethod):
    name = "early_fusion"
    summary = "one CNN over the modalities' bands stacked (one modality: unimodal FedAvg)"
    Options = EarlyFusionOptions

    @classmethod
    def build_nets(
        cls, cfg: RunConfig, modalities: dict[str, dict[str, int]], num_classes: int
    ) -> nn.ModuleDict:
        bands = sum(info["bands"] for info in modalities.values())
        return nn.ModuleDict({"clf": Branch(bands, num_classes)})

    @classmethod
    def upload_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        """Only clients holding every modality train (and receive) the stacked model."""
        held = client.get("modalities")
        wanted = cfg.method.options.modalities
        return None if held is None or all(m in held for m in wanted) else ()

    @classmethod
    def download_keys_for(cls, cfg: RunConfig, client: dict[str, Any], round: int) -> Any:
        return cls.upload_keys_for(cfg, client, round)

    def _stack(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        size = max(v.shape[-1] for v in x.values())
        return torch.cat([resize_patches(x[m], size) for m in self.opts.modalities], 1)

    def fit(
        self, global_params: Params, private: Params, shard: Any, options: FitOptions
    ) -> FitOutput:
        self._load(global_params)
        clf = self.nets["clf"].train()
        names = self.opts.modalities
        params = {f"clf.{k}": p for k, p in clf.named_parameters()}
        if not all(m in shard.arrays for m in names):  # nothing to train on
            return FitOutput(params={}, num_examples=len(shard), metrics={})
        reg = [p for k, p in params.items() if k.endswith("weight")]

        def step(rows: np.ndarray) -> tuple[torch.Tensor, int]:
            z = clf.head(clf(self._stack(self._inputs(shard, rows, list(names)))))
            y = torch.as_tensor(shard.labels[rows], device=self.device)
            loss = F.cross_entropy(z, y) + self.opts.weight_reg * sum((w**2).sum() for w in reg)
            return loss, int((z.argmax(1) == y).sum())

        metrics = local_sgd(params, step, len(shard), options, global_params.keys())
        up, extras = self._upload(tuple(params), global_params, options)
        return FitOutput(params=up, num_examples=len(shard), metrics=metrics, extras=extras)

    def _predictor(self, global_params: Params, shard: Any) -> Any:
        self._load(global_params)
        clf = self.nets["clf"].eval()
        names = list(self.opts.modalities)

        def logits_of(rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return clf.head(clf(self._stack(self._inputs(shard, rows, names)))), {}

        return logits_of

    def evaluate_rows(
        self, global_params: Params, private: Params, shard: Any, start: int, stop: int
    ) -> dict[str, Any]:
        names = list(self.opts.modalities)
        if not all(m in shard.arrays for m in names):  # a client split without them
            return {"correct": 0.0, "loss_sum": 0.0, "n": 0.0}
        return self._evaluate(self._predictor(global_params, shard), shard, start, stop, names)

    def predict_rows(self, global_params: Params, shard: Any, start: int, stop: int) -> np.ndarray:
        logits_of = self._predictor(global_params, shard)  # the model loaded once, not per batch
        return predict(lambda r: logits_of(r)[0], np.arange(start, stop))
