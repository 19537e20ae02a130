"""The training loop: exact resume after a crash, stale resume state, learning, evaluate, collate.

Tiny offline models only (a BPE tokenizer trained on a few sentences, a 1-layer Llama).
"""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from drdo import objectives
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import encode
from drdo.modeling import LMWithRewardHead
from drdo.trainer import RESUME_META, Example, TrainConfig, collate, evaluate, forward, train

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 64}
POSTS = ["I locked my keys inside the car", "my cat sat on the mat all day", "the pizza was cold again",
         "my boss moved the meeting twice", "I lost my phone on the train", "the dog ate my homework",
         "our flat has no hot water", "I missed the last bus home"]
GOOD = ["keys locked in car", "cat sat on mat", "cold pizza", "meeting moved twice",
        "lost phone on train", "dog ate homework", "no hot water", "missed last bus"]
BAD = ["something happened", "a thing", "food", "work stuff", "oops", "a pet", "the flat", "late"]
DRDO_PARAMS = {"alpha": 0.1, "gamma": 2.0, "student_reward": "head", "logp_agg": "sum"}
MAX_LEN = 48


def _prompt(post):
    return f"POST: {post}\nTL;DR:"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([_prompt(p) for p in POSTS] + GOOD + BAD, vocab_size=300)


@pytest.fixture(scope="module")
def pairs(tok):
    return [Example([encode(tok, _prompt(p), g, MAX_LEN), encode(tok, _prompt(p), b, MAX_LEN)],
                    {"oracle_chosen": 1.0 + 0.1 * i, "oracle_rejected": -0.5 + 0.05 * i})
            for i, (p, g, b) in enumerate(zip(POSTS, GOOD, BAD))]


def _student(tok):
    return LMWithRewardHead(tiny_llama(tok, ARCH, seed=0), head_seed=0)


CFG = TrainConfig(lr=1e-3, batch_size=2, max_steps=6, warmup_steps=1, weight_decay=0.01, seed=0, save_every=2)
RUN_KEY = {"method": "drdo", "params": DRDO_PARAMS}


def _crashing(objective, after_calls):
    """The objective, but its loss raises on call ``after_calls + 1`` (a killed job)."""
    calls = {"n": 0}

    def loss(out, values):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise RuntimeError("simulated crash")
        return objective.loss(out, values)

    return dataclasses.replace(objective, loss=loss)


@pytest.fixture(scope="module")
def uninterrupted(tok, pairs):
    model = _student(tok)
    history = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), CFG, tok.pad_token_id)
    return model, history


def _assert_same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def crashed_state(tok, pairs, tmp_path_factory):
    """The resume folder a job killed during step 5 leaves behind (last saved at step 4)."""
    resume = tmp_path_factory.mktemp("crash") / "resume" / "drdo"
    objective = objectives.build("drdo", DRDO_PARAMS)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_student(tok), pairs, _crashing(objective, after_calls=4), CFG, tok.pad_token_id,
              resume_path=resume, run_key=RUN_KEY)
    assert (resume / RESUME_META).exists()
    assert not resume.with_name(resume.name + ".tmp").exists()
    return resume


def test_resume_after_crash_is_exact(tok, pairs, uninterrupted, crashed_state, tmp_path):
    ref_model, ref_history = uninterrupted
    assert len(ref_history) == 6
    resume = tmp_path / "drdo"
    shutil.copytree(crashed_state, resume)
    meta = json.loads((resume / RESUME_META).read_text())
    assert meta["step"] == 4 and len(meta["history"]) == 4

    # a new process: a freshly initialised model, the same arguments
    model = _student(tok)
    history = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), CFG, tok.pad_token_id,
                    resume_path=resume, run_key=RUN_KEY)
    assert len(history) == 6
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert json.loads((resume / RESUME_META).read_text())["step"] == 4  # kept until the job writes its model
    _assert_same_params(ref_model, model)
    for h, r in zip(history, ref_history):
        assert h.keys() == r.keys()
        for k in h:
            assert h[k] == pytest.approx(r[k], rel=1e-5, abs=1e-7), (h["step"], k)


def test_resume_state_of_another_run_is_ignored(tok, pairs, uninterrupted, crashed_state, tmp_path, caplog):
    ref_model, _ = uninterrupted
    resume = tmp_path / "drdo"
    shutil.copytree(crashed_state, resume)  # saved under RUN_KEY; this run has another key
    meta = json.loads((resume / RESUME_META).read_text())
    model = _student(tok)
    with caplog.at_level(logging.INFO, logger="drdo.train"):
        history = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), CFG, tok.pad_token_id,
                        resume_path=resume, run_key={**RUN_KEY, "seed_of_something_else": 1})
    assert "ignoring stale resume state" in caplog.text  # started from step 0, not the saved step
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert json.loads((resume / RESUME_META).read_text())["key"] != meta["key"]  # this run's own saves
    _assert_same_params(ref_model, model)  # the run key itself does not change training


def test_training_actually_changes_the_model(tok, uninterrupted):
    ref_model, history = uninterrupted
    fresh = _student(tok)
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, ref_model.state_dict()[k])]
    assert "head.weight" in changed and len(changed) > 5
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert not ref_model.training  # train() leaves the model in eval mode


def test_sft_loss_goes_down(tok):
    texts = [("POST: my cat sat on the mat\nTL;DR:", "cat sat on mat"),
             ("POST: the dog ate my homework\nTL;DR:", "dog ate homework")]
    examples = [Example([encode(tok, p, r, MAX_LEN)]) for p, r in texts * 4]
    model = tiny_llama(tok, ARCH, seed=0)
    cfg = TrainConfig(lr=3e-3, batch_size=4, max_steps=30, warmup_steps=2, seed=0)
    history = train(model, examples, objectives.build("sft", {}), cfg, tok.pad_token_id)
    assert len(history) == 30
    first, last = history[0]["loss"], history[-1]["loss"]
    assert first > 4.0  # about log(vocab) at initialisation
    assert last < 0.75 * first and first - last > 1.5, (first, last)  # ~5.7 -> ~3.5
    losses = [h["loss"] for h in history]
    assert max(losses[-5:]) < min(losses[:5])
    assert history[-1]["nll"] == pytest.approx(last)


def _edpo_pairs(tok):
    """Pairs whose 3 reward models disagree wildly (each member fits some pairs and misses others),
    so the best member of half a batch is seldom that of the whole."""
    rng = np.random.default_rng(1)
    out = []
    for i, (p, g, b) in enumerate(zip(POSTS, GOOD, BAD)):
        rewards = {f"rm{k}_{side}": float(rng.normal(scale=3.0)) for k in range(3) for side in ("chosen", "rejected")}
        out.append(Example([encode(tok, _prompt(p), g, MAX_LEN), encode(tok, _prompt(p), b, MAX_LEN)],
                           {"ref_logp_chosen": -5.0 - 0.3 * i, "ref_logp_rejected": -6.0 + 0.2 * i, **rewards}))
    return out


def _sft_examples(tok):  # responses of different lengths: micro-batches hold different token counts
    return [Example([encode(tok, _prompt(p), " ".join([g] * (1 + i % 3)), MAX_LEN)])
            for i, (p, g) in enumerate(zip(POSTS, GOOD))]


EDPO = {"beta": 0.1, "ensemble_size": 3, "reduction": "min"}


@pytest.mark.parametrize("name", ["edpo", "sft"])
def test_micro_batches_reproduce_the_whole_batch(tok, name):
    """A batch of 4 as one micro-batch or as 2 accumulated micro-batches of 2: the same loss, so the
    same weights. e-DPO's min over members is taken on the whole batch's member means (a pass
    without gradients first), SFT's token mean over the whole batch's tokens."""
    examples = _edpo_pairs(tok) if name == "edpo" else _sft_examples(tok)
    objective = objectives.build(name, EDPO if name == "edpo" else {})
    base = TrainConfig(lr=1e-2, batch_size=4, grad_accum=1, max_steps=4, warmup_steps=0, seed=0)
    runs = {}
    for label, cfg, obj in [("one", base, objective),
                            ("accum", dataclasses.replace(base, batch_size=2, grad_accum=2), objective),
                            ("per-micro-batch", dataclasses.replace(base, batch_size=2, grad_accum=2),
                             dataclasses.replace(objective, whole_batch=None))]:
        if label == "per-micro-batch" and name == "sft":
            continue
        model = tiny_llama(tok, ARCH, seed=0)
        history = train(model, examples, obj, cfg, tok.pad_token_id)
        runs[label] = (model, [h["loss"] for h in history])
    _assert_same_params(runs["one"][0], runs["accum"][0])
    assert runs["accum"][1] == pytest.approx(runs["one"][1], rel=1e-5)
    if name == "edpo":  # the min of each micro-batch on its own is another objective: it can fail
        moved = max((a - b).abs().max().item() for a, b in zip(runs["one"][0].parameters(), runs["per-micro-batch"][0].parameters()))
        assert moved > 1e-4


@pytest.mark.parametrize("name", ["edpo", "sft"])
def test_evaluate_does_not_depend_on_its_batch_size(tok, name):
    examples = _edpo_pairs(tok) if name == "edpo" else _sft_examples(tok)
    objective = objectives.build(name, EDPO if name == "edpo" else {})
    model = tiny_llama(tok, ARCH, seed=0)
    whole = evaluate(model, examples, objective, tok.pad_token_id, batch_size=len(examples))
    for b in (1, 3):
        chunked = evaluate(model, examples, objective, tok.pad_token_id, batch_size=b)
        assert chunked.keys() == whole.keys()
        for k in whole:
            assert chunked[k] == pytest.approx(whole[k], rel=1e-5), k
    with torch.no_grad():  # and the whole set as one batch is the loss by hand
        out = forward(model, collate(examples, tok.pad_token_id, paired=name == "edpo"), objective)
    if name == "sft":
        assert whole["loss"] == pytest.approx((-out["logp"].sum() / out["ntok"].sum()).item(), rel=1e-5)
    else:
        t = {k: torch.tensor([e.values[k] for e in examples]) for k in examples[0].values}
        implicit = 0.1 * ((out["logp_w"] - t["ref_logp_chosen"]) - (out["logp_l"] - t["ref_logp_rejected"]))
        members = [((t[f"rm{k}_chosen"] - t[f"rm{k}_rejected"] - implicit) ** 2).mean() for k in range(3)]
        assert whole["loss"] == pytest.approx(min(members).item(), rel=1e-5)


def test_evaluate_oracle_reward_acc(tok, pairs):
    model = _student(tok)
    objective = objectives.build("oracle", {"nll_weight": 0.01})
    m1 = evaluate(model, pairs, objective, tok.pad_token_id, batch_size=3)
    m2 = evaluate(model, pairs, objective, tok.pad_token_id, batch_size=3)
    assert m1 == m2  # deterministic
    assert {"loss", "bt", "reward_acc", "nll_chosen"} <= m1.keys()
    assert 0.0 <= m1["reward_acc"] <= 1.0
    assert (m1["reward_acc"] * len(pairs)) == pytest.approx(round(m1["reward_acc"] * len(pairs)))
    # chunked means are weighted by chunk size: same result as one batch of everything
    whole = evaluate(model, pairs, objective, tok.pad_token_id, batch_size=len(pairs))
    assert m1["reward_acc"] == pytest.approx(whole["reward_acc"])
    assert m1["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    # and equal to the accuracy computed by hand from the rewards
    with torch.no_grad():
        out = forward(model, collate(pairs, tok.pad_token_id, paired=True), objective)
    assert whole["reward_acc"] == pytest.approx((out["r_w"] > out["r_l"]).float().mean().item())


def test_collate_pairs_chosen_then_rejected_packed(tok):
    pad = tok.pad_token_id
    seqs = [(encode(tok, "a", "b c d", 64), encode(tok, "a", "e", 64)),
            (encode(tok, "f g h i", "j", 64), encode(tok, "f g h i", "k l m n o", 64)),
            (encode(tok, "p", "q", 64), encode(tok, "p", "r s", 64))]
    exs = [Example([c, r], {"oracle_chosen": float(i), "oracle_rejected": -float(i) - 0.5})
           for i, (c, r) in enumerate(seqs)]
    batch = collate(exs, pad, paired=True)
    packed = batch["packed"]
    # sequence 2i is pair i's chosen, 2i+1 its rejected; each prompt is stored once, no padding
    order = [s for pair in seqs for s in pair]
    assert packed.ntok.tolist() == [sum(s.loss_mask[1:]) for s in order]
    shared = [next(j for j, (x, y) in enumerate(zip(c.input_ids, r.input_ids)) if x != y) for c, r in seqs]
    lengths = [len(c.input_ids) + len(r.input_ids) - n for (c, r), n in zip(seqs, shared)]
    assert packed.group.ge(0).sum() == sum(lengths)
    # budget 0: rows of twice the mean pair (at least the longest), filled longest first
    assert packed.input_ids.shape[1] <= max(max(lengths), -(-2 * sum(lengths) // len(lengths)))
    for i, s in enumerate(order):
        targets = [t for t, m in zip(s.input_ids[1:], s.loss_mask[1:]) if m]
        assert packed.target[packed.target_seq == i].tolist() == targets
        assert packed.input_ids.view(-1)[packed.last_index[i]] == s.input_ids[-1]
    assert set(batch["values"]) == {"oracle_chosen", "oracle_rejected"}
    assert batch["values"]["oracle_chosen"].tolist() == [0.0, 1.0, 2.0]
    assert batch["values"]["oracle_rejected"].tolist() == [-0.5, -1.5, -2.5]
    assert batch["values"]["oracle_chosen"].dtype == torch.float32

    single = collate(exs, pad, paired=False, budget=1000)["packed"]
    assert single.n_seqs == 3 and single.input_ids.shape[0] == 1
    for i, (c, _) in enumerate(seqs):  # each sequence whole in its row, positions from 0
        slots = single.group[0] == i
        assert single.input_ids[0, slots].tolist() == c.input_ids
        assert single.position_ids[0, slots].tolist() == list(range(len(c.input_ids)))
    assert collate([Example([seqs[0][0]])], pad, paired=False)["values"] == {}


def _saved_bytes_training(model, cfg, tok, pairs) -> tuple[int, list]:
    """Train; the bytes autograd saved for backward outside checkpointed regions (what
    checkpointing frees: it saves a layer's input and recomputes the rest in backward)."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        history = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), cfg, tok.pad_token_id)
    return saved[0], history


def test_gradient_checkpointing_changes_memory_not_results(tok, pairs, uninterrupted):
    ref_model, ref_history = uninterrupted
    model = _student(tok)
    checkpointed, history = _saved_bytes_training(model, dataclasses.replace(CFG, gradient_checkpointing=True),
                                                  tok, pairs)
    _assert_same_params(ref_model, model)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=1e-6)
    plain, _ = _saved_bytes_training(_student(tok), CFG, tok, pairs)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)
    assert not getattr(model.lm, "is_activation_checkpointing", None)  # off again for evaluation and saving


def test_bf16_autocasts_over_fp32_master_weights(tok, pairs):
    """The weights (and so AdamW's states, made in their dtype) stay fp32, and the forward runs in
    bf16: the first step's loss, from the same weights and batch, is not fp32's but close to it."""
    cfg = dataclasses.replace(CFG, max_steps=2)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        model = _student(tok)
        runs[dtype] = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), dataclasses.replace(cfg, dtype=dtype),
                            tok.pad_token_id)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    bf16, fp32 = runs["bfloat16"][0]["loss"], runs["float32"][0]["loss"]
    assert len(runs["bfloat16"]) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in runs["bfloat16"])
    assert bf16 != pytest.approx(fp32, rel=1e-6) and bf16 == pytest.approx(fp32, rel=2e-2)


def test_float64_run_logs_unrounded_losses(tok, pairs):
    # bench/dpo_vs_trl.py --dtype float64 compares losses below float32's resolution
    torch.set_default_dtype(torch.float64)
    try:
        model = _student(tok).to(torch.float64)
        history = train(model, pairs, objectives.build("drdo", DRDO_PARAMS), dataclasses.replace(CFG, max_steps=2),
                        tok.pad_token_id)
    finally:
        torch.set_default_dtype(torch.float32)
    for h in history:
        for k in ("loss", "distill", "logp_chosen"):
            assert h[k] != float(torch.tensor(h[k], dtype=torch.float32)), (k, h[k])
