"""A worker process: claim the next queued job, train it on a base model kept loaded, record the result.

`process` reads as two halves: `_attempt` does the job (load its data and base, train, commit the adapter)
and returns an `Outcome` whatever happens; `_record` writes that outcome to the job store (finish, requeue,
or leave a job another worker now owns alone) and drops the checkpoint unless the job may resume from it.
Shared resources (the stores, the loaded base) are built once and reused by the next job on the same base.
What a job trains on is read by app/jobs/job_inputs.py; with `FUSED_JOBS` > 1 several jobs on one base are
trained together (app/jobs/together.py), recorded the same way. `run(burst=True)` drains the queue and
returns, which keeps worker tests simple.

Launched by torchrun with several processes (one per GPU), the worker is a training group
(app/training/distributed.py): rank 0 runs the loop above and tells the other ranks each job it claims, and
they train it alongside (`_follow`) without writing anything.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from app.base_models.loading import LoadedBase, load_base, resolve_dtype
from app.config import Settings
from app.errors import JobInterrupted, NotFound, TrainingError
from app.jobs.job_inputs import JobInputs, adapter_meta, read_inputs
from app.jobs.reporting import Heartbeat, JobReporter, SilentReporter
from app.jobs.tables import Job, JobStatus
from app.jobs.together import TrainTogether
from app.resources import SharedResources
from app.stores.adapters import AdapterVersion
from app.training.advice import result_warnings
from app.training.checkpoint import Checkpoints
from app.training.distributed import IDLE, STOP, Group, GroupBroken

if TYPE_CHECKING:  # heavy imports (torch, peft), worker-only at run time
    from app.training.loop import EpochSink, TrainResult

log = logging.getLogger(__name__)


def worker_id(pid: int | None = None) -> str:
    """A worker's name in the job store: its host and process id (the pool names a dead child the same way)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


@dataclass
class Outcome:
    """How one attempt at a job ended."""

    kind: Literal["succeeded", "cancelled", "failed", "shutdown", "paused", "lost"]
    adapter: AdapterVersion | None = None  # succeeded: the version saved
    metrics: dict | None = None  # succeeded: the run's metrics
    warnings: list[str] | None = None  # succeeded: what to look at (app/training/advice.py)
    error: tuple[str, str] | None = None  # failed: (code, message)
    breaks_group: bool = False  # failed on this rank alone, maybe: the training group must end

    @property
    def ended(self) -> bool:
        """The job is over (nothing to resume): shutdown requeues it, a paused job resumes later from its
        checkpoint, and a lost job is another worker's now."""
        return self.kind in ("succeeded", "cancelled", "failed")


class Worker:
    def __init__(self, settings: Settings, parent_pid: int | None = None):
        # Under torchrun (WORLD_SIZE > 1): one rank of a group training each job together, pinned to its GPU.
        self.group = Group.from_env(settings.distributed_backend, settings.distributed_timeout_seconds)
        # A database restart is waited out for as long as the lease lasts (after that, others requeue the job).
        self.resources = SharedResources.open(settings, store_retry_seconds=settings.lease_seconds)
        self.settings, self.store = settings, self.resources.store
        self.id = worker_id()
        self.base: LoadedBase | None = None  # kept between jobs on the same base
        self.stopping = threading.Event()
        if parent_pid is not None:  # started by `peftserve serve`: don't outlive it, even after a kill -9
            threading.Thread(target=self._watch_parent, args=(parent_pid,), daemon=True).start()

    def _watch_parent(self, parent_pid: int) -> None:
        while not self.stopping.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("parent process %d is gone; stopping", parent_pid)
                self.stopping.set()

    def run(self, burst: bool = False) -> int:
        """Process jobs until stopped (or, in burst mode, until the queue is empty). Returns jobs done."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())
        res = self.resources
        log.info("worker %s ready (device=%s, quantization=%s)", self.id, res.device, res.quantization)
        if self.group is not None and not self.group.main:
            return self._follow()
        done, last_sweep = 0, 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_sweep > self.settings.lease_seconds / 2:
                    self.store.requeue_stale(self.settings.lease_seconds, self.settings.max_attempts)
                    self.sweep_checkpoints()
                    last_sweep = time.monotonic()
                job = self.store.claim_next(self.id)
                if job is None and burst:
                    break
                self._announce(job.id if job else IDLE)
                if job is None:
                    self.stopping.wait(self.settings.poll_interval)
                    continue
                if self._fuses():
                    done += TrainTogether(self, job).run()
                else:
                    self.process(job)
                    done += 1
            self._announce(STOP)
            self._leave_group()
        finally:
            res.close()
        return done

    def _announce(self, order: str | None) -> None:
        if self.group is not None:
            self.group.announce(order)

    def _follow(self) -> int:
        """A rank other than 0: train each job rank 0 announces alongside it, until it says stop. A broken group
        (GroupBroken) ends the process; the job is rank 0's to recover."""
        assert self.group is not None
        done = 0
        try:
            while (order := self.group.receive()) is not STOP:
                if order:
                    self._train_alongside(self.store.get_job(order))
                    done += 1
            self._leave_group()
        finally:
            self.resources.close()
        return done

    def _leave_group(self) -> None:
        if self.group is not None:
            self.group.close()

    def sweep_checkpoints(self) -> None:
        """Remove the checkpoints of jobs that ended without a worker (cancelled while queued or paused, failed
        after lost workers) or no longer exist; and the epoch checkpoints of jobs that did not succeed."""
        checkpoints = self.resources.checkpoints
        for job_id in [name for name in checkpoints.children() if name.startswith("job_")]:
            status = self._status(job_id)
            if status is None or status.terminal:
                checkpoints.delete(job_id)
        epochs = self.resources.epochs
        for job_id in epochs.job_ids():
            status = self._status(job_id)
            if status is None or status in (JobStatus.cancelled, JobStatus.failed):
                epochs.delete(job_id)

    def _status(self, job_id: str) -> JobStatus | None:
        try:
            return JobStatus(self.store.get_job(job_id).status)
        except NotFound:
            return None

    def process(self, job: Job) -> None:
        """One claimed job: do it, then record how it ended."""
        # Job ids are ours ("job_" + hex): a key of its own under the checkpoints area.
        checkpoints = Checkpoints(self.resources.checkpoints.child(job.id), self.settings.checkpoint_steps)
        with Heartbeat(self.store, job.id, self.id, self.settings.heartbeat_interval) as beat:
            reporter = JobReporter(self.store, job.id, self.id, self.stopping, beat)
            outcome = self._attempt(job, reporter, checkpoints)
        self.record(job, outcome, checkpoints)
        if outcome.breaks_group:
            raise GroupBroken(RuntimeError(f"job {job.id} failed on rank 0"))

    # ---- doing the job ------------------------------------------------------------------------
    def _attempt(self, job: Job, reporter: JobReporter, checkpoints: Checkpoints) -> Outcome:
        """Train and commit; every way that can end (done, interrupted, failed) is an Outcome."""
        try:
            return self._train_and_commit(job, reporter, checkpoints)
        except GroupBroken:  # a rank is gone: the job stays ours until the lease runs out, then it resumes
            log.error("job %s: the training group broke; stopping this worker", job.id)
            raise
        except Exception as e:  # noqa: BLE001 - any failure ends the job with a readable error
            return self.outcome_of(job, e)

    def _fuses(self) -> bool:
        """Whether this worker trains jobs together: asked for, not a training group, no gradient checkpointing."""
        s = self.settings
        return s.fused_jobs > 1 and self.group is None and not s.gradient_checkpointing

    # ---- what one job alone and jobs together (app/jobs/together.py) both use ---------------------
    def outcome_of(self, job: Job, e: Exception) -> Outcome:
        """How an exception ends a job: interrupted ("cancelled", "paused", "lost": requeued after a missed lease,
        "shutdown") or failed, with a readable error. Called inside the `except` that caught it."""
        if isinstance(e, JobInterrupted):
            return Outcome(e.reason)  # type: ignore[arg-type]
        self.base = None  # a failed set-up may have left the shared base half-wrapped: reload it next time
        if isinstance(e, TrainingError):
            return Outcome("failed", error=(e.code, e.message))
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        error = ("training_failed", f"{type(e).__name__}: {e}"[:2000])
        # In a group the other ranks may be mid-step: the group ends once the failure is recorded.
        return Outcome("failed", error=error, breaks_group=self.group is not None)

    def _train_and_commit(self, job: Job, reporter: JobReporter, checkpoints: Checkpoints) -> Outcome:
        from app.training.trainer import train_adapter  # heavy import, worker-only

        inputs = read_inputs(self.resources, job)
        hp, train, val, parent, labels = inputs.hp, inputs.train, inputs.val, inputs.parent, inputs.labels
        reporter.batch_size = hp.batch_size
        base = self.base_for(job.base_model, reporter)
        reporter.event(f"Training {len(train)} examples, validating on {len(val)}; labels {labels}")
        meta = adapter_meta(job, inputs, base)

        keep_epoch = self.epoch_sink(job, meta)
        staging = self.resources.adapters.staging_dir()
        try:
            result = train_adapter(
                base,
                train,
                val,
                labels,
                hp,
                staging,
                reporter,
                gradient_checkpointing=self.settings.gradient_checkpointing,
                checkpoints=checkpoints,
                init_from=parent.weights if parent else None,
                multi_label=inputs.multi_label,
                keep_epoch=keep_epoch,
                group=self.group,
            )
            return self.commit(job, inputs, meta, staging, result)
        finally:
            self.resources.adapters.discard(staging)  # gone already once committed

    def commit(self, job: Job, inputs: JobInputs, meta: dict, staging: Path, result: TrainResult) -> Outcome:
        """A finished run's adapter (saved in `staging`) committed as the job's new version, with its metrics
        and what to look at; "lost" instead when the lease was lost meanwhile (another worker has the job)."""
        if not self.store.owns(job.id, self.id):
            return Outcome("lost")
        meta["metrics"] = result.metrics
        if inputs.multi_label:
            meta["thresholds"] = result.thresholds
        adapter = self.resources.adapters.commit(staging, job.adapter, meta)
        warnings = result_warnings([r["label"] for r in inputs.val], inputs.labels, result.metrics)
        for warning in warnings:
            self.store.add_event(job.id, f"Warning: {warning}", level="warning", data={"warning": warning})
        return Outcome("succeeded", adapter=adapter, metrics=meta["metrics"], warnings=warnings)

    def epoch_sink(self, job: Job, meta: dict) -> EpochSink:
        """Where each epoch's adapter goes (the epoch store, servable while the job runs)."""

        def keep_epoch(step: int, epoch: int, figures: dict, write: Callable[[Path], None]) -> None:
            self.resources.epochs.save(job.id, step, write, {**meta, "epoch": epoch, "metrics": figures})

        return keep_epoch

    def _train_alongside(self, job: Job) -> None:
        """A follower's part in a job rank 0 trains: the same inputs and base, its share of each batch, nothing
        reported or written. A stop or a training error ends it on every rank alike."""
        from app.training.trainer import train_adapter

        checkpoints = Checkpoints(self.resources.checkpoints.child(job.id), self.settings.checkpoint_steps)
        try:
            inputs = read_inputs(self.resources, job)
            base = self.base_for(job.base_model, SilentReporter())
            with tempfile.TemporaryDirectory() as scratch:  # never written: rank 0 saves the adapter
                train_adapter(
                    base,
                    inputs.train,
                    inputs.val,
                    inputs.labels,
                    inputs.hp,
                    Path(scratch),
                    SilentReporter(),
                    gradient_checkpointing=self.settings.gradient_checkpointing,
                    checkpoints=checkpoints,
                    init_from=inputs.parent.weights if inputs.parent else None,
                    multi_label=inputs.multi_label,
                    group=self.group,
                )
            log.info("job %s trained alongside rank 0", job.id)
        except GroupBroken:
            raise
        except JobInterrupted as e:
            log.info("job %s stopped on every rank: %s", job.id, e.reason)
        except TrainingError as e:
            self.base = None
            log.info("job %s failed on every rank: %s", job.id, e.message)

    def base_for(self, name: str, reporter: JobReporter | SilentReporter) -> LoadedBase:
        if self.base is None or self.base.name != name:
            self.base = None  # one base per worker process: free the old one first
            started = time.perf_counter()
            res = self.resources
            dtype = resolve_dtype(self.settings.training_dtype, res.device, res.quantization)
            self.base = load_base(res.registry.resolve(name), res.quantization, res.device, dtype)
            reporter.event(f"Loaded base {name} ({res.quantization}) in {time.perf_counter() - started:.1f}s")
        return self.base

    # ---- recording what happened --------------------------------------------------------------
    def record(self, job: Job, outcome: Outcome, checkpoints: Checkpoints) -> None:
        """The outcome in the job store; the job's checkpoint dropped unless it may resume from it."""
        self._record(job, outcome)
        if outcome.ended:
            checkpoints.clear()

    def _record(self, job: Job, outcome: Outcome) -> None:
        finish = self.store.finish
        match outcome.kind:
            case "succeeded":
                assert outcome.adapter is not None
                ref = outcome.adapter.ref
                finish(
                    job.id,
                    self.id,
                    JobStatus.succeeded,
                    result_adapter=ref,
                    result_metrics=outcome.metrics,
                    result_warnings=outcome.warnings,
                    message=f"Saved adapter {ref}",
                )
            case "cancelled":
                finish(job.id, self.id, JobStatus.cancelled, message="Cancelled")
                self.resources.epochs.delete(job.id)
            case "failed":
                assert outcome.error is not None
                finish(job.id, self.id, JobStatus.failed, error=outcome.error, message=f"Failed: {outcome.error[1]}")
                self.resources.epochs.delete(job.id)
            case "shutdown":
                self.store.requeue(job.id, self.id, "worker shut down; resumes from its checkpoint")
            case "paused":
                self.store.pause(job.id, self.id)
            case "lost":  # requeued after a missed lease: another worker has it, and its checkpoint
                log.warning("job %s is no longer ours; stopping without touching it", job.id)
