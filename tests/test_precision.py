"""The precision contract (``drdo.trainer``'s docstring) on one process.

Frozen bf16 models (reference and teacher tables, generation, Oracle scores) keep the buffer
dtypes ``from_pretrained`` gives them and compute the log-probs training computes; a bf16
training job evaluates under training's autocast and saves its weights in ``train.save_dtype``.
The same contract on 2-rank DDP and ZeRO-2: ``test_distributed.py``.
"""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from precision_support import validation_under
from drdo import generation, io, scoring
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.cli import main
from drdo.modeling import HEAD_FILE, LMWithRewardHead, load_causal_lm
from drdo.trainer import TrainConfig, deepspeed_config

POSTS = [f"post {i}: my {w} broke again and again" for i, w in enumerate(
    ["car", "phone", "bike", "laptop", "door", "kettle", "watch", "lamp"])]
WORDS = ["it works now", "nothing broken", "fixed", "broken"]
# A Llama that can see position 2,000. Its queries and keys are scaled up (std 0.3) so that
# attention is sharp and depends on relative position: with the default init (std 0.02)
# attention is nearly uniform and a wrong rotary encoding barely shows in the log-probs.
LONG_ARCH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "initializer_range": 0.05}
LENGTHS = {"max_length": 64, "max_prompt_length": 48, "chat_template": False}


@pytest.fixture(scope="module")
def frozen_dir(tmp_path_factory):
    """A reward model (LM + head) with a long context, and the stage inputs that use it."""
    d = tmp_path_factory.mktemp("frozen")
    tok = train_tokenizer(POSTS + WORDS, vocab_size=300)
    lm = tiny_llama(tok, LONG_ARCH, seed=0)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(0.3 / LONG_ARCH["initializer_range"])
    LMWithRewardHead(lm, head_seed=0).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    io.write_parquet(pd.DataFrame({"pair_id": ["p0", "p1"], "prompt": POSTS[:2], "chosen": WORDS[:2],
                                   "rejected": WORDS[2:], "document": POSTS[:2]}), d / "pairs.parquet", {})
    io.write_parquet(pd.DataFrame({"eval_set": "tldr", "prompt_id": ["a", "b"], "prompt": POSTS[2:4],
                                   "reference": WORDS[:2], "document": POSTS[2:4]}), d / "prompts.parquet", {})
    return d


def _stage_args(stage: str, d) -> list[str]:
    params = {**LENGTHS, "batch_size": 4, "dtype": "bfloat16"}
    model, out = str(d / "model"), str(d / f"{stage}.out")
    if stage in ("table-logp", "table-reward"):
        return ["table", "--params", json.dumps(params), "--pairs", str(d / "pairs.parquet"),
                "--model", f"m={model}", "--value", stage.split("-")[1], "--out", out]
    if stage == "score":
        return ["score", "--params", json.dumps(params), "--prompts", str(d / "prompts.parquet"), "--oracle", model,
                "--policy", "sft", "--split", "all", "--out", out]
    params |= {"temperatures": [0.7], "top_p": 0.9, "max_new_tokens": 4, "seed": 0}
    return ["generate", "--params", json.dumps(params), "--policy", model, "--prompts", str(d / "prompts.parquet"),
            "--out", out]


def _frozen_model(monkeypatch, stage: str, d):
    """Run ``stage`` with dtype bfloat16; return the model it computed with."""
    seen = []
    for module, name in ((scoring, "score_pairs"), (scoring, "score"), (generation, "generate")):
        def spy(model, *args, _real=getattr(module, name), **kwargs):
            seen.append(model)
            return _real(model, *args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    main(_stage_args(stage, d))
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("stage", ["table-logp", "table-reward", "score", "generate"])
def test_frozen_bf16_models_keep_from_pretrained_buffers(frozen_dir, monkeypatch, stage):
    model = _frozen_model(monkeypatch, stage, frozen_dir)
    lm = getattr(model, "lm", model)
    loaded = AutoModelForCausalLM.from_pretrained(str(frozen_dir / "model"), dtype=torch.bfloat16)
    expected = {name: b.dtype for name, b in loaded.named_buffers() if b.is_floating_point()}
    assert "model.rotary_emb.inv_freq" in expected  # the buffers in question exist
    assert {name: b.dtype for name, b in lm.named_buffers() if b.is_floating_point()} == expected
    assert expected["model.rotary_emb.inv_freq"] == torch.float32
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    if model is not lm:  # the reward head stays fp32 (LMWithRewardHead.reward)
        assert {p.dtype for p in model.head.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def _token_logps(model, ids: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    return torch.gather(F.log_softmax(logits[0, :-1].float(), -1), 1, ids[0, 1:, None])[:, 0]


def test_frozen_bf16_logps_at_late_positions_match_training(frozen_dir, monkeypatch):
    """The reference table's model against training's forward (bf16 autocast over fp32 weights)
    at positions 1,500-2,000. The two round differently (pure bf16 weights and residual stream
    against fp32 weights with bf16 matmuls), so they agree only to bf16 rounding: the tolerance
    is 3x the size of that rounding at the same positions, measured as the mean gap between
    training's forward and the same fp32 model without autocast. Measured: ~1.4x with the
    rotary frequencies in fp32, ~12x when they are rounded to bf16 (``model.to(bfloat16)``)."""
    frozen = _frozen_model(monkeypatch, "table-logp", frozen_dir)
    trained = load_causal_lm(frozen_dir / "model", dropout=False).eval()  # fp32, as cmd_train loads it
    ids = torch.randint(3, trained.config.vocab_size, (1, 2001), generator=torch.Generator().manual_seed(1))
    late = slice(1500, 2000)
    train_lp = _token_logps(trained, ids, autocast=True)[late]
    rounding = (train_lp - _token_logps(trained, ids, autocast=False)[late]).abs().mean()
    gap = (_token_logps(frozen, ids, autocast=False)[late] - train_lp).abs().mean()
    assert rounding > 0
    assert gap <= 3 * rounding, f"frozen bf16 log-probs off by {gap:.4f} per token, bf16 rounding {rounding:.4f}"


# ------------------------------------------------------------------------------ training
TRAIN_ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "max_position_embeddings": 64}
DRDO = {"lr": 1e-3, "batch_size": 4, "grad_accum": 1, "max_steps": 2, "warmup_steps": 1, "weight_decay": 0.01,
        "max_grad_norm": 1.0, "seed": 0, "dtype": "bfloat16", "max_length": 48,
        "max_prompt_length": 32, "eval_batch_size": 8, "alpha": 0.1, "gamma": 2.0, "student_reward": "head",
        "teacher": "oracle", "logp_agg": "sum", "head_seed": 0}


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tok = train_tokenizer(POSTS + WORDS, vocab_size=300)
    tiny_llama(tok, TRAIN_ARCH, seed=0).save_pretrained(d / "init")
    tok.save_pretrained(d / "init")
    pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(8)], "prompt": POSTS, "chosen": WORDS[0],
                          "rejected": WORDS[1], "split": ["train"] * 4 + ["validation"] * 4})
    io.write_parquet(pairs, d / "pairs.parquet", {})
    io.write_parquet(pairs[["pair_id"]].assign(oracle_chosen=[0.1 * i for i in range(8)], oracle_rejected=-0.3),
                     d / "oracle.parquet", {})
    return d


def _train(d, name: str, **params):
    out = d / name
    main(["train", "--objective", "drdo", "--params", json.dumps({**DRDO, **params}), "--init", str(d / "init"),
          "--data", str(d / "pairs.parquet"), "--tables", str(d / "oracle.parquet"), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def bf16_run(train_inputs):
    """A bf16 DRDO job, saved in float32 (train.save_dtype's default)."""
    return _train(train_inputs, "bf16-eval")


def test_bf16_job_evaluates_under_training_autocast(train_inputs, bf16_run):
    """The manifest's validation metrics are those of training's forward (bf16 autocast over the
    fp32 weights), recomputed from the saved weights; not those of an fp32 forward."""
    out = bf16_run
    val = io.read_provenance(out)["validation"]
    args = (out, train_inputs / "pairs.parquet", train_inputs / "oracle.parquet", DRDO)
    assert val == pytest.approx(validation_under(*args, autocast=True), rel=1e-6, abs=1e-7)
    assert val["loss"] != pytest.approx(validation_under(*args, autocast=False)["loss"], rel=1e-6)


def test_save_dtype_sets_the_checkpoint_dtype_and_the_manifest_records_it(train_inputs, bf16_run):
    fp32, bf16 = bf16_run, _train(train_inputs, "bf16-save", save_dtype="bfloat16")
    w32, w16 = load_file(fp32 / "model.safetensors"), load_file(bf16 / "model.safetensors")
    assert {t.dtype for t in w32.values()} == {torch.float32} and {t.dtype for t in w16.values()} == {torch.bfloat16}
    for k in w32:  # the same run, its fp32 master weights rounded once
        assert torch.equal(w16[k], w32[k].to(torch.bfloat16)), k
    h32, h16 = load_file(fp32 / HEAD_FILE), load_file(bf16 / HEAD_FILE)  # the reward head is saved in fp32
    assert all(h16[k].dtype == torch.float32 and torch.equal(h16[k], h32[k]) for k in h32)
    assert io.read_provenance(fp32)["save_dtype"] == "float32"
    assert io.read_provenance(bf16)["save_dtype"] == "bfloat16"
    assert io.read_provenance(bf16)["validation"] == io.read_provenance(fp32)["validation"]  # evaluated before the cast
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"


def test_deepspeed_config_follows_the_contract():
    cfg = TrainConfig(lr=1e-3, batch_size=4, grad_accum=2, dtype="bfloat16", deepspeed={"zero_optimization": {"stage": 2}})
    ds = deepspeed_config(cfg, world=2)
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}  # no bf16 module, no bf16 masters
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert ds["communication_data_type"] == "fp32" and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["zero_optimization"] == {"stage": 2}
    assert not deepspeed_config(TrainConfig(lr=1e-3, batch_size=4, deepspeed={}), 2)["torch_autocast"]["enabled"]
    with pytest.raises(ValueError, match=r"train.deepspeed.*\['bf16'\].*train.dtype"):
        deepspeed_config(TrainConfig(lr=1e-3, batch_size=4, deepspeed={"bf16": {"enabled": True}}), 2)


def test_reward_head_computes_in_fp32_outside_autocast():
    """A reward is a large common offset plus a small spread between responses, so a bf16 output
    (3 significant digits) rounds away what distinguishes them: the head stays fp32 on a bf16 trunk
    and under autocast, and its output is the fp32 head applied to the trunk's hidden state."""
    lm = LlamaForCausalLM(LlamaConfig(**TRAIN_ARCH, vocab_size=64)).to(torch.bfloat16)
    model = LMWithRewardHead(lm, head_seed=0)
    assert {p.dtype for p in model.head.parameters()} == {torch.float32}
    hidden = (torch.randn(5, TRAIN_ARCH["hidden_size"], generator=torch.Generator().manual_seed(0)) + 40).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reward = model.reward(hidden)
    assert reward.dtype == torch.float32
    exact = hidden.double() @ model.head.weight.double()[0] + model.head.bias.double()
    assert torch.allclose(reward.double(), exact, rtol=0, atol=1e-4)
    assert not torch.allclose(reward.to(torch.bfloat16).double(), exact, rtol=0, atol=1e-4)  # what bf16 output loses
