"""The lean training forwards (``drdo.lean_layers``): the gradients of the model's own forwards,
fewer bytes kept for backward, swapped in only where they reproduce a module, and put back."""

import contextlib

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from drdo.lean_layers import MIN_WIDTH, lean_training

WIDE = {"hidden_size": MIN_WIDTH, "intermediate_size": 2 * MIN_WIDTH, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 64}


def _llama(**arch) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**WIDE, **arch})).train()


def _grads(model, ids, lean: bool, autocast=None):
    model.zero_grad(set_to_none=True)
    with lean_training(model) if lean else contextlib.nullcontext(), \
            torch.autocast("cpu", autocast) if autocast else contextlib.nullcontext():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


IDS = torch.randint(3, 300, (3, 24), generator=torch.Generator().manual_seed(1))


def test_lean_forwards_give_the_models_own_loss_and_gradients():
    model = _llama()
    loss, own = _grads(model, IDS, lean=False)
    lean_loss, lean = _grads(model, IDS, lean=True)
    assert torch.equal(lean_loss, loss)
    for k in own:  # only the order in which a norm's input gradients add up differs
        torch.testing.assert_close(lean[k], own[k], rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")


def test_the_mlps_gradients_are_autograds_own_operations():
    mlp = _llama().model.layers[0].mlp
    x = torch.randn(2, 5, MIN_WIDTH, generator=torch.Generator().manual_seed(2))
    grads = []
    for lean in (False, True):
        xi = x.clone().requires_grad_(True)
        with lean_training(mlp) if lean else contextlib.nullcontext():
            out = mlp(xi)
            grads.append(torch.autograd.grad(out, [xi, *mlp.parameters()], torch.ones_like(out)))
    for own, lean in zip(*grads):
        assert torch.equal(lean, own)


def test_bf16_autocast_stays_within_its_own_rounding():
    """Under bf16 autocast the lean gradients differ from the model's own by far less than bf16
    itself moves them from fp32 (measured on SmolLM2: 0.6% against 5.6%)."""
    model = _llama()
    _, fp32 = _grads(model, IDS, lean=False)
    _, own = _grads(model, IDS, lean=False, autocast=torch.bfloat16)
    _, lean = _grads(model, IDS, lean=True, autocast=torch.bfloat16)
    flat = lambda g: torch.cat([t.flatten().float() for t in g.values()])  # noqa: E731
    bf16_error = (flat(own) - flat(fp32)).norm()
    assert (flat(lean) - flat(own)).norm() < 0.25 * bf16_error
    assert bf16_error > 0  # autocast did run in bf16


def _saved_bytes(model, ids, lean: bool) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with lean_training(model) if lean else contextlib.nullcontext(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss
    return sum(storages.values())


def test_fewer_activation_bytes_are_kept_for_backward():
    model, ids = _llama(), IDS
    own, lean = _saved_bytes(model, ids, False), _saved_bytes(model, ids, True)
    tokens, layers, width, inter = ids.numel(), WIDE["num_hidden_layers"], WIDE["hidden_size"], WIDE["intermediate_size"]
    # per layer and token: silu(gate) and its product with up (2 x intermediate), and a norm's
    # normalised output (2 norms x width); the final norm's too
    expected = 4 * tokens * (layers * (2 * inter + 2 * width) + width)
    assert own - lean == pytest.approx(expected, rel=0.05)


class DoubledMLP(LlamaMLP):
    def forward(self, x):
        return 2 * super().forward(x)


def test_only_modules_the_lean_forward_reproduces_are_swapped():
    model = _llama()
    layer = model.model.layers[0]
    doubled = DoubledMLP(model.config)
    doubled.load_state_dict(layer.mlp.state_dict())
    layer.mlp = doubled
    gelu = _llama(hidden_act="gelu").model.layers[0].mlp
    model.model.layers[1].mlp = gelu
    with lean_training(model) as swapped:
        assert "forward" not in doubled.__dict__ and "forward" not in gelu.__dict__
        assert swapped == 2 * 2 + 1  # the norms only: two per layer and the final one
    narrow = _llama(hidden_size=64, intermediate_size=128)
    with lean_training(narrow) as swapped:
        assert swapped == 0  # below MIN_WIDTH: activations are small, recomputing costs a share of the step


def test_own_forwards_come_back_and_a_forward_replaced_meanwhile_stays():
    model = _llama()
    norm = model.model.norm
    with lean_training(model) as swapped:
        assert swapped == 2 * 3 + 1 and "forward" in norm.__dict__
        replaced = norm.forward = lambda x: x  # what transformers' hub kernels may do on train()
    assert not any("forward" in m.__dict__ for m in model.modules() if m is not norm)
    assert norm.forward is replaced
