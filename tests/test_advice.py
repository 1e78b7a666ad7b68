"""Results that warn (app/training/advice.py): too few validation rows, too few of a label, one label for all."""

from app.training.advice import result_warnings


def test_a_sound_result_has_no_warnings():
    val = ["a"] * 20 + ["b"] * 20
    assert result_warnings(val, ["a", "b"], {"predicted": {"a": 19, "b": 21}}) == []
    assert result_warnings([], ["a", "b"], {}) == []  # no validation: nothing measured, nothing to judge


def test_each_warning_says_what_to_do():
    val = ["a"] * 36 + ["b"] * 4
    (few, single) = result_warnings(val, ["a", "b"], {"predicted": {"a": 40, "b": 0}})
    assert few.startswith("validation has fewer than 5 rows of 'b' (4)")
    assert "predicts 'a' for every validation row" in single and 'class_weighting: "balanced"' in single
    (small,) = result_warnings(["a", "b"] * 5, ["a", "b"], {"predicted": {"a": 5, "b": 5}})
    assert small.startswith("validation has only 10 rows, so each row moves accuracy by 10 points")
    multi = result_warnings([["x", "y"]] * 40, ["x", "y", "z"], {})
    assert multi == [
        "validation has fewer than 5 rows of 'z' (0): their precision and recall mean little; add rows of these"
        " labels or validate on more data"
    ]
