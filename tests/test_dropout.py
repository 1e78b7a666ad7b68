"""The dropout used for training on CPU (app/training/dropout.py): the same Bernoulli keep-mask as nn.Dropout,
seeded by torch's generator, swapped in for a model's dropouts on CPU only and for the run only."""

import pytest
import torch

from app.training.dropout import CheapDropout, cheap_dropout


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_keeps_one_minus_p_of_the_elements_scaled(p):
    drop = CheapDropout(p).train()
    x = torch.ones(1000, 1001)  # an odd element count: the last random word is only partly used
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.003)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # every int16 lane of the random words draws: no column pattern from a lane that never drops
    assert kept.view(-1)[: 4 * 250_000].view(-1, 4).float().mean(0).sub(1 - p).abs().max() < 0.005


def test_is_seeded_passes_gradients_and_is_the_identity_in_eval():
    drop = CheapDropout(0.1).train()
    x = torch.randn(64, 384, requires_grad=True)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    b = drop(x)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() / 0.9)
    assert drop.eval()(x) is x


def test_a_lora_input_under_bf16_autocast_comes_out_in_the_matmuls_dtype():
    drop = CheapDropout(0.1, autocast_input=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop(torch.randn(8, 16)).dtype == torch.bfloat16
        assert CheapDropout(0.1).train()(torch.randn(8, 16)).dtype == torch.float32  # hidden states keep theirs
    assert drop(torch.randn(8, 16)).dtype == torch.float32


def test_swapped_on_cpu_only_for_the_block_and_put_back_after(tiny_models):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    def model(dropout):
        path = tiny_models["tiny-bert"]  # built without dropout: given the usual 0.1 on hidden states here
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, hidden_dropout_prob=0.1)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_dropout=dropout, target_modules="all-linear")
        return get_peft_model(base, config).train()

    def dropouts(m):  # every dropout that drops something
        kinds = torch.nn.Dropout | CheapDropout
        return {name: type(d) for name, d in m.named_modules() if isinstance(d, kinds) and d.p > 0}

    with cheap_dropout(model(0.1), "cuda") as swapped:
        assert swapped == 0
    cpu = model(0.1)
    before = dropouts(cpu)
    lora = [name for name in before if "lora_dropout" in name]
    with cheap_dropout(cpu, "cpu") as swapped:
        inside = dropouts(cpu)
        assert swapped == len(before) > len(lora) > 0 and set(inside.values()) == {CheapDropout}
        assert all(cpu.get_submodule(name).autocast_input == ("lora_dropout" in name) for name in inside)
        assert all(cpu.get_submodule(name).training for name in inside)
    assert dropouts(cpu) == before and set(before.values()) == {torch.nn.Dropout}
    with cheap_dropout(cpu, "cpu", lora_only=True) as swapped:
        assert swapped == len(lora)
    with cheap_dropout(model(0.0), "cpu", lora_only=True) as swapped:
        assert swapped == 0  # no LoRA dropout: peft's Identity stays
