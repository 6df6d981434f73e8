"""The artifact manifest: what a policy artifact is, in canonical JSON bytes that get signed.

`manifest.json` holds exactly `ArtifactManifest.canonical_bytes()`; the signature covers those
bytes, and a reader refuses a manifest that is not in canonical form, so there is one byte string
per manifest and nothing outside the signed bytes is trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.errors import ArtifactError

MANIFEST_FORMAT = 1
ONNX_FILE = "policy.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
OBSERVATION_INPUT = "observation"
ACTION_OUTPUT = "action"

_VERSION_RE = re.compile(r"^v(\d{4,})$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(version: str) -> int:
    """The integer in a version name such as "v0007"; ArtifactError for anything else."""
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    if match is None:
        raise ArtifactError(f"not a policy version: {version!r} (expected 'v' and 4+ digits, e.g. v0001)")
    return int(match.group(1))


def validate_action_bounds(action_low: Sequence[float] | NDArray[Any], action_high: Sequence[float] | NDArray[Any],
                           act_dim: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """Bounds as float64 arrays of shape [act_dim], finite, low <= high."""
    low = np.asarray(action_low, dtype=np.float64).reshape(-1)
    high = np.asarray(action_high, dtype=np.float64).reshape(-1)
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise ArtifactError(f"action bounds have {low.size} (low) and {high.size} (high) entries, "
                            f"expected act_dim={act_dim}")
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ArtifactError("action bounds must be finite")
    if (low > high).any():
        dim = int(np.argmax(low > high))
        raise ArtifactError(f"action bound low > high in dim {dim}: {low[dim]} > {high[dim]}")
    return low, high


@dataclass(frozen=True)
class ManifestFields:
    """What a publisher states about a policy; the registry adds version, time, hash and signer."""

    task: str
    obs_dim: int
    act_dim: int
    action_low: Sequence[float]
    action_high: Sequence[float]
    dataset_hash: str
    method: str
    parent_version: str | None = None
    forget_request_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    observation_input: str = OBSERVATION_INPUT
    action_output: str = ACTION_OUTPUT


@dataclass(frozen=True)
class ArtifactManifest:
    version: str
    parent_version: str | None
    created: str                      # ISO 8601, UTC
    task: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    observation_input: str
    action_output: str
    forget_request_id: str | None
    dataset_hash: str
    method: str
    metrics: Mapping[str, float]
    onnx_sha256: str
    onnx_size_bytes: int
    signer_public_key: str            # hex Ed25519 verify key
    format: int = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        version_number(self.version)
        if self.parent_version is not None and version_number(self.parent_version) >= version_number(self.version):
            raise ArtifactError(f"manifest {self.version}: parent {self.parent_version} is not older")
        for name in ("created", "task", "observation_input", "action_output", "dataset_hash", "method"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ArtifactError(f"manifest {self.version}: '{name}' must be a non-empty string")
        if self.forget_request_id is not None and not isinstance(self.forget_request_id, str):
            raise ArtifactError(f"manifest {self.version}: 'forget_request_id' must be a string or null")
        for name in ("obs_dim", "act_dim", "onnx_size_bytes", "format"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArtifactError(f"manifest {self.version}: '{name}' must be a positive integer, got {value!r}")
        if self.format != MANIFEST_FORMAT:
            raise ArtifactError(f"manifest {self.version}: format {self.format} is not supported "
                                f"(this reader knows format {MANIFEST_FORMAT})")
        validate_action_bounds(self.action_low, self.action_high, self.act_dim)
        for name in ("onnx_sha256", "signer_public_key"):
            if not isinstance(getattr(self, name), str) or not _SHA256_RE.match(getattr(self, name)):
                raise ArtifactError(f"manifest {self.version}: '{name}' must be 64 lowercase hex digits")
        if not isinstance(self.metrics, Mapping):
            raise ArtifactError(f"manifest {self.version}: 'metrics' must be an object of name -> number")
        for key, value in self.metrics.items():
            if (not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value)):
                raise ArtifactError(f"manifest {self.version}: metric {key!r} = {value!r} is not a finite number")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["action_low"] = list(self.action_low)
        out["action_high"] = list(self.action_high)
        out["metrics"] = dict(self.metrics)
        return out

    def canonical_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
                + "\n").encode("ascii")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactManifest:
        if not isinstance(data, Mapping):
            raise ArtifactError("manifest is not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise ArtifactError(f"manifest fields do not match format {MANIFEST_FORMAT}: "
                                f"missing {missing}, unknown {unknown}")
        values = dict(data)
        for name in ("action_low", "action_high"):
            entries = values[name]
            if not isinstance(entries, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                    for v in entries):
                raise ArtifactError(f"manifest '{name}' must be a list of numbers")
            values[name] = tuple(float(v) for v in entries)
        return cls(**values)

    @classmethod
    def parse(cls, raw: bytes) -> ArtifactManifest:
        """Parse manifest.json bytes; refuse anything but the canonical form of a valid manifest."""
        try:
            data = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ArtifactError(f"manifest is not valid JSON: {err}") from None
        manifest = cls.from_dict(data)
        if manifest.canonical_bytes() != raw:
            raise ArtifactError(f"manifest {manifest.version} is not in canonical form (edited by hand?)")
        return manifest

    def summary(self) -> str:
        parent = self.parent_version or "-"
        forget = self.forget_request_id or "-"
        return (f"{self.version}  parent={parent}  {self.created}  task={self.task}  method={self.method}  "
                f"forget={forget}  sha256={self.onnx_sha256[:12]}")
