"""Quality against the classic baselines, every method calibrated on a validation split, reported on test rows
nothing was tuned on.

    python -m bench.quality [--n-train 2000] [--n-test 1000] [--datasets rt_movie_snippets,sms_spam]

For each real dataset: `n-train` rows drawn from its train file, split 90/10 into train and validation (the
product's default split, the same seed), and `n-test` rows of its test file. Each method is trained on the
train part with every setting of its grid, the setting with the best validation macro-F1 is kept, and that
same trained model is scored on the test rows:
- TF-IDF (1-2 grams) + logistic regression, C in 0.1 / 1 / 10 / 100;
- a full fine-tune of minilm with the HF Trainer (dynamic padding, 3 epochs, fp32), lr in 2e-5 / 5e-5 / 1e-4;
- ours (`train_adapter` as a worker runs it: every Linear, the validation part evaluated each epoch with the
  best epoch kept and early stopping), rank 8 / 16 (alpha twice the rank) x lr 2e-4 / 5e-4 / 1e-3, in the dtype
  the worker picks; the defaults are rank 16 at lr 5e-4.
Printed: the calibration table (validation figures of every setting), then the test figures of each
method's chosen setting, with ours at the defaults beside them (what a user gets without tuning).
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import torch

from app.training.config import Hyperparameters
from bench.common import table
from bench.training import hf_trainer, metrics, ours_on, rows_of, sample

TFIDF_C = (0.1, 1.0, 10.0, 100.0)
FULL_LR = (2e-5, 5e-5, 1e-4)
OURS_LR = (2e-4, 5e-4, 1e-3)
OURS_RANK = (8, 16)  # alpha = 2 x rank, as the defaults
_HP = Hyperparameters()
DEFAULT = f"r={_HP.lora_r} lr={_HP.learning_rate:g}"  # the grid's setting that is the product's defaults


def tfidf(train, sets, labels, c: float) -> list[dict]:
    """TF-IDF + logistic regression at C=c; its figures on each of `sets`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=c, max_iter=5000))
    clf.fit([r["text"] for r in train], [r["label"] for r in train])
    return [metrics(labels, [r["label"] for r in s], list(clf.predict([r["text"] for r in s]))) for s in sets]


def full_fine_tune(train, sets, labels, lr: float, epochs: int = 3) -> list[dict]:
    """Every weight of minilm trained with the HF Trainer (dynamic padding, length-grouped, fp32); its figures
    on each of `sets`."""
    return hf_trainer(train, sets, labels, epochs, pad_to_max=False, full=True, lr=lr, grouped=True)[2]


def main() -> None:
    from app.base_models.loading import resolve_dtype
    from app.training.data import split_validation
    from bench.train_speed import _cpu_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--datasets", default="rt_movie_snippets,sms_spam")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-quality-"))
    dtype = resolve_dtype("auto", "cpu", "none")
    print(f"cpu: {_cpu_name()}; ours in {str(dtype).removeprefix('torch.')}", flush=True)
    calibration, final = [], []
    for ds in args.datasets.split(","):
        rows = sample(rows_of(ds, "train", work / "rt"), args.n_train)
        test = sample(rows_of(ds, "test", work / "rt"), args.n_test)
        labels = sorted({r["label"] for r in rows})
        train, val = split_validation(rows, 0.1, 0)
        majority = max(sum(r["label"] == lab for r in test) for lab in labels) / len(test)
        final.append((ds, "majority class", "-", f"{majority:.3f}", "-"))
        grids = {  # method -> (setting, how to train it and score it on [validation, test])
            "TF-IDF + logistic regression": [
                (f"C={c}", partial(tfidf, train, [val, test], labels, c)) for c in TFIDF_C
            ],
            "full fine-tune (Trainer, 3 epochs)": [
                (f"lr={lr:g}", partial(full_fine_tune, train, [val, test], labels, lr)) for lr in FULL_LR
            ],
            "ours (LoRA, every Linear)": [
                (
                    f"r={r} lr={lr:g}",
                    partial(
                        ours_both,
                        train,
                        val,
                        test,
                        labels,
                        {"lora_r": r, "lora_alpha": 2 * r, "learning_rate": lr},
                        dtype,
                    ),
                )
                for r in OURS_RANK
                for lr in OURS_LR
            ],
        }
        for method, grid in grids.items():
            runs = []
            for setting, run in grid:
                on_val, on_test = run()
                runs.append((setting, on_val, on_test))
                calibration.append((ds, method, setting, f"{on_val['accuracy']:.3f}", f"{on_val['f1_macro']:.3f}"))
                print(f"  {ds} {method} {setting}: validation {on_val}, test {on_test}", flush=True)
            setting, _, on_test = max(runs, key=lambda r: r[1]["f1_macro"])  # the first of equals
            final.append((ds, method, setting, f"{on_test['accuracy']:.3f}", f"{on_test['f1_macro']:.3f}"))
            if method.startswith("ours"):
                default = next(r for r in runs if r[0] == DEFAULT)[2]
                final.append(
                    (
                        ds,
                        "ours at the defaults",
                        DEFAULT,
                        f"{default['accuracy']:.3f}",
                        f"{default['f1_macro']:.3f}",
                    )
                )
    print()
    print(f"Calibration: validation figures ({args.n_train} rows drawn, 10% held out for validation)")
    print(table(calibration, ("data", "method", "setting", "val accuracy", "val macro-F1")))
    print()
    print(f"Test ({args.n_test} rows): each method at its setting with the best validation macro-F1")
    print(table(final, ("data", "method", "setting", "test accuracy", "test macro-F1")))


def ours_both(train, val, test, labels, hp: dict, dtype: torch.dtype) -> list[dict]:
    """Ours trained once with `hp` (the rest the defaults); its figures on the validation rows and on the test rows."""
    return ours_on(train, val, [val, test], labels, hp, dtype)[2]


if __name__ == "__main__":
    main()
