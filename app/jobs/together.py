"""Several claimed jobs trained together on one worker (`FUSED_JOBS` > 1): the first job and the queued jobs on
its base that join it, up to `fused_jobs` at once, a step of each per forward and backward
(app/training/fused.py). Between steps a queued job on the same base joins where there is room (checked every
`poll_interval`); each job's outcome is recorded as soon as it ends, and the others go on.

The worker (app/jobs/worker.py) lends what one job alone uses too: its base, each job's epoch sink, the
commit of a finished adapter, the mapping of an exception to an outcome, and the recording of that outcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.jobs.job_inputs import JobInputs, adapter_meta, read_inputs
from app.jobs.reporting import Heartbeat, JobReporter
from app.jobs.tables import Job
from app.training.checkpoint import Checkpoints

if TYPE_CHECKING:  # heavy imports (torch, peft), worker-only at run time
    from app.jobs.worker import Worker
    from app.training.fused import FusedTraining
    from app.training.loop import TrainResult

log = logging.getLogger(__name__)


@dataclass
class _Joined:
    """A job training in the group, and what ending it takes."""

    job: Job
    inputs: JobInputs
    meta: dict
    staging: Path
    beat: Heartbeat
    checkpoints: Checkpoints


class TrainTogether:
    def __init__(self, worker: Worker, first: Job):
        self.worker, self.first = worker, first
        self.resources, self.settings = worker.resources, worker.settings
        self.active: dict[str, _Joined] = {}
        self.fused: FusedTraining | None = None

    def run(self) -> int:
        """Train until every job has ended (none left to join); returns the jobs done."""
        done, job, polled = 0, self.first, time.monotonic()
        try:
            while True:
                if job is not None:
                    self._join(job)
                    done += 1
                if not self.active or self.fused is None:
                    return done
                for job_id, result in self.fused.step().items():
                    self._end(self.active.pop(job_id), result)
                job = None
                if self._room() and time.monotonic() - polled >= self.settings.poll_interval:
                    job = self.resources.store.claim_next(self.worker.id, base_model=self.first.base_model)
                    polled = time.monotonic()
        finally:
            for joined in self.active.values():  # only on an unexpected error: their leases run out, they resume
                joined.beat.__exit__(None, None, None)
                self.resources.adapters.discard(joined.staging)
            if self.fused is not None:
                self.fused.close()

    def _room(self) -> bool:
        return 0 < len(self.active) < self.settings.fused_jobs and not self.worker.stopping.is_set()

    def _join(self, job: Job) -> None:
        """Add a claimed job to the group (the group made on the first job's base); a job that cannot start
        ends at once, recorded."""
        from app.training.fused import FusedTraining

        checkpoints = Checkpoints(self.resources.checkpoints.child(job.id), self.settings.checkpoint_steps)
        beat = Heartbeat(self.resources.store, job.id, self.worker.id, self.settings.heartbeat_interval).__enter__()
        reporter = JobReporter(self.resources.store, job.id, self.worker.id, self.worker.stopping, beat)
        staging = None
        try:
            inputs = read_inputs(self.resources, job)
            reporter.batch_size = inputs.hp.batch_size
            base = self.fused.base if self.fused is not None else self.worker.base_for(job.base_model, reporter)
            self.fused = self.fused or FusedTraining(base)
            reporter.event(
                f"Training {len(inputs.train)} examples, validating on {len(inputs.val)}; labels {inputs.labels};"
                f" together with {len(self.active)} other job(s) on this worker"
            )
            meta = adapter_meta(job, inputs, base)
            staging = self.resources.adapters.staging_dir()
            self.fused.join(
                job.id,
                inputs.train,
                inputs.val,
                inputs.labels,
                inputs.hp,
                staging,
                reporter,
                checkpoints=checkpoints,
                init_from=inputs.parent.weights if inputs.parent else None,
                multi_label=inputs.multi_label,
                keep_epoch=self.worker.epoch_sink(job, meta),
            )
            self.active[job.id] = _Joined(job, inputs, meta, staging, beat, checkpoints)
        except Exception as e:  # noqa: BLE001 - this job ends; the group goes on
            beat.__exit__(None, None, None)
            if staging is not None:
                self.resources.adapters.discard(staging)
            self.worker.record(job, self.worker.outcome_of(job, e), checkpoints)

    def _end(self, joined: _Joined, result: TrainResult | BaseException) -> None:
        """A job that left the group: its adapter committed (a TrainResult) or its stop or failure recorded."""
        worker = self.worker
        try:
            if isinstance(result, BaseException):
                raise result
            outcome = worker.commit(joined.job, joined.inputs, joined.meta, joined.staging, result)
        except Exception as e:  # noqa: BLE001 - recorded as the job's outcome
            outcome = worker.outcome_of(joined.job, e)
        finally:
            joined.beat.__exit__(None, None, None)
            self.resources.adapters.discard(joined.staging)
        worker.record(joined.job, outcome, joined.checkpoints)
