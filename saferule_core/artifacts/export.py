"""Export a deployable policy module to ONNX, check it against torch, and publish it.

The only module here that imports torch, and only inside functions: importing it costs nothing
in a process (like a policy runner) that never exports.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from nacl.signing import SigningKey
from numpy.typing import NDArray

from saferule_core.artifacts.checks import check_policy_io, check_policy_outputs, measure_latency_us, open_session
from saferule_core.artifacts.lineage import CheckpointRecord
from saferule_core.artifacts.manifest import (
    ACTION_OUTPUT,
    OBSERVATION_INPUT,
    ONNX_FILE,
    ArtifactManifest,
    ManifestFields,
    sha256_hex,
    validate_action_bounds,
)
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.errors import ArtifactError
from saferule_core.io_utils import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from saferule_core.algos.base import Learner

LATENCY_RUNS = 1000


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float          # ONNX Runtime vs torch on the check batch
    check_rows: int
    latency_p50_us: float        # ONNX Runtime, one observation, one thread
    latency_p99_us: float
    size_bytes: int
    onnx_sha256: str
    opset: int

    def as_metrics(self) -> dict[str, float]:
        return {"export_max_abs_diff": self.max_abs_diff, "ort_latency_p50_us": self.latency_p50_us,
                "ort_latency_p99_us": self.latency_p99_us}


def default_check_observations(obs_dim: int, obs_mean: NDArray[Any] | None = None, obs_std: NDArray[Any] | None = None,
                               rows: int = 256, seed: int = 0) -> NDArray[Any]:
    """Synthetic raw observations when no real ones are given: mean + std * Gaussian noise at
    scales 1, 2 and 4 (mean 0, std 1 unless given), which covers the typical range and the
    saturating tails of a policy's inputs."""
    rng = np.random.default_rng(seed)
    mean = np.zeros(obs_dim) if obs_mean is None else np.asarray(obs_mean, dtype=np.float64).reshape(obs_dim)
    std = np.ones(obs_dim) if obs_std is None else np.asarray(obs_std, dtype=np.float64).reshape(obs_dim)
    scales = np.repeat(np.array([1.0, 2.0, 4.0]), -(-rows // 3))[:rows, None]
    return (mean + std * scales * rng.standard_normal((rows, obs_dim))).astype(np.float32)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs and warns about things irrelevant here (e.g. torchvision not installed)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_bytes(module: torch.nn.Module, obs_dim: int) -> tuple[bytes, int]:
    """The serialised model (weights inline: an artifact is one file) and its ai.onnx opset."""
    import torch

    example = torch.zeros(2, obs_dim)  # batch 2: an example batch of 1 would specialise the axis
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, input_names=[OBSERVATION_INPUT],
                output_names=[ACTION_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many kinds; all mean "this module cannot be exported"
        raise ArtifactError(f"cannot export the policy to ONNX: {type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
    if program is None:
        raise ArtifactError("cannot export the policy to ONNX: the exporter returned no program")
    proto = program.model_proto
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)
    return proto.SerializeToString(), int(opset)


def _torch_actions(module: torch.nn.Module, observations: NDArray[Any], act_dim: int) -> NDArray[Any]:
    import torch

    try:
        with torch.no_grad():
            out = module(torch.from_numpy(observations))
    except Exception as err:
        raise ArtifactError(f"the policy module fails on observations of shape {list(observations.shape)}: "
                            f"{type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (observations.shape[0], act_dim):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArtifactError(f"the policy module maps {list(observations.shape)} to {shape}, "
                            f"expected [{observations.shape[0]}, {act_dim}]")
    return out.detach().to(torch.float32).numpy()


def export_onnx(module: torch.nn.Module, obs_dim: int, act_dim: int, path: Path,
                action_low: NDArray[Any] | Sequence[float], action_high: NDArray[Any] | Sequence[float],
                check_batch: NDArray[Any] | None = None, atol: float = 1e-5,
                latency_runs: int = LATENCY_RUNS) -> ExportReport:
    """Export `module` (raw observations float32 [B, obs_dim] -> actions [B, act_dim]) to `path`.

    The ONNX model has input "observation" and output "action" with a dynamic batch axis. Before
    anything is written it is run in ONNX Runtime on `check_batch` (default: synthetic
    observations) and refused (ArtifactError) if its actions are non-finite, out of bounds, or
    differ from torch's by more than `atol`.
    """
    low, high = validate_action_bounds(action_low, action_high, act_dim)
    observations = default_check_observations(obs_dim) if check_batch is None else \
        np.ascontiguousarray(np.asarray(check_batch, dtype=np.float32))
    if observations.ndim != 2 or observations.shape[1] != obs_dim or len(observations) == 0:
        raise ArtifactError(f"check batch has shape {list(observations.shape)}, expected [N, {obs_dim}]")
    was_training = module.training
    module.eval()
    try:
        _torch_actions(module, observations[:2], act_dim)  # fail fast with a clear shape message
        onnx_bytes, opset = _onnx_bytes(module, obs_dim)
        expected = _torch_actions(module, observations, act_dim)
    finally:
        module.train(was_training)
    session = check_policy_io(open_session(onnx_bytes), obs_dim, act_dim)
    actions = check_policy_outputs(session, observations, low, high)
    max_abs_diff = float(np.abs(actions.astype(np.float64) - expected).max())
    if not max_abs_diff <= atol:
        raise ArtifactError(f"ONNX Runtime and torch disagree: max |diff| = {max_abs_diff:.3g} > atol {atol:g} "
                            f"on {len(observations)} observations")
    p50, p99 = measure_latency_us(session, observations[0], runs=latency_runs)
    path = Path(path)
    atomic_write_bytes(path, onnx_bytes)
    return ExportReport(path=path, max_abs_diff=max_abs_diff, check_rows=len(observations), latency_p50_us=p50,
                        latency_p99_us=p99, size_bytes=len(onnx_bytes), onnx_sha256=sha256_hex(onnx_bytes),
                        opset=opset)


def export_and_publish(module: torch.nn.Module, fields: ManifestFields, registry: PolicyRegistry,
                       signing_key: SigningKey, check_batch: NDArray[Any] | None = None,
                       atol: float = 1e-5, checkpoint: CheckpointRecord | None = None
                       ) -> tuple[ExportReport, ArtifactManifest]:
    """Export and check `module`, then publish it with the export measurements added to its metrics
    (and, with `checkpoint`, the trained model it came from: artifacts.lineage)."""
    with tempfile.TemporaryDirectory(prefix="saferule-export-") as tmp:
        report = export_onnx(module, fields.obs_dim, fields.act_dim, Path(tmp) / ONNX_FILE,
                             fields.action_low, fields.action_high, check_batch=check_batch, atol=atol)
        metrics: Mapping[str, float] = {**fields.metrics, **report.as_metrics()}
        manifest = registry.publish(report.path, replace(fields, metrics=metrics), signing_key, checkpoint)
    return replace(report, path=registry.path(manifest.version) / ONNX_FILE), manifest


def publish_learner(learner: Learner, registry: PolicyRegistry, signing_key: SigningKey, *,
                    method: str | None = None, parent: str | None = None, forget_request_id: str | None = None,
                    metrics: Mapping[str, float] | None = None, check_batch: NDArray[Any] | None = None,
                    atol: float = 1e-5, checkpoint: CheckpointRecord | None = None
                    ) -> tuple[ExportReport, ArtifactManifest]:
    """`export_and_publish` of a learner's deployable policy, its manifest fields taken from the
    learner (task, widths, action bounds, dataset hash; method defaults to its algorithm). Without
    `check_batch` the export is checked on observations drawn around its normalisation stats."""
    info, stats = learner.info, learner.info.stats
    fields = ManifestFields(
        task=info.task, obs_dim=info.obs_dim, act_dim=info.act_dim,
        action_low=[float(v) for v in stats.action_low], action_high=[float(v) for v in stats.action_high],
        dataset_hash=info.dataset_hash, method=method or info.algo, parent_version=parent,
        forget_request_id=forget_request_id, metrics=dict(metrics or {}))
    if check_batch is None:
        check_batch = default_check_observations(info.obs_dim, stats.obs_mean, stats.obs_std)
    return export_and_publish(learner.deployable_policy(), fields, registry, signing_key, check_batch=check_batch,
                              atol=atol, checkpoint=checkpoint)
