"""The names the OpenAI face gives peftserve's things, and back.

- a job's model: `ft:<base>:<suffix>:<job id>` (`ft:<base>::<job id>` without a suffix, as OpenAI writes it; a
  native job's adapter name stands as its suffix); an epoch checkpoint's: that, then `:ckpt-step-<N>`;
- an imported adapter (no job made it) keeps its own name, `name@vN`;
- a job's result file (its metrics as CSV): `rf_` and the job id's hex; a file uploaded to /v1/files is a
  dataset, and keeps the dataset's id (`ds_...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from app.jobs.tables import Job

CHECKPOINT_RE = re.compile(r"^ckpt-step-([0-9]{1,9})$")
RESULT_PREFIX = "rf_"


def unix(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


def model_id(job: Job) -> str:
    """The model a job makes (whether or not it has succeeded yet)."""
    suffix = job.suffix if job.suffix is not None else job.adapter
    return f"ft:{job.base_model}:{suffix}:{job.id}"


def checkpoint_id(job: Job, step: int) -> str:
    return f"{model_id(job)}:ckpt-step-{step}"


@dataclass(frozen=True)
class FineTunedName:
    job_id: str
    step: int | None  # an epoch checkpoint's step; None: the job's final model


def parse_fine_tuned(name: str) -> FineTunedName | None:
    """The job (and checkpoint step) an `ft:` name points at, or None if it is not one. The caller checks the
    whole name against the job's (`model_id`), so a wrong base or suffix names nothing."""
    parts = name.split(":")
    if parts[0] != "ft" or len(parts) < 4:
        return None
    m = CHECKPOINT_RE.fullmatch(parts[-1])
    if m:
        return FineTunedName(parts[-2], int(m.group(1))) if len(parts) >= 5 else None
    return FineTunedName(parts[-1], None)


def result_file_id(job_id: str) -> str:
    return RESULT_PREFIX + job_id.removeprefix("job_")


def job_of_result_file(file_id: str) -> str:
    return "job_" + file_id.removeprefix(RESULT_PREFIX)
