import json

import pytest

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
        ("d.txt", b"a", "must be .jsonl"),
        ("d.csv", b"   ", "empty"),
        ("d.csv", b"text,label\n,x\nb,y\n", "empty"),
    ],
)
def test_bad_uploads(name, content, needle):
    with pytest.raises(ValidationFailed) as e:
        parse_upload(name, content, LIMITS)
    assert needle in e.value.message
    assert e.value.field.startswith("file")


def test_split_is_stratified_and_seeded():
    data = [{"text": str(i), "label": "a" if i % 4 else "b"} for i in range(40)]
    train, val = split_validation(data, 0.25, seed=1)
    assert len(val) == 10 and len(train) == 30
    assert sum(r["label"] == "b" for r in val) in (2, 3)
    assert split_validation(data, 0.25, seed=1) == (train, val)


def test_split_needs_enough_rows():
    with pytest.raises(ValidationFailed) as e:
        check_split_possible(2, 0.1, "validation_split")
    assert e.value.field == "validation_split"
    check_split_possible(3, 0.1, "validation_split")
