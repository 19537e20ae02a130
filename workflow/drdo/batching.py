"""Tokenisation of (prompt, response) sequences and padded batches.

Prompt and response are tokenised separately and concatenated (as TRL does), so the
prompt/response boundary never merges into one token and the loss mask is exact: only
response tokens (and the closing EOS) count. Batches are right-padded for training and
scoring; generation pads on the left (see ``generation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import response_text


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on response tokens


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode(tokenizer, prompt: str, response: str, max_length: int, train_on_prompt: bool = False) -> Encoded:
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(response_text(response), add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    mask = ([int(train_on_prompt)] * len(prompt_ids) + [1] * len(response_ids))[:max_length]
    return Encoded(ids, mask)


def pad_batch(seqs: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        attn[i, :n] = 1
        loss[i, :n] = torch.tensor(s.loss_mask)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}
