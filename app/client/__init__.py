"""The client side: the peftserve HTTP API in Python (`api.py`), the CLI's client commands (`commands.py`) and a
local server process for tests, benchmarks and the demo (`local.py`).

A package boundary: nothing here imports the server (`app.main`, `app.service`, torch); only httpx, rich
and typer, so a client command starts fast and the client can ship on its own.
"""

from app.client.api import (
    TERMINAL,
    JobEvent,
    PeftServeAPIError,
    PeftServeClient,
    PeftServeConnectionError,
    parse_sse,
    sse_lines,
)
from app.client.local import LocalServer, LocalServerError, free_port

__all__ = [
    "TERMINAL",
    "JobEvent",
    "LocalServer",
    "LocalServerError",
    "PeftServeAPIError",
    "PeftServeClient",
    "PeftServeConnectionError",
    "free_port",
    "parse_sse",
    "sse_lines",
]
