"""The application core: what each API call does, over the stores, the registry and the engine.

Never imports FastAPI: the routes are thin wrappers over these methods, and tests can call them directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from importlib.metadata import version as pkg_version
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from safetensors.torch import load as safetensors_load

from app import schemas
from app.base_models.loading import resolve_dtype
from app.config import Settings
from app.errors import NotFound, PayloadTooLarge, ValidationFailed
from app.inference.engine import InferenceEngine
from app.inference.evaluation import evaluate, evaluate_multilabel, predictions_for, thresholds_of
from app.inference.multilora import UnsupportedAdapter
from app.jobs.tables import DatasetRow, Job
from app.resources import SharedResources
from app.stores.adapters import CONFIG, WEIGHTS, AdapterVersion, parse_ref, validate_name
from app.stores.archive import (
    imported_hyperparameters,
    labels_of,
    multilabel_of,
    read_adapter_config,
    read_archive,
    write_archive,
)
from app.suggest import hint
from app.telemetry import Telemetry
from app.training.config import Hyperparameters
from app.training.data import (
    Limits,
    check_split_possible,
    is_multilabel,
    label_names,
    parse_upload,
    validate_records,
)

# What an adapter continued with init_from keeps from its parent: its weights must fit the same LoRA layers.
LORA_STRUCTURE = ("lora_r", "lora_alpha", "target_modules")


@dataclass
class RequestData:
    """A request's data, checked: an uploaded dataset's row, or inline records (validated, not stored yet)."""

    uploaded: DatasetRow | None = None
    records: list[dict] | None = None

    @property
    def labels(self) -> set[str]:
        if self.uploaded:
            return set(self.uploaded.labels)
        return {name for r in self.records or [] for name in label_names(r)}

    @property
    def multi_label(self) -> bool:
        return bool(self.uploaded.multi_label) if self.uploaded else is_multilabel(self.records or [])

    @property
    def size(self) -> int:
        return self.uploaded.n_records if self.uploaded else len(self.records or [])


class PeftServe:
    def __init__(self, settings: Settings):
        self.resources = SharedResources.open(settings)
        # The shared resources this core works over, by the names the routes use.
        self.settings, self.store = settings, self.resources.store
        self.datasets, self.adapters, self.registry = (
            self.resources.datasets,
            self.resources.adapters,
            self.resources.registry,
        )
        self.telemetry = Telemetry()
        self.engine = InferenceEngine(
            self.registry,
            self.adapters,
            self.resources.device,
            self.resources.quantization,
            max_loaded=settings.max_loaded_adapters,
            batch_size=settings.predict_batch_size,
            max_loaded_bytes=settings.max_loaded_adapter_bytes,
            batch_wait_ms=settings.batch_wait_ms,
            merged_adapter_bytes=settings.merged_adapter_bytes,
            dtype=resolve_dtype(settings.inference_dtype, self.resources.device, self.resources.quantization),
            on_batch=self.telemetry.batch_rows.observe,
        )
        self.telemetry.watch(self._state)
        self.limits = Limits(settings.max_records, settings.max_text_chars, settings.max_labels)

    def close(self) -> None:
        self.engine.close()
        self.resources.close()

    def _state(self) -> dict[str, Any]:
        """What GET /metrics reports beside the observed latencies (read at each scrape)."""
        running = self.store.running()
        return {
            "jobs": self.store.count_by_status(),
            "training": [(j.id, j.adapter, j.samples_per_second) for j in running if j.samples_per_second],
            "engine": {**self.engine.stats, "loaded": len(self.engine.loaded())},
        }

    def health(self) -> schemas.Health:
        return schemas.Health(
            version=pkg_version("peftserve"),
            queued=self.store.queue_length(),
            workers=self.settings.workers,
            device=self.resources.device,
            quantization=self.resources.quantization,
            base_models=self.registry.names(),
        )

    # ---- datasets -------------------------------------------------------------------------------
    def upload_dataset(self, filename: str, content: bytes) -> DatasetRow:
        if len(content) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(f"upload is over the limit of {self.settings.max_upload_bytes} bytes", "file")
        notes: list[str] = []
        rows = parse_upload(filename, content, self.limits, notes)
        return self.datasets.save(rows, filename=filename, notes=notes)

    def _data(self, source: schemas.DataSource, prefix: str = "", min_labels: int = 2) -> RequestData:
        """The data a request names: an uploaded dataset (unknown: a 404 naming the field, as any reference to
        something that doesn't exist), or inline records validated here and not stored."""
        if source.dataset is not None:
            return RequestData(uploaded=self.datasets.get(source.dataset, field=f"{prefix}dataset"))
        records = [r.model_dump(exclude_none=True) for r in source.records or []]
        return RequestData(records=validate_records(records, f"{prefix}records", self.limits, min_labels=min_labels))

    def _stored(self, data: RequestData) -> DatasetRow:
        return data.uploaded or self.datasets.save(data.records or [])

    # ---- jobs ---------------------------------------------------------------------------------
    def submit_job(self, body: schemas.JobCreate, **openai: Any) -> Job:
        """Check everything first, then store the inline records and queue: a refused job stores nothing.
        `openai`: what a /v1 job carries beside (suffix, user_metadata)."""
        self._check_target(body)
        train = self._data(body.train, "train.")
        validation = self._data(body.validation, "validation.", min_labels=1) if body.validation else None
        if validation is not None:
            if validation.multi_label != train.multi_label:
                kinds = ("single labels", "lists of labels (multi-label)")
                raise ValidationFailed(
                    f"the training data has {kinds[train.multi_label]}, the validation data "
                    f"{kinds[validation.multi_label]}",
                    field="validation",
                )
            _check_known_labels(validation, train.labels)
        else:
            check_split_possible(train.size, body.validation_split, "validation_split")
        parent, hp = self._continued(body, train)
        return self.store.create_job(
            adapter=body.adapter,
            base_model=body.base_model,
            hyperparameters=hp.model_dump(),
            init_from=parent,
            train_dataset=self._stored(train).id,
            validation_dataset=self._stored(validation).id if validation is not None else None,
            validation_split=0.0 if validation is not None else body.validation_split,
            webhook_url=str(body.webhook_url) if body.webhook_url else None,
            **openai,
        )

    def _check_target(self, body: schemas.JobCreate) -> None:
        """What a job produces and where: a valid adapter name, a known base, a webhook this server can sign."""
        validate_name(body.adapter, "adapter")
        self._check_base_model(body.base_model)
        if body.webhook_url is not None and not self.settings.webhook_secret:
            raise ValidationFailed(
                "this server signs webhook calls with PEFTSERVE_WEBHOOK_SECRET, which is not set", field="webhook_url"
            )

    def _check_base_model(self, name: str) -> None:
        """A base this server knows (else 404), of an architecture it can train and serve (else 422); both name
        base_model."""
        if name not in self.registry.sources:
            raise NotFound(
                f"unknown base model {name!r}" + hint(name, self.registry.names(), "known"), field="base_model"
            )
        arch = self.registry.architecture(name)
        if arch is not None and arch.problem:
            raise ValidationFailed(
                f"base model {name!r} cannot be trained and served here: {arch.problem}", "base_model"
            )

    def _continued(self, body: schemas.JobCreate, train: RequestData) -> tuple[str | None, Hyperparameters]:
        """For `init_from`: the pinned version (`name@vN`) and the hyperparameters with its LoRA structure (rank,
        alpha, targets: the weights must fit); a 404 naming the field when the version is unknown, a 422 when it is
        on another base, has another label set, or the job asks for another LoRA structure."""
        hp = body.hyperparameters
        if body.init_from is None:
            return None, hp
        parent = self.adapters.resolve(body.init_from, field="init_from")
        if parent.meta["base_model"] != body.base_model:
            raise ValidationFailed(
                f"{parent.ref} was trained on {parent.meta['base_model']!r}, this job's base_model is "
                f"{body.base_model!r}",
                field="init_from",
            )
        if parent.meta.get("multi_label", False) != train.multi_label:
            raise ValidationFailed(
                f"{parent.ref} is {'' if parent.meta.get('multi_label') else 'not '}multi-label and the training data "
                f"{'is' if train.multi_label else 'is not'}",
                field="init_from",
            )
        if set(parent.labels) != set(train.labels):
            raise ValidationFailed(
                f"{parent.ref} has labels {sorted(parent.labels)}; the training data has {sorted(train.labels)}",
                field="init_from",
            )
        peft_config = json.loads((parent.path / CONFIG).read_text())
        variant = next((k for k in ("use_rslora", "use_dora") if peft_config.get(k)), None)
        if variant:
            raise ValidationFailed(f"{parent.ref} is a {variant} adapter: it can't be continued here", "init_from")
        inherited = {k: parent.meta["hyperparameters"].get(k) for k in LORA_STRUCTURE}
        for key, value in inherited.items():
            if key in hp.model_fields_set and getattr(hp, key) != value:
                raise ValidationFailed(
                    f"{key} must be {value!r}, as in {parent.ref} (init_from)", field=f"hyperparameters.{key}"
                )
        try:  # an imported parent's structure may lie outside what this server trains
            return parent.ref, Hyperparameters(**{**hp.model_dump(), **inherited})
        except PydanticValidationError as e:
            problem = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValidationFailed(f"{parent.ref} can't be continued here ({problem})", field="init_from") from None

    def job_metrics(self, job_id: str) -> schemas.JobMetrics:
        job = self.store.get_job(job_id)
        points = self.store.metrics(job_id)
        train = [schemas.TrainPoint(step=p.step, epoch=p.epoch, **p.values) for p in points if p.kind == "train"]
        evals = [schemas.EvalPoint(step=p.step, epoch=p.epoch, **p.values) for p in points if p.kind == "eval"]
        summary: dict[str, Any] = dict(job.result_metrics or {})
        if train:
            summary.setdefault("last_loss", train[-1].loss)
        if evals:
            best = max(evals, key=lambda e: e.f1_macro or 0.0)
            summary.setdefault("best_eval", best.model_dump())
        public = schemas.JobPublic.from_job(job)
        return schemas.JobMetrics(
            job_id=job.id, status=public.status, progress=public.progress, train=train, eval=evals, summary=summary
        )

    # ---- adapters -------------------------------------------------------------------------------
    @staticmethod
    def _version_public(v: AdapterVersion) -> schemas.AdapterVersionPublic:
        m = v.meta
        return schemas.AdapterVersionPublic(
            name=v.name,
            version=v.version,
            ref=v.ref,
            base_model=m["base_model"],
            labels=m["labels"],
            metrics=m.get("metrics", {}),
            hyperparameters=m.get("hyperparameters", {}),
            job_id=m.get("job_id"),
            parent=m.get("parent"),
            created_at=m.get("created_at", ""),
            sha256=m.get("sha256", ""),
            size_bytes=v.size_bytes,
        )

    def adapter(self, ref: str) -> schemas.AdapterPublic:
        """`name`: every version; `name@vN`: that version alone."""
        name, version = parse_ref(ref, "name")
        versions = [self._version_public(v) for v in self.adapters.versions(name)]
        pinned = [v for v in versions if version is None or v.version == version]
        if not pinned:
            raise NotFound(f"adapter {name!r} has no version v{version}", field="name")
        return schemas.AdapterPublic(name=name, latest=versions[-1].ref, versions=pinned)

    def import_adapter(
        self, name: str, base_model: str, content: bytes, labels: list[str] | None = None
    ) -> schemas.AdapterVersionPublic:
        """A peft LoRA folder for sequence classification trained elsewhere (a .tar.gz), checked against the
        base it is for and stored as the next version of `name`: safetensors only, every layer's shape, the
        head's modules and one score per label. A refused upload stores nothing."""
        validate_name(name, "name")
        self._check_base_model(base_model)
        if len(content) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(f"upload is over the limit of {self.settings.max_upload_bytes} bytes", "file")
        files = read_archive(content, self.settings.max_upload_bytes)
        config = read_adapter_config(files[CONFIG])
        heads, revision = self.engine.base_facts(base_model)
        names = labels_of(files, labels)
        meta = {
            "base_model": base_model,
            "labels": names,
            "heads": heads,
            "base_revision": revision,
            "hyperparameters": imported_hyperparameters(config),
            "metrics": {},
            "imported": True,
            **multilabel_of(files, len(names)),
        }
        try:
            state = safetensors_load(files[WEIGHTS])
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
            raise ValidationFailed(f"adapter_model.safetensors is not a safetensors file ({e})", field="file") from None
        try:
            self.engine.check(base_model, state, config, meta)
        except UnsupportedAdapter as e:
            raise ValidationFailed(f"this adapter does not fit base {base_model!r}: {e}", field="file") from None
        staging = self.adapters.staging_dir()
        try:
            (staging / CONFIG).write_bytes(files[CONFIG])
            (staging / WEIGHTS).write_bytes(files[WEIGHTS])
            return self._version_public(self.adapters.commit(staging, name, meta))
        finally:
            self.adapters.discard(staging)

    def adapter_archive(self, ref: str) -> tuple[str, bytes]:
        """`name` (newest) or `name@vN` as a gzipped tarball of peft's folder: (file name, bytes)."""
        return write_archive(self.adapters.resolve(ref, field="ref"))

    def list_adapters(self) -> schemas.AdaptersPublic:
        data = []
        for name in self.adapters.names():
            try:
                data.append(self.adapter(name))
            except NotFound:  # deleted while we listed
                continue
        return schemas.AdaptersPublic(data=data, loaded=[schemas.LoadedAdapter(**r) for r in self.engine.loaded()])

    def delete_adapter(self, ref: str) -> list[str]:
        """Delete one version or all; with each goes its job's epoch checkpoints (they are that model's too)."""
        removed = self.adapters.delete(ref)
        for version in removed:
            if version.meta.get("job_id"):
                self.resources.epochs.delete(version.meta["job_id"])
        self.engine.unload([v.ref for v in removed])
        return [v.ref for v in removed]

    # ---- inference ------------------------------------------------------------------------------
    def predict(self, body: schemas.PredictRequest) -> schemas.PredictResponse:
        version, future = self.submit_predict(body)
        return self.predict_response(version, future.result())

    def submit_predict(self, body: schemas.PredictRequest) -> tuple[AdapterVersion, Future]:
        """Validate and queue a prediction; the caller waits on the future (a thread, or an event loop)."""
        if body.adapter is None:
            raise ValidationFailed("give the adapter to predict with (or adapters, a list)", field="adapter")
        texts = self._inputs(body)
        return self.queue([body.adapter], texts, body.text_pairs)[0]

    def submit_predict_each(self, body: schemas.PredictRequest) -> list[tuple[AdapterVersion, Future]]:
        """`adapters`: every adapter's prediction on the same inputs, all queued before any is waited on, so the
        engine takes them as one mixed batch."""
        if body.adapter is not None:
            raise ValidationFailed("give adapter or adapters, not both", field="adapters")
        texts = self._inputs(body)
        names = body.adapters or []
        if len(set(names)) != len(names):
            raise ValidationFailed("each adapter once", field="adapters")
        if len(names) > self.settings.max_loaded_adapters:
            raise ValidationFailed(
                f"{len(names)} adapters is over the {self.settings.max_loaded_adapters} this server keeps loaded",
                field="adapters",
            )
        for i, name in enumerate(names):  # every one known before any is queued
            self.adapters.resolve(name, field=f"adapters[{i}]")
        return self.queue(names, texts, body.text_pairs)

    def queue(
        self, refs: Sequence[str | AdapterVersion], texts: list[str], pairs: list[str] | None = None
    ) -> list[tuple[AdapterVersion, Future]]:
        """Texts for each adapter on the engine's queue (timed for GET /metrics); a future per adapter."""
        started = time.perf_counter()
        queued = self.engine.submit_each(refs, texts, pairs)
        for _, future in queued:
            future.add_done_callback(lambda _: self.telemetry.predict_seconds.observe(time.perf_counter() - started))
        return queued

    def _inputs(self, body: schemas.PredictRequest) -> list[str]:
        """The request's texts, checked: at least one, within the limits, none empty, one pair each if any."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise ValidationFailed("give at least one input", field="inputs")
        if len(texts) > self.settings.max_predict_inputs:
            raise ValidationFailed(
                f"{len(texts)} inputs is over the limit of {self.settings.max_predict_inputs}", field="inputs"
            )
        if body.text_pairs is not None and len(body.text_pairs) != len(texts):
            raise ValidationFailed(
                f"give one text pair per input: {len(texts)} input(s), {len(body.text_pairs)} text_pairs",
                field="text_pairs",
            )
        for key, values in (("inputs", texts), ("text_pairs", body.text_pairs or [])):
            for i, t in enumerate(values):
                if not t.strip():
                    raise ValidationFailed(f"{key}[{i}] is empty", field=f"{key}[{i}]")
                if len(t) > self.settings.max_text_chars:
                    raise ValidationFailed(
                        f"{key}[{i}] has {len(t)} characters, over the limit of {self.settings.max_text_chars}",
                        field=f"{key}[{i}]",
                    )
        return texts

    @staticmethod
    def predict_response(version: AdapterVersion, probs: Any) -> schemas.PredictResponse:
        return schemas.PredictResponse(adapter=version.ref, predictions=predictions_for(version, probs))

    @staticmethod
    def multi_predict_response(
        names: list[str], answers: list[tuple[AdapterVersion, Any]]
    ) -> schemas.MultiPredictResponse:
        """Per input, each adapter's prediction keyed by the name the request used."""
        each = [predictions_for(version, probs) for version, probs in answers]
        return schemas.MultiPredictResponse(
            adapters=[version.ref for version, _ in answers],
            predictions=[dict(zip(names, row, strict=True)) for row in zip(*each, strict=True)],
        )

    def evaluate(self, body: schemas.EvaluateRequest) -> schemas.EvaluateResponse | schemas.MultiLabelEvaluateResponse:
        version = self.adapters.resolve(body.adapter)
        data = self._data(body, min_labels=1)
        rows = data.records if data.records is not None else self.datasets.load(data.uploaded.id)
        multi = bool(version.meta.get("multi_label"))
        known = set(version.labels)
        for i, r in enumerate(rows):
            where = "" if body.records is not None else f"row {i} of dataset {body.dataset}: "
            field = f"records[{i}].label" if body.records is not None else "dataset"
            if isinstance(r["label"], list) != multi:
                kind = "lists of labels (it is multi-label)" if multi else "one label per row"
                raise ValidationFailed(f"{where}adapter {version.ref} is evaluated on {kind}", field=field)
            unknown = [name for name in label_names(r) if name not in known]
            if unknown:
                raise ValidationFailed(
                    f"{where}label {unknown[0]!r} is not one of the adapter's labels {version.labels}", field=field
                )
        pairs = [r.get("text_pair") for r in rows]
        version, probs = self.engine.predict(version.ref, [r["text"] for r in rows], pairs if any(pairs) else None)
        truth = [r["label"] for r in rows]
        if multi:
            figures = evaluate_multilabel(version.labels, truth, probs, thresholds_of(version) or [])
            return schemas.MultiLabelEvaluateResponse(adapter=version.ref, **figures)
        return schemas.EvaluateResponse(adapter=version.ref, **evaluate(version.labels, truth, probs))


def _check_known_labels(validation: RequestData, train_labels: set[str]) -> None:
    """Validation data may only carry labels the training data has; the error names the first row with another."""
    unknown = sorted(validation.labels - train_labels)
    if not unknown:
        return
    label, field = unknown[0], "validation.dataset"
    if validation.records is not None:
        row, label = next(
            (i, name) for i, r in enumerate(validation.records) for name in label_names(r) if name in unknown
        )
        field = f"validation.records[{row}].label"
    raise ValidationFailed(f"label {label!r} does not occur in the training data", field=field)
