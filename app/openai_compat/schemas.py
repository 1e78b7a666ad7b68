"""The /v1 wire objects, with OpenAI's field names and types (the official SDK parses these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import Ref, Text, when

Auto = Literal["auto"]


# ---- errors ----------------------------------------------------------------------------------------------------
class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error or server_error")
    param: str | None = Field(None, description="the parameter at fault, if one is")
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""

    error: OpenAIErrorDetail


V1_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": description}
    for status, description in {
        400: "Invalid input; `param` names the offending parameter",
        401: "Missing or unknown API key",
        403: "The key's scope does not allow this call (a read/predict key on a change)",
        404: "Unknown file, job or model",
        409: "The job's state does not allow this (already finished, not paused, file in use)",
        413: "Upload over the size limit",
        500: "Internal error",
    }.items()
}


# ---- files -----------------------------------------------------------------------------------------------------
class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune", "fine-tune-results"]
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# ---- fine-tuning jobs ------------------------------------------------------------------------------------------
class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | int | None = Field(None, description='passes over the training file; "auto": 3')
    batch_size: Auto | int | None = Field(None, description='examples per step; "auto": 16')
    learning_rate_multiplier: Auto | float | None = Field(
        None, description='times peftserve\'s default learning rate (5e-4, calibrated for LoRA); "auto": 1'
    )


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Ref = Field(description="a base model (GET /v1/models), or a fine-tuned one to continue training")
    training_file: Ref = Field(description="a file id from POST /v1/files")
    validation_file: Ref | None = Field(None, description="a file id; without one, 10% of training rows are held out")
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: Text | None = Field(None, max_length=64, description="names the model: ft:<base>:<suffix>:<job id>")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: dict[str, Text] | None = Field(None, description="up to 16 pairs; keys ≤ 64, values ≤ 512 characters")
    integrations: list[dict[str, Any]] | None = Field(None, description="not supported: null or empty")


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class SupervisedOut(BaseModel):
    hyperparameters: HyperparametersOut


class MethodOut(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedOut


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None = Field(description="ft:<base>:<suffix>:<job id>, once the job has succeeded")
    organization_id: str = "peftserve"
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    training_file: str
    validation_file: str | None
    hyperparameters: HyperparametersOut
    method: MethodOut
    result_files: list[str]
    trained_tokens: int | None
    estimated_finish: int | None
    error: JobError | None
    seed: int
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    user_provided_suffix: str | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = Field(None, description="the validation accuracy")
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="a model id chat completions take")
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# ---- models ----------------------------------------------------------------------------------------------------
class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


# ---- chat completions ------------------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionCreate(BaseModel):
    """What a classifier can honour; any other parameter (tools, response_format, penalties...) is a 400."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # the rules _check_options enforces
            "allOf": [
                when({"top_logprobs": {"type": "integer"}}, {"logprobs": {"const": True}}),
                when({"n": {"minimum": 2}}, {"temperature": {"type": "number", "exclusiveMinimum": 0}}),
            ]
        },
    )

    model: Ref
    messages: list[dict[str, Any]] = Field(description="the user turns are the text classified; system turns aside")
    n: int = Field(1, ge=1, le=16, description="choices; above 1 needs temperature > 0 (labels sampled)")
    temperature: float | None = Field(
        None, ge=0, le=2, description="unset or 0: the most likely label; > 0: labels sampled from p^(1/T)"
    )
    top_p: float | None = Field(None, gt=0, le=1, description="sampling: the smallest label set holding this mass")
    max_tokens: int | None = Field(None, ge=1, description="a label is one completion token: any value ≥ 1")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="the label's log-probability (and top_logprobs: the others')")
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = Field(None, description="one chunk with the label, then [DONE]")
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, description="seeds the sampling (temperature > 0)")
    user: Text | None = None
    metadata: dict[str, Text] | None = None
    store: bool | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = Field(None, description="the adapter version that answered")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
