"""Fast unit tests of the training batches: length-grouped shuffling, padding and tokenizing (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.base_models.tokens import pad, tokenize
from app.training.batches import Encoded, collate, encode, length_grouped_batches

try:  # the tiny offline models may move into the app
    from app.base_models.tiny import WORDS, build_bert
except ImportError:
    from app.base_models.tiny import WORDS, build_bert

WINDOW = 50  # batches per sorted window


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def waste(batches: list[list[int]], lengths: list[int]) -> float:
    """Mean padding tokens per row when each batch is padded to its longest row."""
    pads = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    return pads / len(lengths)


# ---------------------------------------------------------------- length_grouped_batches


@pytest.mark.parametrize(
    ("n", "batch_size"),
    [
        (1, 8),
        (5, 8),
        (8, 8),
        (9, 8),
        (100, 8),
        (8 * WINDOW + 3, 8),
        (3 * 8 * WINDOW + 5, 8),
        (1000, 7),
        (2 * 4 * WINDOW, 4),
    ],
)
def test_batches_are_a_partition_with_at_most_one_short_batch_per_window(n: int, batch_size: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=n).tolist()
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng(1))
    assert sorted(flat(batches)) == list(range(n))  # every index exactly once
    assert all(isinstance(i, int) for i in flat(batches))
    sizes = [len(b) for b in batches]
    short = [s for s in sizes if s != batch_size]
    # full windows hold a whole number of batches: only the last window can end on a short batch
    assert len(short) == (1 if n % batch_size else 0)
    assert short == ([n % batch_size] if n % batch_size else [])
    assert len(batches) == -(-n // batch_size)
    assert len(short) <= -(-n // (batch_size * WINDOW))  # at most one per window


def test_empty_input_gives_no_batches() -> None:
    assert length_grouped_batches([], 8, np.random.default_rng(0)) == []


@pytest.mark.parametrize(("n", "batch_size"), [(37, 8), (8 * WINDOW + 3, 8), (3 * 4 * WINDOW + 11, 4)])
def test_batches_are_sorted_within_their_window(n: int, batch_size: int) -> None:
    lengths = np.random.default_rng(5).integers(1, 500, size=n).tolist()
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng(42))
    # the windows are the chunks of the first permutation the generator draws
    order = np.random.default_rng(42).permutation(n).tolist()
    window = batch_size * WINDOW
    windows = [set(order[s : s + window]) for s in range(0, n, window)]
    by_window: dict[int, list[list[int]]] = {}
    for b in batches:
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)  # each batch sorted by length
        owners = [w for w, rows in enumerate(windows) if set(b) <= rows]
        assert len(owners) == 1, "a batch spans two windows"
        by_window.setdefault(owners[0], []).append(b)
    assert sorted(by_window) == list(range(len(windows)))
    for w, group in by_window.items():
        assert sum(map(len, group)) == len(windows[w])
        # the batches of one window are consecutive runs of that window sorted by length: they don't overlap
        group.sort(key=lambda b: (min(lengths[i] for i in b), max(lengths[i] for i in b)))
        for prev, nxt in zip(group, group[1:], strict=False):
            assert max(lengths[i] for i in prev) <= min(lengths[i] for i in nxt)
        # and the chunk really was sorted: the window's lengths, in batch order, are the sorted lengths
        assert [lengths[i] for b in group for i in b] == sorted(lengths[i] for i in windows[w])


def test_batches_are_shuffled_across_the_sorted_order() -> None:
    lengths = list(range(400))  # one window, distinct lengths: sorted, its batches would be 0-7, 8-15, ...
    batches = length_grouped_batches(lengths, 8, np.random.default_rng(3))
    assert sorted(batches) == [list(range(i, i + 8)) for i in range(0, 400, 8)]
    assert batches != sorted(batches)  # but they are not served shortest first


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=1234).tolist()
    a = length_grouped_batches(lengths, 16, np.random.default_rng(7))
    b = length_grouped_batches(lengths, 16, np.random.default_rng(7))
    c = length_grouped_batches(lengths, 16, np.random.default_rng(8))
    assert a == b
    assert a != c
    assert sorted(flat(c)) == list(range(1234))


def test_same_generator_gives_a_new_order_each_epoch() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=500).tolist()
    rng = np.random.default_rng(11)
    epoch1, epoch2 = length_grouped_batches(lengths, 8, rng), length_grouped_batches(lengths, 8, rng)
    assert epoch1 != epoch2
    assert sorted(flat(epoch1)) == sorted(flat(epoch2)) == list(range(500))


def test_grouping_cuts_padding_waste_on_skewed_lengths() -> None:
    gen = np.random.default_rng(0)
    # mostly short rows with a long tail, as real text is
    lengths = np.clip(gen.lognormal(mean=3.0, sigma=1.0, size=4000), 1, 512).astype(int).tolist()
    grouped = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    order = np.random.default_rng(1).permutation(len(lengths)).tolist()
    plain = [order[i : i + 16] for i in range(0, len(order), 16)]
    w_grouped, w_plain = waste(grouped, lengths), waste(plain, lengths)
    assert w_plain > 30  # the distribution really is skewed
    assert w_grouped < w_plain / 10, (w_grouped, w_plain)


# ---------------------------------------------------------------- pad / collate


def rows_of(lengths: list[int], with_types: bool = True) -> list[dict[str, list[int]]]:
    rows = []
    for k, n in enumerate(lengths):
        row = {"input_ids": [100 + 10 * k + j for j in range(n)], "attention_mask": [1] * n}
        if with_types:
            row["token_type_ids"] = [j % 2 for j in range(n)]
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("lengths", "width"),
    [([1], 8), ([7], 8), ([8], 8), ([9], 16), ([17], 24), ([3, 17, 5], 24), ([16, 16], 16), ([2, 9, 1], 16)],
)
def test_pad_rounds_the_longest_row_up_to_a_multiple_of_8(lengths: list[int], width: int) -> None:
    rows = rows_of(lengths)
    before = [{k: list(v) for k, v in r.items()} for r in rows]
    out = pad(rows, pad_id=3, device="cpu")
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    for t in out.values():
        assert t.shape == (len(lengths), width)
        assert t.dtype == torch.long
        assert t.device.type == "cpu"
    for k, n in enumerate(lengths):
        assert out["input_ids"][k].tolist() == before[k]["input_ids"] + [3] * (width - n)
        assert out["attention_mask"][k].tolist() == [1] * n + [0] * (width - n)
        assert out["token_type_ids"][k].tolist() == before[k]["token_type_ids"] + [0] * (width - n)
    assert rows == before  # the feature rows are not padded in place


@pytest.mark.parametrize(("multiple_of", "width"), [(1, 13), (4, 16), (8, 16), (16, 16), (32, 32)])
def test_pad_multiple_of(multiple_of: int, width: int) -> None:
    out = pad(rows_of([13, 2], with_types=False), pad_id=0, device="cpu", multiple_of=multiple_of)
    assert set(out) == {"input_ids", "attention_mask"}  # keys follow the rows (no token_type_ids here)
    assert out["input_ids"].shape == out["attention_mask"].shape == (2, width)
    assert out["attention_mask"].sum(1).tolist() == [13, 2]


def test_collate_pads_the_selected_rows_and_adds_their_labels() -> None:
    data = Encoded(rows_of([4, 11, 2, 6]), [1, 0, 2, 1])
    assert len(data) == 4 and data.n_tokens([1, 3]) == 17
    batch = collate(data, [3, 0, 2], pad_id=7, device="cpu")
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["labels"].tolist() == [1, 1, 2]
    assert batch["labels"].dtype == torch.long
    # on CPU the longest selected row's width (6, not the 11 of the unselected row), not rounded up to 8
    assert batch["input_ids"].shape == (3, 6)
    assert batch["input_ids"].tolist() == [
        [130, 131, 132, 133, 134, 135],
        [100, 101, 102, 103, 7, 7],
        [120, 121, 7, 7, 7, 7],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [6, 4, 2]
    assert data.features[0]["input_ids"] == [100, 101, 102, 103]  # untouched


# ---------------------------------------------------------------- a real tokenizer, offline


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    path: Path = build_bert(tmp_path_factory.mktemp("bert"))
    return AutoTokenizer.from_pretrained(path)


def ids(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


def test_tokenize_single_texts_unpadded(bert_tokenizer) -> None:
    tok = bert_tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    feats = tokenize(tok, ["good film", "the plot was dull and boring"], None, max_length=64)
    assert len(feats) == 2
    assert feats[0] == {
        "input_ids": [cls, *ids(tok, "good film"), sep],
        "token_type_ids": [0] * 4,
        "attention_mask": [1] * 4,
    }
    assert feats[1]["input_ids"] == [cls, *ids(tok, "the plot was dull and boring"), sep]
    assert len(feats[1]["attention_mask"]) == 8
    assert tok.unk_token_id not in feats[0]["input_ids"] + feats[1]["input_ids"]


def test_tokenize_pairs_and_truncation(bert_tokenizer) -> None:
    tok = bert_tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    feats = tokenize(tok, ["good film"], ["bad movie"], max_length=64)
    assert feats[0]["input_ids"] == [cls, *ids(tok, "good film"), sep, *ids(tok, "bad movie"), sep]
    assert feats[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    # single text cut to max_length, still ending with [SEP]
    long = " ".join(WORDS[:20])
    (row,) = tokenize(tok, [long], None, max_length=6)
    assert row["input_ids"] == [cls, *ids(tok, " ".join(WORDS[:4])), sep]
    assert len(row["attention_mask"]) == len(row["token_type_ids"]) == 6
    # pair cut longest first: 6 + 2 words into 8 - 3 specials = 5 tokens -> 3 + 2
    (row,) = tokenize(tok, ["the film was good and fine"], ["bad movie"], max_length=8)
    assert row["input_ids"] == [cls, *ids(tok, "the film was"), sep, *ids(tok, "bad movie"), sep]
    assert row["token_type_ids"] == [0] * 5 + [1] * 3


def test_encode_then_collate_with_a_real_tokenizer(bert_tokenizer) -> None:
    tok = bert_tokenizer
    rows = [
        {"text": "good film", "label": "pos"},
        {"text": "the plot was dull and boring and sad", "text_pair": "bad movie", "label": "neg"},
    ]
    data = encode(tok, rows, {"neg": 0, "pos": 1}, max_length=10)
    assert data.labels == [1, 0]
    # a missing pair becomes an empty pair: one [SEP] more than a plain single text
    assert data.features[0]["input_ids"] == [
        tok.cls_token_id,
        *ids(tok, "good film"),
        tok.sep_token_id,
        tok.sep_token_id,
    ]
    assert len(data.features[1]["input_ids"]) == 10  # truncated to max_length
    batch = collate(data, [0, 1], tok.pad_token_id, "cpu")
    assert batch["input_ids"].shape == (2, 10)  # the longest row (on CUDA: rounded up to 16)
    assert batch["input_ids"][0, 5:].tolist() == [tok.pad_token_id] * 5
    assert batch["attention_mask"].sum(1).tolist() == [5, 10]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1] + [0] * 5
    assert batch["labels"].tolist() == [1, 0]
