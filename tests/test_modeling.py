"""Tokenisation (batching.encode), response log-probs and the LM + reward-head wrapper.

Everything is built offline: a byte-level BPE tokenizer trained on a few sentences and a
tiny Llama initialised from a config (never a hub download).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import encode, encode_prompt, pad_batch
from drdo.modeling import (HEAD_FILE, LMWithRewardHead, has_reward_head, last_token_index, load_causal_lm,
                           load_tokenizer, pretrained_kwargs, response_logps)

TEXTS = [
    "SUBREDDIT: r/tifu\nTITLE: I locked my keys inside\nPOST: I locked my keys inside the car.\nTL;DR:",
    " Locked my keys in the car.",
    "SUBREDDIT: r/cats\nTITLE: The cat sat on the mat\nPOST: My cat sat on the mat all day.\nTL;DR:",
    " The cat sat on the mat all day.",
    "the quick brown fox jumps over the lazy dog",
]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 64}
PROMPT = "SUBREDDIT: r/cats\nTITLE: The cat\nPOST: My cat sat on the mat.\nTL;DR:"
SUMMARY = "The cat sat on the mat."


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def head_model(tok):
    return LMWithRewardHead(tiny_llama(tok, ARCH, seed=0), head_seed=0).eval()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- batching.encode

def test_encode_masks_prompt_and_keeps_response_plus_eos(tok):
    enc = encode(tok, PROMPT, SUMMARY, max_length=1000)
    p_ids, r_ids = _ids(tok, PROMPT), _ids(tok, " " + SUMMARY)
    assert enc.input_ids == [tok.bos_token_id] + p_ids + r_ids + [tok.eos_token_id]
    assert enc.loss_mask == [0] * (1 + len(p_ids)) + [1] * (len(r_ids) + 1)
    assert len(enc.input_ids) == len(enc.loss_mask)
    # the masked-in tokens are exactly " " + summary, then EOS
    resp = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert resp[-1] == tok.eos_token_id
    assert tok.decode(resp[:-1]) == " " + SUMMARY
    # the masked-out tokens are exactly BOS + prompt
    prompt_part = [t for t, m in zip(enc.input_ids, enc.loss_mask) if not m]
    assert prompt_part == encode_prompt(tok, PROMPT)
    assert tok.decode(prompt_part[1:]) == PROMPT


def test_encode_tokenizes_prompt_and_response_separately(tok):
    # whitespace around the summary is normalised to exactly one leading space
    assert encode(tok, PROMPT, "  " + SUMMARY + "  \n", 1000) == encode(tok, PROMPT, SUMMARY, 1000)
    # prompt ids then the ids of " " + summary, each from its own tokenizer call
    prompt, summary = "the cat sat on the", "mat"
    enc = encode(tok, prompt, summary, 1000)
    assert enc.input_ids[1:1 + len(_ids(tok, prompt))] == _ids(tok, prompt)
    assert enc.input_ids[1 + len(_ids(tok, prompt)):-1] == _ids(tok, " mat")


class _SpyTokenizer:
    def __init__(self, tok):
        self.tok, self.calls = tok, []
        self.bos_token_id, self.eos_token_id = tok.bos_token_id, tok.eos_token_id
        self.bos_token = tok.bos_token

    def __call__(self, text, **kw):
        self.calls.append((text, kw))
        return self.tok(text, **kw)


def test_encode_tokenizer_calls_without_special_tokens(tok):
    spy = _SpyTokenizer(tok)
    assert encode(spy, PROMPT, SUMMARY, 1000) == encode(tok, PROMPT, SUMMARY, 1000)
    # the response is tokenised after a probe word (no stray SentencePiece "▁"), then the probe removed
    assert spy.calls == [("a", {"add_special_tokens": False}),
                         ("a " + SUMMARY, {"add_special_tokens": False}),
                         (PROMPT, {"add_special_tokens": False})]


@pytest.mark.parametrize("extra", [0, 1, 2, 5])
def test_encode_over_budget_cuts_the_prompt_never_the_response(tok, extra):
    full = encode(tok, PROMPT, SUMMARY, 1000)
    n_resp = sum(full.loss_mask)
    max_length = len(full.input_ids) - extra
    enc = encode(tok, PROMPT, SUMMARY, max_length)
    assert len(enc.input_ids) == len(enc.loss_mask) == max_length and enc.prompt_cut == extra
    assert enc.input_ids[-n_resp:] == full.input_ids[-n_resp:] and sum(enc.loss_mask) == n_resp
    assert enc.input_ids[0] == tok.bos_token_id  # BOS stays; the prompt loses its first tokens


def test_encode_too_long_response_and_train_on_prompt(tok):
    from drdo.batching import TooLong

    with pytest.raises(TooLong):
        encode(tok, PROMPT, SUMMARY, 4)
    all_on = encode(tok, PROMPT, SUMMARY, 1000, train_on_prompt=True)
    assert all_on.loss_mask == [1] * len(all_on.input_ids)


def test_pad_batch_right_pads(tok):
    a, b = encode(tok, PROMPT, SUMMARY, 1000), encode(tok, "hi", "yo", 1000)
    batch = pad_batch([a, b], tok.pad_token_id)
    n = len(b.input_ids)
    assert batch["input_ids"].shape == (2, len(a.input_ids))
    assert batch["input_ids"][1, n:].eq(tok.pad_token_id).all()
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (len(a.input_ids) - n)
    assert batch["loss_mask"][1].tolist() == b.loss_mask + [0] * (len(a.input_ids) - n)


# ---------------------------------------------------------------- response_logps

def _manual_logps(logits, ids, mask):
    sums, counts = [], []
    for b in range(ids.shape[0]):
        s, c = 0.0, 0
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                s += F.log_softmax(logits[b, t - 1].double(), dim=-1)[ids[b, t]].item()
                c += 1
        sums.append(s)
        counts.append(max(c, 1))
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)


def _random_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, V = 4, 9, 13
    logits = torch.randn(B, T, V, generator=g) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    # (prompt length, response length incl. EOS); the rest is right padding
    layout = [(3, 4), (2, 7), (5, 1), (4, 0)]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, (p, r) in enumerate(layout):
        mask[b, p:p + r] = 1
        ids[b, p + r:] = 0  # pad id
    return logits, ids, mask, layout


def test_response_logps_matches_manual_loop():
    logits, ids, mask, _ = _random_batch()
    s, n = response_logps(logits, ids, mask)
    ms, mn = _manual_logps(logits, ids, mask)
    torch.testing.assert_close(s.double(), ms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(n.double(), mn)
    assert n.tolist() == [4, 7, 1, 1]  # the empty response is clamped to a count of 1
    assert s[3].item() == 0.0


def test_response_logps_ignores_prompt_and_padding():
    logits, ids, mask, layout = _random_batch()
    s, n = response_logps(logits, ids, mask)
    g = torch.Generator().manual_seed(1)
    logits2, ids2 = logits.clone(), ids.clone()
    T = ids.shape[1]
    for b, (p, r) in enumerate(layout):
        # logits at t predict token t+1: only positions p-1 .. p+r-2 matter
        for t in range(T):
            if not (p - 1 <= t <= p + r - 2):
                logits2[b, t] = torch.randn(logits.shape[-1], generator=g) * 5
        ids2[b, :p] = torch.randint(0, logits.shape[-1], (p,), generator=g)  # prompt tokens
        ids2[b, p + r:] = 7  # a different pad id
    s2, n2 = response_logps(logits2, ids2, mask)
    torch.testing.assert_close(s2, s)
    torch.testing.assert_close(n2, n)


# ---------------------------------------------------------------- last_token_index

def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(left).tolist() == [4, 4, 4]


# ---------------------------------------------------------------- LMWithRewardHead

def test_reward_read_at_last_non_padding_token(tok, head_model):
    a = encode(tok, PROMPT, SUMMARY, 64)
    b = encode(tok, "the cat", "sat", 64)
    pad = tok.pad_token_id
    with torch.no_grad():
        _, r_alone = head_model(torch.tensor([b.input_ids]), torch.ones(1, len(b.input_ids), dtype=torch.long))
        ids = torch.tensor([b.input_ids + [pad] * 5])
        attn = torch.tensor([[1] * len(b.input_ids) + [0] * 5])
        logits_pad, r_pad = head_model(ids, attn)
        batch = pad_batch([a, b], pad)
        _, r_batch = head_model(batch["input_ids"], batch["attention_mask"])
        _, r_a = head_model(torch.tensor([a.input_ids]), torch.ones(1, len(a.input_ids), dtype=torch.long))
        # and it really is the head applied to the last real token's final hidden state
        hid = head_model.lm(input_ids=torch.tensor([b.input_ids]), output_hidden_states=True).hidden_states[-1]
        manual = head_model.head(hid[0, -1]).squeeze(-1)
        reward_at_pad = head_model.head(head_model.lm(input_ids=ids, attention_mask=attn,
                                                      output_hidden_states=True).hidden_states[-1][0, -1])
    torch.testing.assert_close(r_pad, r_alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_batch[1], r_alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_batch[0], r_a[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_alone[0], manual, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(reward_at_pad.squeeze(-1), r_alone[0])  # the test can tell the difference
    assert logits_pad.shape == (1, len(b.input_ids) + 5, len(tok))


def test_save_load_round_trip(tok, tmp_path):
    model = LMWithRewardHead(tiny_llama(tok, ARCH, seed=3), head_seed=5).eval()
    with torch.no_grad():
        model.head.bias.fill_(0.25)  # a non-default head must survive the round trip
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert has_reward_head(tmp_path) and (tmp_path / HEAD_FILE).exists()

    loaded = LMWithRewardHead.from_pretrained(tmp_path, head_seed=123).eval()  # head_seed unused: file wins
    tok2 = load_tokenizer(tmp_path)
    assert encode(tok2, PROMPT, SUMMARY, 64) == encode(tok, PROMPT, SUMMARY, 64)
    assert (tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id) == \
        (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)

    batch = pad_batch([encode(tok, PROMPT, SUMMARY, 64), encode(tok, "a b", "c", 64)], tok.pad_token_id)
    with torch.no_grad():
        logits, rewards = model(batch["input_ids"], batch["attention_mask"])
        logits2, rewards2 = loaded(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(rewards2, rewards)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v2, v)

    # the checkpoint is a plain Hugging Face causal LM
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        plain_logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(plain_logits, logits)


def test_plain_lm_directory_gets_seeded_head(tok, tmp_path):
    lm = tiny_llama(tok, ARCH, seed=7)
    lm.save_pretrained(tmp_path)
    assert not has_reward_head(tmp_path)
    h1a = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=1).head
    h1b = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=1).head
    h2 = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=2).head
    torch.testing.assert_close(h1a.weight, h1b.weight, rtol=0, atol=0)
    assert not torch.equal(h1a.weight, h2.weight)
    assert h1a.bias.item() == 0.0 and h2.bias.item() == 0.0
    assert h1a.weight.shape == (1, ARCH["hidden_size"])
    loaded = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, head_seed=1)
    assert loaded.lm.config.use_cache is False
    for k, v in lm.state_dict().items():
        torch.testing.assert_close(loaded.lm.state_dict()[k], v)


# ---------------------------------------------------------------- batched scoring uses the same reading

def test_score_batched_equals_one_by_one(tok, head_model):
    from drdo.scoring import score

    prompts = [PROMPT, "the cat", "POST: my keys\nTL;DR:", "a", PROMPT]
    responses = [SUMMARY, "sat on the mat", "keys in car", "b c d e f g", "Cat."]
    batched = score(head_model, tok, prompts, responses, max_length=64, batch_size=2)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        one = score(head_model, tok, [p], [r], max_length=64, batch_size=1)
        assert batched["reward"][i] == pytest.approx(one["reward"][0], rel=1e-4, abs=1e-5)
        assert batched["logp"][i] == pytest.approx(one["logp"][0], rel=1e-4, abs=1e-4)
        assert batched["ntok"][i] == len(_ids(tok, " " + r)) + 1
    assert (batched["logp"] < 0).all()



def test_score_shares_each_prompt_among_its_responses(tok, head_model, monkeypatch):
    """Generations at four temperatures: one prompt, four responses, scored as one group (the
    prompt once); the values equal scoring each alone, and one unscorable response is NaN alone."""
    from drdo import packing
    from drdo.scoring import score

    prompts = [PROMPT] * 4 + ["the cat"] * 4
    responses = [SUMMARY, "Cat.", SUMMARY, "b c d e f g " * 20, "sat", "sat on the mat", "", "mat"]
    stored = []
    real_pack = packing.pack
    monkeypatch.setattr("drdo.scoring.pack", lambda *a, **k: stored.append(int(real_pack(*a, **k).group.ge(0).sum())) or real_pack(*a, **k))
    grouped = score(head_model, tok, prompts, responses, max_length=64, batch_size=8)
    assert grouped["n_too_long"] == 1 and np.isnan(grouped["reward"][3]) and np.isnan(grouped["logp"][3])
    for i in (0, 1, 2, 4, 5, 6, 7):
        one = score(head_model, tok, [prompts[i]], [responses[i]], max_length=64)
        assert grouped["reward"][i] == pytest.approx(one["reward"][0], rel=1e-4, abs=1e-5)
        assert grouped["logp"][i] == pytest.approx(one["logp"][0], rel=1e-4, abs=1e-4)
        assert grouped["ntok"][i] == one["ntok"][0]
    alone = sum(stored[1:])  # each sequence packed by itself
    assert stored[0] < alone - 2 * len(_ids(tok, PROMPT))  # PROMPT stored once for three responses


def test_score_pairs_equals_scoring_each_side_alone(tok, head_model, monkeypatch):
    """The tables score each pair with its prompt computed once: same values as per side,
    a pair with one unscorable side is NaN on both, and fewer tokens go through the model."""
    from drdo import packing
    from drdo.scoring import score, score_pairs

    prompts = [PROMPT, "the cat", "POST: my keys\nTL;DR:", "a"]
    chosen = [SUMMARY, "sat on the mat", "keys in car", "b c d e f g " * 20]
    rejected = ["Cat.", "sat", "keys in car!", "b"]
    widths = []
    real_pack = packing.pack
    monkeypatch.setattr("drdo.scoring.pack", lambda *a, **k: widths.append(real_pack(*a, **k).group.ge(0).sum()) or real_pack(*a, **k))
    w, lo = score_pairs(head_model, tok, prompts, chosen, rejected, max_length=64, batch_size=4)
    paired_tokens = sum(int(x) for x in widths)
    widths.clear()
    for side, out in (("chosen", w), ("rejected", lo)):
        alone = score(head_model, tok, prompts[:3], {"chosen": chosen, "rejected": rejected}[side][:3], max_length=64)
        np.testing.assert_allclose(out["reward"][:3], alone["reward"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["logp"][:3], alone["logp"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out["ntok"][:3], alone["ntok"])
        assert np.isnan(out["reward"][3]) and np.isnan(out["logp"][3]) and out["n_too_long"] == 1
    assert paired_tokens < sum(int(x) for x in widths)  # each prompt once, not twice

def test_build_base_takes_a_local_model_directory(tok, tmp_path):
    from drdo.base_model import build_base

    lm = tiny_llama(tok, ARCH, seed=3)
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tokenizer = build_base({"name_or_path": str(tmp_path), "dtype": "float32"}, texts=[])
    assert tokenizer.get_vocab() == tok.get_vocab()
    for k, v in lm.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    # the tiny default trains a tokenizer on the given texts and seeds the weights
    params = {"name_or_path": "tiny", "vocab_size": 300, "seed": 0, "dtype": "float32", "tiny": ARCH}
    a, tok_a = build_base(params, TEXTS)
    b, _ = build_base(params, TEXTS)
    assert len(tok_a) <= 300 and tok_a.eos_token == "<|eos|>"
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_attention_kernel_from_params_and_a_kernel_that_cannot_load(tok, tmp_path):
    tiny_llama(tok, ARCH, seed=0).save_pretrained(tmp_path)
    assert load_causal_lm(tmp_path, **pretrained_kwargs({})).config._attn_implementation == "sdpa"
    eager = pretrained_kwargs({"attn_implementation": "eager"})
    model = LMWithRewardHead.from_pretrained(tmp_path, new_head=True, **eager)
    assert model.lm.config._attn_implementation == "eager"
    # no flash-attn package here (and no hub for its kernel fallback): the error names the config key
    with pytest.raises(ValueError, match=r"model\.attn_implementation='flash_attention_2'"):
        load_causal_lm(tmp_path, **pretrained_kwargs({"attn_implementation": "flash_attention_2"}))
