"""Batched, gradient-free scoring of (prompt, response) pairs: rewards and log-probs.

Used to precompute the reward and reference tables (the Oracle and the reference policy
are never in memory during alignment) and to score generations.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .batching import TooLong, encode
from .modeling import LMWithRewardHead
from .packing import as_packed_forward, pack
from .progress import Progress

log = logging.getLogger("drdo.score")


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
          batch_size: int = 32, max_prompt_length: int | None = None, documents: list[str] | None = None,
          chat: bool = False, logps: bool = True) -> dict[str, np.ndarray]:
    """Per (prompt, response): ``ntok``, ``logp`` (sum over response tokens; skipped, and the LM
    head never run, with ``logps=False``) and, for a model with a reward head, ``reward``.
    Batches of ``batch_size`` sequences of similar length, packed without padding; the responses
    to one prompt (a policy's generations at several temperatures) share one copy of it
    (``packing.pack``): the same values as scoring each alone, to float summation order.

    Prompts are cut as in training and generation (``batching.encode``); a response that
    cannot fit ``max_length`` is never cut: its row gets NaN, ``too_long`` and counts in ``n_too_long``.
    """
    documents = documents if documents is not None else [None] * len(prompts)
    by_prompt: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(prompts, documents)):
        by_prompt.setdefault(key, []).append(i)
    out = _score_groups(model, tokenizer, prompts, responses, documents, list(by_prompt.values()), max_length,
                        batch_size, max_prompt_length, chat, logps, whole=False, label="score")
    del out["prompt_cut"]  # per sequence; n_prompt_cut counts them
    return out


@torch.no_grad()
def score_pairs(model, tokenizer, prompts: list[str], chosen: list[str], rejected: list[str], max_length: int,
                batch_size: int = 32, max_prompt_length: int | None = None, documents: list[str] | None = None,
                chat: bool = False, logps: bool = True) -> tuple[dict, dict]:
    """:func:`score` of the chosen and of the rejected responses, each pair's prompt computed
    once (``packing.pack`` shares it): the same values as two :func:`score` calls, to float
    summation order. A pair either of whose responses cannot fit is NaN on both sides."""
    n = len(prompts)
    documents = documents if documents is not None else [None] * n
    flat = _score_groups(model, tokenizer, prompts * 2, list(chosen) + list(rejected), documents * 2,
                         [[i, n + i] for i in range(n)], max_length, batch_size, max_prompt_length, chat, logps,
                         whole=True, label="score pairs")
    sides = []
    for half in (slice(0, n), slice(n, 2 * n)):
        side = {k: v[half] for k, v in flat.items() if isinstance(v, np.ndarray) and k != "prompt_cut"}
        side["n_too_long"] = flat["n_too_long"] // 2  # pairs
        side["n_prompt_cut"] = int(flat["prompt_cut"][half].sum())
        sides.append(side)
    return tuple(sides)


def _score_groups(model, tokenizer, prompts, responses, documents, groups, max_length, batch_size,
                  max_prompt_length, chat, logps, whole, label) -> dict:
    """Scores of sequence i = (prompts[i], responses[i]); the indices in one group of ``groups``
    share a prompt, packed as one group. A sequence that cannot fit is left out (NaN), with
    ``whole`` its whole group. Progress is logged as ``label``."""
    model.eval()
    device = next(model.parameters()).device
    rewards = isinstance(model, LMWithRewardHead)
    run = as_packed_forward(model)
    encoded = []  # (indices, their encodings) per group that is scored
    for group in groups:
        kept, enc = [], []
        for i in group:
            try:
                enc.append(encode(tokenizer, prompts[i], responses[i], max_length,
                                  max_prompt_length=max_prompt_length, document=documents[i], chat=chat))
                kept.append(i)
            except TooLong:
                pass
        if kept and not (whole and len(kept) < len(group)):
            encoded.append((kept, enc))
    n = len(responses)
    out = {"ntok": np.zeros(n, dtype=np.int64), "prompt_cut": np.zeros(n, dtype=bool),
           "n_too_long": n - sum(len(kept) for kept, _ in encoded)}
    if logps:
        out["logp"] = np.full(n, np.nan)
    if rewards:
        out["reward"] = np.full(n, np.nan)

    def flush(batch):
        idx = [i for g in batch for i in encoded[g][0]]  # sequences are numbered group by group
        packed = pack([encoded[g][1] for g in batch], tokenizer.pad_token_id).to(device)
        logp, reward = run(packed, logps=logps, rewards=rewards)
        out["ntok"][idx] = packed.ntok.cpu().numpy()
        out["prompt_cut"][idx] = [e.prompt_cut > 0 for g in batch for e in encoded[g][1]]
        if logps:
            out["logp"][idx] = logp.cpu().numpy()
        if rewards:
            out["reward"][idx] = reward.float().cpu().numpy()

    # batches of at most batch_size sequences (a larger group alone), groups of similar length together
    order = np.argsort([sum(len(e.input_ids) for e in enc) for _, enc in encoded], kind="stable")
    batches, count = [[]], 0
    for g in order:
        if batches[-1] and count + len(encoded[g][0]) > batch_size:
            batches.append([])
            count = 0
        batches[-1].append(g)
        count += len(encoded[g][0])
    batches = [b for b in batches if b]
    progress = Progress(log, label, len(batches), "batches", counts=("sequences",))
    for batch in batches:
        flush(batch)
        progress.update(1, sequences=sum(len(encoded[g][0]) for g in batch))
    out["n_prompt_cut"] = int(out["prompt_cut"].sum())
    out["too_long"] = np.ones(n, dtype=bool)  # per sequence: left out (NaN) because it cannot fit
    for kept, _ in encoded:
        out["too_long"][kept] = False
    return out
