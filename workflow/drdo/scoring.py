"""Batched, gradient-free scoring of (prompt, response) pairs: rewards and log-probs.

Used to precompute the reward and reference tables (the Oracle and the reference policy
are never in memory during alignment) and to score generations.
"""

from __future__ import annotations

import numpy as np
import torch

from .batching import TooLong, encode, pad_batch
from .modeling import LMWithRewardHead, response_logps


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
          batch_size: int = 32, max_prompt_length: int | None = None, documents: list[str] | None = None,
          chat: bool = False) -> dict[str, np.ndarray]:
    """Per (prompt, response): ``logp`` (sum over response tokens), ``ntok`` and, for a model
    with a reward head, ``reward``. Rows are batched by length to waste little padding.

    Prompts are cut as in training and generation (``batching.encode``); a response that
    cannot fit ``max_length`` is never cut: its row gets NaN and counts in ``n_too_long``.
    """
    model.eval()
    device = next(model.parameters()).device
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
    out = {"logp": np.full(n, np.nan), "ntok": np.zeros(n, dtype=np.int64),
           "n_too_long": n - len(kept), "n_prompt_cut": sum(e.prompt_cut > 0 for e in enc)}
    if isinstance(model, LMWithRewardHead):
        out["reward"] = np.full(n, np.nan)
    kept = np.asarray(kept, dtype=np.int64)
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    for lo in range(0, len(enc), batch_size):
        local = order[lo:lo + batch_size]
        idx = kept[local]
        batch = {k: v.to(device) for k, v in pad_batch([enc[i] for i in local], tokenizer.pad_token_id).items()}
        if isinstance(model, LMWithRewardHead):
            logits, rewards = model(batch["input_ids"], batch["attention_mask"])
            out["reward"][idx] = rewards.float().cpu().numpy()
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, ntok = response_logps(logits, batch["input_ids"], batch["loss_mask"])
        out["logp"][idx] = logp.cpu().numpy()
        out["ntok"][idx] = ntok.long().cpu().numpy()
    return out
