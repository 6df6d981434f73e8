"""Which dataset a forget request belongs to, under a data root that holds several datasets.

A request id ("forget-<hex>") does not name its dataset, and every dataset keeps its own ledger.
The index is one append-only file in the data root, `.forget_requests.jsonl`: one JSON line per
request, {"request_id", "dataset"} with the dataset's path relative to the root, appended when the
request is recorded. Lookups read it (a few dozen bytes per request) instead of opening every
ledger. It is a cache, never the truth: an entry is believed only when that dataset's ledger has
the request, and requests recorded without it (by `saferule dataset forget`, say) are found by
looking through the ledgers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from saferule_core.io_utils import fsync_dir

INDEX_FILE = ".forget_requests.jsonl"


class RequestIndex:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.path = self.root / INDEX_FILE

    def add(self, request_id: str, dataset_dir: Path) -> None:
        """Append one line (O_APPEND: concurrent writers do not interleave lines of this size)."""
        relative = Path(dataset_dir).resolve().relative_to(self.root.resolve()).as_posix()
        line = json.dumps({"request_id": request_id, "dataset": relative}, sort_keys=True) + "\n"
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":   # a torn line: start a new one
                line = "\n" + line
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            fsync_dir(self.root)

    def dataset_of(self, request_id: str) -> Path | None:
        """The dataset directory recorded for `request_id` (the last such line), if any. Lines that
        do not parse (a torn write) or point outside the root are ignored."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        found: Path | None = None
        root = self.root.resolve()
        for line in text.splitlines():
            try:
                record = json.loads(line)
                if record["request_id"] != request_id:
                    continue
                candidate = (root / str(record["dataset"])).resolve()
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if candidate == root or root in candidate.parents:
                found = candidate
        return found
