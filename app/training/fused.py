"""Several jobs trained together on one base: one forward and one backward a step for all of them, each row
of the batch through its own job's LoRA layers and head (as the serving engine routes rows), each job with its
own optimizer, schedule, evaluation, early stopping, checkpoints and stop (app/training/loop.py's
`TrainingRun`, driven a step at a time).

How a job joins: peft builds its LoRA layers and head on the clean base exactly as for a job trained alone
(the same seed gives the same initial weights, parameter names and order, so a checkpoint written by either
kind of run resumes in the other), the trainable modules are taken out, and the base is unloaded again.
Every Linear some job targets is then wrapped in a `FusedLoRALinear`, which adds to each job's consecutive
rows that job's dropout(x)·Aᵀ·Bᵀ·scale, and every head module in a `FusedHead`, which runs each job's rows
through that job's head. A job that ends (finished, failed, cancelled, paused, shut down) leaves at once and
the others go on; a job may join between any two steps. When the last job leaves, the base is as it was.

Knows nothing of HTTP or the database: each job reports through its own Reporter.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from app.base_models.loading import LoadedBase, new_head
from app.base_models.tokens import pad
from app.training.checkpoint import Checkpoints
from app.training.config import Hyperparameters
from app.training.dropout import restore, swap_dropouts
from app.training.loop import EpochSink, Reporter, TrainingRun, TrainResult, uses_autocast
from app.training.trainer import (
    EAGER_ATTENTION_MAX_TOKENS,
    load_parent,
    prepare_base,
    seed_everything,
    set_attention,
    with_lora,
)

log = logging.getLogger(__name__)

ADAPTER = "default"  # the adapter name peft gives a job's layers (one adapter per PeftModel, as for a job alone)

# What one more forward/backward pass costs, in padded tokens: a step's jobs share a pass unless padding them
# to one length costs more than this (the serving engine's figure for a forward, `bucket_overhead_tokens`; not
# measured apart for training).
STEP_OVERHEAD_TOKENS = 64


@dataclass
class Spans:
    """The running forward's rows, job by job: (job key, first row, end row), consecutive and covering all."""

    rows: list[tuple[str, int, int]] = field(default_factory=list)


class _JobLoRA(nn.Module):
    """One job's LoRA pair on one layer (peft's own lora_A / lora_B Linears) with its scale and input dropout."""

    def __init__(self, a: nn.Module, b: nn.Module, scale: float, dropout: nn.Module):
        super().__init__()
        self.lora_A, self.lora_B, self.dropout, self.scale = a, b, dropout, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scale


class FusedLoRALinear(nn.Module):
    """A frozen Linear (or Conv1D, or quantized Linear) plus, for each job's rows, that job's LoRA term."""

    def __init__(self, base: nn.Module, spans: Spans):
        super().__init__()
        self.base, self.spans = base, spans
        self.jobs = nn.ModuleDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        spans = [s for s in self.spans.rows if s[0] in self.jobs]
        if not spans:
            return y
        if len(spans) == len(self.spans.rows) == 1:  # one job's rows only (its evaluation): no slicing
            return y + self.jobs[spans[0][0]](x).to(y.dtype)
        pieces = []
        for key, lo, hi in self.spans.rows:
            if key in self.jobs:
                pieces.append(self.jobs[key](x[lo:hi]).to(y.dtype))
            else:  # a job that does not target this layer
                pieces.append(y.new_zeros(hi - lo, *y.shape[1:]))
        return y + torch.cat(pieces)


class FusedHead(nn.Module):
    """A head module of the model, one per job: each job's rows through its own (outputs of different widths,
    the logits of different label counts, are zero-padded to the widest; each job's loss reads its own)."""

    def __init__(self, original: nn.Module, spans: Spans):
        super().__init__()
        self.spans = spans
        self.jobs = nn.ModuleDict()
        self._original = [original]  # the base's own module, put back when the last job leaves (not a child)

    @property
    def original(self) -> nn.Module:
        return self._original[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spans.rows:
            raise RuntimeError("a fused head runs only inside FusedTraining.routed")
        outs = [self.jobs[key](x[lo:hi]) for key, lo, hi in self.spans.rows]
        if len(outs) == 1:
            return outs[0]
        width = max(o.shape[-1] for o in outs)
        return torch.cat([F.pad(o, (0, width - o.shape[-1])) for o in outs])


class JobView:
    """What a `TrainingRun` needs of its model, for one job of the group: its trainable parameters (named as
    peft names them for a job alone), train/eval, a forward of its rows alone, and saving in peft's format."""

    def __init__(self, fused: FusedTraining, key: str, named: list[tuple[str, nn.Parameter]], saved_as: dict, config):
        self.fused, self.key, self.named = fused, key, named
        self.saved_as = saved_as  # parameter name -> its key in adapter_model.safetensors
        self.config = config  # the job's LoraConfig

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.named)

    def load_state_dict(self, weights: dict[str, torch.Tensor], strict: bool = False) -> None:
        with torch.no_grad():
            for name, p in self.named:
                if name in weights:
                    p.copy_(weights[name])

    def train(self) -> JobView:
        self.fused.base.model.train()
        return self

    def eval(self) -> JobView:
        self.fused.base.model.eval()
        return self

    def __call__(self, **inputs: torch.Tensor) -> Any:
        n = next(iter(inputs.values())).shape[0]
        with self.fused.routed([(self.key, 0, n)]):
            return self.fused.base.model(**inputs)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """The adapter as `PeftModel.save_pretrained` writes it: adapter_config.json and the safetensors."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {self.saved_as[n]: p.detach().to("cpu").contiguous() for n, p in self.named}
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(self.config)
        config.inference_mode = True
        config.save_pretrained(str(folder))


@dataclass
class _Member:
    run: TrainingRun
    view: JobView
    out_dir: Path
    max_tokens: int  # its rows' length cap (eager attention on CPU only while every job's is short)


class FusedTraining:
    """Jobs on one loaded base, trained a step each per forward/backward. `join` adds a job (between steps),
    `step` trains one step of every job and returns the jobs that ended, each with its result or the
    exception that ended it (JobInterrupted, TrainingError, ...); `close` (or leaving the `with` block)
    takes everything off the base."""

    def __init__(self, base: LoadedBase):
        self.base = base
        self.spans = Spans()
        self.members: dict[str, _Member] = {}
        self.layers: dict[str, FusedLoRALinear] = {}
        self.heads: dict[str, FusedHead] = {}
        self.autocast = uses_autocast(base)
        self.pad_id = base.tokenizer.pad_token_id or 0
        self.attention = base.model.config._attn_implementation  # put back when the group closes
        # dropout drawn cheaply on CPU (app/training/dropout.py), as for a job alone: the base's own until the
        # group closes, each job's (LoRA inputs, head) for good
        self._base_dropouts = swap_dropouts(base.model, base.device)

    def __enter__(self) -> FusedTraining:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- joining and leaving --------------------------------------------------------------------
    def join(
        self,
        key: str,
        train_rows: list[dict],
        val_rows: list[dict],
        labels: list[str],
        hp: Hyperparameters,
        out_dir: Path,
        reporter: Reporter,
        checkpoints: Checkpoints | None = None,
        init_from: Path | None = None,
        multi_label: bool = False,
        keep_epoch: EpochSink | None = None,
    ) -> None:
        """Add a job: its LoRA layers and head built as for a job alone, its run begun (data, optimizer, resume
        from its checkpoint). Raises what beginning raises (the job has then not joined)."""
        if key in self.members:
            raise ValueError(f"job {key} is already in the group")
        self._uninstall()
        try:
            view, loras, heads = self._build(key, labels, hp, init_from, multi_label)
        finally:
            self._install()
        for path, lora in loras.items():
            if path not in self.layers:
                self.layers[path] = FusedLoRALinear(self._module(path), self.spans)
            self.layers[path].jobs[key] = lora
        for name, module in heads.items():
            if name not in self.heads:
                self.heads[name] = FusedHead(getattr(self.base.model, name), self.spans)
            self.heads[name].jobs[key] = module
        self._install()
        member = _Member(
            TrainingRun(self.base, view, labels, hp, reporter, checkpoints, multi_label, keep_epoch),
            view,
            out_dir,
            self.base.max_tokens(hp.max_length),
        )
        self.members[key] = member
        try:
            member.run.begin(train_rows, val_rows)
        except BaseException:
            self._leave(key)
            raise
        self._update_attention()
        log.info("job %s joined the fused group (%d jobs)", key, len(self.members))

    def _build(
        self, key: str, labels: list[str], hp: Hyperparameters, init_from: Path | None, multi_label: bool
    ) -> tuple[JobView, dict[str, _JobLoRA], dict[str, nn.Module]]:
        """peft's LoRA layers and head for this job on the clean base, taken out of it (the base unloaded)."""
        from peft import get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer

        base = self.base
        seed_everything(hp.seed)
        new_head(base, labels, hp.seed, multi_label)
        prepare_base(base, gradient_checkpointing=False)
        model = with_lora(base, hp)
        try:
            if init_from is not None:
                load_parent(model, init_from)
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            by_storage = {p.data_ptr(): n for n, p in named}
            saved_as = {by_storage[t.data_ptr()]: k for k, t in get_peft_model_state_dict(model).items()}
            if set(saved_as) != {n for n, _ in named}:
                raise RuntimeError("peft's saved state does not map one to one onto the trainable weights")
            swap_dropouts(model, base.device)  # the job's LoRA input and head dropouts (the base's are already)
            inner = model.base_model.model
            loras = {
                path: _JobLoRA(m.lora_A[ADAPTER], m.lora_B[ADAPTER], m.scaling[ADAPTER], m.lora_dropout[ADAPTER])
                for path, m in inner.named_modules()
                if isinstance(m, LoraLayer)
            }
            heads = {name: getattr(inner, name).modules_to_save[ADAPTER] for name in base.heads}
            view = JobView(self, key, named, saved_as, copy.deepcopy(model.peft_config[ADAPTER]))
        finally:
            base.model = model.unload()  # the base as it was; the job's modules live on in the fused layers
        return view, loras, heads

    def _leave(self, key: str) -> None:
        member = self.members.pop(key, None)
        self._uninstall()
        for path in list(self.layers):
            if key in self.layers[path].jobs:
                del self.layers[path].jobs[key]
            if not len(self.layers[path].jobs):
                del self.layers[path]
        for head in self.heads.values():
            if key in head.jobs:
                del head.jobs[key]
        if self.members:
            self._install()
        else:
            for name, head in self.heads.items():
                setattr(self.base.model, name, head.original)
            self.heads = {}
        self._update_attention()
        if member is not None:
            log.info("job %s left the fused group (%d jobs)", key, len(self.members))

    def close(self) -> None:
        """Every job leaves (unfinished ones simply stop); the base is as it was."""
        for key in list(self.members):
            self._leave(key)
        restore(self._base_dropouts)
        self._base_dropouts = []
        set_attention(self.base.model, self.attention)

    # ---- a step ---------------------------------------------------------------------------------
    def step(self) -> dict[str, TrainResult | BaseException]:
        """One step of every job: a job at its epoch's end ends it first (evaluates, checkpoints, maybe stops
        early); a finished job saves its adapter and leaves. Returns the jobs that ended in this step."""
        ended: dict[str, TrainResult | BaseException] = {}
        batches: dict[str, list[int]] = {}
        for key, member in list(self.members.items()):
            try:
                idx = self._next_batch(member.run)
                if idx is None:
                    ended[key] = member.run.finish(member.out_dir)
                    self._leave(key)
                else:
                    batches[key] = idx
            except Exception as e:  # noqa: BLE001 - the job ends with it; the others go on
                ended[key] = e
                self._leave(key)
        if not batches:
            return ended
        try:
            losses: dict[str, torch.Tensor] = {}
            for group in self._groups(batches):
                losses.update(self._forward_backward({key: batches[key] for key in group}))
        except Exception as e:  # noqa: BLE001 - a failed shared step ends every job in it
            log.exception("fused step failed")
            for key in batches:
                ended[key] = e
                self._leave(key)
            return ended
        for key, idx in batches.items():
            run = self.members[key].run
            try:
                run.after_step(idx, losses[key], run.optimizer_step())
            except Exception as e:  # noqa: BLE001 - a stop asked for (JobInterrupted) or a failed checkpoint
                ended[key] = e
                self._leave(key)
        return ended

    @staticmethod
    def _next_batch(run: TrainingRun) -> list[int] | None:
        """The run's next step's rows, ending epochs on the way; None once the run is done."""
        while not run.done:
            idx = run.next_batch()
            if idx is not None:
                return idx
            run.end_epoch()
        return None

    def _groups(self, batches: dict[str, list[int]]) -> list[list[str]]:
        """The step's jobs cut into forward passes of least padded cost: jobs sorted by their batch's longest row,
        then cut where padding every row to the group's longest would cost more than another pass
        (STEP_OVERHEAD_TOKENS). Jobs whose rows are alike in length share one forward; a job of long rows does
        not pad a job of short ones to its length."""
        width = {
            key: max(len(self.members[key].run.train.features[i]["input_ids"]) for i in idx)
            for key, idx in batches.items()
        }
        keys = sorted(batches, key=lambda k: width[k])
        best, cut = [0.0] + [float("inf")] * len(keys), [0] * (len(keys) + 1)
        for end in range(1, len(keys) + 1):
            for start in range(end):
                rows = sum(len(batches[k]) for k in keys[start:end])
                cost = best[start] + rows * width[keys[end - 1]] + STEP_OVERHEAD_TOKENS
                if cost < best[end]:
                    best[end], cut[end] = cost, start
        groups, end = [], len(keys)
        while end > 0:
            groups.append(keys[cut[end] : end])
            end = cut[end]
        return groups[::-1]

    def _forward_backward(self, batches: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """Every job's rows in one padded batch (each job's rows consecutive), one forward, each job's own loss
        over its rows and labels, one backward of their sum (each job's weights get its own loss's gradient)."""
        rows: list[dict] = []
        spans: list[tuple[str, int, int]] = []
        for key, idx in batches.items():
            data = self.members[key].run.train
            spans.append((key, len(rows), len(rows) + len(idx)))
            rows += [data.features[i] for i in idx]
        device = self.base.device
        batch = pad(rows, self.pad_id, device, multiple_of=8 if device == "cuda" else 1)
        self.base.model.train()
        with self.routed(spans), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.base.model(**batch).logits.float()
        losses: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for key, lo, hi in spans:
            run = self.members[key].run
            data = run.train
            labels = torch.tensor([data.labels[i] for i in batches[key]], device=device)
            loss = run.loss_fn(logits[lo:hi, : len(run.labels)], labels)
            losses[key] = loss.detach()
            total = loss if total is None else total + loss
        assert total is not None
        total.backward()
        return losses

    @contextmanager
    def routed(self, spans: list[tuple[str, int, int]]) -> Iterator[None]:
        self.spans.rows = spans
        try:
            yield
        finally:
            self.spans.rows = []

    # ---- the base's modules ---------------------------------------------------------------------
    def _module(self, path: str) -> nn.Module:
        return self.base.model.get_submodule(path)

    def _install(self) -> None:
        for path, layer in self.layers.items():
            parent, _, name = path.rpartition(".")
            setattr(self.base.model.get_submodule(parent) if parent else self.base.model, name, layer)
        for name, head in self.heads.items():
            setattr(self.base.model, name, head)

    def _uninstall(self) -> None:
        """The base's own modules back in place (peft then builds a joining job's layers on a clean base)."""
        for path, layer in self.layers.items():
            parent, _, name = path.rpartition(".")
            setattr(self.base.model.get_submodule(parent) if parent else self.base.model, name, layer.base)
        for name, head in self.heads.items():
            setattr(self.base.model, name, head.original)

    def _update_attention(self) -> None:
        """Eager attention where a job alone would get it: CPU under bf16 autocast, every job's rows short."""
        short = all(m.max_tokens <= EAGER_ATTENTION_MAX_TOKENS for m in self.members.values())
        if self.autocast and self.base.device == "cpu" and self.members and short:
            set_attention(self.base.model, "eager")
        else:
            set_attention(self.base.model, self.attention)
