"""Fast unit tests of multi-adapter serving: peft state -> LoraWeights, and per-row routed LoRA slots checked
against a dense reference (tiny fp32 modules, no training, no server)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from app.inference.multilora import (
    PREFIX,
    LoraWeights,
    MultiLoRALinear,
    Router,
    SlotBank,
    UnsupportedAdapter,
    parse_lora,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


def state_of(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A peft-style saved state: base_model.model.<path>.lora_A.weight / .lora_B.weight."""
    state = {}
    for path, (a, b) in pairs.items():
        state[f"{PREFIX}{path}.lora_A.weight"] = a
        state[f"{PREFIX}{path}.lora_B.weight"] = b
    return state


# ---------------------------------------------------------------- parse_lora by hand


def hand_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        "encoder.layer.0.attention.self.query": (randn(4, 6, seed=1), randn(5, 4, seed=2)),
        "encoder.layer.1.attention.self.value": (randn(2, 6, seed=3), randn(3, 2, seed=4)),
    }


@pytest.mark.parametrize(
    ("config", "scale"),
    [
        ({"r": 4, "lora_alpha": 8}, 2.0),
        ({"r": 4, "lora_alpha": 8, "use_rslora": False}, 2.0),
        ({"r": 4, "lora_alpha": 6, "use_rslora": True}, 6 / math.sqrt(4)),
        ({"r": 3, "lora_alpha": 5, "use_rslora": True}, 5 / math.sqrt(3)),
        ({"r": 3, "lora_alpha": 5}, 5 / 3),
        ({"r": 4}, 1.0),  # lora_alpha defaults to r
        # what peft itself writes for a plain LoRA: empty patterns and false flags are fine
        (
            {
                "r": 4,
                "lora_alpha": 16,
                "use_dora": False,
                "rank_pattern": {},
                "alpha_pattern": {},
                "fan_in_fan_out": False,
            },
            4.0,
        ),
    ],
)
def test_parse_lora_scales_b_and_keeps_a(config: dict, scale: float) -> None:
    pairs = hand_pairs()
    lora = parse_lora(state_of(pairs), config)
    assert isinstance(lora, LoraWeights)
    assert set(lora.pairs) == set(pairs)  # paths relative to the model, prefix and suffix stripped
    for path, (a, b) in pairs.items():
        pa, pb = lora.pairs[path]
        assert pa.dtype == pb.dtype == torch.float32
        assert torch.equal(pa, a)
        assert torch.equal(pb, b * scale)
        assert pa.shape == a.shape and pb.shape == b.shape
    assert lora.rank == 4  # the largest rank among the pairs
    assert lora.nbytes(torch.float32) == (4 * 6 + 5 * 4 + 2 * 6 + 3 * 2) * 4
    assert lora.nbytes(torch.bfloat16) == (4 * 6 + 5 * 4 + 2 * 6 + 3 * 2) * 2


def test_parse_lora_upcasts_half_weights() -> None:
    a, b = randn(2, 6, seed=1).half(), randn(3, 2, seed=2).half()
    lora = parse_lora(state_of({"m": (a, b)}), {"r": 2, "lora_alpha": 4})
    pa, pb = lora.pairs["m"]
    assert pa.dtype == pb.dtype == torch.float32
    assert torch.equal(pa, a.float()) and torch.equal(pb, b.float() * 2.0)
    assert lora.rank == 2


def test_parse_lora_keeps_paths_without_the_peft_prefix() -> None:
    a, b = randn(2, 6, seed=1), randn(3, 2, seed=2)
    lora = parse_lora({"m.lora_A.weight": a, "m.lora_B.weight": b}, {"r": 2})
    assert list(lora.pairs) == ["m"]


@pytest.mark.parametrize(
    "extra",
    [
        {"use_dora": True},
        {"rank_pattern": {"query": 8}},
        {"alpha_pattern": {"query": 32}},
    ],
)
def test_parse_lora_refuses_unsupported_configs(extra: dict) -> None:
    with pytest.raises(UnsupportedAdapter):
        parse_lora(state_of(hand_pairs()), {"r": 4, "lora_alpha": 8, **extra})


def broken_states() -> dict[str, dict[str, torch.Tensor]]:
    a, b = randn(2, 6, seed=1), randn(3, 2, seed=2)
    ok = state_of({"m": (a, b)})
    return {
        "bias": {**ok, f"{PREFIX}m.bias": randn(3, seed=3)},
        "dora magnitude": {**ok, f"{PREFIX}m.lora_magnitude_vector": randn(3, seed=3)},
        "embedding lora": {
            **ok,
            f"{PREFIX}emb.lora_embedding_A": randn(2, 10, seed=3),
            f"{PREFIX}emb.lora_embedding_B": randn(6, 2, seed=4),
        },
        "B missing": {f"{PREFIX}m.lora_A.weight": a, **state_of({"n": (a, b)})},
        "ranks differ": state_of({"m": (a, randn(3, 4, seed=5))}),
        "A is 1-D": state_of({"m": (randn(6, seed=6), b)}),
        "B is 3-D": state_of({"m": (a, randn(3, 2, 1, seed=7))}),
        "A transposed": state_of({"m": (a.T.contiguous(), b)}),
        "empty": {},
        "only a B": {f"{PREFIX}m.lora_B.weight": b},
    }


@pytest.mark.parametrize("case", list(broken_states()))
def test_parse_lora_refuses_broken_states(case: str) -> None:
    with pytest.raises(UnsupportedAdapter):
        parse_lora(broken_states()[case], {"r": 2, "lora_alpha": 4})


@pytest.mark.parametrize(
    "config",
    [{}, {"r": 0}, {"r": -2}, {"r": "2"}, {"r": 2.5}, {"r": True}, {"r": None}, {"r": 2, "lora_alpha": None},
     {"r": 2, "lora_alpha": "4"}, {"r": 2, "lora_alpha": float("nan")}],
)  # fmt: skip
def test_parse_lora_refuses_a_bad_rank_or_alpha(config: dict) -> None:
    a, b = randn(2, 6, seed=1), randn(3, 2, seed=2)
    with pytest.raises(UnsupportedAdapter, match="adapter_config.json: (r|lora_alpha)"):
        parse_lora(state_of({"m": (a, b)}), config)


def test_parse_lora_refuses_a_b_without_its_a() -> None:
    a, b = randn(2, 6, seed=1), randn(3, 2, seed=2)
    state = {**state_of({"m": (a, b)}), f"{PREFIX}n.lora_B.weight": b}
    with pytest.raises(UnsupportedAdapter):
        parse_lora(state, {"r": 2})


# ---------------------------------------------------------------- parse_lora against real peft


class Parallel(nn.Module):
    """Linear layers side by side on one input: each LoRA delta shows on its own output."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"q": nn.Linear(6, 5), "v": nn.Linear(6, 3)}) for _ in range(2)])
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"head": self.head(x)}
        for i, block in enumerate(self.blocks):
            for name, layer in block.items():
                out[f"blocks.{i}.{name}"] = layer(x)
        return out


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(x))


def peft_adapter(tmp_path: Path, model: nn.Module, targets: list[str], **lora_kw) -> tuple[nn.Module, Path]:
    """`model` wrapped by peft with random (nonzero) LoRA B weights, saved to tmp_path."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(target_modules=targets, lora_dropout=0.0, **lora_kw))
    g = gen(123)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.eval()
    peft_model.save_pretrained(tmp_path)
    return peft_model, tmp_path


def load_saved(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors"), json.loads((path / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    "lora_kw", [{"r": 4, "lora_alpha": 8}, {"r": 4, "lora_alpha": 8, "use_rslora": True}, {"r": 3, "lora_alpha": 5}]
)
def test_parse_lora_matches_peft_deltas(tmp_path: Path, lora_kw: dict) -> None:
    torch.manual_seed(0)
    peft_model, path = peft_adapter(tmp_path, Parallel(), ["q", "v"], **lora_kw)
    state, config = load_saved(path)
    lora = parse_lora(state, config)
    assert set(lora.pairs) == {"blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"}
    assert lora.rank == lora_kw["r"]
    x = randn(7, 6, seed=9)
    with torch.no_grad():
        tuned = peft_model(x)
        with peft_model.disable_adapter():
            base = peft_model(x)
    assert torch.equal(tuned["head"], base["head"])  # untargeted
    for path_, (a, b) in lora.pairs.items():
        delta = tuned[path_] - base[path_]
        assert delta.abs().max() > 1e-2  # the adapter really changes this layer
        torch.testing.assert_close(x @ a.T @ b.T, delta, **TOL)


def test_peft_adapter_through_a_slot_bank_matches_peft(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = Chain()
    served = copy.deepcopy(plain)
    peft_model, path = peft_adapter(tmp_path, plain, ["enc.0", "out"], r=4, lora_alpha=8)
    lora = parse_lora(*load_saved(path))
    assert set(lora.pairs) == {"enc.0", "out"}
    bank = SlotBank(served, max_slots=2)
    slot = bank.add(lora)
    x = randn(5, 6, seed=4)
    with torch.no_grad():
        expected = peft_model(x)
        with peft_model.disable_adapter():
            base = peft_model(x)
        with bank.routed([slot] * 5):
            got = served(x)
        with bank.routed([slot, 1, slot, 1, 1]):  # mixed with an empty slot: base rows
            mixed = served(x)
        outside = served(x)
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(mixed[[0, 2]], expected[[0, 2]], **TOL)
    torch.testing.assert_close(mixed[[1, 3, 4]], base[[1, 3, 4]], **TOL)
    torch.testing.assert_close(outside, base, **TOL)


class Gpt2Like(nn.Module):
    """GPT-2's layer type: transformers' Conv1D (weight stored [in, out]; peft wraps it with fan_in_fan_out)."""

    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.c_attn, self.c_proj = Conv1D(9, 6), Conv1D(6, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.tanh(self.c_attn(x)))


def test_conv1d_layers_through_a_slot_bank_match_peft(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = Gpt2Like()
    served = copy.deepcopy(plain)
    peft_model, path = peft_adapter(tmp_path, plain, ["c_attn", "c_proj"], r=4, lora_alpha=8, fan_in_fan_out=True)
    state, config = load_saved(path)
    assert config["fan_in_fan_out"] is True
    bank = SlotBank(served, max_slots=2)
    slot = bank.add(parse_lora(state, config))
    x = randn(3, 5, 6, seed=4)  # [batch, seq, features], as in a transformer
    with torch.no_grad():
        expected = peft_model(x)
        with peft_model.disable_adapter():
            base = peft_model(x)
        with bank.routed([slot] * 3):
            got = served(x)
        with bank.routed([slot, 1, slot]):  # mixed with an empty slot: base rows
            mixed = served(x)
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(mixed[[0, 2]], expected[[0, 2]], **TOL)
    torch.testing.assert_close(mixed[1], base[1], **TOL)


class TwoPartHead(nn.Module):
    """A RoBERTa/ModernBERT-style task head on a frozen body: dense -> tanh -> LayerNorm -> logits, read at
    position 0 of [batch, seq, hidden] features."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.body = nn.Linear(6, 6)
        self.head = nn.ModuleDict({"dense": nn.Linear(6, 6), "norm": nn.LayerNorm(6)})
        self.classifier = nn.Linear(6, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)[:, 0]
        return self.classifier(self.head["norm"](torch.tanh(self.head["dense"](h))))


def head_state(model: TwoPartHead) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("body.")}


def test_each_row_goes_through_its_own_head() -> None:
    torch.manual_seed(0)
    tasks = [TwoPartHead(2), TwoPartHead(3), TwoPartHead(2)]
    for t in tasks[1:]:
        t.body.load_state_dict(tasks[0].body.state_dict())  # one shared body, three heads
        with torch.no_grad():
            t.head["norm"].weight.normal_()  # a LayerNorm scale that is not all ones
    served = copy.deepcopy(tasks[0])
    bank = SlotBank(served, max_slots=4, heads=["head", "classifier"])
    assert set(bank.heads) == {"head.dense", "head.norm", "classifier"} and bank.logits == "classifier"
    slots = [bank.add(LoraWeights({}, 0), head_state(t)) for t in tasks]
    x = randn(5, 4, 6, seed=3)
    with torch.no_grad():
        expected = [t(x) for t in tasks]
        with bank.routed([slots[1]] * 5):  # one adapter: 3 labels wide
            one = served(x)
        row_slots = [slots[0], slots[1], slots[2], slots[1], slots[0]]
        with bank.routed(row_slots):
            mixed = served(x)
    torch.testing.assert_close(one[:, :3], expected[1], **TOL)
    assert mixed.shape == (5, 3)  # as wide as the widest head
    for i, s in enumerate(row_slots):
        n = expected[s].shape[1]
        torch.testing.assert_close(mixed[i, :n], expected[s][i], **TOL)
    # a removed head leaves nothing behind in its slot
    bank.remove(slots[1])
    assert all(not layer.weight[slots[1]].any() for layer in bank.heads.values())


def test_a_head_that_does_not_fit_is_refused_before_anything_changes() -> None:
    torch.manual_seed(0)
    served = TwoPartHead(2)
    bank = SlotBank(served, max_slots=4, heads=["head", "classifier"])
    good = head_state(TwoPartHead(2))
    cases = {
        "missing part": {k: v for k, v in good.items() if not k.startswith("head.norm")},
        "wrong width": {**good, "head.dense.weight": randn(6, 5, seed=1)},
        "unknown module": {**good, "other.weight": randn(2, 6, seed=1)},
        "no bias": {k: v for k, v in good.items() if k != "classifier.bias"},
    }
    for case, state in cases.items():
        with pytest.raises(UnsupportedAdapter):
            bank.add(LoraWeights({}, 0), state)
        assert bank.capacity == 0 and bank.free == [], case


# ---------------------------------------------------------------- SlotBank against a dense reference


def lora_for(spec: dict[str, int], seed: int, shapes: dict[str, tuple[int, int]]) -> LoraWeights:
    """Hand-made LoraWeights: path -> rank, with A [r, in], B·scale [out, r]."""
    pairs = {}
    for k, (path, r) in enumerate(spec.items()):
        out_f, in_f = shapes[path]
        pairs[path] = (randn(r, in_f, seed=seed + 2 * k), randn(out_f, r, seed=seed + 2 * k + 1) * 0.5)
    return LoraWeights(pairs, max(spec.values()))


CHAIN_SHAPES = {"enc.0": (5, 6), "out": (3, 5)}


def reference(base: Chain, x: torch.Tensor, lora: LoraWeights | None) -> torch.Tensor:
    """The dense computation: each targeted Linear gives base(x) + x Aᵀ Bᵀ."""

    def lin(path: str, layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        y = layer(h)
        if lora is not None and path in lora.pairs:
            a, b = lora.pairs[path]
            y = y + h @ a.T @ b.T
        return y

    h = torch.tanh(lin("enc.0", base.enc[0], x))
    return lin("out", base.out, h)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    base = Chain()
    model = copy.deepcopy(base)
    bank = SlotBank(model, max_slots=4)
    loras = [
        lora_for({"enc.0": 2, "out": 2}, seed=10, shapes=CHAIN_SHAPES),
        lora_for({"enc.0": 4}, seed=20, shapes=CHAIN_SHAPES),
        lora_for({"out": 3}, seed=30, shapes=CHAIN_SHAPES),
    ]
    slots = [bank.add(lora) for lora in loras]
    return base, model, bank, loras, slots


def test_slots_are_handed_out_in_order_and_layers_wrapped(setup) -> None:
    base, model, bank, loras, slots = setup
    assert slots == [0, 1, 2]
    assert bank.capacity == 4 and bank.rank == 4 and bank.free == [3]
    assert set(bank.layers) == {"enc.0", "out"}
    assert isinstance(model.enc[0], MultiLoRALinear) and isinstance(model.out, MultiLoRALinear)
    assert isinstance(model.enc[1], nn.Tanh)
    assert model.enc[0].A.shape == (4, 4, 6) and model.enc[0].B.shape == (4, 5, 4)
    assert model.out.A.shape == (4, 4, 5) and model.out.B.shape == (4, 3, 4)
    # slot contents: each adapter's pair zero-padded to the bank's rank; modules it does not target are zero
    a, b = loras[0].pairs["out"]
    assert torch.equal(model.out.A[0, :2], a) and not model.out.A[0, 2:].any()
    assert torch.equal(model.out.B[0, :, :2], b) and not model.out.B[0, :, 2:].any()
    assert not model.out.A[1].any() and not model.out.B[1].any()  # adapter 1 targets enc.0 only
    assert not model.enc[0].A[2].any() and not model.enc[0].B[2].any()


@pytest.mark.parametrize("shape", [(6, 6), (3, 7, 6)])
def test_every_row_one_slot(setup, shape: tuple[int, ...]) -> None:
    base, model, bank, loras, slots = setup
    x = randn(*shape, seed=5)
    with torch.no_grad():
        for slot, lora in zip(slots, loras, strict=True):
            with bank.routed([slot] * shape[0]):
                assert bank.router.single == slot
                y = model(x)
            want = reference(base, x, lora)
            assert y.shape == want.shape == (*shape[:-1], 3)
            assert (want - reference(base, x, None)).abs().max() > 1e-2
            torch.testing.assert_close(y, want, **TOL)


@pytest.mark.parametrize("shape", [(6, 6), (6, 4, 6)])
def test_mixed_slots_in_one_batch(setup, shape: tuple[int, ...]) -> None:
    base, model, bank, loras, slots = setup
    x = randn(*shape, seed=6)
    row_slots = [1, 0, 2, 3, 1, 0]  # slot 3 is empty: base output
    with torch.no_grad():
        with bank.routed(row_slots):
            assert bank.router.single is None
            assert bank.router.rows.tolist() == row_slots
            y = model(x)
    for i, s in enumerate(row_slots):
        lora = loras[s] if s < len(loras) else None
        torch.testing.assert_close(y[i], reference(base, x[i : i + 1], lora)[0], **TOL)


def test_bank_in_another_dtype_than_the_model() -> None:
    """Slots in float64 under a float32 model: the delta is computed apart and cast back."""
    torch.manual_seed(0)
    base = Chain()
    model = copy.deepcopy(base)
    bank = SlotBank(model, max_slots=4, dtype=torch.float64)
    loras = [
        lora_for({"enc.0": 2, "out": 3}, seed=40, shapes=CHAIN_SHAPES),
        lora_for({"out": 1}, seed=50, shapes=CHAIN_SHAPES),
    ]
    slots = [bank.add(lora) for lora in loras]
    assert model.out.A.dtype == torch.float64
    x = randn(4, 2, 6, seed=7)
    with torch.no_grad():
        with bank.routed([slots[0]] * 4):
            single = model(x)
        with bank.routed([slots[1], slots[0], slots[1], 3]):
            mixed = model(x)
    assert single.dtype == mixed.dtype == torch.float32
    torch.testing.assert_close(single, reference(base, x, loras[0]), **TOL)
    for i, lora in enumerate([loras[1], loras[0], loras[1], None]):
        torch.testing.assert_close(mixed[i], reference(base, x[i : i + 1], lora)[0], **TOL)


def test_outside_routed_the_model_is_the_base(setup) -> None:
    base, model, bank, loras, slots = setup
    x = randn(4, 6, seed=8)
    with torch.no_grad():
        plain = base(x)
        assert torch.equal(model(x), plain)
        with bank.routed([0, 1, 2, 0]):
            assert not torch.allclose(model(x), plain)
        assert bank.router.rows is None and bank.router.single is None
        assert torch.equal(model(x), plain)
        with pytest.raises(KeyError), bank.routed([1, 1, 1, 1]):
            model(x)
            raise KeyError("boom")
        assert bank.router.rows is None and bank.router.single is None
        assert torch.equal(model(x), plain)


def test_remove_zeroes_the_slot_and_the_next_add_reuses_it(setup) -> None:
    base, model, bank, loras, slots = setup
    x = randn(3, 6, seed=9)
    with torch.no_grad():
        bank.remove(1)
        assert bank.free == [1, 3]
        for layer in bank.layers.values():
            assert not layer.A[1].any() and not layer.B[1].any()
        with bank.routed([1, 0, 1]):
            y = model(x)
        torch.testing.assert_close(y[[0, 2]], base(x[[0, 2]]), **TOL)
        torch.testing.assert_close(y[1], reference(base, x[1:2], loras[0])[0], **TOL)
        with bank.routed([1, 1, 1]):  # the single-slot path too
            torch.testing.assert_close(model(x), base(x), **TOL)
        # other slots are untouched
        with bank.routed([2, 2, 2]):
            torch.testing.assert_close(model(x), reference(base, x, loras[2]), **TOL)
        new = lora_for({"out": 1}, seed=60, shapes=CHAIN_SHAPES)
        assert bank.add(new) == 1
        assert bank.free == [3]
        with bank.routed([1, 1, 1]):
            torch.testing.assert_close(model(x), reference(base, x, new), **TOL)
        # the reused slot holds nothing of the removed adapter on modules the new one does not target
        assert not model.enc[0].A[1].any() and not model.enc[0].B[1].any()


def test_removing_a_slot_not_in_use_is_refused(setup) -> None:
    base, model, bank, loras, slots = setup
    bank.remove(1)
    for slot in (1, 3, 4, -1):  # removed already, never used, past the capacity, negative
        with pytest.raises(ValueError, match="not in use"):
            bank.remove(slot)
    assert bank.free == [1, 3]  # nothing handed out twice
    assert bank.add(lora_for({"out": 1}, seed=61, shapes=CHAIN_SHAPES)) == 1
    assert bank.add(lora_for({"out": 1}, seed=62, shapes=CHAIN_SHAPES)) == 3


def test_a_full_bank_refuses_another_adapter(setup) -> None:
    base, model, bank, loras, slots = setup
    assert bank.add(lora_for({"out": 1}, seed=70, shapes=CHAIN_SHAPES)) == 3
    with pytest.raises(RuntimeError, match="no free slot"):
        bank.add(lora_for({"out": 1}, seed=80, shapes=CHAIN_SHAPES))
    bank.remove(0)
    assert bank.add(lora_for({"out": 1}, seed=80, shapes=CHAIN_SHAPES)) == 0
    assert bank.capacity == 4


def test_growing_the_rank_keeps_earlier_adapters() -> None:
    torch.manual_seed(0)
    base = Chain()
    model = copy.deepcopy(base)
    bank = SlotBank(model, max_slots=3)
    small = lora_for({"enc.0": 1, "out": 2}, seed=90, shapes=CHAIN_SHAPES)
    assert bank.add(small) == 0
    assert bank.rank == 2 and bank.capacity == 3
    x = randn(5, 6, seed=10)
    with torch.no_grad():
        with bank.routed([0] * 5):
            before = model(x)
        big = lora_for({"enc.0": 6, "out": 5}, seed=100, shapes=CHAIN_SHAPES)
        assert bank.add(big) == 1
        assert bank.rank == 6
        assert model.enc[0].A.shape == (3, 6, 6) and model.out.B.shape == (3, 3, 6)
        assert not model.enc[0].A[0, 1:].any() and not model.out.B[0, :, 2:].any()  # zero padded
        with bank.routed([0] * 5):
            after = model(x)
        with bank.routed([0, 1, 0, 1, 2]):
            mixed = model(x)
    torch.testing.assert_close(after, before, **TOL)
    torch.testing.assert_close(after, reference(base, x, small), **TOL)
    for i, lora in enumerate([small, big, small, big, None]):
        torch.testing.assert_close(mixed[i], reference(base, x[i : i + 1], lora)[0], **TOL)


def test_capacity_grows_up_to_max_slots() -> None:
    model = Chain()
    bank = SlotBank(model, max_slots=20)
    slots = [bank.add(lora_for({"out": 1}, seed=s, shapes=CHAIN_SHAPES)) for s in range(9)]
    assert slots == list(range(9))
    assert bank.capacity == 16 and model.out.A.shape[0] == 16  # 8, then doubled
    slots += [bank.add(lora_for({"out": 1}, seed=s, shapes=CHAIN_SHAPES)) for s in range(9, 17)]
    assert bank.capacity == 20 and slots == list(range(17))


def snapshot(bank: SlotBank, model: nn.Module) -> tuple:
    return (
        bank.capacity,
        bank.rank,
        list(bank.free),
        sorted(bank.layers),
        [type(m).__name__ for m in model.modules()],
        {p: (layer.A.clone(), layer.B.clone()) for p, layer in bank.layers.items()},
    )


def same(s1: tuple, s2: tuple) -> bool:
    if s1[:5] != s2[:5]:
        return False
    return all(torch.equal(s1[5][p][0], s2[5][p][0]) and torch.equal(s1[5][p][1], s2[5][p][1]) for p in s1[5])


@pytest.mark.parametrize(
    "pairs",
    [
        {"out": (randn(2, 6, seed=1), randn(3, 2, seed=2))},  # in_features wrong
        {"out": (randn(2, 5, seed=1), randn(4, 2, seed=2))},  # out_features wrong
        {"enc.0": (randn(8, 6, seed=1), randn(5, 8, seed=2)), "out": (randn(2, 5, seed=1), randn(7, 2, seed=2))},
        {"enc.1": (randn(2, 5, seed=1), randn(5, 2, seed=2))},  # a Tanh, not a Linear
        {"enc.9": (randn(2, 6, seed=1), randn(5, 2, seed=2))},  # no such module
        {"nowhere.q": (randn(2, 6, seed=1), randn(5, 2, seed=2))},
    ],
)
def test_an_adapter_that_does_not_fit_leaves_the_bank_unchanged(pairs: dict) -> None:
    torch.manual_seed(0)
    base = Chain()
    model = copy.deepcopy(base)
    bank = SlotBank(model, max_slots=4)
    first = lora_for({"out": 2}, seed=110, shapes=CHAIN_SHAPES)
    bank.add(first)
    before = snapshot(bank, model)
    bad = LoraWeights(pairs, max(a.shape[0] for a, _ in pairs.values()))
    with pytest.raises(UnsupportedAdapter):
        bank.add(bad)
    assert same(snapshot(bank, model), before)
    assert isinstance(model.enc[0], nn.Linear)  # a fitting module of the refused adapter was not wrapped
    x = randn(2, 6, seed=11)
    with torch.no_grad(), bank.routed([0, 1]):
        y = model(x)
    torch.testing.assert_close(y[0], reference(base, x[:1], first)[0], **TOL)
    torch.testing.assert_close(y[1], base(x[1]), **TOL)


def test_multilora_linear_alone() -> None:
    base = nn.Linear(4, 3)
    router = Router()
    layer = MultiLoRALinear(base, router, capacity=2, rank=0, dtype=torch.float32)
    x = randn(2, 4, seed=12)
    with torch.no_grad():
        router.rows, router.single = torch.tensor([0, 1]), None
        assert torch.equal(layer(x), base(x))  # rank 0: nothing to add
        layer.resize(2, 2)
        a, b = randn(2, 4, seed=13), randn(3, 2, seed=14)
        layer.A[1], layer.B[1] = a, b
        y = layer(x)
        torch.testing.assert_close(y[0], base(x[0]), **TOL)
        torch.testing.assert_close(y[1], base(x[1]) + x[1] @ a.T @ b.T, **TOL)
        layer.resize(3, 3)  # more slots and rank: contents kept, zero padded
        assert layer.A.shape == (3, 3, 4) and layer.B.shape == (3, 3, 3)
        assert torch.equal(layer.A[1, :2], a) and torch.equal(layer.B[1, :, :2], b)
        assert not layer.A[2].any() and not layer.A[1, 2].any() and not layer.B[1, :, 2].any()
        router.rows, router.single = torch.tensor([1, 1]), 1
        torch.testing.assert_close(layer(x), base(x) + x @ a.T @ b.T, **TOL)
        router.rows = router.single = None
        assert torch.equal(layer(x), base(x))


# ---------------------------------------------------------------- a lone adapter merged into a copy of the weights


def test_a_merged_slot_gives_what_its_slot_gives_and_others_are_unchanged(setup) -> None:
    base, model, bank, loras, slots = setup
    x = randn(5, 6, seed=15)
    with torch.no_grad():
        assert bank.merge(slots[1], max_bytes=1 << 20)  # adapter 1 targets enc.0 only
        assert bank.merged == slots[1]
        assert model.enc[0].merged_weight is not None and model.out.merged_weight is None
        assert model.out.merged_slot == slots[1]
        for slot, lora in zip(slots, loras, strict=True):  # merged or not, every slot gives its own result
            with bank.routed([slot] * 5):
                torch.testing.assert_close(model(x), reference(base, x, lora), **TOL)
        with bank.routed([1, 0, 1, 2, 1]):  # a mixed batch uses the slots, the merged one included
            y = model(x)
        for i, s in enumerate([1, 0, 1, 2, 1]):
            torch.testing.assert_close(y[i], reference(base, x[i : i + 1], loras[s])[0], **TOL)
        assert torch.equal(model(x), base(x))  # outside routed: the base
        assert torch.equal(model.enc[0].base.weight, base.enc[0].weight)  # the base weight itself is untouched


def test_the_merged_path_is_the_one_taken(setup) -> None:
    """A forward of the merged slot reads the merged copy, not the slots (changing the copy shows)."""
    base, model, bank, loras, slots = setup
    x = randn(2, 6, seed=16)
    with torch.no_grad():
        assert bank.merge(slots[0], max_bytes=1 << 20)
        model.enc[0].merged_weight.zero_()
        with bank.routed([slots[0]] * 2):
            y = model(x)
        assert not torch.allclose(y, reference(base, x, loras[0]))
        with bank.routed([slots[0], slots[1]]):  # not lone: the slots
            torch.testing.assert_close(model(x)[0], reference(base, x[:1], loras[0])[0], **TOL)


def test_merging_another_slot_replaces_and_removing_the_slot_unmerges(setup) -> None:
    base, model, bank, loras, slots = setup
    x = randn(3, 6, seed=17)
    with torch.no_grad():
        assert bank.merge(slots[0], max_bytes=1 << 20)
        assert bank.merge(slots[2], max_bytes=1 << 20)
        assert bank.merged == slots[2] and all(layer.merged_slot == slots[2] for layer in bank.layers.values())
        with bank.routed([slots[0]] * 3):
            torch.testing.assert_close(model(x), reference(base, x, loras[0]), **TOL)
        bank.remove(slots[2])
        assert bank.merged is None
        assert all(layer.merged_slot is None and layer.merged_weight is None for layer in bank.layers.values())
        new = lora_for({"enc.0": 1, "out": 2}, seed=90, shapes=CHAIN_SHAPES)
        assert bank.add(new) == slots[2]
        with bank.routed([slots[2]] * 3):  # the reused slot: the new adapter, nothing stale
            torch.testing.assert_close(model(x), reference(base, x, new), **TOL)


def test_merge_is_refused_over_the_byte_bound_or_on_a_free_slot(setup) -> None:
    base, model, bank, loras, slots = setup
    need = model.enc[0].base.weight.nbytes + model.out.base.weight.nbytes  # adapter 0 targets both
    assert not bank.merge(slots[0], max_bytes=need - 1)
    assert bank.merged is None and all(layer.merged_slot is None for layer in bank.layers.values())
    assert bank.merge(slots[0], max_bytes=need)
    with pytest.raises(ValueError, match="not in use"):
        bank.merge(3, max_bytes=1 << 20)


def test_a_layer_that_is_not_a_plain_linear_is_not_merged() -> None:
    """A quantized base (bitsandbytes' Linear4bit is an nn.Linear subclass) has no weight to copy: a subclass,
    or weights in another dtype than the slots, keeps the slot path."""

    class Quantized(nn.Linear):
        pass

    torch.manual_seed(0)
    model = Chain()
    model.out = Quantized(5, 3)
    bank = SlotBank(model, max_slots=2)
    slot = bank.add(lora_for({"enc.0": 2, "out": 2}, seed=40, shapes=CHAIN_SHAPES))
    assert not bank.merge(slot, max_bytes=1 << 20)
    assert bank.merged is None
    only_enc = bank.add(lora_for({"enc.0": 2}, seed=41, shapes=CHAIN_SHAPES))
    assert bank.merge(only_enc, max_bytes=1 << 20)  # the layers it targets are plain

    wide = SlotBank(Chain(), max_slots=1, dtype=torch.float64)
    assert not wide.merge(wide.add(lora_for({"out": 2}, seed=42, shapes=CHAIN_SHAPES)), max_bytes=1 << 20)


def test_conv1d_layers_merge(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = Gpt2Like()
    served = copy.deepcopy(plain)
    peft_model, path = peft_adapter(tmp_path, plain, ["c_attn", "c_proj"], r=4, lora_alpha=8, fan_in_fan_out=True)
    bank = SlotBank(served, max_slots=2)
    slot = bank.add(parse_lora(*load_saved(path)))
    assert bank.merge(slot, max_bytes=1 << 20)
    x = randn(3, 5, 6, seed=4)
    with torch.no_grad(), bank.routed([slot] * 3):
        torch.testing.assert_close(served(x), peft_model(x), **TOL)


def test_bf16_merged_matches_bf16_slots_closely() -> None:
    """In bf16 the merged copy is rounded once (as merge_and_unload's): within bf16 noise of the slot path."""
    torch.manual_seed(0)
    model = Chain().to(torch.bfloat16)
    bank = SlotBank(model, max_slots=2, dtype=torch.bfloat16)
    slot = bank.add(lora_for({"enc.0": 2, "out": 2}, seed=50, shapes=CHAIN_SHAPES))
    x = randn(8, 6, seed=18).to(torch.bfloat16)
    with torch.no_grad(), bank.routed([slot] * 8):
        slots_y = model(x).float()
        assert bank.merge(slot, max_bytes=1 << 20)
        merged_y = model(x).float()
    torch.testing.assert_close(merged_y, slots_y, atol=0.05, rtol=0.02)
