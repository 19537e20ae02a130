"""What a real pretrained model needs, on small models built offline.

* nothing is truncated silently: responses are never cut, over-long prompts keep the
  document's head and the instruction, the length filter counts the training tokens;
* a reward model directory without its head is an error;
* SentencePiece / Metaspace tokenizers add no stray "▁" at the prompt/response boundary;
* dropout is off where log-probs are compared (DPO starts at log 2 on an OPT with dropout);
* the reward head reads the hidden state's real width (OPT-350M projects 1024 -> 512);
* chat templates, and pad == eos.
"""

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from drdo import io
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import TooLong, encode, encode_prompt, pad_batch
from drdo.cli import main
from drdo.data.splits import cap_validation, filter_length
from drdo.modeling import HEAD_FILE, LMWithRewardHead, disable_dropout, hidden_width
from drdo.prompts import tldr_prompt
from drdo.scoring import score

WORDS = ("the cat sat on the mat while alice borrowed the car and bob sold the dog "
         "because rain fell all week near the old bridge in town").split()
TEXTS = [tldr_prompt("cats", "A day", " ".join(WORDS[i:] + WORDS[:i])) + " " + " ".join(WORDS[:5 + i % 7])
         for i in range(len(WORDS))]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 512}
POST = " ".join(WORDS * 2)
PROMPT = tldr_prompt("cats", "A day", POST)
SUMMARY = "alice borrowed the car."


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def spm():
    """A SentencePiece-style tokenizer as Llama-2 / Phi-3 ship it (tokenizer.json): the normalizer
    prepends "▁" to every input and turns spaces into "▁"; pieces split at "▁" (Metaspace);
    the decoder maps "▁" back to spaces and strips the first. pad == eos."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(TEXTS + [SUMMARY], trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                                   special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_opt(tok, proj: int | None = None, dropout: float = 0.0, seed: int = 0) -> OPTForCausalLM:
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=512, word_embed_proj_dim=proj or 32, dropout=dropout,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return OPTForCausalLM(cfg)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- truncation

def test_response_is_never_cut(bpe):
    full = encode(bpe, PROMPT, SUMMARY, None)
    n_resp = sum(full.loss_mask)
    # too long: the prompt is cut (keeping the instruction), the response stays whole
    short = encode(bpe, PROMPT, SUMMARY, len(full.input_ids) - 10, document=POST)
    assert short.input_ids[-n_resp:] == full.input_ids[-n_resp:] and sum(short.loss_mask) == n_resp
    assert short.prompt_cut == 10 and len(short.input_ids) == len(full.input_ids) - 10
    assert bpe.decode(short.input_ids[1:-n_resp]).endswith("\nTL;DR:")
    # no room for the response: an error the caller counts, never a cut response
    with pytest.raises(TooLong):
        encode(bpe, PROMPT, SUMMARY, n_resp)


def test_over_long_eval_prompt_keeps_document_head_and_instruction(bpe):
    budget = 40
    ids = encode_prompt(bpe, PROMPT, budget, document=POST)
    assert len(ids) == budget and ids[0] == bpe.bos_token_id
    text = bpe.decode(ids[1:])
    assert text.startswith("SUBREDDIT: r/cats\nTITLE: A day\nPOST: " + " ".join(WORDS[:3]))
    assert text.endswith("\nTL;DR:")
    # the kept tokens are exactly the full prompt's: its head, then its last (suffix) tokens
    full = encode_prompt(bpe, PROMPT)
    n_suffix = len(_ids(bpe, "\nTL;DR:"))
    assert ids[:-n_suffix] == full[:budget - n_suffix] and ids[-n_suffix:] == full[-n_suffix:]
    # without a document to cut, the end is kept
    assert encode_prompt(bpe, PROMPT, budget) == [bpe.bos_token_id] + full[-(budget - 1):]


def test_generation_uses_the_document_cut(bpe):
    from drdo.generation import generate

    model = tiny_llama(bpe, ARCH, seed=0)
    prompts = pd.DataFrame({"eval_set": ["news"], "prompt_id": ["p"], "prompt": [PROMPT], "document": [POST]})
    captured = {}
    real_forward = model.forward

    @functools.wraps(real_forward)
    def spy(**kw):  # records what the model is first given (the prompt); the real forward runs
        captured.setdefault("ids", kw["input_ids"][0].tolist())
        return real_forward(**kw)

    model.forward = spy
    generate(model, bpe, prompts, [0.7], 0.8, max_new_tokens=3, max_prompt_length=40, batch_size=1, seed=0)
    assert captured["ids"] == encode_prompt(bpe, PROMPT, 40, document=POST)


def test_length_filter_counts_training_tokens(spm, tmp_path):
    """The split stage keeps a pair iff encode() (what training sees) fits max_length."""
    rows = []
    for i in range(12):  # confidence and edit distance grow with i; prompt length does not
        post = " ".join(WORDS[:3 + 7 * i % 12])
        chosen = WORDS[:6]
        rejected = ["x"] * (i // 2 + 1) + chosen[i // 2 + 1:]
        rows.append({"pair_id": f"p{i}", "post_id": f"t{i}", "split": "train" if i % 3 else "validation",
                     "prompt": tldr_prompt("cats", "A day", post), "document": post,
                     "chosen": " ".join(chosen), "rejected": " ".join(rejected),
                     "chosen_policy": "a", "rejected_policy": "b", "confidence": 1 + i % 9})
    pairs = pd.DataFrame(rows)
    lengths = [max(len(encode(spm, r.prompt, r.chosen, None).input_ids),
                   len(encode(spm, r.prompt, r.rejected, None).input_ids)) for r in pairs.itertuples()]
    max_length = sorted(lengths)[9]  # keeps exactly the 10 shortest (no ties at the cut)
    assert sorted(lengths)[10] > max_length
    base = tmp_path / "base"
    spm.save_pretrained(base)
    io.write_parquet(pairs, tmp_path / "pairs.parquet", {})
    params = {"quantile": 0.5, "edit_distance": "token", "max_length": max_length, "max_prompt_length": 500}
    main(["split", "--params", json.dumps(params), "--pairs", str(tmp_path / "pairs.parquet"), "--base", str(base),
          "--out-dir", str(tmp_path / "splits"), "--out-table5", str(tmp_path / "t5.csv")])
    kept = io.read_parquet(tmp_path / "splits" / "all.parquet")
    assert sorted(kept["pair_id"]) == sorted(pairs["pair_id"][np.array(lengths) <= max_length])
    assert io.read_provenance(tmp_path / "splits" / "all.parquet")["dropped_too_long"] == 2


def test_filter_length_uses_the_given_length():
    df = pd.DataFrame({"prompt": ["p q"] * 3, "document": ["d"] * 3,
                       "chosen": ["a b", "a", "a b c d"], "rejected": ["a", "a b c", "a"]})
    seen = []

    def length(prompt, response, document):
        seen.append(document)
        return len(prompt.split()) + len(response.split()) + 1

    kept, n = filter_length(df, length, max_length=5)
    assert n == 2 and kept["chosen"].tolist() == ["a b"] and set(seen) == {"d"}


def test_score_leaves_over_long_responses_unscored(bpe):
    model = tiny_llama(bpe, ARCH, seed=0).eval()
    long_response = " ".join(WORDS * 3)
    out = score(model, bpe, ["the cat", "the cat"], ["sat", long_response], max_length=30, batch_size=2)
    assert out["n_too_long"] == 1 and np.isnan(out["logp"][1]) and not np.isnan(out["logp"][0])
    alone = score(model, bpe, ["the cat"], ["sat"], max_length=30)
    assert out["logp"][0] == pytest.approx(alone["logp"][0], abs=1e-5)


def test_validation_capped_per_split():
    df = pd.DataFrame({"pair_id": [f"p{i}" for i in range(30)],
                       "split": ["train"] * 10 + ["validation"] * 20})
    parts = {"all": df, "hc_he": df.iloc[5:25].reset_index(drop=True), "lc_le": df.iloc[:12].reset_index(drop=True)}
    capped = cap_validation(parts, 4, seed=0)
    for name in parts:
        val = capped[name][capped[name]["split"] == "validation"]
        assert len(val) == min(4, int((parts[name]["split"] == "validation").sum()))
        assert (capped[name]["split"] == "train").sum() == (parts[name]["split"] == "train").sum()
        assert set(val["pair_id"]) <= set(parts[name]["pair_id"])
    again = cap_validation(parts, 4, seed=0)
    assert all(again[k].equals(capped[k]) for k in parts)


# ---------------------------------------------------------------- reward heads

def test_reward_model_without_head_is_an_error(bpe, tmp_path):
    tiny_llama(bpe, ARCH, seed=0).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        LMWithRewardHead.from_pretrained(tmp_path)
    a = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=3)
    b = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=3)
    assert torch.equal(a.head.weight, b.head.weight)  # explicit, seeded
    a.save_pretrained(tmp_path)
    loaded = LMWithRewardHead.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.weight, a.head.weight)


def test_reward_head_reads_the_projected_hidden_state(bpe):
    """OPT-350M: decoder width 1024, project_out to word_embed_proj_dim 512 before the LM head."""
    lm = tiny_opt(bpe, proj=16)
    assert lm.model.decoder.project_out is not None and lm.config.hidden_size == 32
    assert hidden_width(lm) == 16
    model = LMWithRewardHead(lm, head_seed=0).eval()
    batch = pad_batch([encode(bpe, "the cat", "sat", None), encode(bpe, "a", "b c", None)], bpe.pad_token_id)
    with torch.no_grad():
        logits, rewards = model(batch["input_ids"], batch["attention_mask"])
    assert model.head.in_features == 16 and rewards.shape == (2,) and torch.isfinite(rewards).all()


# ---------------------------------------------------------------- dropout

def test_disable_dropout_makes_train_mode_deterministic(bpe):
    lm = tiny_opt(bpe, dropout=0.1).train()
    ids = torch.tensor([encode(bpe, "the cat", "sat on the mat", None).input_ids])
    with torch.no_grad():
        assert not torch.equal(lm(input_ids=ids).logits, lm(input_ids=ids).logits)  # dropout is on
        disable_dropout(lm)
        torch.testing.assert_close(lm(input_ids=ids).logits, lm.eval()(input_ids=ids).logits, rtol=0, atol=0)
    assert lm.config.dropout == 0.1  # the saved config is untouched


def test_dpo_loss_at_step_zero_is_log2_on_a_model_with_dropout(bpe, tmp_path):
    sft = tmp_path / "sft"
    tiny_opt(bpe, dropout=0.1, seed=1).save_pretrained(sft)
    bpe.save_pretrained(sft)
    rows = [{"pair_id": f"p{i}", "split": "train", "prompt": f"the cat {WORDS[i]}", "document": WORDS[i],
             "chosen": " ".join(WORDS[i:i + 4]), "rejected": " ".join(WORDS[i + 1:i + 3])} for i in range(8)]
    io.write_parquet(pd.DataFrame(rows), tmp_path / "pairs.parquet", {})
    lengths = {"max_length": 64, "max_prompt_length": 32}
    main(["table", "--params", json.dumps({**lengths, "batch_size": 8}), "--pairs", str(tmp_path / "pairs.parquet"),
          "--model", f"ref_logp={sft}", "--value", "logp", "--out", str(tmp_path / "ref.parquet")])
    params = {**lengths, "dtype": "float32", "batch_size": 8, "eval_batch_size": 8, "lr": 1e-3, "max_steps": 1,
              "beta": 1.0, "seed": 0}
    main(["train", "--objective", "dpo", "--params", json.dumps(params), "--init", str(sft),
          "--data", str(tmp_path / "pairs.parquet"), "--tables", str(tmp_path / "ref.parquet"),
          "--out", str(tmp_path / "dpo")])
    metrics = pd.read_parquet(tmp_path / "dpo" / "metrics.parquet")
    assert metrics["loss"][0] == pytest.approx(math.log(2), abs=1e-5)


# ---------------------------------------------------------------- SentencePiece, chat, pad == eos

def test_metaspace_boundary_adds_no_stray_token(spm):
    prompt_ids = encode_prompt(spm, PROMPT)[1:]
    joint = _ids(spm, PROMPT + " " + SUMMARY)
    assert joint[:len(prompt_ids)] == prompt_ids  # the prompt tokenises the same on its own
    enc = encode(spm, PROMPT, SUMMARY, None)
    response = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m][:-1]
    assert response == joint[len(prompt_ids):]  # what the model sees in running text
    assert spm.convert_ids_to_tokens(response[0]) != "▁"
    assert spm.convert_ids_to_tokens(_ids(spm, " " + SUMMARY)[0]) == "▁"  # the stray token it avoids
    assert spm.decode(response) == SUMMARY


def test_byte_level_ids_are_unchanged(bpe):
    """The byte-level tokenizer of the default: the response is the ids of " " + summary, as before."""
    enc = encode(bpe, PROMPT, SUMMARY, None)
    assert enc.input_ids == [bpe.bos_token_id] + _ids(bpe, PROMPT) + _ids(bpe, " " + SUMMARY) + [bpe.eos_token_id]


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_chat_template_wraps_the_prompt(spm):
    with pytest.raises(ValueError, match="model.chat_template"):
        encode(spm, PROMPT, SUMMARY, None, chat=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=spm.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="</s>")
    tok.add_tokens(["<|user|>", "<|end|>", "<|assistant|>"], special_tokens=True)
    tok.chat_template = CHAT
    enc = encode(tok, PROMPT, SUMMARY, None, chat=True)
    rendered = f"<|user|>\n{PROMPT}<|end|>\n<|assistant|>\n"
    n_prompt = 1 + len(_ids(tok, rendered))
    assert enc.input_ids[:n_prompt] == [tok.bos_token_id] + _ids(tok, rendered)
    assert enc.input_ids[n_prompt:] == _ids(tok, SUMMARY) + [tok.eos_token_id]
    # a cut keeps the document's head and everything after it, the assistant tag included
    ids = encode_prompt(tok, PROMPT, 60, document=POST, chat=True)
    full = encode_prompt(tok, PROMPT, chat=True)
    assert len(ids) == 60 and ids[:30] == full[:30] and ids[-5:] == full[-5:]
    # (this tokenizer puts a "▁" after each special token, as Llama-2's does: drop spaces to compare)
    assert tok.decode(ids).replace(" ", "").endswith("TL;DR:<|end|>\n<|assistant|>\n")


def test_pad_equal_to_eos_keeps_the_real_eos(spm):
    assert spm.pad_token_id == spm.eos_token_id
    short, long = encode(spm, "the cat", "sat", None), encode(spm, PROMPT, SUMMARY, None)
    batch = pad_batch([short, long], spm.pad_token_id)
    n = len(short.input_ids)
    assert batch["input_ids"][0, n - 1] == spm.eos_token_id
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert batch["loss_mask"][0, n - 1] == 1  # the EOS is a labelled token
    assert batch["input_ids"][0, n:].eq(spm.eos_token_id).all()  # padding with the same id is not labelled
    assert batch["attention_mask"][1].all() and batch["loss_mask"][1, -1] == 1


# ---------------------------------------------------------------- scores on real data

def test_score_writes_gold_only_for_the_synthetic_world(bpe, tmp_path):
    oracle = tmp_path / "oracle"
    LMWithRewardHead(tiny_llama(bpe, ARCH, seed=0), head_seed=0).save_pretrained(oracle)
    bpe.save_pretrained(oracle)
    prompts = pd.DataFrame({"eval_set": ["news", "tldr"], "prompt_id": ["a", "b"], "prompt": [PROMPT, "the cat"],
                            "document": [POST, "the cat"], "reference": [SUMMARY, "sat"]})
    io.write_parquet(prompts, tmp_path / "prompts.parquet", {})
    base = {"max_length": 300, "max_prompt_length": 200, "batch_size": 2}

    def run(params, out):
        main(["score", "--params", json.dumps(params), "--prompts", str(tmp_path / "prompts.parquet"),
              "--oracle", str(oracle), "--policy", "reference", "--split", "-", "--out", str(tmp_path / out)])
        return io.read_parquet(tmp_path / out)

    real = run(base, "real.parquet")
    assert "gold" not in real.columns and real["oracle"].notna().all()
    synthetic = run({**base, "gold": {}}, "synthetic.parquet")
    assert "gold" in synthetic.columns
    pd.testing.assert_series_equal(real["oracle"], synthetic["oracle"])
