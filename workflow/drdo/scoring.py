"""Batched, gradient-free scoring of (prompt, response) pairs: rewards and log-probs.

Used to precompute the reward and reference tables (the Oracle and the reference policy
are never in memory during alignment) and to score generations.
"""

from __future__ import annotations

import numpy as np
import torch

from .batching import TooLong, encode
from .modeling import LMWithRewardHead
from .packing import as_packed_forward, pack


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
          batch_size: int = 32, max_prompt_length: int | None = None, documents: list[str] | None = None,
          chat: bool = False, logps: bool = True) -> dict[str, np.ndarray]:
    """Per (prompt, response): ``ntok``, ``logp`` (sum over response tokens; skipped, and the LM
    head never run, with ``logps=False``) and, for a model with a reward head, ``reward``.
    Batches of ``batch_size`` sequences of similar length, packed without padding.

    Prompts are cut as in training and generation (``batching.encode``); a response that
    cannot fit ``max_length`` is never cut: its row gets NaN and counts in ``n_too_long``.
    """
    model.eval()
    device = next(model.parameters()).device
    rewards = isinstance(model, LMWithRewardHead)
    run = as_packed_forward(model)
    documents = documents if documents is not None else [None] * len(prompts)
    enc, kept = [], []
    for i, (p, r, d) in enumerate(zip(prompts, responses, documents)):
        try:
            enc.append(encode(tokenizer, p, r, max_length, max_prompt_length=max_prompt_length,
                              document=d, chat=chat))
            kept.append(i)
        except TooLong:
            pass
    n = len(prompts)
    out = {"ntok": np.zeros(n, dtype=np.int64), "n_too_long": n - len(kept),
           "n_prompt_cut": sum(e.prompt_cut > 0 for e in enc)}
    if logps:
        out["logp"] = np.full(n, np.nan)
    if rewards:
        out["reward"] = np.full(n, np.nan)
    kept = np.asarray(kept, dtype=np.int64)
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    for lo in range(0, len(enc), batch_size):
        local = order[lo:lo + batch_size]
        idx = kept[local]
        packed = pack([[enc[i]] for i in local], tokenizer.pad_token_id).to(device)
        logp, reward = run(packed, logps=logps, rewards=rewards)
        out["ntok"][idx] = packed.ntok.cpu().numpy()
        if logps:
            out["logp"][idx] = logp.cpu().numpy()
        if rewards:
            out["reward"][idx] = reward.float().cpu().numpy()
    return out
