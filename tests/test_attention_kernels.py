"""Attention kernels: which one a model has is read from transformers' own registries, and under
a varlen (flash-style) kernel every caller of the packer hands it every sequence whole.

A varlen kernel takes no mask: transformers cuts one row into segments where the position ids
restart (``prepare_fa_kwargs_from_position_ids``) and attends causally inside each. Flash-attention
does not install here (no GPU), so the tests register a CPU attention function that takes exactly
that (no mask; segments from the position ids as transformers derives them for packed inputs,
else one per row) and records the tokens of each segment; it runs the real model code. Registered
like a hub kernel with ``flash_attn_varlen_func`` (with flash-attention's mask function), and in
place of ``flash_attention_2`` itself. Each segment must be exactly one sequence (its prompt and
its own response) and the values those of SDPA on padded rows.
"""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask, sdpa_mask
from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

from drdo import objectives
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import Encoded, encode
from drdo.modeling import LMWithRewardHead
from drdo.packing import (CHOSEN, REJECTED, SHARED, PackedForward, attention_inputs, pack, shares_prefixes,
                          varlen_kernel, whole_sequences)
from drdo.scoring import score, score_pairs
from drdo.trainer import Example, TrainConfig, collate, evaluate, forward, train

PROMPTS = ["POST: I locked my keys inside the car.\nTL;DR:", "POST: My cat sat on the mat all day.\nTL;DR:",
           "POST: rain again\nTL;DR:"]
CHOSEN_TEXT = [" Locked my keys in the car.", " The cat sat on the mat.", " rain"]
REJECTED_TEXT = [" Locked my keys in the house.", " A cat.", " rain again and again"]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.3}
TOL = {"rtol": 1e-5, "atol": 1e-5}
MAX_LEN = 96
CUSTOM = "drdo-test-varlen"  # no "flash" in the name: recognised by the mask it is registered with


class SegmentRecorder:
    """Attention as a varlen kernel computes it, on CPU; records each segment's token ids."""

    def __init__(self):
        self.segments, self.ids = [], None

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None,
                 **kwargs):
        assert attention_mask is None, "a varlen kernel takes no mask"
        batch, _, length, _ = query.shape
        if _is_packed_sequence(position_ids, batch):  # transformers' test, then its cu_seqlens
            (cu, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
            bounds = [(0, a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
        else:
            bounds = [(r, 0, length) for r in range(batch)]
        out = torch.empty_like(query)
        for r, a, b in bounds:
            out[r, :, a:b] = F.scaled_dot_product_attention(query[r:r + 1, :, a:b], key[r:r + 1, :, a:b],
                                                            value[r:r + 1, :, a:b], is_causal=True, scale=scaling,
                                                            enable_gqa=True)[0]
        if module.layer_idx == 0:
            self.segments += [tuple(self.ids[r, a:b].tolist()) for r, a, b in bounds]
        return out.transpose(1, 2).contiguous(), None


@pytest.fixture(params=[CUSTOM, "flash_attention_2"])
def varlen(request):
    """(kernel name, recorder): the recorder registered as that attention implementation."""
    mappings = [AttentionInterface._global_mapping, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping]
    saved = [dict(m) for m in mappings]
    recorder = SegmentRecorder()
    AttentionInterface.register(request.param, recorder)
    ALL_MASK_ATTENTION_FUNCTIONS.register(request.param, flash_attention_mask)  # as transformers does for hub kernels
    yield request.param, recorder
    for mapping, before in zip(mappings, saved):
        mapping.clear()
        mapping.update(before)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(PROMPTS + CHOSEN_TEXT + REJECTED_TEXT, vocab_size=300)


def _model(tok, impl="sdpa"):
    model = LMWithRewardHead(tiny_llama(tok, ARCH, seed=0), head_seed=0).eval()
    model.lm.config._attn_implementation = impl
    return model


def _on_varlen(tok, varlen):
    name, recorder = varlen
    model = _model(tok, name)
    model.lm.get_input_embeddings().register_forward_pre_hook(lambda m, args: setattr(recorder, "ids", args[0]))
    return model, recorder


# (prompt, chosen, rejected) columns: pairs sharing their prompt (one also its first response
# tokens), and two pairs with the same prompt
PAIRS = (PROMPTS + PROMPTS[:1], CHOSEN_TEXT + [" keys"], REJECTED_TEXT + [" car keys"])


def _segments_are_the_sequences(recorder, seqs):
    """Each segment the kernel attended is exactly one sequence's tokens, each sequence once."""
    assert Counter(recorder.segments) == Counter(tuple(s.input_ids) for s in seqs)


def _examples(tok):
    prompts, chosen, rejected = PAIRS
    return [Example([encode(tok, p, c, MAX_LEN), encode(tok, p, r, MAX_LEN)],
                    {"oracle_chosen": 1.0 + i, "oracle_rejected": -1.0 * i})
            for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected))]


def test_kernel_is_recognised_by_what_it_needs(tok, varlen):
    model = _model(tok)
    for impl, is_varlen in [("sdpa", False), ("eager", False), ("flex_attention", False),
                            ("flash_attention_2", True), ("flash_attention_3", True), ("flash_attention_4", True),
                            ("kernels-community/flash-attn3", True),  # a hub kernel not loaded yet: by its name
                            (varlen[0], True)]:
        model.lm.config._attn_implementation = impl
        assert varlen_kernel(model) is is_varlen and shares_prefixes(model) is not is_varlen, impl
    ALL_MASK_ATTENTION_FUNCTIONS.register("drdo-test-masked", sdpa_mask)  # a hub kernel taking SDPA's masks
    try:
        model.lm.config._attn_implementation = "drdo-test-masked"
        assert not varlen_kernel(model)
        packed = pack([[Encoded([1, 2], [0, 1])]], 0)
        got = attention_inputs(model, packed)["attention_mask"]
        model.lm.config._attn_implementation = "sdpa"  # the mask SDPA gets (additive, made once for all layers)
        torch.testing.assert_close(got, attention_inputs(model, packed)["attention_mask"], rtol=0, atol=0)
        assert got.dtype == torch.float32 and got.isinf().any()
    finally:
        del ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["drdo-test-masked"]


def test_whole_sequences_layout():
    w = Encoded([1, 5, 6, 7, 8], [0, 0, 1, 1, 1])
    l_ = Encoded([1, 5, 6, 9], [0, 0, 1, 1])
    s = Encoded([1, 4, 2], [0, 1, 1])
    packed = pack([[w, l_], [s, s], [Encoded([3, 3], [0, 1])]], pad_id=0, budget=9)
    assert packed.input_ids.shape[0] == 2 and (packed.group < 0).any()  # two rows, padding
    assert packed.branch[0, :6].tolist() == [SHARED] * 3 + [CHOSEN] * 2 + [REJECTED]
    whole = whole_sequences(packed)
    assert whole.input_ids.tolist() == [[1, 5, 6, 7, 8, 1, 5, 6, 9, 1, 4, 2, 1, 4, 2, 3, 3]]
    assert whole.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 0, 1]]
    assert whole.group.tolist() == [[0] * 5 + [1] * 4 + [2] * 3 + [3] * 3 + [4] * 2]
    assert (whole.branch == SHARED).all()
    assert whole.last_index.tolist() == [4, 8, 11, 14, 16]
    flat = whole.input_ids[0]
    assert flat[whole.pred_index + 1].tolist() == whole.target.tolist() == packed.target.tolist()
    assert whole.target_seq.tolist() == packed.target_seq.tolist() and whole.ntok.tolist() == packed.ntok.tolist()


def test_varlen_kernel_refuses_a_shared_prefix(tok, varlen):
    model = _model(tok, varlen[0])
    packed = pack([[Encoded([1, 5, 6], [0, 1, 1]), Encoded([1, 5, 7], [0, 1, 1])]], 0)
    with pytest.raises(ValueError, match="block-causal"):
        attention_inputs(model, packed)
    assert attention_inputs(model, whole_sequences(packed))["attention_mask"] is None


@pytest.mark.parametrize("share_prefix", [True, False])
def test_training_batches_give_whole_sequences(tok, varlen, share_prefix):
    """trainer.collate + forward, as train() calls them (share_prefix=shares_prefixes(model): False)
    and as a caller that forgets to (the default, True)."""
    examples = _examples(tok)
    objective = objectives.build("drdo", {"alpha": 0.1, "gamma": 2.0, "student_reward": "head", "logp_agg": "sum"})
    model, recorder = _on_varlen(tok, varlen)
    with torch.no_grad():
        out = forward(model, collate(examples, tok.pad_token_id, True, 48, share_prefix), objective)
        ref = forward(_model(tok), collate(examples, tok.pad_token_id, True, 48), objective)
    _segments_are_the_sequences(recorder, [s for e in examples for s in e.seqs])
    for k, v in ref.items():
        torch.testing.assert_close(out[k], v, **TOL, msg=k)


def test_train_and_evaluate_give_whole_sequences(tok, varlen):
    examples = _examples(tok)
    objective = objectives.build("dpo", {"beta": 0.1})
    values = [Example(e.seqs, {"ref_logp_chosen": -20.0, "ref_logp_rejected": -21.0}) for e in examples]
    model, recorder = _on_varlen(tok, varlen)
    val = evaluate(model, values, objective, tok.pad_token_id, batch_size=3)
    _segments_are_the_sequences(recorder, [s for e in values for s in e.seqs])
    assert val == pytest.approx(evaluate(_model(tok), values, objective, tok.pad_token_id, batch_size=3), rel=1e-5)
    recorder.segments.clear()
    train(model, values, objective, TrainConfig(lr=1e-3, batch_size=4, max_steps=1), tok.pad_token_id)
    whole = Counter(tuple(s.input_ids) for e in values for s in e.seqs)
    assert len(recorder.segments) == 8 and not Counter(recorder.segments) - whole


def test_tables_give_whole_sequences(tok, varlen):
    """scoring.score_pairs (the reward and reference tables)."""
    prompts, chosen, rejected = PAIRS
    model, recorder = _on_varlen(tok, varlen)
    sides = score_pairs(model, tok, prompts, chosen, rejected, MAX_LEN, batch_size=4)
    _segments_are_the_sequences(recorder, [encode(tok, p, r, MAX_LEN) for p, r in
                                           zip(prompts * 2, list(chosen) + list(rejected))])
    for got, ref in zip(sides, score_pairs(_model(tok), tok, prompts, chosen, rejected, MAX_LEN, batch_size=4)):
        for k in ("logp", "reward"):
            torch.testing.assert_close(torch.tensor(got[k]), torch.tensor(ref[k]), **TOL, msg=k)


def test_scoring_generations_gives_whole_sequences(tok, varlen):
    """scoring.score of generations: a prompt's responses at several temperatures are one group."""
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3 + [PROMPTS[2]]
    responses = [CHOSEN_TEXT[0], REJECTED_TEXT[0], " Locked", CHOSEN_TEXT[1], CHOSEN_TEXT[1], "", " rain"]
    model, recorder = _on_varlen(tok, varlen)
    out = score(model, tok, prompts, responses, MAX_LEN, batch_size=8)
    _segments_are_the_sequences(recorder, [encode(tok, p, r, MAX_LEN) for p, r in zip(prompts, responses)])
    ref = score(_model(tok), tok, prompts, responses, MAX_LEN, batch_size=8)
    for k in ("logp", "reward"):
        torch.testing.assert_close(torch.tensor(out[k]), torch.tensor(ref[k]), **TOL, msg=k)


def test_packed_forward_on_any_packed_batch_gives_whole_sequences(tok, varlen):
    """Any caller of pack (a bench, a notebook) with the default sharing and several padded rows."""
    examples = _examples(tok)
    groups = [e.seqs for e in examples] + [[examples[0].seqs[0]]]
    model, recorder = _on_varlen(tok, varlen)
    with torch.no_grad():
        logp, reward = PackedForward(model)(pack(groups, tok.pad_token_id, 40), logps=True, rewards=True)
        ref_logp, ref_reward = PackedForward(_model(tok))(pack(groups, tok.pad_token_id, 40), logps=True, rewards=True)
    _segments_are_the_sequences(recorder, [s for g in groups for s in g])
    torch.testing.assert_close(logp, ref_logp, **TOL)
    torch.testing.assert_close(reward, ref_reward, **TOL)
