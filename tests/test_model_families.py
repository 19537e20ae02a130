"""Families whose forward transforms the LM head's logits (Granite and MiniCPM3 divide them,
Cohere and HyperCLOVAX scale them, Gemma 2/3 cap them softly): the packed, response-only
log-probs equal the model's own forward's. Any other transform is refused, and so are sequences
longer than a sliding attention window the packed mask does not apply, and decoders that packing
would score wrongly (a state carried from token to token, ALiBi).

Tiny random configs of the installed transformers (no hub), weights drawn large enough that the
logits are far from uniform and a missed transform shows.
"""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from drdo import logits, packing
from drdo.batching import Encoded, pad_batch
from drdo.modeling import LMWithRewardHead, response_logps
from drdo.packing import PackedForward, pack

SMALL = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
         "initializer_range": 0.3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
FAMILIES = {  # model_type: what makes its logits differ from the LM head's output
    "granite": {"logits_scaling": 8.0},
    "granitemoe": {"logits_scaling": 8.0, "num_local_experts": 2, "num_experts_per_tok": 1},
    "minicpm3": {"dim_model_base": 8, "num_key_value_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 16,  # scaling 32/8
                 "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8},
    "hyperclovax": {"logits_scaling": 0.25},
    "cohere": {"logit_scale": 0.0625},
    "cohere2": {"logit_scale": 0.0625},
    "gemma2": {"final_logit_softcapping": 2.0, "head_dim": 8},
    "gemma3_text": {"final_logit_softcapping": 2.0, "head_dim": 8},
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _tiny(model_type: str, **extra):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**SMALL, **extra})).eval()


def _groups(seed=0):
    """A pair sharing a prompt and one sequence alone, of random tokens."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(3, SMALL["vocab_size"], (n,), generator=g).tolist()  # noqa: E731
    prompt = rnd(6)
    return [[Encoded(prompt + rnd(4), [0] * 6 + [1] * 4), Encoded(prompt + rnd(3), [0] * 6 + [1] * 3)],
            [Encoded(rnd(3) + rnd(5), [0] * 3 + [1] * 5)]]


def _own_logps(model, seqs):
    """The model's own forward on padded rows: its logits, log-softmax, response tokens."""
    b = pad_batch(seqs, 0)
    return response_logps(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                          b["input_ids"], b["loss_mask"])[0]


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_packed_logps_equal_the_models_own_forward(model_type):
    model = _tiny(model_type, **FAMILIES[model_type])
    groups = _groups()
    with torch.no_grad():
        ref = _own_logps(model, [s for g in groups for s in g])
        logp, _ = PackedForward(model)(pack(groups, 0), logps=True)
        logp_rm, _ = PackedForward(LMWithRewardHead(model))(pack(groups, 0, share_prefix=False), logps=True)
    torch.testing.assert_close(logp, ref, **TOL)
    torch.testing.assert_close(logp_rm, ref, **TOL)


def test_check_accepts_a_bfloat16_model():
    """The forward transforms in bf16, we in fp32: within the check's bf16 tolerance."""
    for model_type in ("granite", "gemma2", "cohere"):
        logits.check_lm_logits(_tiny(model_type, **FAMILIES[model_type]).to(torch.bfloat16))


class _ScaledLlama(LlamaForCausalLM):
    """A family unknown to drdo: its forward doubles the logits."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unknown_logit_transform_is_refused(dtype):
    torch.manual_seed(0)
    config = LlamaConfig(**SMALL)
    model = _ScaledLlama(config).eval().to(dtype)
    with torch.no_grad(), pytest.raises(ValueError, match="transforms the LM head's logits"):
        PackedForward(model)(pack(_groups(), 0), logps=True)
    plain = LlamaForCausalLM(config).eval().to(dtype)
    with torch.no_grad():
        PackedForward(plain)(pack(_groups(), 0), logps=True)  # the same architecture without: accepted
    assert plain in logits._checked  # checked once per model


def test_a_real_family_not_handled_is_refused():
    """Falcon-H1 multiplies its logits by lm_head_multiplier, which drdo does not apply (and its Mamba
    layers would not honour a packed mask anyway)."""
    model = _tiny("falcon_h1", lm_head_multiplier=0.5)
    with pytest.raises(ValueError, match="falcon_h1"):
        logits.check_lm_logits(model)


def test_sequences_longer_than_a_sliding_window_are_refused():
    """Transformers hands a 4D mask to sliding layers as it is: the window would not apply."""
    groups = _groups()  # sequences of 8 to 10 tokens
    short = _tiny("mistral", sliding_window=4)
    with torch.no_grad(), pytest.raises(ValueError, match="sliding attention window of 4"):
        PackedForward(short)(pack(groups, 0), logps=True)
    wide = _tiny("mistral", sliding_window=16)
    with torch.no_grad():
        torch.testing.assert_close(PackedForward(wide)(pack(groups, 0), logps=True)[0],
                                   _own_logps(wide, [s for g in groups for s in g]), **TOL)
        # the refusal is needed: with a window of 4 the model's own forward gives other log-probs
        assert not torch.allclose(_own_logps(short, [s for g in groups for s in g]),
                                  _own_logps(wide, [s for g in groups for s in g]), **TOL)


UNPACKABLE = {  # model_type: config, what the refusal names
    "lfm2": ({"layer_types": ["conv", "full_attention"]}, r"state from token to token \(conv, layers\.0\.conv\.conv\)"),
    "nemotron_h": ({}, r"state from token to token \(linear_attention, layers\.0\.mixer\.conv1d\)"),
    "rwkv": ({}, r"state from token to token \(rwkv\)"),
    "mamba": ({}, "state from token to token"),
    "mpt": ({}, "ALiBi"),
}


@pytest.mark.parametrize("model_type", list(UNPACKABLE))
def test_decoders_packing_would_score_wrongly_are_refused(model_type):
    """State-space, convolution and recurrent layers carry a state from one packed sequence into
    the next; ALiBi biases by the place in the row. Where such a model runs through packing
    unchecked, its log-probs differ from its own forward's (mamba crashes instead)."""
    config, named = UNPACKABLE[model_type]
    model = _tiny(model_type, **config)
    groups = _groups()
    with torch.no_grad(), pytest.raises(ValueError, match=named):
        PackedForward(model)(pack(groups, 0), logps=True)
    if model_type != "mamba":
        packing._packable.add(model)  # the check skipped: the refusal is needed
        with torch.no_grad():
            packed = PackedForward(model)(pack(groups, 0), logps=True)[0]
            assert not torch.allclose(packed, _own_logps(model, [s for g in groups for s in g]), **TOL)
