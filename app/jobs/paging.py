"""Keyset paging for the store's listings: rows after an anchor (a time, and an id breaking ties), in either
order, as one row-value comparison the database answers from a (time, id) index."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import tuple_


def order(at: Any, key: Any, ascending: bool) -> tuple[Any, Any]:
    return (at.asc(), key.asc()) if ascending else (at.desc(), key.desc())


# Where a page starts: the last row's time and, when it is a row of the same table, its id (ties broken by id);
# an anchor from another table (a merged listing) has no id there, and the page starts strictly after its time.
Anchor = tuple[datetime, str | None]


def beyond(at: Any, key: Any, anchor: Anchor, ascending: bool) -> Any:
    """Keyset paging: the rows after the anchor (`at`, then `key`) in the listing's order."""
    anchor_at, anchor_key = anchor
    if not anchor_key:
        return at > anchor_at if ascending else at < anchor_at
    # A row-value comparison: the database walks a (time, id) index from the anchor.
    return (
        tuple_(at, key) > tuple_(anchor_at, anchor_key)
        if ascending
        else tuple_(at, key) < tuple_(anchor_at, anchor_key)
    )
