"""Adapters in and out as gzipped tarballs of the standard peft folder.

Out (`write_archive`): one folder `<name>-v<N>/` with adapter_config.json, adapter_model.safetensors (LoRA
weights and the task head), peftserve.json (labels in head order, hyperparameters, metrics) and a README on
loading it with peft. In (`read_archive`): such a tarball, or a folder saved by peft elsewhere, read in memory
and refused whole (naming the entry) when it holds a link, a device, an absolute path, `..`, a pickle, or
lacks peft's two files. Nothing is extracted to disk.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import PurePosixPath
from typing import Any

from app.errors import NotFound, ValidationFailed
from app.stores.adapters import CONFIG, METADATA, WEIGHTS, AdapterVersion

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")  # never read, and refused
KEPT = (CONFIG, WEIGHTS, METADATA, "config.json")  # what an import reads; other files are ignored
MAX_MEMBERS = 64  # a peft folder holds a handful of files (a README, a tokenizer at most)
MAX_IMPORTED_RANK = 256  # as for trained adapters: every slot of a base's bank grows to the largest rank
# An imported adapter's hyperparameters, as far as its adapter_config.json tells them (ours: peft's name).
IMPORTED_HYPERPARAMETERS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                            "target_modules": "target_modules"}  # fmt: skip

ARCHIVE_README = """\
# {ref}: a LoRA adapter for sequence classification on {base}, trained by peftserve

adapter_config.json and adapter_model.safetensors are peft's own files (the LoRA weights and, as
modules_to_save, the task head {heads}); peftserve.json holds the labels in head order, the hyperparameters
and the validation metrics. To load it with transformers + peft on the same base model:

    import json
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.load(open("{folder}/peftserve.json"))["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        BASE, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={{l: i for i, l in enumerate(labels)}}
    )
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    if tokenizer.pad_token is None:  # decoder bases (GPT-2, Llama, ...) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, "{folder}").eval()
"""


def write_archive(version: AdapterVersion) -> tuple[str, bytes]:
    """The version as a gzipped tarball of one folder `<name>-v<N>/`: peft's two files, peftserve.json and a
    README on loading it with peft. Returns (file name, bytes). Only those files; owner and times fixed."""
    folder = f"{version.name}-v{version.version}"
    readme = ARCHIVE_README.format(
        ref=version.ref,
        base=version.meta.get("base_model"),
        heads=", ".join(version.meta.get("heads") or [version.meta.get("head", "?")]),
        folder=folder,
    ).encode()
    try:
        files = {name: (version.path / name).read_bytes() for name in (CONFIG, WEIGHTS, METADATA)}
    except FileNotFoundError:  # deleted since it was resolved
        raise NotFound(f"no adapter {version.ref}", field="ref") from None
    files["README.md"] = readme
    mtime = version.path.joinpath(METADATA).stat().st_mtime
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mtime, info.mode = len(body), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(body))
    return f"{folder}.tar.gz", buf.getvalue()


def read_archive(content: bytes, max_bytes: int, field: str = "file") -> dict[str, bytes]:
    """The files an import reads (adapter_config.json, adapter_model.safetensors, and peftserve.json or
    config.json where present) from a .tar.gz holding them at its top or in one folder. Bounded: gzip only, at
    most MAX_MEMBERS entries and `max_bytes` of file contents in all, each checked from its header before
    a byte of it is read (a small upload cannot unpack into unbounded memory)."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(content), mode="r:gz")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValidationFailed(f"not a .tar.gz of a peft adapter folder ({e})", field=field) from None
    try:
        with tar:
            return _read_members(tar, max_bytes, field)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValidationFailed(f"a broken archive ({e})", field=field) from None


def _read_members(tar: tarfile.TarFile, max_bytes: int, field: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    folders: set[str] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise ValidationFailed(f"over {MAX_MEMBERS} entries: not a peft adapter folder", field=field)
        total += member.size
        if total > max_bytes:
            raise ValidationFailed(f"its files hold over {max_bytes} bytes, the upload limit", field=field)
        path = _safe_path(member, field)
        if member.isdir():
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValidationFailed(f"{member.name}: pickle files are refused; save with safetensors", field=field)
        if len(path.parts) > 2:
            raise ValidationFailed(f"{member.name}: the adapter's files belong at the top or in one folder", field)
        folders.add(path.parts[0] if len(path.parts) == 2 else "")
        if path.name in KEPT:
            if path.name in files:
                raise ValidationFailed(f"{member.name}: two files named {path.name}", field=field)
            extracted = tar.extractfile(member)
            files[path.name] = extracted.read() if extracted is not None else b""
    if len(folders) > 1:
        raise ValidationFailed(f"one adapter folder per archive, not {sorted(folders)}", field=field)
    missing = [name for name in (CONFIG, WEIGHTS) if name not in files]
    if missing:
        raise ValidationFailed(f"the archive lacks {', '.join(missing)} (peft's save_pretrained writes both)", field)
    return files


def _safe_path(member: tarfile.TarInfo, field: str) -> PurePosixPath:
    """A member's path, refused unless it is a plain file or folder with a relative path and no `..`."""
    if not (member.isfile() or member.isdir()):
        raise ValidationFailed(f"{member.name}: links and special files are refused", field=field)
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")) or "\\" in member.name:
        raise ValidationFailed(f"{member.name}: absolute paths and '..' are refused", field=field)
    parts = tuple(p for p in path.parts if p not in ("", "."))
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def labels_of(files: dict[str, bytes], given: list[str] | None) -> list[str]:
    """The label names in head order: given with the upload, else peftserve.json's, else config.json's id2label;
    distinct, non-empty strings (a 422 naming `labels`, or `file` for names read from the archive)."""
    if given is not None:
        return clean_labels(given, "labels")
    for name, read in ((METADATA, lambda d: d.get("labels")), ("config.json", _id2label)):
        if name in files:
            try:
                labels = read(json.loads(files[name]))
            except (ValueError, TypeError, AttributeError):
                labels = None
            if labels is not None:
                return clean_labels(labels, "file", where=f"{name}: ")
    raise ValidationFailed(
        "give the labels in the head's order: a `labels` field, or peftserve.json or config.json (id2label) inside",
        field="labels",
    )


def clean_labels(labels: Any, field: str, where: str = "") -> list[str]:
    """A list of distinct, non-empty label names (stripped), else a 422 naming `field`."""
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValidationFailed(f"{where}labels must be a list of non-empty strings", field=field)
    names = [x.strip() for x in labels]
    if len(set(names)) != len(names):
        raise ValidationFailed(f"{where}labels must be distinct: {names}", field=field)
    return names


def _id2label(config: Any) -> list[str] | None:
    mapping = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        return None
    try:
        ordered = sorted((int(k), v) for k, v in mapping.items())
    except ValueError:
        return None
    if [i for i, _ in ordered] != list(range(len(ordered))):
        return None
    return [v for _, v in ordered]


def read_adapter_config(data: bytes) -> dict[str, Any]:
    """An imported adapter_config.json: a LoRA adapter for sequence classification (422 naming `file` if not)."""
    try:
        config = json.loads(data)
    except ValueError as e:
        raise ValidationFailed(f"adapter_config.json is not JSON ({e})", field="file") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValidationFailed("adapter_config.json: only LoRA adapters (peft_type LORA) are served", field="file")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_IMPORTED_RANK:
        raise ValidationFailed(f"adapter_config.json: r must be an integer from 1 to {MAX_IMPORTED_RANK}", "file")
    if config.get("task_type") not in ("SEQ_CLS", None):
        raise ValidationFailed(
            f"adapter_config.json: task_type {config.get('task_type')!r}; sequence classification (SEQ_CLS) only",
            field="file",
        )
    return config


def imported_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """An imported adapter's hyperparameters, as far as its adapter_config.json tells them."""
    return {ours: config.get(theirs) for ours, theirs in IMPORTED_HYPERPARAMETERS.items()}


def multilabel_of(files: dict[str, bytes], n_labels: int) -> dict[str, Any]:
    """What an imported folder says of a multi-label head: peftserve.json's `multi_label` and `thresholds`, or
    config.json's problem_type `multi_label_classification` (thresholds 0.5). {} for a single-label head."""
    meta = _json(files.get(METADATA))
    if meta.get("multi_label") is True:
        thresholds = meta.get("thresholds")
        valid = (
            isinstance(thresholds, list)
            and len(thresholds) == n_labels
            and all(isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)
        )
        return {"multi_label": True, "thresholds": [float(t) for t in thresholds] if valid else [0.5] * n_labels}
    if _json(files.get("config.json")).get("problem_type") == "multi_label_classification":
        return {"multi_label": True, "thresholds": [0.5] * n_labels}
    return {}


def _json(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
