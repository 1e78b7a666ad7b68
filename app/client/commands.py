"""The client commands of `peftserve`: `submit`, `jobs`, `watch`, `cancel`, `pause`, `resume`, `adapters`
(`download`, `import`), `predict`, `evaluate` (and `datasets`, in app/client/dataset_commands.py).

They talk to a server over HTTP through app.client (httpx) and print with rich; nothing heavy (torch, the
app) is imported, so they start fast. app/cli.py adds them to the `peftserve` command.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from app.client import JobEvent, PeftServeClient

commands = typer.Typer()

_STATUS_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "paused": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def _console(stderr: bool = False):
    """Rich output; piped (no terminal), long lines are kept whole rather than wrapped at 80 columns."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def _fail(message: str, field: str | None = None, code: int = 1) -> NoReturn:
    from rich.markup import escape

    _console(stderr=True).print(f"[red]error: {escape(message)}" + (f" (field: {escape(field)})" if field else ""))
    raise typer.Exit(code)


@contextlib.contextmanager
def _client(ctx: typer.Context) -> Iterator[PeftServeClient]:
    """A client from the global options; an error answer is printed (message and field) and exits 1."""
    from app.client import PeftServeAPIError, PeftServeClient

    obj = ctx.obj or {}
    try:
        with PeftServeClient(obj.get("url"), obj.get("api_key")) as client:
            yield client
    except PeftServeAPIError as e:
        if e.status == 401:  # the server names its header; the CLI user sets a flag or a variable
            _fail(f"{e.message.split(':')[0]}: pass --api-key KEY or set PEFTSERVE_API_KEY (a key the server has)")
        _fail(e.message, e.field)


def _table(names: tuple[str, ...], no_wrap: tuple[str, ...] = ()) -> Any:
    """A borderless table whose headers are never cut: each column at least as wide as its name; the rest
    wraps (or folds) rather than being cut."""
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for name in names:
        table.add_column(name, no_wrap=name in no_wrap, min_width=max(len(name), 6), overflow="fold")
    return table


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _parse_hp(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--hp")
        try:
            out[key.strip()] = json.loads(value)  # 3, 1e-3, true, null, ["query","value"]
        except ValueError:
            out[key.strip()] = value  # a bare string: class_weighting=balanced
    return out


def _hp_help(name: str) -> str:
    """A hyperparameter's one-line help with the server's default (from the same model the server validates
    with: pydantic only, no torch)."""
    from app.training.config import Hyperparameters

    field = Hyperparameters.model_fields[name]
    return f"{field.description} (server default: {field.default})"


def _hp_names() -> list[str]:
    from app.training.config import Hyperparameters

    return list(Hyperparameters.model_fields)


_HP_NAMES = _hp_names()


@commands.command()
def submit(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="training data: JSONL or CSV (text, label)"),
    adapter: str = typer.Option(..., "--adapter", "-a", help="adapter name (a new version if it exists)"),
    base_model: str = typer.Option(
        "minilm",
        "--base-model",
        "-m",
        help="a base the server has: minilm, smollm2-135m (built in) or one of its PEFTSERVE_MODELS",
    ),
    validation: Path | None = typer.Option(None, exists=True, dir_okay=False, help="validation data file"),
    validation_split: float | None = typer.Option(
        None, help="share of train held out when no --validation (server default: 0.1)", show_default=False
    ),
    epochs: int | None = typer.Option(None, help=_hp_help("epochs"), show_default=False),
    batch_size: int | None = typer.Option(None, help=_hp_help("batch_size"), show_default=False),
    learning_rate: float | None = typer.Option(None, help=_hp_help("learning_rate"), show_default=False),
    lora_r: int | None = typer.Option(None, help=_hp_help("lora_r"), show_default=False),
    hp: list[str] | None = typer.Option(
        None,
        "--hp",
        help="any hyperparameter as key=value (JSON value), repeatable: " + ", ".join(_HP_NAMES),
        show_default=False,
    ),
    init_from: str | None = typer.Option(
        None, "--init-from", help="continue this adapter version (name or name@vN): its weights, labels, LoRA shape"
    ),
    watch_: bool = typer.Option(
        False, "--watch", "-w", help="follow the job until it ends (exit 1 unless it succeeds)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the job id"),
) -> None:
    """Upload a data file and queue a training job."""
    hyper = _parse_hp(hp or [])
    flags = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "lora_r": lora_r}
    hyper.update({k: v for k, v in flags.items() if v is not None})
    with _client(ctx) as client:
        job = client.submit(
            adapter,
            file,
            validation=validation,
            base_model=base_model,
            hyperparameters=hyper,
            validation_split=validation_split,
            init_from=init_from,
        )
        if quiet:
            typer.echo(job["id"])
        else:
            _console().print(
                f"Submitted [bold]{job['id']}[/]: adapter {job['adapter']!r} on {job['base_model']},"
                f" data {job['train_dataset']} ({_status(job['status'])})"
            )
        if watch_:
            raise typer.Exit(_watch(client, job["id"], quiet=quiet))


@commands.command()
def jobs(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None, "--status", "-s", help="queued, running, paused, succeeded, failed, cancelled"
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="most jobs to list, newest first"),
) -> None:
    """List jobs, newest first."""
    from rich.markup import escape

    with _client(ctx) as client:
        rows = client.jobs(status=status, limit=limit)
    console = _console()
    narrow = console.width < 110  # the columns that matter first; base and created only where they fit
    names = ("id", "status", "adapter", "progress", "result") + (() if narrow else ("base", "created"))
    table = _table(names, no_wrap=("id", "status"))
    for j in rows:
        p = j["progress"]
        progress = f"{p['step']}/{p['total_steps']}" if p["total_steps"] else "-"
        if j["result"]:
            m = j["result"]["metrics"]
            result = j["result"]["adapter"] + (f" f1 {m['f1_macro']:.3f}" if "f1_macro" in m else "")
            result += " [yellow](warnings)[/]" if j["result"].get("warnings") else ""
        else:
            result = f"[red]{escape(j['error']['message'])}[/]" if j["error"] else ""
        cells = [j["id"], _status(j["status"]), escape(j["adapter"]), progress, result]
        table.add_row(*cells, *(() if narrow else (j["base_model"], j["created_at"][:19])))
    console.print(table) if rows else console.print("no jobs")


@commands.command()
def watch(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB")) -> None:
    """Follow a job with a progress bar (step, loss, ETA) until it ends; exit 0 if it succeeded, else 1."""
    with _client(ctx) as client:
        raise typer.Exit(_watch(client, job_id))


def _watch(client: PeftServeClient, job_id: str, quiet: bool = False) -> int:
    """Follow a job's event stream with a progress bar; the exit code: 0 if it succeeded, 1 if not."""
    from app.client import TERMINAL

    job = client.job(job_id)  # an unknown job fails here, before any bar is drawn
    view = _JobView(client, job_id, quiet)
    try:
        with view.progress:
            view.refresh(job)
            if job["status"] not in TERMINAL:
                for event in client.stream_events(job_id):
                    if event.type == "end":
                        break
                    view.show(event)
            job = client.job(job_id)
            view.refresh(job)
    except KeyboardInterrupt:
        view.console.print(f"\nstopped watching; {job_id} goes on (`peftserve cancel {job_id}` stops it)")
        return 130
    return _summary(view.console, job)


class _JobView:
    """A job on the terminal: a live progress bar (step of total, epoch, loss, ETA) and a line per event; without
    a terminal (piped), a plain line per training point instead of the bar."""

    def __init__(self, client: PeftServeClient, job_id: str, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.client, self.job_id, self.quiet = client, job_id, quiet
        self.console = _console()
        self.lines = not quiet and not self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=quiet or self.lines,  # piped: plain lines only (a bar's redraws would cut the last line)
        )
        self.task = self.progress.add_task(job_id, total=None, epoch="-", loss="-")

    def refresh(self, job: dict[str, Any], **fields: Any) -> None:
        p = job["progress"]
        self.progress.update(
            self.task,
            total=p["total_steps"] or None,
            completed=p["step"],
            description=f"{self.job_id} {job['status']}",
            **fields,
        )

    def show(self, event: JobEvent) -> None:
        from rich.markup import escape

        data = event.data or {}
        values, epoch = data.get("values") or {}, f"{data.get('epoch', 0):.2f}"
        if event.type == "metrics" and data.get("kind") == "train":
            self.refresh(self.client.job(self.job_id), epoch=epoch, loss=_fmt(values.get("loss", "-")))
            if self.lines:
                total = self.progress.tasks[0].total
                lr = values.get("learning_rate")
                self.console.print(
                    f"step {data.get('step')}/{int(total) if total else '?'}  epoch {epoch}  loss "
                    + _fmt(values.get("loss", "-"))
                    + (f"  lr {lr:.2e}" if lr is not None else "")
                )
            return
        self.refresh(self.client.job(self.job_id))
        if self.quiet:
            return
        if event.type == "metrics":  # a validation pass
            shown = "  ".join(f"{k} {_fmt(v)}" for k, v in values.items() if not isinstance(v, dict))
            self.console.print(f"[cyan]{data.get('kind', 'eval')}[/] epoch {epoch}  {shown}")
        else:
            style = "red" if event.level in ("error", "warning") else "dim"
            self.console.print(f"[{style}]{escape(event.message)}[/]")


def _summary(console: Any, job: dict[str, Any]) -> int:
    from rich.markup import escape

    line = f"{job['id']} {_status(job['status'])}"
    if job["result"]:
        line += f": adapter [bold]{job['result']['adapter']}[/]"
    console.print(line)
    if job["result"]:
        m = job["result"]["metrics"]
        keys = ("accuracy", "f1_macro", "loss", "train_loss", "steps", "train_seconds", "train_samples_per_second")
        console.print("  ".join(f"{k} {_fmt(m[k])}" for k in keys if k in m))
        if "best_step" in m and m.get("steps") and m["best_step"] != m["steps"]:
            console.print(f"kept the best validation epoch (step {m['best_step']} of {m['steps']}): its figures above")
        for warning in job["result"].get("warnings", []):
            console.print(f"[yellow]warning: {escape(warning)}[/]")
    if job["error"]:
        console.print(f"[red]{escape(job['error']['code'])}: {escape(job['error']['message'])}[/]")
    return 0 if job["status"] == "succeeded" else 1


@commands.command()
def cancel(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB")) -> None:
    """Cancel a queued job, or ask a running one's worker to stop at its next step."""
    with _client(ctx) as client:
        job = client.cancel(job_id)
    note = "" if job["status"] == "cancelled" else " (cancellation requested; it stops at its next step)"
    _console().print(f"{job['id']} {_status(job['status'])}{note}")


@commands.command()
def pause(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB")) -> None:
    """Pause a job: a queued one at once, a running one at its next step (it checkpoints and frees its worker)."""
    with _client(ctx) as client:
        job = client.pause(job_id)
    note = "" if job["status"] == "paused" else " (pause requested; it checkpoints and stops at its next step)"
    _console().print(f"{job['id']} {_status(job['status'])}{note}")


@commands.command()
def resume(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB")) -> None:
    """Resume a paused job: it is queued again and continues from its checkpoint."""
    with _client(ctx) as client:
        job = client.resume(job_id)
    _console().print(f"{job['id']} {_status(job['status'])}")


adapter_commands = typer.Typer(help="List adapters (no subcommand), download or import one.")
commands.add_typer(adapter_commands, name="adapters")


@adapter_commands.callback(invoke_without_command=True)
def adapters(ctx: typer.Context) -> None:
    """List adapters: versions, base model, labels, validation metrics, and which are loaded."""
    if ctx.invoked_subcommand is None:
        _list_adapters(ctx)


@adapter_commands.command("download")
def download(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="ADAPTER", help="`name` (newest version) or `name@vN`"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="file or folder to write (default: NAME-vN.tar.gz here)"
    ),
) -> None:
    """Download an adapter as a .tar.gz of the standard peft folder (loadable with PeftModel.from_pretrained)."""
    with _client(ctx) as client:
        path = client.download_adapter(ref, output)
    _console().print(f"{ref} -> {path} ({path.stat().st_size:,} bytes)")


@adapter_commands.command("import")
def import_(
    ctx: typer.Context,
    archive: Path = typer.Argument(..., exists=True, dir_okay=False, help="a .tar.gz of a peft LoRA folder"),
    name: str = typer.Option(..., "--name", "-n", help="adapter name (a new version if it exists)"),
    base_model: str = typer.Option(..., "--base-model", "-m", help="the base it was trained on (server's name)"),
    labels: str | None = typer.Option(
        None, help="label names in the head's order, comma-separated (default: from the archive)"
    ),
) -> None:
    """Import an adapter trained elsewhere with peft (or downloaded from a peftserve server)."""
    names = [x.strip() for x in labels.split(",")] if labels else None
    with _client(ctx) as client:
        version = client.import_adapter(name, base_model, archive, names)
    _console().print(f"imported {archive.name} as {version['ref']} on {version['base_model']}: {version['labels']}")


def _list_adapters(ctx: typer.Context) -> None:
    from rich.markup import escape

    with _client(ctx) as client:
        body = client.adapters()
    loaded = {a["adapter"] for a in body.get("loaded", [])}
    console = _console()
    narrow = console.width < 110  # base and loaded only where they fit
    names = ("name", "latest", "accuracy", "f1", "versions", "labels") + (() if narrow else ("base", "loaded"))
    table = _table(names)  # long names fold
    for a in body["data"]:
        latest = next((v for v in a["versions"] if v["ref"] == a["latest"]), a["versions"][-1])
        m = latest["metrics"]
        cells = [
            escape(a["name"]),
            escape(a["latest"]),
            _fmt(m["accuracy"]) if "accuracy" in m else "-",
            _fmt(m["f1_macro"]) if "f1_macro" in m else "-",
            str(len(a["versions"])),
            escape(", ".join(latest["labels"])),
        ]
        if not narrow:
            cells += [latest["base_model"], ", ".join(v["ref"] for v in a["versions"] if v["ref"] in loaded) or "-"]
        table.add_row(*cells)
    console.print(table) if body["data"] else console.print("no adapters")


@commands.command()
def predict(
    ctx: typer.Context,
    adapter: str = typer.Argument(..., help="`name` (newest version) or `name@vN`"),
    texts: list[str] = typer.Argument(..., metavar="TEXT...", help="texts to classify"),
    as_json: bool = typer.Option(False, "--json", help="print the server's JSON"),
) -> None:
    """Classify texts with an adapter."""
    from rich.markup import escape
    from rich.table import Table

    with _client(ctx) as client:
        body = client.predict(adapter, texts)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    console = _console()
    console.print(f"adapter {body['adapter']}")
    table = Table(box=None, header_style="bold")
    table.add_column("label", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("text")
    for text, p in zip(texts, body["predictions"], strict=True):
        if "labels" in p:  # multi-label: every label over its threshold, and the highest probability
            table.add_row(escape(", ".join(p["labels"]) or "(none)"), f"{max(p['scores'].values()):.3f}", escape(text))
        else:
            table.add_row(escape(p["label"]), f"{p['score']:.3f}", escape(text))
    console.print(table)


@commands.command()
def evaluate(
    ctx: typer.Context,
    adapter: str = typer.Argument(..., help="`name` (newest version) or `name@vN`"),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="labelled data: JSONL or CSV (text, label)"),
    as_json: bool = typer.Option(False, "--json", help="print the server's JSON"),
) -> None:
    """Accuracy, macro precision/recall/F1, each label's figures and the confusion matrix of an adapter on a
    labelled file."""
    from rich.markup import escape
    from rich.table import Table

    with _client(ctx) as client:
        body = client.evaluate(adapter, file)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    console = _console()
    console.print(f"adapter {body['adapter']} on {body['n']} records")
    keys = ("accuracy", "f1_macro", "precision_macro", "recall_macro")
    if "subset_accuracy" in body:  # a multi-label adapter
        keys = ("f1_micro", "f1_macro", "subset_accuracy", "hamming_loss")
    console.print("  ".join(f"{k} {body[k]:.4f}" for k in keys))
    per_label = Table(box=None, header_style="bold")
    for column in ("label", "precision", "recall", "f1", "support"):
        per_label.add_column(column, justify="left" if column == "label" else "right")
    for label, m in body.get("per_label", {}).items():
        per_label.add_row(escape(label), *(f"{m[k]:.4f}" for k in ("precision", "recall", "f1")), str(m["support"]))
    console.print(per_label)
    if "confusion_matrix" not in body:  # multi-label: per-label figures only
        return
    console.print("confusion matrix (rows: true label, columns: predicted)")
    table = Table(box=None, header_style="bold")
    table.add_column("")
    for label in body["labels"]:
        table.add_column(escape(label), justify="right")
    for label, row in zip(body["labels"], body["confusion_matrix"], strict=True):
        table.add_row(escape(label), *map(str, row))
    console.print(table)
