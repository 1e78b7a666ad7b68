"""`peftserve datasets`: list uploaded datasets (no subcommand), `show` one (label counts, lengths, first rows),
`delete` one. Over HTTP, like the other client commands (app/client/commands.py)."""

from __future__ import annotations

import typer

from app.client.commands import _client, _console

dataset_commands = typer.Typer(help="List datasets (no subcommand), show or delete one.")


@dataset_commands.callback(invoke_without_command=True)
def datasets(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="most datasets to list, newest first"),
) -> None:
    """List uploaded datasets, newest first: id, rows, labels, file name."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape
    from rich.table import Table

    with _client(ctx) as client:
        rows = client.datasets(limit)
    table = Table(box=None, header_style="bold")
    for name in ("id", "rows", "labels", "file", "created"):
        table.add_column(name, no_wrap=name in ("id", "rows"), overflow="fold")
    for d in rows:
        labels = ", ".join(f"{k} {v}" for k, v in d["labels"].items())
        table.add_row(d["id"], str(d["n_records"]), escape(labels), escape(d["filename"] or "-"), d["created_at"][:10])
    console = _console()
    console.print(table) if rows else console.print("no datasets")


@dataset_commands.command("show")
def show(ctx: typer.Context, dataset_id: str = typer.Argument(..., metavar="DATASET")) -> None:
    """One dataset: rows per label, text lengths (percentiles), and its first rows."""
    from rich.markup import escape

    with _client(ctx) as client:
        d = client.dataset(dataset_id)
    console = _console()
    kind = "multi-label" if d["multi_label"] else "single-label"
    console.print(f"[bold]{d['id']}[/]  {escape(d['filename'] or '-')}")
    console.print(f"{d['n_records']} rows, {kind}, {d['size_bytes'] or 0:,} bytes")
    width = max(len(k) for k in d["labels"]) if d["labels"] else 0
    for label, n in d["labels"].items():
        console.print(f"  {escape(label).ljust(width)}  {n:>6}  {n / max(1, d['n_records']):6.1%}")
    for unit in ("chars", "words"):
        p = d[f"length_{unit}"]
        console.print(f"  {unit}: p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['max']}")
    console.print("first rows:")
    for row in d["first_rows"]:
        text = row["text"] if len(row["text"]) <= 60 else row["text"][:57] + "..."
        console.print(f"  {escape(str(row['label']))}: {escape(text)}")


@dataset_commands.command("delete")
def delete(ctx: typer.Context, dataset_id: str = typer.Argument(..., metavar="DATASET")) -> None:
    """Delete a dataset (refused while a queued, running or paused job uses it)."""
    with _client(ctx) as client:
        client.delete_dataset(dataset_id)
    _console().print(f"deleted {dataset_id}")
