import json
from collections import Counter

import pytest
from sklearn.model_selection import train_test_split

from app.errors import PayloadTooLarge, ValidationFailed
from app.training.data import Limits, check_split_possible, parse_upload, split_validation, validate_records

LIMITS = Limits(max_records=100, max_text_chars=50, max_labels=5)


def rows(*pairs):
    return [{"text": t, "label": lab} for t, lab in pairs]


def test_valid_records_normalise_labels_to_strings():
    out = validate_records(rows(("a", 1), ("b", 0), ("c", 1)), "train.records", LIMITS)
    assert [r["label"] for r in out] == ["1", "0", "1"]


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        (rows(("a", "x"), ("  ", "y")), "train.records[1].text", "empty"),
        (rows(("a", "x"), ("b", "x")), "train.records", "at least 2 distinct labels"),
        (rows(("a", "x"), ("b", 1)), "train.records[1].label", "mix"),
        ([{"text": "a", "label": "x"}, {"text": "b"}], "train.records[1].label", "missing"),
        ([{"text": "a", "label": "x"}, {"text": 3, "label": "y"}], "train.records[1].text", "string"),
        ([{"text": "a", "label": "x", "id": 4}], "train.records[0]", "unknown column"),
        (rows(("a", "x"), ("b" * 51, "y")), "train.records[1].text", "limit"),
        (rows(("a", "x"), ("b", 1.5)), "train.records[1].label", "string or an integer"),
        ([], "train.records", "at least one"),
    ],
)
def test_invalid_records_name_field_and_row(data, field, needle):
    with pytest.raises(ValidationFailed) as e:
        validate_records(data, "train.records", LIMITS)
    assert e.value.field == field
    assert needle in e.value.message


def test_too_many_records_and_labels():
    with pytest.raises(PayloadTooLarge):
        validate_records(rows(*[("t", str(i % 2)) for i in range(101)]), "f", LIMITS)
    with pytest.raises(ValidationFailed, match="over the limit"):
        validate_records(rows(*[("t", str(i)) for i in range(6)]), "f", LIMITS)


def test_parse_jsonl_and_csv():
    jsonl = b'{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg", "text_pair": "q"}\n'
    out = parse_upload("d.jsonl", jsonl, LIMITS)
    assert out == [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg", "text_pair": "q"}]
    csv = b'text,label\n"good, really",1\nbad,0\n'
    assert parse_upload("d.csv", csv, LIMITS) == [{"text": "good, really", "label": "1"}, {"text": "bad", "label": "0"}]


def test_jsonl_texts_may_hold_unicode_line_separators():
    """JSON lines split at "\n" only: U+2028, U+0085 and friends inside a text are part of it (real review
    snippets carry them; `make demo` uploads such a file)."""
    texts = ["a\u2028b", "c\x85d", "e\x1cf", "g\u2029h", "i\x0bj"]
    rows = [{"text": t, "label": lab} for t, lab in zip(texts, "xyxyx", strict=True)]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows).encode()
    assert parse_upload("d.jsonl", body, LIMITS) == rows


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "lab', "could not parse"),
        ("d.csv", b"txt,label\na,x\nb,y\n", "missing column"),
        ("d.jsonl", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("d.txt", b"a", "missing column"),  # no known extension: read as CSV (no JSON first character)
        ("d.csv", b"   ", "empty"),
        ("d.csv", b"text,label\n,x\nb,y\n", "empty"),
    ],
)
def test_bad_uploads(name, content, needle):
    with pytest.raises(ValidationFailed) as e:
        parse_upload(name, content, LIMITS)
    assert needle in e.value.message
    assert e.value.field.startswith("file")


def labelled(*counts: tuple[str, int]) -> list[dict]:
    """`n` rows of each label, the labels interleaved (no label sits in one block of the list)."""
    out = [{"text": f"{lab} {i}", "label": lab} for lab, n in counts for i in range(n)]
    return sorted(out, key=lambda r: (int(r["text"].split()[1]), r["label"]))


def label_counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["label"] for r in rows))


def assert_partition(data: list[dict], train: list[dict], val: list[dict]) -> None:
    """Every row lands in exactly one of the two halves."""
    assert sorted(r["text"] for r in train + val) == sorted(r["text"] for r in data)


SEEDS = range(8)


@pytest.mark.parametrize(
    ("counts", "fraction", "expected"),
    [
        # 80 rows, 25%: every label keeps its share exactly (a plain random split is off by 1-3 rows for most seeds)
        ((("a", 40), ("b", 20), ("c", 20)), 0.25, {"a": 10, "b": 5, "c": 5}),
        # a label of just 2 rows: one in each half (a plain split puts both, or none, in validation at some seeds)
        ((("a", 18), ("b", 2)), 0.5, {"a": 9, "b": 1}),
    ],
    ids=["shares-exact", "two-row-label-in-both-halves"],
)
def test_split_is_stratified_and_seeded(counts, fraction, expected):
    data = labelled(*counts)
    n_val = sum(expected.values())
    splits = {}
    for seed in SEEDS:
        train, val = split_validation(data, fraction, seed=seed)
        assert len(val) == n_val and len(train) == len(data) - n_val
        assert_partition(data, train, val)
        assert label_counts(val) == expected, (seed, label_counts(val))
        assert split_validation(data, fraction, seed=seed) == (train, val)  # seeded: the same split again
        splits[seed] = [r["text"] for r in val]
    assert len({tuple(v) for v in splits.values()}) > 1  # ...and the seed matters: not one fixed choice of rows
    # the check discriminates: an unstratified split of the same rows misses the exact counts at some seed
    plain = [label_counts(train_test_split(data, test_size=n_val, random_state=seed)[1]) for seed in SEEDS]
    assert any(c != expected for c in plain), plain


@pytest.mark.parametrize(
    ("counts", "fraction", "n_val"),
    [
        ((("a", 19), ("b", 1)), 0.25, 5),  # a label of 1 row cannot be in both halves: not stratified
        ((("a", 5), ("b", 5), ("c", 5), ("d", 5)), 0.1, 2),  # fewer validation rows than labels
        ((("a", 2), ("b", 2), ("c", 2), ("d", 2)), 0.6, 5),  # sklearn refuses (3 training rows, 4 labels)
    ],
    ids=["singleton-label", "fewer-val-rows-than-labels", "train-side-too-small"],
)
def test_split_falls_back_to_a_plain_seeded_split(counts, fraction, n_val):
    data = labelled(*counts)
    for seed in SEEDS[:3]:
        train, val = split_validation(data, fraction, seed=seed)
        assert len(val) == n_val and len(train) == len(data) - n_val
        assert_partition(data, train, val)
        assert (train, val) == tuple(train_test_split(data, test_size=n_val, random_state=seed))
        assert split_validation(data, fraction, seed=seed) == (train, val)


def test_split_needs_enough_rows():
    with pytest.raises(ValidationFailed) as e:
        check_split_possible(2, 0.1, "validation_split")
    assert e.value.field == "validation_split"
    check_split_possible(3, 0.1, "validation_split")


def chat(*turns):
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def test_openai_chat_rows_become_text_and_label():
    system = ("system", "Classify the sentiment of the review.")
    lines = [
        chat(system, ("user", "a warm, funny film"), ("assistant", "positive")),
        chat(("user", "dull"), ("assistant", "x"), ("user", "and far too long"), ("assistant", " negative ")),
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "fine"}]},
                {"role": "assistant", "content": "positive", "weight": 1},
            ]
        },
        {"text": "plain rows mix in", "label": "negative"},
    ]
    body = "\n".join(json.dumps(r) for r in lines).encode()
    out = parse_upload("chat.jsonl", body, LIMITS)
    # system turns are kept apart (not in the text); user turns joined by newlines; the last message is the label
    assert out == [
        {"text": "a warm, funny film", "label": "positive"},
        {"text": "dull\nand far too long", "label": "negative"},
        {"text": "fine", "label": "positive"},
        {"text": "plain rows mix in", "label": "negative"},
    ]


@pytest.mark.parametrize(
    ("row", "field", "needle"),
    [
        (chat(("user", "a"), ("user", "b")), "file[1].messages[1]", "last message must be the assistant's"),
        (chat(("system", "s"), ("assistant", "pos")), "file[1].messages", "at least one user message"),
        (chat(("user", "a"), ("assistant", " ")), "file[1].messages[1].content", "empty"),
        (chat(("tool", "a"), ("assistant", "pos")), "file[1].messages[0].role", "role must be one of"),
        ({"messages": []}, "file[1].messages", "non-empty list"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "p", "tool_calls": []}]},
            "file[1].messages[1]",
            "unsupported message key",
        ),
        ({**chat(("user", "a"), ("assistant", "p")), "tools": []}, "file[1]", "messages only"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, {"role": "assistant", "content": "p"}]},
            "file[1].messages[0].content",
            "text parts",
        ),
    ],
)
def test_bad_chat_rows_name_the_line_and_message(row, field, needle):
    good = chat(("user", "fine"), ("assistant", "positive"))
    body = (json.dumps(good) + "\n\n" + json.dumps(row) + "\n").encode()
    with pytest.raises(ValidationFailed) as e:
        parse_upload("chat.jsonl", body, LIMITS)
    assert e.value.field == field and needle in e.value.message and "(line 3)" in e.value.message


def test_prompt_text_is_the_user_turns_of_a_conversation_ending_with_one():
    from app.training.chat import prompt_text

    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ValidationFailed, match="last message must be the user's"):
        prompt_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with pytest.raises(ValidationFailed) as e:
        prompt_text("hi")
    assert e.value.field == "messages"


def test_an_upload_without_a_known_extension_is_read_by_its_first_character():
    jsonl = b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n'
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    assert parse_upload("file", jsonl, LIMITS) == parse_upload("d.txt", b"text,label\na,x\nb,y\n", LIMITS) == rows
