"""Which trained model each published version came from, so that unlearning starts from the right one.

A version published with a checkpoint record holds `checkpoint.json` next to its signed files:
the model directory it was exported from and a fingerprint of that model's weights. The record is
server-side metadata (runners never read it) and is not part of the signed manifest; it is written
in the same atomic step as the version, and checked against the model directory when it is used,
so that a model replaced or moved since the export is refused rather than unlearned by mistake.

PolicyRegistry.publish(..., checkpoint=checkpoint_record(model_dir)) writes the record;
PolicyRegistry.deployed_model_dir(fallback) is the model the latest version came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from saferule_core.errors import ArtifactError
from saferule_core.io_utils import read_regular_file
from saferule_core.limits import LimitError

CHECKPOINT_FILE = "checkpoint.json"
WEIGHT_FILES = ("model.pt", "sisa.json")   # what makes a model directory that model (SISA: per shard too)
MAX_WEIGHT_BYTES = 2 * 2**30
MAX_SHARDS_DEPTH = 2


@dataclass(frozen=True)
class CheckpointRecord:
    model_dir: str          # absolute path of the model directory the version was exported from
    fingerprint: str        # sha256 over its weight files (model_fingerprint)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files of a model directory (model.pt, or a SISA ensemble's sisa.json
    and every shard's model.pt), each with its relative path; ArtifactError if there are none."""
    root = Path(model_dir)
    found = sorted(p for p in root.rglob("*") if p.name in WEIGHT_FILES
                   and len(p.relative_to(root).parts) <= MAX_SHARDS_DEPTH)
    if not found:
        raise ArtifactError(f"{root} holds no trained model ({' or '.join(WEIGHT_FILES)})")
    digest = hashlib.sha256()
    for path in found:
        try:
            data = read_regular_file(path, MAX_WEIGHT_BYTES)
        except (OSError, LimitError) as err:
            raise ArtifactError(f"cannot read {path}: {err}") from None
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def checkpoint_record(model_dir: Path) -> CheckpointRecord:
    directory = Path(model_dir).resolve()
    return CheckpointRecord(model_dir=str(directory), fingerprint=model_fingerprint(directory))


def record_bytes(record: CheckpointRecord) -> bytes:
    return (json.dumps(asdict(record), indent=2, sort_keys=True) + "\n").encode()


def parse_checkpoint_record(raw: bytes, path: Path) -> CheckpointRecord:
    """The record in `raw`, the bytes of the version's CHECKPOINT_FILE at `path` (named in errors)."""
    try:
        data = json.loads(raw)
        record = CheckpointRecord(model_dir=data["model_dir"], fingerprint=data["fingerprint"])
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{path} is not a checkpoint record") from None
    if not isinstance(record.model_dir, str) or not isinstance(record.fingerprint, str):
        raise ArtifactError(f"{path} is not a checkpoint record")
    return record


def verified_checkpoint(version: str, record: CheckpointRecord) -> Path:
    """The recorded model directory, if it still holds the model the version was exported from."""
    model_dir = Path(record.model_dir)
    try:
        fingerprint = model_fingerprint(model_dir)
    except ArtifactError as err:
        raise ArtifactError(f"{version} was exported from {model_dir}, which is gone or unreadable ({err}); "
                            "restore it, or publish a version exported from the deployed model") from None
    if fingerprint != record.fingerprint:
        raise ArtifactError(f"{version} was exported from {model_dir}, but the model there has changed since; "
                            "restore it, or publish a version exported from the deployed model")
    return model_dir
