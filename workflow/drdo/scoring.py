"""Batched, gradient-free scoring of (prompt, response) pairs: rewards and log-probs.

Used to precompute the reward and reference tables (the Oracle and the reference policy
are never in memory during alignment) and to score generations.
"""

from __future__ import annotations

import numpy as np
import torch

from .batching import encode
from .modeling import LMWithRewardHead
from .packing import as_packed_forward, pack


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
          batch_size: int = 32, logps: bool = True) -> dict[str, np.ndarray]:
    """Per (prompt, response): ``ntok``, ``logp`` (sum over response tokens; skipped, and the LM
    head never run, with ``logps=False``) and, for a model with a reward head, ``reward``.
    Batches of ``batch_size`` sequences of similar length, packed without padding."""
    model.eval()
    device = next(model.parameters()).device
    rewards = isinstance(model, LMWithRewardHead)
    run = as_packed_forward(model)
    enc = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    out = {"ntok": np.zeros(len(enc), dtype=np.int64)}
    if logps:
        out["logp"] = np.zeros(len(enc))
    if rewards:
        out["reward"] = np.zeros(len(enc))
    for lo in range(0, len(enc), batch_size):
        idx = order[lo:lo + batch_size]
        packed = pack([[enc[i]] for i in idx], tokenizer.pad_token_id).to(device)
        logp, reward = run(packed, logps=logps, rewards=rewards)
        out["ntok"][idx] = packed.ntok.cpu().numpy()
        if logps:
            out["logp"][idx] = logp.cpu().numpy()
        if rewards:
            out["reward"][idx] = reward.float().cpu().numpy()
    return out
