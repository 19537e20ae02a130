"""What each training job optimises: a loss from ``losses.py`` and the table columns it reads.

The trainer is the same for every objective; an objective only says whether examples are
pairs, whether the model carries a reward head, which precomputed columns it needs, and
how the forward outputs become a loss.

Forward outputs of a pair batch (see ``trainer.forward``): ``logp_w``, ``logp_l`` (sums of
response-token log-probs), ``ntok_w``, ``ntok_l`` (response lengths) and, with a reward
head, ``r_w``, ``r_l``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import losses
from .objective_names import ALIGN_METHODS, OBJECTIVES  # noqa: F401 (this module's names too)


@dataclass(frozen=True)
class Objective:
    name: str
    paired: bool
    reward_head: bool
    columns: tuple[str, ...]
    loss: Callable[[dict, dict], tuple]
    # For a loss that is not a mean of per-pair terms over the batch (e-DPO's min over members):
    # sums over a micro-batch's pairs, no gradient. Where an optimizer step has several
    # micro-batches or processes, the trainer adds them up over all of them first and passes the
    # total to ``loss`` as values[WHOLE_BATCH], so the step optimises the whole batch's loss.
    whole_batch: Callable[[dict, dict], torch.Tensor] | None = None


WHOLE_BATCH = "whole_batch"


def _aggregate(out: dict, side: str, agg: str) -> torch.Tensor:
    if agg == "sum":
        return out[f"logp_{side}"]
    if agg == "mean":
        return out[f"logp_{side}"] / out[f"ntok_{side}"]
    raise ValueError(f"logp_agg must be 'sum' or 'mean', got {agg!r}")


def _sft(out, _):
    # token-mean NLL over the batch's response tokens; ``ntok_norm`` is the global batch's token
    # count per rank, so N ranks (whose gradients are averaged) reproduce one process exactly
    nll = -out["logp"].sum() / out["ntok_norm"]
    return nll, {"nll": nll.detach()}


def build(name: str, p: dict) -> Objective:
    """Objective ``name`` with its hyperparameters ``p`` (the method's config section)."""
    if name == "sft":
        return Objective("sft", False, False, (), _sft)
    if name in ("oracle", "rm"):
        alpha = p.get("nll_weight", 0.0) if name == "oracle" else 0.0  # rm: Eq. 2

        def loss(out, _):
            return losses.oracle_loss(out["r_w"], out["r_l"], -out["logp_w"] / out["ntok_w"], alpha)

        return Objective(name, True, True, (), loss)
    ref_cols = ("ref_logp_chosen", "ref_logp_rejected")
    if name == "dpo":
        def loss(out, t):
            return losses.dpo_loss(out["logp_w"], out["logp_l"], t["ref_logp_chosen"],
                                   t["ref_logp_rejected"], p["beta"])

        return Objective("dpo", True, False, ref_cols, loss)
    if name in ("cdpo", "rdpo"):  # DPO's inputs, a noise-aware loss (losses.py)
        eps = p["epsilon"]
        if not 0.0 <= eps < (0.5 if name == "rdpo" else 1.0):
            raise ValueError(f"align.{name}.epsilon must be in [0, {0.5 if name == 'rdpo' else 1}), got {eps!r}")
        fn = losses.cdpo_loss if name == "cdpo" else losses.rdpo_loss

        def loss(out, t):
            return fn(out["logp_w"], out["logp_l"], t["ref_logp_chosen"], t["ref_logp_rejected"], p["beta"], eps)

        return Objective(name, True, False, ref_cols, loss)
    if name == "ipo":
        agg = p["logp_agg"]
        _aggregate({"logp_w": 0.0, "ntok_w": 1.0}, "w", agg)  # an unknown aggregation fails here, not mid-run

        def loss(out, t):
            # the reference's log-probs are of the same tokens: the same aggregation
            ref = {"logp_w": t["ref_logp_chosen"], "logp_l": t["ref_logp_rejected"],
                   "ntok_w": out["ntok_w"], "ntok_l": out["ntok_l"]}
            return losses.ipo_loss(_aggregate(out, "w", agg), _aggregate(out, "l", agg),
                                   _aggregate(ref, "w", agg), _aggregate(ref, "l", agg), p["tau"])

        return Objective("ipo", True, False, ref_cols, loss)
    if name == "edpo":
        k = p["ensemble_size"]
        rm_cols = tuple(f"rm{i}_{side}" for i in range(k) for side in ("chosen", "rejected"))

        def inputs(out, t):
            r1 = torch.stack([t[f"rm{i}_chosen"] for i in range(k)], dim=1)
            r2 = torch.stack([t[f"rm{i}_rejected"] for i in range(k)], dim=1)
            return out["logp_w"], out["logp_l"], t["ref_logp_chosen"], t["ref_logp_rejected"], r1, r2, p["beta"]

        def loss(out, t):
            return losses.edpo_loss(*inputs(out, t), p["reduction"], t.get(WHOLE_BATCH))

        def member_sums(out, t):
            return losses.edpo_member_sums(*inputs(out, t))

        return Objective("edpo", True, False, ref_cols + rm_cols, loss,
                         member_sums if p["reduction"] == "min" else None)
    if name == "drdo":
        teacher = p.get("teacher", "oracle")  # "gold": the synthetic world's true reward (diagnostic)
        student_reward = p["student_reward"]
        if student_reward not in ("head", "logprob"):
            raise ValueError(f"drdo.student_reward must be 'head' or 'logprob', got {student_reward!r}")

        def loss(out, t):
            z_w, z_l = _aggregate(out, "w", p["logp_agg"]), _aggregate(out, "l", p["logp_agg"])
            rhat_w, rhat_l = (out["r_w"], out["r_l"]) if student_reward == "head" else (z_w, z_l)
            return losses.drdo_loss(z_w, z_l, rhat_w, rhat_l, t[f"{teacher}_chosen"], t[f"{teacher}_rejected"],
                                    p["alpha"], p["gamma"])

        return Objective("drdo", True, student_reward == "head", (f"{teacher}_chosen", f"{teacher}_rejected"), loss)
    raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")
