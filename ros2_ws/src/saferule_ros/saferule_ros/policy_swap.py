"""The policy runner's swap discipline, free of ROS: verify and build a policy off the control
thread, then hand the control thread one reference to switch to.

Verification of an artifact (`PolicyLoader.prepare`): the path is inside the registry root; the
manifest's signature and the ONNX hash check out (saferule_core.artifacts); its widths match the
robot's; the model loads in onnxruntime (one intra-op thread) with the declared input/output; and
its actions on the robot's most recent observations are finite and within the artifact's bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from nacl.signing import VerifyKey

from saferule_core.artifacts.checks import check_policy_io, check_policy_outputs, open_session
from saferule_core.artifacts.export import default_check_observations
from saferule_core.artifacts.registry import LoadedArtifact, PolicyRegistry, load_artifact_dir
from saferule_core.errors import ArtifactError
from saferule_core.limits import MAX_ARTIFACT_PATH_CHARS, MAX_VERSION_CHARS, check_chars

LATEST = "latest"


@dataclass(frozen=True)
class LoadedPolicy:
    """A verified policy with its session built: what the control thread runs."""

    version: str
    sha256: str
    path: Path
    session: ort.InferenceSession
    input_name: str
    output_name: str
    obs_dim: int
    act_dim: int
    low: np.ndarray           # clip bounds: the artifact's bounds within the robot's limits
    high: np.ndarray
    loaded_at_ns: int         # wall clock (time.time_ns) when verification finished

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The raw (unclipped) action for one observation [obs_dim] -> [act_dim]."""
        (actions,) = self.session.run([self.output_name], {self.input_name: observation.reshape(1, -1)})
        return actions[0]


@dataclass
class PolicySlot:
    """What the control thread reads once per tick. A swap replaces the whole slot."""

    active: LoadedPolicy | None
    previous: LoadedPolicy | None = None
    watch_left: int = 0       # actions of `active` still watched for a non-finite output


class ObservationWindow:
    """The last `capacity` observations seen (written by the control thread, copied by a swap)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._rows: np.ndarray | None = None
        self._count = 0

    def push(self, observation: np.ndarray) -> None:
        if self._rows is None or self._rows.shape[1] != observation.shape[0]:
            self._rows = np.zeros((self.capacity, observation.shape[0]), dtype=np.float32)
            self._count = 0
        self._rows[self._count % self.capacity] = observation
        self._count += 1

    def snapshot(self) -> np.ndarray | None:
        rows = self._rows
        if rows is None or self._count == 0:
            return None
        return rows[: min(self._count, self.capacity)].copy()


@dataclass
class LatencyWindow:
    """Recent latencies in microseconds; percentiles over the last `capacity` samples."""

    capacity: int
    _values: np.ndarray = field(init=False)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.capacity = max(1, self.capacity)
        self._values = np.zeros(self.capacity, dtype=np.float64)

    def record(self, microseconds: float) -> None:
        self._values[self._count % self.capacity] = microseconds
        self._count += 1

    def summary(self) -> tuple[float, float, float]:
        """(p50, p99, max); zeros before the first sample."""
        n = min(self._count, self.capacity)
        if n == 0:
            return 0.0, 0.0, 0.0
        recent = self._values[:n]
        p50, p99 = np.percentile(recent, [50.0, 99.0])
        return float(p50), float(p99), float(recent.max())


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


class PolicyLoader:
    """Resolves, verifies and builds policies from one registry with one trusted key."""

    def __init__(self, registry_root: Path, verify_key: VerifyKey, robot_low: list[float] | None = None,
                 robot_high: list[float] | None = None, verify_rows: int = 256) -> None:
        self.registry = PolicyRegistry(Path(registry_root).expanduser())
        self.verify_key = verify_key
        self.robot_low = np.asarray(robot_low, dtype=np.float64) if robot_low else None
        self.robot_high = np.asarray(robot_high, dtype=np.float64) if robot_high else None
        self.verify_rows = verify_rows

    def _resolve_path(self, artifact_path: str) -> Path:
        root = self.registry.root.resolve()
        path = Path(artifact_path).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()  # symlinks resolved too
        if not _within(path, root):
            raise ArtifactError(f"artifact path {artifact_path} is outside the registry root {root}")
        return path

    def load(self, artifact_path: str = "", version: str = "") -> LoadedArtifact:
        """Verify the artifact named by a path (inside the registry) or a version ("latest" allowed)."""
        check_chars("artifact_path", artifact_path, MAX_ARTIFACT_PATH_CHARS, ArtifactError)
        check_chars("version", version, MAX_VERSION_CHARS, ArtifactError)
        if bool(artifact_path) == bool(version):
            raise ArtifactError("name either artifact_path or version (not both, not neither)")
        if artifact_path:
            return load_artifact_dir(self._resolve_path(artifact_path), self.verify_key)
        if version == LATEST:
            latest = self.registry.latest()
            if latest is None:
                raise ArtifactError(f"registry {self.registry.root} has no published version yet")
            version = latest
        return self.registry.load(version, self.verify_key)

    def _clip_bounds(self, artifact: LoadedArtifact) -> tuple[np.ndarray, np.ndarray]:
        manifest = artifact.manifest
        low = np.asarray(manifest.action_low, dtype=np.float64)
        high = np.asarray(manifest.action_high, dtype=np.float64)
        if self.robot_low is not None and self.robot_high is not None:
            if self.robot_low.shape != low.shape or self.robot_high.shape != high.shape:
                raise ArtifactError(f"{manifest.version} has {manifest.act_dim} action entries but the robot's limits "
                                    f"have {self.robot_low.size}")
            low, high = np.maximum(low, self.robot_low), np.minimum(high, self.robot_high)
            if (low > high).any():
                raise ArtifactError(f"{manifest.version}'s action bounds do not overlap the robot's limits")
        return low.astype(np.float32), high.astype(np.float32)

    def prepare(self, artifact: LoadedArtifact, recent_observations: np.ndarray | None,
                obs_dim: int | None, act_dim: int | None) -> LoadedPolicy:
        """Check widths, build the session, judge its actions; ArtifactError names what is wrong."""
        manifest = artifact.manifest
        name = f"{manifest.version} ({artifact.path})"
        if obs_dim is not None and manifest.obs_dim != obs_dim:
            raise ArtifactError(f"{name} takes observations of width {manifest.obs_dim}; this robot's have width "
                                f"{obs_dim} (obs_dim mismatch)")
        if act_dim is not None and manifest.act_dim != act_dim:
            raise ArtifactError(f"{name} produces actions of width {manifest.act_dim}; this robot takes "
                                f"{act_dim} (act_dim mismatch)")
        low, high = self._clip_bounds(artifact)
        session = check_policy_io(open_session(artifact.onnx_bytes), manifest.obs_dim, manifest.act_dim,
                                  manifest.observation_input, manifest.action_output)
        observations = recent_observations
        if observations is None or observations.shape[1] != manifest.obs_dim:
            observations = default_check_observations(manifest.obs_dim, rows=self.verify_rows)
        try:
            check_policy_outputs(session, observations[-self.verify_rows:], manifest.action_low,
                                 manifest.action_high, input_name=manifest.observation_input,
                                 output_name=manifest.action_output)
        except ArtifactError as err:
            raise ArtifactError(f"{name}: {err}") from None
        policy = LoadedPolicy(version=manifest.version, sha256=manifest.onnx_sha256, path=artifact.path,
                              session=session, input_name=manifest.observation_input,
                              output_name=manifest.action_output, obs_dim=manifest.obs_dim, act_dim=manifest.act_dim,
                              low=low, high=high, loaded_at_ns=time.time_ns())
        policy.act(observations[-1])  # warm-up: the first single-row run allocates
        return policy
