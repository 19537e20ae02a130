"""The noise-robust baselines' losses (objectives ``cdpo``, ``rdpo``, ``ipo``) against TRL's own
loss code, on random log-probs.

    pip install -e '.[bench]'   # TRL
    PYTHONPATH=workflow python bench/robust_losses_vs_trl.py

TRL computes its DPO losses inside ``DPOTrainer._compute_loss``, not in a function of its own.
This script calls that method with a stand-in trainer (the attributes it reads) and a stand-in
model whose output holds given per-token log-probs (zero outside the completion, as TRL's fused
LM head returns them), with precomputed reference log-probs, so TRL's code computes its loss
from exactly the log-probs the project's objectives get. Compared, in float64:

- ``rdpo`` with TRL's ``loss_type="robust"`` (``label_smoothing`` = epsilon);
- ``ipo`` with ``logp_agg: mean`` and TRL's ``loss_type="ipo"`` (``beta`` = tau; TRL averages the
  log-probs over completion tokens);
- ``cdpo``: TRL 1.16's ``"sigmoid"`` no longer applies ``label_smoothing``, so TRL has no cDPO
  loss; checked against ``"sigmoid"`` at epsilon = 0 (where cDPO is DPO), and
  ``tests/test_losses.py`` checks cDPO against a soft-label cross-entropy.

Prints one JSON line per case with the largest absolute difference; exits 1 if any exceeds 1e-12.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch

from drdo import objectives


def _batch(n_pairs: int, length: int, seed: int) -> dict:
    """Per-token log-probs of chosen (rows 0..n-1) and rejected (n..2n-1) completions of random
    lengths after a prompt of random length, and reference log-probs of the same tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * n_pairs
    prompt = torch.randint(2, length // 2, (rows,), generator=g)
    resp = torch.randint(1, length // 2, (rows,), generator=g)
    pos = torch.arange(length)
    completion = ((pos >= prompt[:, None]) & (pos < (prompt + resp)[:, None])).long()
    token_logps = -3 * torch.rand(rows, length - 1, generator=g, dtype=torch.float64)
    token_logps = token_logps * completion[:, 1:]  # what TRL's fused LM head gives: 0 outside the completion
    ref = token_logps.sum(1) + torch.randn(rows, generator=g, dtype=torch.float64)
    return {"completion_mask": completion, "token_logps": token_logps, "ref": ref, "n": n_pairs}


def trl_loss(b: dict, loss_type: str, beta: float, label_smoothing: float) -> float:
    from trl import DPOTrainer

    rows, length = b["completion_mask"].shape
    outputs = SimpleNamespace(log_probs=b["token_logps"], entropy=torch.zeros(rows, length - 1, dtype=torch.float64),
                              mean_logits=torch.zeros(rows, length - 1, dtype=torch.float64),
                              is_top1=torch.zeros(rows, length - 1, dtype=torch.bool))
    model = lambda **kwargs: outputs  # noqa: E731
    same = lambda x: x  # noqa: E731
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=SimpleNamespace(device="cpu", gather_for_metrics=same,
                                                                           gather=same),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(discopop_tau=0.05))
    ref_w, ref_l = b["ref"][:b["n"]], b["ref"][b["n"]:]
    inputs = {"input_ids": torch.zeros(rows, length, dtype=torch.long), "attention_mask": torch.ones(rows, length),
              "completion_mask": b["completion_mask"], "ref_chosen_logps": ref_w, "ref_rejected_logps": ref_l}
    return DPOTrainer._compute_loss(trainer, model, inputs, False).item()


def our_loss(b: dict, objective: str, params: dict) -> float:
    logps, ntok = b["token_logps"].sum(1), b["completion_mask"].sum(1).to(torch.float64)
    n = b["n"]
    out = {"logp_w": logps[:n], "logp_l": logps[n:], "ntok_w": ntok[:n], "ntok_l": ntok[n:]}
    tables = {"ref_logp_chosen": b["ref"][:n], "ref_logp_rejected": b["ref"][n:]}
    return objectives.build(objective, params).loss(out, tables)[0].item()


CASES = [  # (name, objective, its params, TRL loss_type, TRL beta, TRL label_smoothing)
    ("rdpo eps 0.1", "rdpo", {"beta": 0.1, "epsilon": 0.1}, "robust", 0.1, 0.1),
    ("rdpo eps 0.3 beta 0.5", "rdpo", {"beta": 0.5, "epsilon": 0.3}, "robust", 0.5, 0.3),
    ("ipo tau 0.1 mean", "ipo", {"tau": 0.1, "logp_agg": "mean"}, "ipo", 0.1, 0.0),
    ("ipo tau 1.0 mean", "ipo", {"tau": 1.0, "logp_agg": "mean"}, "ipo", 1.0, 0.0),
    ("cdpo eps 0 = sigmoid", "cdpo", {"beta": 0.1, "epsilon": 0.0}, "sigmoid", 0.1, 0.0),
]


def compare(n_pairs: int = 16, length: int = 40, seeds: int = 5) -> list[dict]:
    results = []
    for name, objective, params, loss_type, beta, smoothing in CASES:
        diffs = []
        for seed in range(seeds):
            b = _batch(n_pairs, length, seed)
            diffs.append(abs(our_loss(b, objective, params) - trl_loss(b, loss_type, beta, smoothing)))
        results.append({"case": name, "trl_loss_type": loss_type, "max_abs_diff": max(diffs)})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args(argv)
    import trl

    results = compare(a.pairs, seeds=a.seeds)
    for r in results:
        print(json.dumps({**r, "trl": trl.__version__}))
    return 0 if all(r["max_abs_diff"] <= 1e-12 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
