"""The HTTP contract: request and response bodies. Later issues and users rely on these fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StrictInt,
    StrictStr,
    UrlConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.jobs.tables import Job, JobStatus
from app.stores.adapters import NAME_PATTERN, REF_PATTERN
from app.training.config import Hyperparameters
from app.training.data import surrogate_at


def _encodable(value: str) -> str:
    if (at := surrogate_at(value)) is not None:
        raise ValueError(f"contains an unpaired surrogate at position {at}")
    return value


# Every string a client sends: a real str (no coercion) that is valid Unicode (JSON's "\ud800" is not).
Text = Annotated[StrictStr, AfterValidator(_encodable)]
# A reference to something stored (a dataset, a base model, a file): never empty; one that names nothing is a 404.
Ref = Annotated[Text, Field(min_length=1)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "is empty (nothing but whitespace)")
    return value


# A text to classify: something besides whitespace (the document says so with a pattern).
InputText = Annotated[
    StrictStr, AfterValidator(_not_blank), AfterValidator(_encodable), Field(json_schema_extra={"pattern": r"\S"})
]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text
    label: Text | StrictInt | list[Text] = Field(description="a label, or a list of labels (multi-label, maybe none)")
    text_pair: Text | None = None


def one_of(*names: str) -> dict[str, Any]:
    """The model's JSON schema says what its validator checks: exactly one of these fields."""
    return {"oneOf": [{"required": [name]} for name in names]}


def when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A rule across fields the validator checks, in the schema's words: objects whose properties match
    `condition` (each named one present) must have properties matching `then` (each named one present)."""
    return {
        "if": {"required": list(condition), "properties": condition},
        "then": {"required": list(then), "properties": then},
    }


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not null: the other field of a oneOf is given instead


def _ref_without_default(schema: dict[str, Any]) -> None:
    _no_default(schema)
    schema["pattern"] = REF_PATTERN


class DataSource(BaseModel):
    """Inline records, or the id of an uploaded dataset (exactly one)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=one_of("records", "dataset"))

    records: list[Record] = Field(None, json_schema_extra=_no_default)  # type: ignore[assignment]
    dataset: Ref = Field(None, description="an uploaded dataset's id (ds_…)", json_schema_extra=_no_default)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one(self) -> DataSource:
        if (self.records is None) == (self.dataset is None):
            raise ValueError("give either records or dataset")
        return self


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: Text = Field(
        description="name of the adapter to train; a new version if it exists",
        json_schema_extra={"pattern": NAME_PATTERN},  # checked by the service, which says what a name may be
    )
    base_model: Ref = "minilm"
    train: DataSource
    validation: DataSource | None = None
    validation_split: float = Field(0.1, ge=0, lt=1, description="held out of train when no validation")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    init_from: Ref | None = Field(
        None,
        description="continue training this adapter version (`name`: the newest, or `name@vN`): start from its LoRA"
        " weights and head; the same base and label set, its LoRA rank, alpha and targets",
    )
    webhook_url: Annotated[HttpUrl, UrlConstraints(max_length=2048)] | None = Field(
        None, description="called with a signed POST when the job ends (succeeded, failed or cancelled)"
    )


class Progress(BaseModel):
    step: int
    total_steps: int
    epoch: float
    fraction: float


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    adapter: str
    metrics: dict[str, Any]
    warnings: list[str] = Field(
        default_factory=list, description="what to look at in this result, each saying what to do about it"
    )


class JobPublic(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    adapter: str
    base_model: str
    hyperparameters: dict[str, Any]
    train_dataset: str
    validation_dataset: str | None
    validation_split: float
    init_from: str | None = Field(None, description="the adapter version this job continues (`name@vN`)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    error: ErrorInfo | None
    result: JobResult | None
    attempts: int
    estimated_finish: datetime | None = Field(None, description="while running: from the measured step time")
    webhook_url: str | None = None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        status = JobStatus(job.status)
        fraction = 1.0 if status is JobStatus.succeeded else (job.step / job.total_steps if job.total_steps else 0.0)
        return cls(
            id=job.id,
            status=status,
            adapter=job.adapter,
            base_model=job.base_model,
            hyperparameters=job.hyperparameters,
            train_dataset=job.train_dataset,
            validation_dataset=job.validation_dataset,
            validation_split=job.validation_split,
            init_from=job.init_from,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch, fraction=round(fraction, 4)),
            error=ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            result=JobResult(
                adapter=job.result_adapter, metrics=job.result_metrics or {}, warnings=job.result_warnings or []
            )
            if job.result_adapter
            else None,
            attempts=job.attempts,
            estimated_finish=job.estimated_finish if status is JobStatus.running else None,
            webhook_url=_masked(job.webhook_url),
        )


def _masked(url: str | None) -> str | None:
    """A webhook URL's origin only: its path and query often carry a token, and read-only keys see jobs."""
    if not url:
        return None
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…"


class JobsPublic(BaseModel):
    data: list[JobPublic]
    has_more: bool


class TrainPoint(BaseModel):
    step: int
    epoch: float
    loss: float | None = None
    learning_rate: float | None = None


class LabelMetrics(BaseModel):
    """One label's figures on labelled data (scikit-learn's precision_recall_fscore_support)."""

    precision: float
    recall: float
    f1: float
    support: int = Field(description="rows whose true label this is")


class EvalPoint(BaseModel):
    step: int
    epoch: float
    loss: float | None = None
    accuracy: float | None = None
    f1_macro: float | None = None
    per_label: dict[str, LabelMetrics] | None = None
    predicted: dict[str, int] | None = Field(None, description="single-label: how often each label was predicted")
    f1_micro: float | None = Field(None, description="multi-label")
    subset_accuracy: float | None = Field(None, description="multi-label: rows with every label right")
    hamming_loss: float | None = Field(None, description="multi-label: share of wrong row-label decisions")


class JobMetrics(BaseModel):
    job_id: str
    status: JobStatus
    progress: Progress
    train: list[TrainPoint]
    eval: list[EvalPoint]
    summary: dict[str, Any]


class EventPublic(BaseModel):
    id: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class EventsPublic(BaseModel):
    data: list[EventPublic]
    has_more: bool


class DatasetPublic(BaseModel):
    id: str
    filename: str | None
    n_records: int
    labels: dict[str, int] = Field(description="rows per label (multi-label: rows holding each)")
    multi_label: bool = Field(False, description="labels are lists: a multi-label task")
    notes: list[str] = Field(default_factory=list, description="how the upload was read (integer labels as names)")
    created_at: datetime

    @field_validator("notes", mode="before")
    @classmethod
    def _no_notes(cls, v: Any) -> Any:
        return v or []


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    has_more: bool


class LengthPercentiles(BaseModel):
    p50: int
    p90: int
    p99: int
    max: int


class DatasetDetailsPublic(DatasetPublic):
    size_bytes: int | None = Field(None, description="the stored JSONL's size")
    sha256: str = Field(description="of the stored JSONL (the id is its first 24 hex digits)")
    length_chars: LengthPercentiles = Field(description="characters per row (text, and text_pair if any)")
    length_words: LengthPercentiles = Field(description="whitespace-separated words per row")
    first_rows: list[dict[str, Any]] = Field(description="the first rows as stored ({text, label[, text_pair]})")

    @classmethod
    def from_details(cls, d: Any) -> DatasetDetailsPublic:
        base = DatasetPublic.model_validate(d.row, from_attributes=True).model_dump()
        return cls(
            **base,
            size_bytes=d.row.size_bytes,
            sha256=d.row.sha256,
            length_chars=LengthPercentiles(**d.chars),
            length_words=LengthPercentiles(**d.words),
            first_rows=d.first_rows,
        )


class AdapterVersionPublic(BaseModel):
    name: str
    version: int
    ref: str
    base_model: str
    labels: list[str]
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    job_id: str | None
    parent: str | None = Field(None, description="the version this one continued (`init_from`), if any")
    created_at: str
    sha256: str
    size_bytes: int


class AdapterPublic(BaseModel):
    name: str
    latest: str
    versions: list[AdapterVersionPublic]


class LoadedAdapter(BaseModel):
    adapter: str
    base_model: str
    bytes: int
    requests: int


class AdaptersPublic(BaseModel):
    data: list[AdapterPublic]
    loaded: list[LoadedAdapter]


class DeletedPublic(BaseModel):
    deleted: list[str]


class PredictRequest(BaseModel):
    """One adapter (`adapter`), or several classifiers on the same inputs (`adapters`): exactly one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            **one_of("adapter", "adapters"),
            # one text: one pair (a list of inputs: as many pairs, which a schema can't say)
            **when({"inputs": {"type": "string"}}, {"text_pairs": {"type": "array", "maxItems": 1}}),
        },
    )

    adapter: Text = Field(  # type: ignore[assignment]
        None, description="`name` (newest version) or `name@vN`", json_schema_extra=_ref_without_default
    )
    adapters: list[Annotated[Text, Field(json_schema_extra={"pattern": REF_PATTERN})]] = Field(  # type: ignore[assignment]
        None,
        min_length=1,
        description="several adapters: each input answered by every one, in one mixed batch",
        json_schema_extra=_no_default,
    )
    inputs: InputText | Annotated[list[InputText], Field(min_length=1)] = Field(
        description="a text, or a list of texts (at most the server's PEFTSERVE_MAX_PREDICT_INPUTS)"
    )
    text_pairs: Annotated[list[InputText], Field(min_length=1)] | None = Field(
        None, description="second texts, one per input (pair tasks)"
    )


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class MultiLabelPrediction(BaseModel):
    """A multi-label adapter's answer: every label at or over its threshold (possibly none), and each label's
    probability (independent sigmoids: they need not sum to 1)."""

    labels: list[str]
    scores: dict[str, float]


class PredictResponse(BaseModel):
    adapter: str
    predictions: list[Prediction] | list[MultiLabelPrediction]


class MultiPredictResponse(BaseModel):
    """The answer to `adapters`: the versions that answered, and per input each adapter's prediction, keyed by
    the adapter as the request named it."""

    adapters: list[str] = Field(description="the version each requested adapter resolved to, in request order")
    predictions: list[dict[str, Prediction | MultiLabelPrediction]]


class EvaluateRequest(DataSource):
    """An adapter, and labelled data to score it on: inline records or an uploaded dataset (exactly one)."""

    adapter: Text = Field(
        description="`name` (newest version) or `name@vN`", json_schema_extra={"pattern": REF_PATTERN}
    )


class EvaluateResponse(BaseModel):
    adapter: str
    n: int
    accuracy: float
    f1_macro: float
    precision_macro: float
    recall_macro: float
    per_label: dict[str, LabelMetrics]
    labels: list[str]
    confusion_matrix: list[list[int]]


class MultiLabelEvaluateResponse(BaseModel):
    """A multi-label adapter on labelled rows: its decisions (each label at its threshold) scored."""

    adapter: str
    n: int
    f1_micro: float
    f1_macro: float
    subset_accuracy: float = Field(description="rows whose every label was decided right")
    hamming_loss: float = Field(description="the share of wrong row-label decisions")
    per_label: dict[str, LabelMetrics]
    labels: list[str]
    thresholds: list[float] = Field(description="each label's probability threshold, in `labels` order")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    queued: int
    workers: int
    device: str
    quantization: str
    base_models: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error envelope: `{"error": {"code", "message", "field"}}`."""

    error: ErrorDetail


# Documented on every authenticated route (app/main.py), so clients and schema-driven tools see the envelope
# for each error status the API answers with (FastAPI's own 422 `{"detail": [...]}` is never sent).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "Missing or unknown API key",
        403: "The key's scope does not allow this call (a read/predict key on a change)",
        404: "Unknown job, dataset or adapter (version)",
        409: "The resource's state does not allow this (job already finished, adapter not servable)",
        413: "Upload over the size limit",
        422: "Invalid input; `field` names the offending field and row",
        500: "Internal error",
    }.items()
}
