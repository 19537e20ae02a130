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
    return _score_groups(model, tokenizer, prompts, [responses], max_length, batch_size, max_prompt_length,
                         documents, chat, logps)[0]


@torch.no_grad()
def score_pairs(model, tokenizer, prompts: list[str], chosen: list[str], rejected: list[str], max_length: int,
                batch_size: int = 32, max_prompt_length: int | None = None, documents: list[str] | None = None,
                chat: bool = False, logps: bool = True) -> tuple[dict, dict]:
    """:func:`score` of the chosen and of the rejected responses, each pair's prompt computed
    once (``packing.pack`` shares it): the same values as two :func:`score` calls, to float
    summation order. A pair either of whose responses cannot fit is NaN on both sides."""
    return tuple(_score_groups(model, tokenizer, prompts, [chosen, rejected], max_length, batch_size,
                               max_prompt_length, documents, chat, logps))


def _score_groups(model, tokenizer, prompts, sides, max_length, batch_size, max_prompt_length, documents,
                  chat, logps) -> list[dict]:
    """One output dict per side; row i of every side forms one group (a pair shares its prompt)."""
    model.eval()
    device = next(model.parameters()).device
    rewards = isinstance(model, LMWithRewardHead)
    run = as_packed_forward(model)
    documents = documents if documents is not None else [None] * len(prompts)
    enc, kept = [], []
    for i, (p, d) in enumerate(zip(prompts, documents)):
        try:
            enc.append([encode(tokenizer, p, side[i], max_length, max_prompt_length=max_prompt_length,
                               document=d, chat=chat) for side in sides])
            kept.append(i)
        except TooLong:
            pass
    n = len(prompts)
    outs = []
    for k in range(len(sides)):
        out = {"ntok": np.zeros(n, dtype=np.int64), "n_too_long": n - len(kept),
               "n_prompt_cut": sum(g[k].prompt_cut > 0 for g in enc)}
        if logps:
            out["logp"] = np.full(n, np.nan)
        if rewards:
            out["reward"] = np.full(n, np.nan)
        outs.append(out)
    kept = np.asarray(kept, dtype=np.int64)
    order = np.argsort([sum(len(e.input_ids) for e in g) for g in enc], kind="stable")
    step = max(1, batch_size // len(sides))  # batch_size counts sequences
    for lo in range(0, len(enc), step):
        local = order[lo:lo + step]
        idx = kept[local]
        packed = pack([enc[i] for i in local], tokenizer.pad_token_id).to(device)
        logp, reward = run(packed, logps=logps, rewards=rewards)
        for k, out in enumerate(outs):  # sequences are numbered group by group: side k is every len(sides)-th
            pick = slice(k, None, len(sides))
            out["ntok"][idx] = packed.ntok[pick].cpu().numpy()
            if logps:
                out["logp"][idx] = logp[pick].cpu().numpy()
            if rewards:
                out["reward"][idx] = reward[pick].float().cpu().numpy()
    return outs
