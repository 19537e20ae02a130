"""Packing (padding-free rows, shared prompts) and response-only log-probs give the padded
path's per-sequence log-probs and rewards (fp32, 1e-5), and training on them gives the same
weights.

The reference is the padded path: one right-padded row per sequence, the full LM forward
(logits at every position) and ``modeling.response_logps``. Weights are drawn with a large
initializer range so the log-probs are far from uniform and a wrong mask shows.
"""

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from drdo import objectives
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import Encoded, encode, encode_prompt, pad_batch
from drdo.modeling import LMWithRewardHead, response_logps
from drdo.packing import (CHOSEN, REJECTED, SHARED, PackedForward, attention_inputs, dense_mask, pack,
                          shares_prefixes)
from drdo.scoring import score
from drdo.trainer import Example, collate, forward

TEXTS = ["POST: I locked my keys inside the car.\nTL;DR:", " Locked my keys in the car.",
         "POST: My cat sat on the mat all day.\nTL;DR:", " The cat sat on the mat all day.",
         "the quick brown fox jumps over the lazy dog"]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.3}
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def tiny(tok):
    return LMWithRewardHead(tiny_llama(tok, ARCH, seed=0), head_seed=0).eval()


@pytest.fixture(scope="module")
def big_vocab():
    """Llama architecture with a real-size vocabulary (SmolLM2's 49,152), random weights."""
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.3, tie_word_embeddings=True)
    return LMWithRewardHead(LlamaForCausalLM(cfg), head_seed=0).eval()


def padded(model, seqs: list[Encoded]):
    """The reference: padded rows, logits everywhere, ``response_logps``; (logp, ntok, reward)."""
    b = pad_batch(seqs, 0)
    logits, rewards = model(b["input_ids"], b["attention_mask"])
    logp, ntok = response_logps(logits, b["input_ids"], b["loss_mask"])
    return logp, ntok, rewards


def _random_pairs(vocab, shapes, seed=0):
    """Pairs [prompt + chosen, prompt + rejected] of random tokens; shapes: (prompt, chosen, rejected)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    out = []
    for p, w, lo in shapes:
        prompt = rnd(p)
        out.append([Encoded(prompt + rnd(w), [0] * p + [1] * w), Encoded(prompt + rnd(lo), [0] * p + [1] * lo)])
    return out


def _edge_pairs(tok):
    """Real encodings: length-1 responses (EOS only), responses identical up to one (last or
    inner) token, identical responses, a one-token-prompt sequence, a response of a lone space."""
    enc = lambda p, r: encode(tok, p, r, 256)  # noqa: E731
    p1, p2 = TEXTS[0], TEXTS[2]
    return [[enc(p1, TEXTS[1]), enc(p1, "")],
            [enc(p2, "The cat sat on the mat"), enc(p2, "The cat sat on the mat all day")],
            [enc(p2, "The cat sat on the mat"), enc(p2, "The cat sat on the rug")],
            [enc(p1, "the dog"), enc(p1, "the fox")],
            [enc(p1, "same words"), enc(p1, "same words")],
            [enc("", "x"), enc("", "")],
            [enc(p2, ""), enc(p2, " ")]]


@pytest.mark.parametrize("budget", [0, 40, 10_000])
def test_packed_pairs_equal_padded_tiny(tok, tiny, budget):
    groups = _edge_pairs(tok) + _random_pairs(len(tok), [(9, 4, 1), (1, 1, 1), (20, 7, 12)])
    seqs = [s for g in groups for s in g]
    with torch.no_grad():
        ref_logp, ref_ntok, ref_r = padded(tiny, seqs)
        packed = pack(groups, tok.pad_token_id, budget)
        logp, r = PackedForward(tiny)(packed, logps=True, rewards=True)
    torch.testing.assert_close(logp, ref_logp, **TOL)
    torch.testing.assert_close(r, ref_r, **TOL)
    assert packed.ntok.tolist() == ref_ntok.long().tolist()
    assert packed.n_targets == sum(sum(s.loss_mask[1:]) for s in seqs)
    # budget 10k: one row; 40, or 0 (twice the mean group): several, so every group sits at a left or
    # right edge of some row, or both, across the cases
    assert (packed.input_ids.shape[0] == 1) == (budget == 10_000)
    if budget == 40:
        assert packed.input_ids.shape[1] <= max(40, max(len(g[0].input_ids) + len(g[1].input_ids) for g in groups))


def test_packed_equal_padded_real_vocabulary(big_vocab):
    groups = _random_pairs(49152, [(40, 12, 3), (25, 1, 30), (60, 20, 20), (5, 8, 8)], seed=3)
    groups.append([groups[0][0], Encoded(groups[0][0].input_ids[:-1], groups[0][0].loss_mask[:-1])])  # one token less
    seqs = [s for g in groups for s in g]
    with torch.no_grad():
        ref_logp, _, ref_r = padded(big_vocab, seqs)
        for share in (True, False):
            logp, r = PackedForward(big_vocab)(pack(groups, 0, 128, share_prefix=share), logps=True, rewards=True)
            torch.testing.assert_close(logp, ref_logp, **TOL)
            torch.testing.assert_close(r, ref_r, **TOL)
        # single sequences (SFT, scoring) packed several to a row
        logp, _ = PackedForward(big_vocab)(pack([[s] for s in seqs], 0, 200), logps=True)
    torch.testing.assert_close(logp, ref_logp, **TOL)


def test_shared_prefix_layout_and_mask():
    w = Encoded([1, 5, 6, 7, 8], [0, 0, 1, 1, 1])
    l_ = Encoded([1, 5, 6, 9], [0, 0, 1, 1])  # shares the prompt and the first response token
    s = Encoded([1, 4, 2], [0, 1, 1])
    packed = pack([[w, l_], [s, s]], pad_id=0, budget=100)
    assert packed.input_ids.tolist() == [[1, 5, 6, 7, 8, 9, 1, 4, 2]]
    assert packed.branch.tolist() == [[SHARED] * 3 + [CHOSEN] * 2 + [REJECTED] + [SHARED] * 3]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2]]  # rejected continues the prefix
    m = dense_mask(packed)[0, 0]
    assert m[5].tolist() == [True] * 3 + [False, False, True] + [False] * 3  # rejected: prefix and itself
    assert m[4].tolist() == [True] * 5 + [False] * 4  # chosen
    assert m[8].tolist() == [False] * 6 + [True] * 3  # next group: its own tokens only
    # targets: w predicts 6, 7, 8 from slots 1, 2, 3; l predicts 6 from slot 1, 9 from slot 2
    assert packed.target.tolist()[:5] == [6, 7, 8, 6, 9]
    assert packed.pred_index.tolist()[:5] == [1, 2, 3, 1, 2]
    assert packed.last_index.tolist() == [4, 5, 8, 8]
    assert packed.ntok.tolist() == [3, 2, 2, 2]


def test_groups_of_k_responses_share_one_prompt(tok, tiny):
    """A prompt with k responses (a policy's generations at k temperatures) is one group: the prompt
    once, then each response as its own branch; every sequence gets its padded values, also
    when two responses are identical, one is a prefix of another, or all start alike."""
    enc = lambda r: encode(tok, TEXTS[0], r, 256)  # noqa: E731
    groups = [[enc(TEXTS[1]), enc(" Locked my keys"), enc(TEXTS[1]), enc(""), enc(" the cat")],
              [encode(tok, TEXTS[2], " cat", 256)],
              [enc(" the dog"), enc(" the fox"), enc(" the fox sat")]]
    seqs = [s for g in groups for s in g]
    with torch.no_grad():
        ref_logp, ref_ntok, ref_r = padded(tiny, seqs)
        for budget in (0, 10_000):
            packed = pack(groups, tok.pad_token_id, budget)
            logp, r = PackedForward(tiny)(packed, logps=True, rewards=True)
            torch.testing.assert_close(logp, ref_logp, **TOL)
            torch.testing.assert_close(r, ref_r, **TOL)
    assert packed.ntok.tolist() == ref_ntok.long().tolist()
    prompt = len(encode_prompt(tok, TEXTS[0]))  # BOS + prompt tokens
    assert packed.branch[0, :prompt].tolist() == [SHARED] * prompt  # the longest group first
    stored = int((packed.group >= 0).sum())  # groups 0 and 2 store TEXTS[0]'s prompt once each
    assert stored <= sum(len(s.input_ids) for s in seqs) - prompt * (len(groups[0]) - 1 + len(groups[2]) - 1)


def test_padding_rows_and_kernel_choice(tiny):
    groups = [[Encoded([1, 2, 3], [0, 1, 1])], [Encoded([1, 2], [0, 1])], [Encoded([4] * 5, [0, 0, 1, 1, 1])]]
    packed = pack(groups, pad_id=0, budget=5)
    assert packed.input_ids.tolist() == [[4] * 5, [1, 2, 3, 1, 2]]  # first-fit decreasing, ties in order
    ragged = pack(groups[:2] + [[Encoded([7], [0])]], pad_id=0, budget=4)
    assert ragged.input_ids.tolist() == [[1, 2, 3, 7], [1, 2, 0, 0]] and ragged.group[1, 2:].tolist() == [-1, -1]
    assert ragged.ntok.tolist() == [2, 1, 1]  # a sequence without targets counts 1, as in the padded path
    assert shares_prefixes(tiny)
    # sdpa on CPU: the additive mask SDPA would make of the boolean one, in the compute dtype
    mask = attention_inputs(tiny, packed)["attention_mask"]
    assert mask.dtype == torch.float32 and torch.equal(mask == 0, dense_mask(packed))
    assert torch.equal(mask[mask != 0], torch.full_like(mask[mask != 0], float("-inf")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_inputs(tiny, packed)["attention_mask"].dtype == torch.bfloat16


def test_sdpa_layers_share_one_mask_and_compute_what_a_boolean_one_gives(tok, tiny, monkeypatch):
    """SDPA makes an additive mask of a boolean one in every layer and saves each for the
    backward; the packed path passes that additive mask, made once: one saved mask for all
    layers, and the very same log-probs and gradients as with the boolean mask."""
    groups = _random_pairs(len(tok), [(20, 7, 12), (9, 4, 1), (30, 2, 5)], seed=4)
    packed = pack(groups, 0, 40)

    def run():
        tiny.zero_grad()
        masks = set()

        def keep(t):
            if t.dim() == 4 and t.shape[1] == 1 and t.shape[-1] == t.shape[-2] == packed.input_ids.shape[1]:
                masks.add(t.data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logp, r = PackedForward(tiny)(packed, logps=True, rewards=True)
        (logp.sum() + r.sum()).backward()
        return logp.detach(), _grads(tiny), masks

    logp, grads, masks = run()
    assert len(masks) == 1  # tiny has 2 layers
    from drdo import packing

    made = packing.attention_inputs
    monkeypatch.setattr(packing, "attention_inputs", lambda m, p: made(m, p) | {"attention_mask": dense_mask(p)})
    bool_logp, bool_grads, bool_masks = run()
    assert len(bool_masks) == 2  # what the boolean mask cost: one per layer
    assert torch.equal(logp, bool_logp)
    assert all(torch.equal(grads[k], bool_grads[k]) for k in grads)


def test_long_rows_run_at_their_own_width(tok):
    """A row of AUTO_ROW_CAP tokens or more is decoded at its own width (with the rows of that
    width), the shorter rows together at their widest, and log-probs, rewards and gradients are
    the padded path's."""
    from drdo.packing import AUTO_ROW_CAP

    model = LMWithRewardHead(tiny_llama(tok, {**ARCH, "max_position_embeddings": 1024}, seed=3), head_seed=0)
    n = AUTO_ROW_CAP + 24
    groups = _random_pairs(len(tok), [(n, 10, 10), (40, 5, 4), (n - 10, 9, 10), (n, 10, 10), (12, 3, 3)], seed=11)
    packed = pack(groups, 0)
    assert sorted((packed.group >= 0).sum(1).tolist()) == [67, n + 9, n + 20, n + 20]  # the short two share a row
    with torch.no_grad():  # the LM head's one-time check against the model's own forward runs here
        PackedForward(model)(packed, logps=True, rewards=False)
    widths = []
    hook = model.lm.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    logp, r = PackedForward(model)(packed, logps=True, rewards=True)
    hook.remove()
    assert sorted(widths) == [(1, 67), (1, n + 9), (2, n + 20)]
    (logp.sum() + r.sum()).backward()
    grads = _grads(model)
    model.zero_grad()
    ref_logp, _, ref_r = padded(model, [s for g in groups for s in g])
    torch.testing.assert_close(logp, ref_logp, **TOL)
    torch.testing.assert_close(r, ref_r, **TOL)
    (ref_logp.sum() + ref_r.sum()).backward()
    for k, g in _grads(model).items():
        torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=max(1e-5 * g.abs().max().item(), 1e-6), msg=k)


def test_eager_attention_takes_an_additive_mask(tok):
    lm = tiny_llama(tok, ARCH, seed=2).eval()
    groups = _random_pairs(len(tok), [(6, 3, 2), (4, 1, 5)], seed=5)
    with torch.no_grad():
        ref, _, _ = padded(LMWithRewardHead(lm), [s for g in groups for s in g])
        lm.set_attn_implementation("eager")
        logp, _ = PackedForward(lm)(pack(groups, 0, 64), logps=True)
    torch.testing.assert_close(logp, ref, **TOL)


def test_reward_only_forward_never_runs_the_lm_head(tiny, tok, monkeypatch):
    calls = []
    head = tiny.lm.get_output_embeddings()
    monkeypatch.setattr(head, "forward", lambda x: calls.append(x.shape) or torch.nn.Linear.forward(head, x))
    prompts, responses = [TEXTS[0], TEXTS[2], "a"], [TEXTS[1], "cat", "b c"]
    out = score(tiny, tok, prompts, responses, max_length=64, batch_size=2, logps=False)
    assert not calls and set(out) == {"ntok", "reward", "n_too_long", "n_prompt_cut", "too_long"}
    full = score(tiny, tok, prompts, responses, max_length=64, batch_size=2)
    assert sum(n for n, _ in calls) == full["ntok"].sum()  # the head saw response positions only
    torch.testing.assert_close(torch.tensor(out["reward"]), torch.tensor(full["reward"]))
    with torch.no_grad():
        ref_logp, _, ref_r = padded(tiny, [encode(tok, p, r, 64) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(torch.tensor(full["logp"]), ref_logp.double(), **TOL)
    torch.testing.assert_close(torch.tensor(full["reward"]), ref_r.double(), **TOL)


def _reference_forward(model, examples, objective):
    """The trainer's forward before packing: chosen rows, then rejected rows, padded."""
    seqs = [e.seqs[0] for e in examples] + ([e.seqs[1] for e in examples] if objective.paired else [])
    logp, ntok, rewards = padded(model, seqs) if objective.reward_head else (
        *response_logps(model.lm(**{k: v for k, v in _pad(seqs).items() if k != "loss_mask"}).logits,
                        _pad(seqs)["input_ids"], _pad(seqs)["loss_mask"]), None)
    if not objective.paired:
        return {"logp": logp, "ntok": ntok, "ntok_norm": ntok.sum()}
    b = len(examples)
    out = {"logp_w": logp[:b], "logp_l": logp[b:], "ntok_w": ntok[:b], "ntok_l": ntok[b:]}
    return out | ({"r_w": rewards[:b], "r_l": rewards[b:]} if rewards is not None else {})


def _pad(seqs):
    b = pad_batch(seqs, 0)
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "loss_mask": b["loss_mask"]}


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,params", [
    ("drdo", {"alpha": 0.1, "gamma": 2.0, "student_reward": "head", "logp_agg": "mean"}),
    ("dpo", {"beta": 0.1}), ("sft", {})])
def test_training_on_packed_batches_matches_padded(tok, name, params):
    """Training on packed batches is training on padded ones.

    Along an AdamW trajectory (the trainer's optimizer), packed and padded give the same loss
    (1e-6) and gradients (1e-5 of each tensor's largest entry) at every step. Two models trained
    side by side, one per path, end with the same weights (1e-6) under SGD; under Adam they would
    not quite, whatever the change of summation order: Adam scales each gradient element to about
    +-lr, so elements whose true gradient is ~0 (a reward-head bias that cancels out of
    r_w - r_l) turn float32 noise into steps of ~lr."""
    objective = objectives.build(name, params)
    groups = _edge_pairs(tok) + _random_pairs(len(tok), [(12, 5, 3), (7, 2, 9), (3, 4, 4)], seed=7)
    examples = [Example(g, {"oracle_chosen": 0.5 * i, "oracle_rejected": -0.2 * i,
                            "ref_logp_chosen": -20.0, "ref_logp_rejected": -22.0}) for i, g in enumerate(groups)]
    arch = {**ARCH, "initializer_range": 0.02}  # as trained: gradients of a realistic size
    batches = [examples[0:4], examples[4:7], examples[7:10], examples[0:10]]

    def step_loss(model, chunk, packed):
        values = {k: torch.tensor([e.values[k] for e in chunk]) for k in chunk[0].values}
        if packed:
            out = forward(model if objective.reward_head else model.lm, collate(chunk, 0, objective.paired, 48),
                          objective)
        else:
            out = _reference_forward(model, chunk, objective)
        model.zero_grad()
        loss = objective.loss(out, values)[0]
        loss.backward()
        return loss.item()

    model = LMWithRewardHead(tiny_llama(tok, arch, seed=4), head_seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step, chunk in enumerate(batches):
        packed_loss, packed_grads = step_loss(model, chunk, True), _grads(model)
        assert packed_loss == pytest.approx(step_loss(model, chunk, False), rel=1e-6, abs=1e-6), step
        padded_grads = _grads(model)
        assert packed_grads.keys() == padded_grads.keys()
        for k, g in padded_grads.items():
            atol = max(1e-5 * g.abs().max().item(), 1e-6)  # float32 noise is relative to the largest terms
            torch.testing.assert_close(packed_grads[k], g, rtol=1e-5, atol=atol,
                                       msg=lambda s, k=k, step=step: f"step {step} {k}: {s}")
        opt.step()

    models = [LMWithRewardHead(tiny_llama(tok, arch, seed=4), head_seed=1) for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in models]
    for chunk in batches:
        for m, o, packed in zip(models, opts, (False, True)):
            step_loss(m, chunk, packed)
            o.step()
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=lambda s, k=k: f"{k}: {s}")
    init = LMWithRewardHead(tiny_llama(tok, arch, seed=4), head_seed=1).state_dict()
    moved = max((v - init[k]).abs().max().item() for k, v in models[0].state_dict().items())
    assert moved > 1e-4  # the weights did move (100x the tolerance): a wrong path would show


@pytest.mark.skipif(not os.environ.get("DRDO_TEST_FLEX"), reason="compiles flex attention (~1 min on 2 cores); "
                    "set DRDO_TEST_FLEX=1")
def test_flex_attention_block_mask_equals_padded(tok):
    """The GPU path's flex-attention BlockMask, run on CPU (torch.compile): same log-probs."""
    lm = tiny_llama(tok, ARCH, seed=2).eval()
    groups = _edge_pairs(tok) + _random_pairs(len(tok), [(30, 5, 9), (4, 1, 1)], seed=9)
    with torch.no_grad():
        ref, _, _ = padded(LMWithRewardHead(lm), [s for g in groups for s in g])
        lm.set_attn_implementation("flex_attention")
        logp, _ = PackedForward(lm)(pack(groups, 0, 128), logps=True)
    torch.testing.assert_close(logp, ref, **TOL)
