"""The starting model: a pretrained one (any Hugging Face id or local directory), or, for the
offline default, a byte-level BPE tokenizer trained on the corpus and a tiny Llama
initialised from a config with a seed."""

from __future__ import annotations

from pathlib import Path

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


def build_base(params: dict, texts, key: str = "model.name_or_path"):
    """(model, tokenizer) as ``params`` (the config's ``model`` section) says: a pretrained one at
    its ``revision`` (model.revision / oracle.base_revision; None: the default branch). ``key``: the
    config key that names it (model.name_or_path or oracle.base), for the error when it cannot load."""
    name, revision = params["name_or_path"], params.get("revision")
    if name != "tiny":
        try:
            return load_causal_lm(name, params["dtype"], revision=revision), load_tokenizer(name, revision=revision)
        except OSError as e:  # transformers' "couldn't connect to huggingface.co" / "not a valid model identifier"
            raise OSError(f"config key {key}: cannot load {name!r}: {_not_loadable(name)}. {e}") from e
    tokenizer = train_tokenizer(texts, params["vocab_size"])
    return tiny_llama(tokenizer, params["tiny"], params["seed"]), tokenizer


def _not_loadable(name: str) -> str:
    """Why a model name did not load, in the config's terms: a local folder, or a hub id."""
    path = Path(name)
    if path.is_dir():
        return f"the local directory {path.resolve()} holds no model Hugging Face can load"
    from huggingface_hub import constants

    hub = ("HF_HUB_OFFLINE is set and the Hugging Face cache holds no such model" if constants.HF_HUB_OFFLINE
           else f"{constants.ENDPOINT} could not provide it as a hub model id")
    return f"there is no directory {path.resolve()} (a relative path is read from the working directory), and {hub}"


def hub_source(params: dict) -> dict:
    """What the base model's provenance records of a hub model: its id, the revision asked for and
    the commit the files were read at (unpinned runs can pin it afterwards); nothing for `tiny` or a
    local folder."""
    name = params["name_or_path"]
    if name == "tiny" or Path(name).is_dir():
        return {}
    from huggingface_hub import try_to_load_from_cache

    # from_pretrained read the files from the hub cache, laid out as <repo>/snapshots/<commit>/<file>
    cached = try_to_load_from_cache(name, "config.json", revision=params.get("revision"))
    commit = Path(cached).parent.name if isinstance(cached, str) else None
    return {"hub_model": {"id": name, "revision": params.get("revision"), "commit": commit}}
