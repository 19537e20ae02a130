"""Sampling responses from a policy: left-padded batches, nucleus sampling, one seed per temperature."""

from __future__ import annotations

import pandas as pd
import torch

from .batching import encode_prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: pd.DataFrame, temperatures: list[float], top_p: float,
             max_new_tokens: int, max_prompt_length: int, batch_size: int, seed: int,
             chat: bool = False) -> pd.DataFrame:
    """One sampled response per (prompt, temperature). ``prompts`` has eval_set, prompt_id, prompt
    and, optionally, document (an over-long prompt keeps the document's head and the
    instruction after it; see ``batching.encode_prompt``)."""
    model.eval()
    model.config.use_cache = True
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    docs = prompts["document"] if "document" in prompts else [None] * len(prompts)
    encoded = [encode_prompt(tokenizer, p, max_prompt_length, d, chat) for p, d in zip(prompts["prompt"], docs)]
    rows = []
    for temperature in temperatures:
        torch.manual_seed(seed)  # same stream per temperature: runs are comparable and repeatable
        for lo in range(0, len(encoded), batch_size):
            chunk = encoded[lo:lo + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=model.device)
            attn = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=model.device)
            out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            for j, seq in enumerate(out[:, width:].tolist()):
                finished = eos in seq
                seq = seq[:seq.index(eos)] if finished else seq
                rows.append({"idx": lo + j, "temperature": float(temperature),
                             "response": tokenizer.decode(seq, skip_special_tokens=True).strip(),
                             "finished": finished, "n_tokens": len(seq)})
    model.config.use_cache = False
    gen = pd.DataFrame(rows)
    meta = prompts.reset_index(drop=True)[["eval_set", "prompt_id"]]
    return pd.concat([meta.iloc[gen["idx"]].reset_index(drop=True), gen.drop(columns="idx")], axis=1)
