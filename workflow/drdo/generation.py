"""Sampling responses from a policy: nucleus sampling at several temperatures, the prompt computed once.

Each batch holds a few prompts, each at every temperature: a prompt's forward pass (the prefill)
runs once and its key/value cache is copied to its temperature rows, which then decode together,
each with its own temperature. Prompts are left-padded (position ids count real tokens, as in
Hugging Face ``generate``) and batched by length, so little padding is computed; decoding stops
when every row has written an end token (any EOS id of the model's generation config, such as a
chat model's end-of-turn token, or the tokenizer's EOS) or ``max_new_tokens``. One seeded
generator drives every draw: the same seed, prompts and batch size give the same responses for
every policy.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .batching import encode_prompt
from .progress import Progress

log = logging.getLogger("drdo.generate")


def nucleus_sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: float,
                   generator: torch.Generator) -> torch.Tensor:
    """One token per row: softmax(logits / T_row), restricted to the smallest set of most likely
    tokens whose mass reaches ``top_p`` (the most likely token always stays), renormalised."""
    probs = F.softmax(logits.float() / temperature[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the mass before this token already reaches top_p
    choice = torch.multinomial(sorted_probs.masked_fill(outside, 0.0), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def _forward_kwargs(model, cache: DynamicCache) -> dict:
    """The cache argument (transformers 5 renamed ``past_key_values`` to ``cache``), and logits at
    the last position only where the model can skip the others."""
    accepted = inspect.signature(model.forward).parameters
    kw = {"cache" if "cache" in accepted else "past_key_values": cache, "use_cache": True}
    return kw | ({"logits_to_keep": 1} if "logits_to_keep" in accepted else {})


def end_tokens(generation_config, tokenizer) -> list[int]:
    """Every token id that ends a response: the model's ``generation_config.eos_token_id`` (an id
    or a list: chat models end a turn with their own token, e.g. Phi-3's ``<|end|>`` besides
    ``</s>``), then the tokenizer's EOS (what training appends to each response)."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return list(dict.fromkeys(ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])))


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], temperatures: list[float], top_p: float, max_new_tokens: int,
                 pad_id: int, eos_ids: int | list[int], generator: torch.Generator) -> list[list[int]]:
    """Response tokens (up to and with the first end token, any of ``eos_ids``, or
    ``max_new_tokens`` of them) for every prompt at every temperature; row
    ``i * len(temperatures) + j`` is prompt i at temperature j."""
    device, k = model.device, len(temperatures)
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    ends = torch.tensor(eos_ids, device=device)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    position = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    kw = _forward_kwargs(model, cache)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position, **kw).logits[:, -1]
    cache.batch_repeat_interleave(k)  # each prompt's cache, once per temperature
    logits, attn = logits.repeat_interleave(k, 0), attn.repeat_interleave(k, 0)
    position = position[:, -1:].repeat_interleave(k, 0)
    temperature = torch.tensor(temperatures, device=device).repeat(len(prompts))
    done = torch.zeros(len(logits), dtype=torch.bool, device=device)
    steps = []
    for _ in range(max_new_tokens):
        token = nucleus_sample(logits, temperature, top_p, generator).masked_fill(done, eos_ids[0])
        steps.append(token)
        done |= torch.isin(token, ends)
        if done.all():
            break
        attn = torch.cat([attn, attn.new_ones(len(attn), 1)], dim=1)
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=attn, position_ids=position, **kw).logits[:, -1]
    out = torch.stack(steps, dim=1).tolist()
    return [row[:next((t + 1 for t, x in enumerate(row) if x in eos_ids), len(row))] for row in out]


@torch.no_grad()
def generate(model, tokenizer, prompts: pd.DataFrame, temperatures: list[float], top_p: float,
             max_new_tokens: int, max_prompt_length: int, batch_size: int, seed: int,
             chat: bool = False) -> pd.DataFrame:
    """One sampled response per (prompt, temperature); ``batch_size`` counts those rows. ``prompts``
    has eval_set, prompt_id, prompt and, optionally, document (an over-long prompt keeps the
    document's head and the instruction after it; see ``batching.encode_prompt``)."""
    model.eval()
    encoded = prompt_tokens(tokenizer, prompts, max_prompt_length, chat)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    per_batch = max(1, batch_size // len(temperatures))
    by_length = np.argsort([len(e) for e in encoded], kind="stable")  # little padding per batch
    ends = end_tokens(getattr(model, "generation_config", None), tokenizer)
    rows = []
    progress = Progress(log, "generate", -(-len(encoded) // per_batch), "batches", counts=("responses",))
    for lo in range(0, len(encoded), per_batch):
        idx = by_length[lo:lo + per_batch]
        responses = sample_batch(model, [encoded[i] for i in idx], temperatures, top_p, max_new_tokens,
                                 tokenizer.pad_token_id, ends, generator)
        rows += [response_row(tokenizer, seq, ends, idx[r // len(temperatures)], temperatures[r % len(temperatures)])
                 for r, seq in enumerate(responses)]
        progress.update(1, responses=len(responses))
    return as_generations(prompts, rows)


def response_row(tokenizer, seq: list[int], ends: list[int], idx: int, temperature: float) -> dict:
    """One generation: its text, whether an end token ended it (that token is not text, nor
    counted) and its token count."""
    finished = bool(seq) and seq[-1] in ends
    seq = seq[:-1] if finished else seq
    return {"idx": int(idx), "temperature": float(temperature),
            "response": tokenizer.decode(seq, skip_special_tokens=True).strip(), "finished": finished,
            "n_tokens": len(seq)}


def prompt_tokens(tokenizer, prompts: pd.DataFrame, max_prompt_length: int, chat: bool) -> list[list[int]]:
    """Each prompt's token ids as every backend feeds them (``batching.encode_prompt``)."""
    docs = prompts["document"] if "document" in prompts else [None] * len(prompts)
    return [encode_prompt(tokenizer, p, max_prompt_length, d, chat) for p, d in zip(prompts["prompt"], docs)]


def as_generations(prompts: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The generations table (eval_set, prompt_id, temperature, response, finished, n_tokens),
    ordered by temperature, then prompt, whatever order the rows were drawn in."""
    gen = pd.DataFrame(rows).sort_values(["temperature", "idx"], kind="stable").reset_index(drop=True)
    meta = prompts.reset_index(drop=True)[["eval_set", "prompt_id"]]
    return pd.concat([meta.iloc[gen["idx"]].reset_index(drop=True), gen.drop(columns="idx")], axis=1)
