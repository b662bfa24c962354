"""Federated methods behind one interface (``fedrs.methods.base.Method``), looked up by name."""

from __future__ import annotations

from fedrs.core.registry import METHODS, method_class, register
from fedrs.methods.base import FitOptions, FitOutput, Method
from fedrs.methods.clip2fl import CLIP2FL, CReFF, StudentFedAvg
from fedrs.methods.feddiff import EarlyFusion, FedDiff
from fedrs.methods.fedotp import FedOTP
from fedrs.methods.fedpgp import FedPGP
from fedrs.methods.fedrsclip import FedRSCLIP
from fedrs.methods.fullft import FullFedAvg
from fedrs.methods.pe_rsitr import PERSITR
from fedrs.methods.personal import LocalCoOp, PromptFLFineTune
from fedrs.methods.promptfl import PromptFL
from fedrs.methods.retrieval_baselines import (
    RetrievalAdaptFormer,
    RetrievalCoOp,
    RetrievalFullFT,
    RetrievalZeroShot,
)
from fedrs.methods.zeroshot import ZeroShot

CLASSIFICATION = (
    PromptFL,
    FedRSCLIP,
    FullFedAvg,
    ZeroShot,
    LocalCoOp,
    PromptFLFineTune,
    FedPGP,
    FedOTP,
    CLIP2FL,
    CReFF,
    StudentFedAvg,
    FedDiff,
    EarlyFusion,
)
RETRIEVAL = (PERSITR, RetrievalZeroShot, RetrievalCoOp, RetrievalFullFT, RetrievalAdaptFormer)
for _method in (*CLASSIFICATION, *RETRIEVAL):  # the built-in methods, into the registry
    register(_method)


__all__ = ["METHODS", "FitOptions", "FitOutput", "Method", "method_class"]
