"""The LoRA input dropout used on CPU (app/training/dropout.py): the same Bernoulli keep-mask as nn.Dropout,
seeded by torch's generator, and swapped in for peft's dropouts on CPU only."""

import pytest
import torch

from app.training.dropout import LoraInputDropout, use_cheap_dropout


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_keeps_one_minus_p_of_the_elements_scaled(p):
    drop = LoraInputDropout(p).train()
    x = torch.ones(1000, 1001)  # an odd element count: the last random word is only partly used
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.003)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # every int16 lane of the random words draws: no column pattern from a lane that never drops
    assert kept.view(-1)[: 4 * 250_000].view(-1, 4).float().mean(0).sub(1 - p).abs().max() < 0.005


def test_is_seeded_passes_gradients_and_is_the_identity_in_eval():
    drop = LoraInputDropout(0.1).train()
    x = torch.randn(64, 384, requires_grad=True)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    b = drop(x)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() / 0.9)
    assert drop.eval()(x) is x


def test_bf16_under_autocast_hands_the_matmul_its_dtype():
    drop = LoraInputDropout(0.1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop(torch.randn(8, 16)).dtype == torch.bfloat16
    assert drop(torch.randn(8, 16)).dtype == torch.float32


def test_swapped_for_peft_dropouts_on_cpu_only(tiny_models):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    def model(dropout):
        base = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-bert"], num_labels=2)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_dropout=dropout, target_modules="all-linear")
        return get_peft_model(base, config)

    assert use_cheap_dropout(model(0.1), "cuda") == 0
    cpu = model(0.1)
    swapped = use_cheap_dropout(cpu, "cpu")
    assert swapped > 0 and not any(type(m) is torch.nn.Dropout and m.p == 0.1 for m in cpu.modules())
    assert use_cheap_dropout(model(0.0), "cpu") == 0  # no dropout: peft's Identity stays
