"""`peftserve serve` (API + its workers) and `peftserve worker` (one standalone worker)."""

from __future__ import annotations

import logging
import os

import typer

app = typer.Typer(help="peftserve: LoRA fine-tuning service", no_args_is_help=True, add_completion=False)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="port to bind"),
    workers: int | None = typer.Option(None, help="worker processes to start (default: PEFTSERVE_WORKERS)"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run the HTTP API and its training workers."""
    # oneDNN (torch's bf16 CPU matmuls) and torch's ideep layer each cache compiled kernels per input shape,
    # 1,024 by default: with requests of every length those caches kept the server's RSS rising (+60 MB
    # over 4,500 requests on a warm server). With 64 each, RSS levels off (bench/inference.py). Set before torch
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
    uvicorn.run(api, host=host, port=port, log_level=log_level)


@app.command()
def worker(
    burst: bool = typer.Option(False, help="drain the queue and exit"),
    parent_pid: int | None = typer.Option(None, help="stop (requeueing any running job) when this process ends"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run one training worker against the configured job store."""
    from app.config import get_settings
    from app.jobs.worker import Worker

    _logging(log_level)
    Worker(get_settings(), parent_pid=parent_pid).run(burst=burst)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
