"""The `peftserve` command: `serve` (API + its workers) and `worker` (one standalone worker) here, and the
client commands (`submit`, `jobs`, `watch`, `cancel`, `pause`, `resume`, `adapters`, `predict`, `evaluate`, in
app/client/commands.py) that talk to a server over HTTP."""

from __future__ import annotations

import os

import typer

from app.client.commands import commands as client_commands
from app.client.dataset_commands import dataset_commands

app = typer.Typer(help="peftserve: LoRA fine-tuning service", no_args_is_help=True, add_completion=False)


def _logging(level: str) -> None:
    from app.config import get_settings
    from app.logs import setup_logging

    setup_logging(level, third_party=get_settings().third_party_warnings)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="port to bind"),
    workers: int | None = typer.Option(None, help="worker processes to start (default: PEFTSERVE_WORKERS)"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run the HTTP API and its training workers."""
    # oneDNN (torch's bf16 CPU matmuls) and torch's ideep layer each cache compiled kernels per input shape,
    # 1,024 by default: with requests of every length those caches kept the server's RSS rising; with 64 each
    # it levels off (the README's serving figures, bench/inference.py). Set before torch
    # loads; an explicit setting wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
    import uvicorn

    from app.config import get_settings
    from app.main import create_app

    _logging(log_level)
    if workers is not None:
        os.environ["PEFTSERVE_WORKERS"] = str(workers)
        get_settings.cache_clear()
    try:
        api = create_app(get_settings())
    except RuntimeError as e:  # e.g. auth on and no key configured: refuse to start, say why
        typer.echo(f"peftserve: {e}", err=True)
        raise typer.Exit(2) from None
    # open event streams end within 5 s of a SIGTERM rather than holding the shutdown until their job ends
    uvicorn.run(api, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@app.command()
def worker(
    burst: bool = typer.Option(False, help="drain the queue and exit"),
    parent_pid: int | None = typer.Option(None, help="stop (requeueing any running job) when this process ends"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run one training worker against the configured job store. Launched by torchrun with several processes
    (`torchrun --nproc-per-node N --no-python peftserve worker`), the N processes train each job together."""
    from app.config import get_settings
    from app.jobs.worker import Worker
    from app.training.distributed import GroupBroken

    _logging(log_level)
    try:
        Worker(get_settings(), parent_pid=parent_pid).run(burst=burst)
    except GroupBroken as e:  # a rank of a torchrun group is gone: exit non-zero, the launcher restarts the group
        typer.echo(f"peftserve worker: the training group broke ({e.cause})", err=True)
        raise typer.Exit(1) from None


@app.command("export-merged")
def export_merged(
    adapter: str = typer.Argument(..., help="`name` (newest version) or `name@vN`, in this server's adapter store"),
    dest: str = typer.Argument(..., help="folder to create: a standalone transformers model"),
) -> None:
    """The way out: merge an adapter into its base and save a standalone transformers model folder (LoRA
    merged, the task head in place, labels in config.json) that AutoModelForSequenceClassification loads."""
    from pathlib import Path

    from app.base_models.merge import export_merged as merge
    from app.config import get_settings
    from app.errors import PeftServeError
    from app.resources import SharedResources

    resources = SharedResources.open(get_settings())
    try:
        version = resources.adapters.resolve(adapter)
        folder = merge(version, resources.registry.resolve(version.meta["base_model"]), Path(dest))
    except (PeftServeError, FileExistsError, ValueError) as e:
        typer.echo(f"peftserve: {getattr(e, 'message', e)}", err=True)
        raise typer.Exit(1) from None
    finally:
        resources.close()
    typer.echo(f"{version.ref} merged into {version.meta['base_model']}: {folder}")


# ---- client commands: they talk to a running server over HTTP (app/client/api.py) and never import torch ----
# `--url` / `--api-key` go before the command: `peftserve --url http://host:8000 jobs`.


@app.callback()
def _connection(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None,
        "--url",
        envvar="PEFTSERVE_URL",
        help="server URL for the client commands (default: http://127.0.0.1:8000)",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="PEFTSERVE_API_KEY",
        help="API key, sent as `Authorization: Bearer`",
        show_default=False,
    ),
) -> None:
    ctx.obj = {"url": url, "api_key": api_key}


app.registered_commands += client_commands.registered_commands
app.registered_groups += client_commands.registered_groups  # `peftserve adapters [download]`
app.add_typer(dataset_commands, name="datasets")  # `peftserve datasets [show|delete]`


def main() -> None:
    app()


if __name__ == "__main__":
    main()
