"""A store's ``store.json``: its format, identity, generation and recovery history.

The store id changes only when the store is recreated, so a sink that
remembers it notices a replaced store; a lost store.json beside segments is
recovered from the broker's bus.json, or refused unless a new id is asked for.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from bus.wire import BUS_FILE

log = logging.getLogger("bus.store")  # the name its messages have in the log (docs/troubleshooting.md)

STORE_FORMAT = "rose-store"
STORE_VERSION = 1


class StoreError(RuntimeError):
    """The store cannot be opened (locked by another broker, unreadable, wrong format)."""


def read_meta(directory: Path, *, new_store_id: bool = False) -> dict[str, Any]:
    """The store's metadata; a new store's when there is no store.json (not written here)."""
    meta_path = directory / "store.json"
    if not meta_path.exists():
        return _for_missing_file(directory, meta_path, new_store_id)
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise StoreError(f"{meta_path} is not valid JSON: {exc}") from None
    if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
        raise StoreError(
            f"{meta_path}: unsupported store format {meta.get('format')!r} "
            f"version {meta.get('version')!r}"
        )
    return meta


def _for_missing_file(directory: Path, meta_path: Path, new_store_id: bool) -> dict[str, Any]:
    """A new store's metadata; a missing store.json beside segments is recovered or refused."""
    segments = [p for p in (directory / "segments").glob("*.seg") if p.stat().st_size]
    fresh = {"format": STORE_FORMAT, "version": STORE_VERSION, "generation": 0}
    if not segments:
        return {**fresh, "store_id": uuid.uuid4().hex, "clean": True, "next_offset": 0}
    bus = directory / BUS_FILE
    try:
        info = json.loads(bus.read_text())
        store_id = str(info["store_id"])
        generation = int(info.get("generation") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        if new_store_id:
            store_id = uuid.uuid4().hex
            log.error(
                "store %s: store.json was missing beside %d segment(s); serving them "
                "under the new store id %s (--new-store-id)",
                directory,
                len(segments),
                store_id,
            )
            return {**fresh, "store_id": store_id, "clean": False}
        raise StoreError(
            f"{meta_path} is missing but {directory / 'segments'} holds {len(segments)} "
            "segment(s) of events, and no bus.json there says which store they belong to: "
            "restore store.json from a backup, or start the broker with --new-store-id to "
            "keep these events under a new store id (sinks then re-read the store and skip "
            "what they already hold)"
        ) from None
    log.error(
        "store %s: store.json was missing beside %d segment(s); recovered store id %s "
        "(generation %d) from bus.json",
        directory,
        len(segments),
        store_id,
        generation,
    )
    return {**fresh, "store_id": store_id, "generation": generation, "clean": False}
