"""The paper's losses as pure functions on tensors (equation numbers of the DRDO paper).

Conventions (as in TRL): every ``logp`` argument is a per-sequence log-probability of the
response tokens only, shape ``[B]``; rewards are shape ``[B]`` (or ``[B, K]`` for an
ensemble). Each loss returns ``(loss, terms)``: the scalar to minimise and a dict of
detached per-batch means for logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LN2 = math.log(2.0)


def log1mexp(z: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(z)) for z <= 0, stable over the whole range (Maechler 2012).

    Near 0 use log(-expm1(z)); far below use log1p(-exp(z)). Each branch is evaluated on
    an input clamped into its own region so the unused branch can't inject inf/NaN
    gradients through ``torch.where``. z is clamped just below 0: a sequence of
    probability exactly 1 would make the loss infinite.
    """
    z = z.clamp(max=-torch.finfo(z.dtype).tiny)
    near_zero = torch.log(-torch.expm1(z.clamp(min=-_LN2)))
    far = torch.log1p(-torch.exp(z.clamp(max=-_LN2)))
    return torch.where(z > -_LN2, near_zero, far)


def bradley_terry_loss(r_w: torch.Tensor, r_l: torch.Tensor):
    """Eq. 2: -log sigmoid(r(x, y_w) - r(x, y_l))."""
    loss = -F.logsigmoid(r_w - r_l).mean()
    return loss, {"bt": loss.detach(), "reward_acc": (r_w > r_l).float().mean()}


def oracle_loss(r_w: torch.Tensor, r_l: torch.Tensor, nll_w: torch.Tensor, alpha: float):
    """Eq. 5: (1 - a) * BT loss + a * NLL(y_w | x); ``nll_w`` is per example, shape [B].

    With alpha = 0 this is Eq. 2 (the e-DPO ensemble members).
    """
    bt, terms = bradley_terry_loss(r_w, r_l)
    nll = nll_w.mean()
    loss = (1.0 - alpha) * bt + alpha * nll
    return loss, {**terms, "nll_chosen": nll.detach()}


def dpo_loss(pi_w, pi_l, ref_w, ref_l, beta: float):
    """Eq. 3: -log sigmoid(beta * [(pi_w - ref_w) - (pi_l - ref_l)])."""
    margin = (pi_w - ref_w) - (pi_l - ref_l)
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, {"dpo": loss.detach(), "implicit_acc": (margin > 0).float().mean(),
                  "implicit_margin": (beta * margin).detach().mean()}


def edpo_member_sums(pi_1, pi_2, ref_1, ref_2, r_1: torch.Tensor, r_2: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 4's per-member squared errors summed over the pairs given: ``[K]``, no gradient. Summed
    over every micro-batch and process of an optimizer step, they say which member is the min."""
    with torch.no_grad():
        implicit = beta * ((pi_1 - ref_1) - (pi_2 - ref_2))
        return ((r_1 - r_2) - implicit[:, None]).pow(2).sum(dim=0)


def edpo_loss(pi_1, pi_2, ref_1, ref_2, r_1: torch.Tensor, r_2: torch.Tensor, beta: float,
              reduction: str = "min", batch_member_sums: torch.Tensor | None = None):
    """Eq. 4 (Fisch et al., 2024): squared distillation of an ensemble's reward margins.

    ``r_1``, ``r_2`` are ``[B, K]`` (K reward models). Per member k,
    L_k = mean_batch (r_k(y_1) - r_k(y_2) - beta * [(pi_1 - ref_1) - (pi_2 - ref_2)])^2,
    then reduced over k by ``min`` (default) or ``mean``. The min is over the whole optimizer
    batch: where the batch is split into micro-batches or over processes, ``batch_member_sums``
    (``edpo_member_sums`` of the whole batch) names the member, and this micro-batch's L_k of that
    member is returned (so the micro-batches' gradients add up to the whole batch's).
    """
    implicit = beta * ((pi_1 - ref_1) - (pi_2 - ref_2))
    per_member = ((r_1 - r_2) - implicit[:, None]).pow(2).mean(dim=0)
    if reduction == "min" and batch_member_sums is not None:
        loss = per_member[torch.argmin(batch_member_sums)]
    elif reduction == "min":
        loss = per_member.min()
    elif reduction == "mean":
        loss = per_member.mean()
    else:
        raise ValueError(f"edpo reduction must be 'min' or 'mean', got {reduction!r}")
    return loss, {"edpo": loss.detach(), "implicit_acc": (implicit > 0).float().mean(),
                  "implicit_margin": implicit.detach().mean()}


def drdo_loss(z_w, z_l, rhat_w, rhat_l, rstar_w, rstar_l, alpha: float, gamma: float):
    """Eq. 6: reward distillation plus focal-softened contrastive log-unlikelihood.

    L = (r*_w - r*_l - (rhat_w - rhat_l))^2 - alpha * (1 - p_w)^gamma * [z_w - log(1 - exp(z_l))]
    with p_w = sigmoid(z_w - z_l). The focal weight is *not* detached: its gradient is the
    first term of Appendix A.5, Eq. 30.
    """
    distill = ((rstar_w - rstar_l) - (rhat_w - rhat_l)).pow(2)
    log_one_minus_pw = F.logsigmoid(z_l - z_w)  # log(1 - p_w) without cancellation
    one_minus_pw = log_one_minus_pw.exp()
    unlikelihood = z_w - log1mexp(z_l)
    # (1 - p_w)^gamma as exp(gamma * log(1 - p_w)): the same value, but for 0 < gamma < 1
    # pow's derivative gamma * x^(gamma - 1) is inf (and the gradient NaN) once 1 - p_w
    # underflows to 0; this form's derivative, gamma * (1 - p_w)^gamma * p_w, stays finite.
    focal = torch.exp(gamma * log_one_minus_pw) * unlikelihood
    loss = (distill - alpha * focal).mean()
    return loss, {"distill": distill.detach().mean(), "focal": focal.detach().mean(),
                  "p_w": (1 - one_minus_pw).detach().mean(),
                  "student_reward_acc": (rhat_w > rhat_l).float().mean(),
                  "implicit_acc": (z_w > z_l).float().mean()}


# ---------------------------------------------------------------- noise-robust baselines
# The three take DPO's inputs; h = (pi_w - ref_w) - (pi_l - ref_l) is the implicit reward margin.
def _margin_terms(name: str, loss: torch.Tensor, scaled_margin: torch.Tensor) -> dict:
    return {name: loss.detach(), "implicit_acc": (scaled_margin > 0).float().mean(),
            "implicit_margin": scaled_margin.detach().mean()}


def cdpo_loss(pi_w, pi_l, ref_w, ref_l, beta: float, epsilon: float):
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): DPO's cross-entropy against labels that are right with probability 1 - epsilon,
    L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)."""
    z = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    loss = (-(1.0 - epsilon) * F.logsigmoid(z) - epsilon * F.logsigmoid(-z)).mean()
    return loss, _margin_terms("cdpo", loss, z)


def rdpo_loss(pi_w, pi_l, ref_w, ref_l, beta: float, epsilon: float):
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with
    Noisy Feedback", the de-biased loss of Sec. 3): for labels flipped with a known probability
    epsilon < 1/2, L = [(1 - eps) l(beta h) - eps l(-beta h)] / (1 - 2 eps), l(z) = -log sigmoid(z),
    whose expectation over the label noise is DPO's loss on the clean labels."""
    z = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    loss = ((-(1.0 - epsilon) * F.logsigmoid(z) + epsilon * F.logsigmoid(-z)) / (1.0 - 2.0 * epsilon)).mean()
    return loss, _margin_terms("rdpo", loss, z)


def ipo_loss(pi_w, pi_l, ref_w, ref_l, tau: float):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17): L = (h - 1 / (2 tau))^2, h the log-ratio margin without a beta (tau is
    the regularisation). Whether h is built from summed or per-token mean log-probs is the
    caller's (objectives.py, ``align.ipo.logp_agg``)."""
    h = (pi_w - ref_w) - (pi_l - ref_l)
    loss = (h - 1.0 / (2.0 * tau)).pow(2).mean()
    return loss, _margin_terms("ipo", loss, h)
