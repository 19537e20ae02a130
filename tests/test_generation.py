"""Sampling (drdo.generation): the prompt is computed once for all temperatures, and what comes
out is what Hugging Face ``generate`` would give: the same greedy continuations of left-padded
prompts, nucleus sampling with its textbook distribution, a per-row temperature."""

import math

import pandas as pd
import pytest
import torch

from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import encode_prompt
from drdo.generation import generate, nucleus_sample, sample_batch

from test_real_models import tiny_opt

TEXTS = ["POST: I locked my keys inside the car again today.\nTL;DR:", " Locked my keys in the car.",
         "POST: My cat sat on the mat all day.\nTL;DR:", " The cat sat on the mat all day.",
         "POST: rain\nTL;DR:", " the quick brown fox jumps over the lazy dog"]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.3}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok, ARCH, seed=0).eval()


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_shared_prefill_equals_hf_generate_greedy(tok, model, arch):
    """top_p -> 0 keeps only the most likely token: every row, whatever its temperature, must then
    continue its prompt exactly as HF's greedy generate does on that prompt alone (unpadded), so the
    prompt cache copied to each temperature row, the left padding and the position ids are right
    (OPT's learned absolute positions show a wrong offset; Llama's rotary ones are relative)."""
    if arch == "opt":
        model = tiny_opt(tok, seed=3).eval()
        with torch.no_grad():  # positions that matter: a wrong offset then changes the argmax
            model.model.decoder.embed_positions.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    prompts = [encode_prompt(tok, t) for t in TEXTS[0::2]]  # three lengths: left padding in one batch
    temperatures = [0.2, 1.5]
    rows = sample_batch(model, prompts, temperatures, top_p=1e-9, max_new_tokens=12, pad_id=tok.pad_token_id,
                        eos_ids=tok.eos_token_id, generator=torch.Generator().manual_seed(0))
    assert len(rows) == len(prompts) * len(temperatures)
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
        for j in range(len(temperatures)):
            assert rows[i * len(temperatures) + j] == ref[:len(rows[i * len(temperatures) + j])]
            assert len(rows[i * len(temperatures) + j]) == len(ref) or rows[i * len(temperatures) + j][-1] == tok.eos_token_id


def test_nucleus_sample_matches_the_textbook_distribution():
    """probs 0.5 / 0.3 / 0.15 / 0.05, top_p 0.6: the nucleus is {0.5, 0.3} (the mass before 0.3 is
    0.5 < 0.6), renormalised to 0.625 / 0.375; at T = 1e-3 the argmax alone; one call, two rows."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2, 1)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([nucleus_sample(logits, torch.tensor([1.0, 1e-3]), 0.6, g) for _ in range(4000)])
    freq = torch.bincount(draws[:, 0], minlength=4).double() / len(draws)
    assert freq[2:].sum() == 0 and freq[0].item() == pytest.approx(0.625, abs=0.03)
    assert (draws[:, 1] == 0).all()
    # top_p = 1 keeps everything: T = 2 flattens 0.5 / 0.3 / 0.15 / 0.05 to sqrt(p) / sum sqrt(p)
    draws = torch.stack([nucleus_sample(logits[:1], torch.tensor([2.0]), 1.0, g) for _ in range(4000)])[:, 0]
    want = [math.sqrt(p) / sum(math.sqrt(q) for q in (0.5, 0.3, 0.15, 0.05)) for p in (0.5, 0.3, 0.15, 0.05)]
    got = (torch.bincount(draws, minlength=4).double() / len(draws)).tolist()
    assert got == pytest.approx(want, abs=0.03)


def test_generate_rows_seed_and_batching(tok, model):
    prompts = pd.DataFrame({"eval_set": ["tldr", "tldr", "news"], "prompt_id": ["a", "b", "c"],
                            "prompt": TEXTS[0::2]})
    run = lambda seed, batch: generate(model, tok, prompts, [0.5, 0.9], 0.8, max_new_tokens=6,  # noqa: E731
                                       max_prompt_length=64, batch_size=batch, seed=seed)
    out = run(0, 4)
    # temperature-major, prompts in their order, whatever the length-sorted batches were
    assert out[["prompt_id", "temperature"]].values.tolist() == [["a", 0.5], ["b", 0.5], ["c", 0.5],
                                                                 ["a", 0.9], ["b", 0.9], ["c", 0.9]]
    assert (out["n_tokens"] <= 6).all() and ((out["n_tokens"] < 6) | ~out["finished"]).all()
    pd.testing.assert_frame_equal(out, run(0, 4))  # repeatable
    assert not out["response"].equals(run(1, 4)["response"]) or not out["n_tokens"].equals(run(1, 4)["n_tokens"])


def test_generation_stops_on_every_end_token_of_the_generation_config(tok):
    """A chat model ends a turn with its own token as well as EOS (Phi-3: ``<|end|>`` and
    ``</s>``): generation_config.eos_token_id = [EOS, b] with b an ordinary word piece. Logits are
    forced (next token a function of the last one) so that one prompt's rows end with b, one with
    EOS and one never ends: b and EOS both end a row, mark it finished, and are not in its text."""
    model = tiny_llama(tok, ARCH, seed=1).eval()
    prompts = ["POST: I locked my keys", "POST: My cat sat on the mat", "the quick brown fox"]
    last = [encode_prompt(tok, p)[-1] for p in prompts]
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    words = [i for i in range(len(tok)) if i not in specials and i not in last and tok.decode([i]).strip().isalpha()]
    c1, c2, d1, e1, b = words[:5]
    assert len(set(last)) == 3
    model.generation_config.eos_token_id = [tok.eos_token_id, b]
    after = {last[0]: c1, c1: c2, c2: b, last[1]: d1, d1: tok.eos_token_id, last[2]: e1}
    seen = {}
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(ids=kwargs["input_ids"][:, -1]),
                                    with_kwargs=True)

    def force(module, args, out):
        forced = torch.full_like(out, -1e4)
        for r, t in enumerate(seen["ids"].tolist()):
            forced[r, -1, after.get(t, e1)] = 1e4  # e1 (and anything else) continues forever
        return forced

    model.lm_head.register_forward_hook(force)
    frame = pd.DataFrame({"eval_set": "tldr", "prompt_id": ["b", "eos", "none"], "prompt": prompts})
    out = generate(model, tok, frame, [0.5, 1.0], 1e-9, max_new_tokens=6, max_prompt_length=64, batch_size=6, seed=0)
    for temperature in (0.5, 1.0):
        rows = out[out["temperature"] == temperature].set_index("prompt_id")
        assert rows["finished"].to_dict() == {"b": True, "eos": True, "none": False}
        assert rows["n_tokens"].to_dict() == {"b": 2, "eos": 1, "none": 6}
        assert rows.loc["b", "response"] == tok.decode([c1, c2]).strip()
        assert rows.loc["eos", "response"] == tok.decode([d1]).strip()
        assert tok.decode([b]).strip() not in rows.loc["b", "response"]
