"""Batched, gradient-free scoring of (prompt, response) pairs: rewards and log-probs.

Used to precompute the reward and reference tables (the Oracle and the reference policy
are never in memory during alignment) and to score generations.
"""

from __future__ import annotations

import numpy as np
import torch

from .batching import encode, pad_batch
from .modeling import LMWithRewardHead, response_logps


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
          batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per (prompt, response): ``logp`` (sum over response tokens), ``ntok`` and, for a model
    with a reward head, ``reward``. Rows are batched by length to waste little padding."""
    model.eval()
    device = next(model.parameters()).device
    enc = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    out = {"logp": np.zeros(len(enc)), "ntok": np.zeros(len(enc), dtype=np.int64)}
    if isinstance(model, LMWithRewardHead):
        out["reward"] = np.zeros(len(enc))
    for lo in range(0, len(enc), batch_size):
        idx = order[lo:lo + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([enc[i] for i in idx], tokenizer.pad_token_id).items()}
        if isinstance(model, LMWithRewardHead):
            logits, rewards = model(batch["input_ids"], batch["attention_mask"])
            out["reward"][idx] = rewards.float().cpu().numpy()
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, ntok = response_logps(logits, batch["input_ids"], batch["loss_mask"])
        out["logp"][idx] = logp.cpu().numpy()
        out["ntok"][idx] = ntok.long().cpu().numpy()
    return out
