"""The obvious multi-adapter server, for comparison: per request `set_adapter`, then that request alone.

    python -m bench.naive_server ADAPTERS_DIR PORT name1 name2 ...

All adapters must share one label set (peft cannot hold heads of different sizes in one model).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from app.base_models.loading import load_tokenizer
from app.base_models.registry import ModelRegistry
from app.config import Settings


def build(adapters_dir: Path, names: list[str]) -> FastAPI:
    paths = {n: adapters_dir / n / "v1" for n in names}
    meta = json.loads((paths[names[0]] / "peftserve.json").read_text())
    settings = Settings(_env_file=None)
    resolved = ModelRegistry(settings.models, settings.model_cache_dir).resolve(meta["base_model"])
    tok = load_tokenizer(resolved)
    base = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=len(meta["labels"]))
    model = PeftModel.from_pretrained(base, str(paths[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(paths[n]), adapter_name=n)
    model.eval()
    labels = meta["labels"]
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict) -> dict:
        texts = [body["inputs"]] if isinstance(body["inputs"], str) else body["inputs"]
        with lock, torch.inference_mode():
            model.set_adapter(body["adapter"])
            enc = tok(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits, -1)
        return {"predictions": [dict(zip(labels, p.tolist(), strict=True)) for p in probs]}

    return app


if __name__ == "__main__":
    uvicorn.run(build(Path(sys.argv[1]), sys.argv[3:]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
