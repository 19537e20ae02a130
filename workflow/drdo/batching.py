"""Tokenisation of (prompt, response) sequences and padded batches.

One function, :func:`encode`, turns a (prompt, response) pair into token ids for training,
scoring and the length filter alike, so every stage sees the same tokens:

* prompt and response are tokenised separately (as TRL does), so the boundary never
  merges and the loss mask is exact: only response tokens and the closing EOS count;
* the response is tokenised as the continuation of a word (``_continuation_ids``), so a
  SentencePiece/Metaspace tokenizer adds no stray "▁" token at the boundary;
* a prompt over its budget keeps the document's head and the instruction suffix (the
  tokens after the document, e.g. "\\nTL;DR:"); the response is never cut: a sequence whose
  response cannot fit raises :class:`TooLong` and the caller drops it with a count;
* with ``chat=True`` the prompt is the user turn of the tokenizer's chat template.

Batches are right-padded for training and scoring (attention and loss masks come from the
lengths, never from the pad id, so pad == eos is safe); generation pads on the left.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .prompts import response_text

_PROBE = "a"  # a word the response is tokenised after, then removed (see _continuation_ids)


class TooLong(ValueError):
    """The response (plus BOS, EOS and the prompt's instruction suffix) does not fit."""


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on response tokens
    prompt_cut: int = 0   # prompt tokens removed to fit the budget


_RECENT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> its recent texts' ids
_RECENT_SIZE = 256


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, no special tokens. The last few hundred texts of each tokenizer are
    remembered: a pair's prompt comes twice in a row (chosen, rejected) and the probe word of
    ``_continuation_ids`` with every response, so a third of the calls are repeats."""
    recent = _RECENT.setdefault(tokenizer, OrderedDict())
    if text in recent:
        recent.move_to_end(text)
        return list(recent[text])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    recent[text] = ids
    if len(recent) > _RECENT_SIZE:
        recent.popitem(last=False)
    return list(ids)


def format_prompt(tokenizer, prompt: str, chat: bool = False) -> str:
    """The prompt text the model sees: as is, or as the user turn of the chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("config key model.chat_template is true but the tokenizer has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _bos(tokenizer, text: str) -> list[int]:
    bos = tokenizer.bos_token_id
    if bos is None or (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        return []  # none, or the chat template already wrote it
    return [bos]


def _cut(tokenizer, text: str, ids: list[int], budget: int, document: str | None) -> list[int]:
    """``ids`` (the tokens of ``text``) cut to ``budget`` tokens: the document's head and every
    token after the document are kept; without a document in the text, the end is kept."""
    start = text.rfind(document) if document else -1
    if budget <= 0:
        raise TooLong("no room for any prompt token")
    if start < 0:
        return ids[-budget:]
    end = start + len(document)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # a token across the document's end (SentencePiece may merge "word\nTL;DR:") goes with
    # the suffix: the instruction is kept whole
    n_head = sum(1 for _, e in offsets if e <= end)           # prefix + document tokens
    n_prefix = sum(1 for _, e in offsets if e <= start)       # tokens before the document
    keep = budget - (len(ids) - n_head)
    if keep <= n_prefix:
        raise TooLong(f"prompt budget {budget} leaves no room for the document")
    return ids[:keep] + ids[n_head:]


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int | None = None,
                  document: str | None = None, chat: bool = False) -> list[int]:
    """BOS + prompt tokens, cut to ``max_prompt_length`` tokens (BOS included) if longer."""
    return _encode_prompt(tokenizer, prompt, max_prompt_length, document, chat)[0]


def _encode_prompt(tokenizer, prompt, budget, document, chat) -> tuple[list[int], int]:
    text = format_prompt(tokenizer, prompt, chat)
    bos, ids = _bos(tokenizer, text), _ids(tokenizer, text)
    if budget is None or len(bos) + len(ids) <= budget:
        return bos + ids, 0
    cut = _cut(tokenizer, text, ids, budget - len(bos), document)
    return bos + cut, len(ids) - len(cut)


def _continuation_ids(tokenizer, text: str) -> list[int]:
    """Tokens of ``text`` (which starts with a space) as it continues a preceding word.

    SentencePiece-style tokenizers (Metaspace, Llama, Phi-3) prepend "▁" to the first word
    of every call, so " summary" alone becomes "▁" "▁summary"; after a probe word the space
    is just the next word's "▁". Byte-level BPE gives the same ids either way.
    """
    probe = _ids(tokenizer, _PROBE)
    ids = _ids(tokenizer, _PROBE + text)
    if ids[:len(probe)] == probe:
        return ids[len(probe):]
    return _ids(tokenizer, text)  # the probe merged into the text: no clean boundary to cut at


def response_ids(tokenizer, response: str, chat: bool = False) -> list[int]:
    """The response's tokens and EOS: what a model is trained and scored on."""
    body = _ids(tokenizer, response.strip()) if chat else _continuation_ids(tokenizer, response_text(response))
    return body + [tokenizer.eos_token_id]


def encode(tokenizer, prompt: str, response: str, max_length: int | None, train_on_prompt: bool = False,
           max_prompt_length: int | None = None, document: str | None = None, chat: bool = False) -> Encoded:
    """Prompt (cut to ``max_prompt_length``, then further if prompt + response exceed
    ``max_length``) followed by the whole response and EOS. Raises :class:`TooLong` if the
    response cannot fit; ``max_length=None`` never cuts beyond ``max_prompt_length``."""
    resp = response_ids(tokenizer, response, chat)
    budget = max_prompt_length
    if max_length is not None:
        room = max_length - len(resp)
        if room < 1:
            raise TooLong(f"response of {len(resp)} tokens does not fit max_length={max_length}")
        budget = room if budget is None else min(budget, room)
    try:
        prompt_ids, cut = _encode_prompt(tokenizer, prompt, budget, document, chat)
    except TooLong as e:
        raise TooLong(f"response of {len(resp)} tokens leaves too little room for the prompt: {e}") from e
    mask = [int(train_on_prompt)] * len(prompt_ids) + [1] * len(resp)
    return Encoded(prompt_ids + resp, mask, cut)


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
