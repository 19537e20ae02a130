"""The starting model: a pretrained one (any Hugging Face id or local directory), or, for the
offline default, a byte-level BPE tokenizer trained on the corpus and a tiny Llama
initialised from a config with a seed."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .modeling import load_causal_lm, load_tokenizer

SPECIALS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def tiny_llama(tokenizer, arch: dict, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, **arch)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_base(params: dict, texts):
    """(model, tokenizer) as ``params`` (the config's ``model`` section) says."""
    if params["name_or_path"] != "tiny":
        return load_causal_lm(params["name_or_path"], params["dtype"]), load_tokenizer(params["name_or_path"])
    tokenizer = train_tokenizer(texts, params["vocab_size"])
    return tiny_llama(tokenizer, params["tiny"], params["seed"]), tokenizer
