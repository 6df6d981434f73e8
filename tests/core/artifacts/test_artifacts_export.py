from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nacl.signing import SigningKey, VerifyKey
from torch import nn

from saferule_core.artifacts.checks import open_session
from saferule_core.artifacts.export import default_check_observations, export_and_publish, export_onnx
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.errors import ArtifactError

torch.set_num_threads(1)
OBS_DIM, ACT_DIM = 5, 2
LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 1.0])


class BoundedPolicy(nn.Module):
    """What a learner's deployable policy looks like: raw obs -> normalise -> MLP -> tanh -> action box."""

    def __init__(self, low: np.ndarray = LOW, high: np.ndarray = HIGH, overshoot: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(OBS_DIM, 32), nn.ReLU(), nn.Linear(32, ACT_DIM))
        self.register_buffer("obs_mean", torch.linspace(-1.0, 1.0, OBS_DIM))
        self.register_buffer("obs_std", torch.full((OBS_DIM,), 2.0))
        self.register_buffer("scale", torch.as_tensor((high - low) / 2 * overshoot, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net((obs - self.obs_mean) / self.obs_std)) * self.scale + self.offset


def test_good_module_exports_and_matches_torch(tmp_path: Path) -> None:
    module = BoundedPolicy()
    module.train()
    path = tmp_path / "out" / "policy.onnx"
    report = export_onnx(module, OBS_DIM, ACT_DIM, path, LOW, HIGH, latency_runs=200)
    assert module.training  # the caller's mode is restored
    assert path.stat().st_size == report.size_bytes > 0
    assert 0.0 <= report.max_abs_diff <= 1e-5 and report.check_rows == 256
    assert 0.0 < report.latency_p50_us <= report.latency_p99_us
    assert report.opset >= 17
    session = open_session(path)
    assert [i.name for i in session.get_inputs()] == ["observation"]
    assert [o.name for o in session.get_outputs()] == ["action"]
    with torch.no_grad():
        module.eval()
        for batch in (1, 7):  # the batch axis is dynamic
            obs = default_check_observations(OBS_DIM, rows=batch, seed=batch)
            (actions,) = session.run(None, {"observation": obs})
            np.testing.assert_allclose(actions, module(torch.from_numpy(obs)).numpy(), atol=1e-5)


def test_given_check_batch_is_used(tmp_path: Path) -> None:
    batch = np.random.default_rng(3).standard_normal((10, OBS_DIM)).astype(np.float32)
    report = export_onnx(BoundedPolicy(), OBS_DIM, ACT_DIM, tmp_path / "p.onnx", LOW, HIGH, check_batch=batch,
                         latency_runs=50)
    assert report.check_rows == 10
    with pytest.raises(ArtifactError, match=r"check batch has shape \[10, 4\]"):
        export_onnx(BoundedPolicy(), OBS_DIM, ACT_DIM, tmp_path / "q.onnx", LOW, HIGH, check_batch=batch[:, :4])


def test_nan_module_is_refused_and_nothing_written(tmp_path: Path) -> None:
    module = BoundedPolicy()
    with torch.no_grad():
        module.net[0].weight[0, 0] = float("nan")  # e.g. a diverged training run
    path = tmp_path / "policy.onnx"
    with pytest.raises(ArtifactError, match="non-finite actions"):
        export_onnx(module, OBS_DIM, ACT_DIM, path, LOW, HIGH)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_out_of_bounds_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.onnx"
    with pytest.raises(ArtifactError, match="out-of-bounds actions"):
        export_onnx(BoundedPolicy(overshoot=1.5), OBS_DIM, ACT_DIM, path, LOW, HIGH)
    assert not path.exists()


class NoisyPolicy(BoundedPolicy):
    """A stochastic policy exported by mistake: ONNX Runtime's noise is not torch's."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean = torch.tanh(self.net((obs - self.obs_mean) / self.obs_std)) * 0.5
        return mean + 0.1 * torch.rand_like(mean)


def test_onnx_torch_disagreement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"ONNX Runtime and torch disagree: max \|diff\| = .* > atol 1e-05"):
        export_onnx(NoisyPolicy(), OBS_DIM, ACT_DIM, tmp_path / "p.onnx", [-1.0, -1.0], [1.0, 1.0])
    assert not (tmp_path / "p.onnx").exists()


def test_module_with_wrong_action_width_is_refused_before_export(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"maps \[2, 5\] to \[2, 2\], expected \[2, 3\]"):
        export_onnx(BoundedPolicy(), OBS_DIM, 3, tmp_path / "p.onnx", [-1.0] * 3, [1.0] * 3)
    with pytest.raises(ArtifactError, match="fails on observations of shape"):
        export_onnx(BoundedPolicy(), 4, ACT_DIM, tmp_path / "p.onnx", LOW, HIGH)


def test_export_and_publish(tmp_path: Path, signing_key: SigningKey, verify_key: VerifyKey) -> None:
    registry = PolicyRegistry(tmp_path / "registry")
    fields = ManifestFields(task="BallRun", obs_dim=OBS_DIM, act_dim=ACT_DIM, action_low=LOW.tolist(),
                            action_high=HIGH.tolist(), dataset_hash="0f" * 32, method="safe_rule",
                            forget_request_id="fr-3", metrics={"normalized_cost": 0.4})
    report, manifest = export_and_publish(BoundedPolicy(), fields, registry, signing_key)
    assert manifest.version == "v0001" and registry.latest() == "v0001"
    assert report.path == registry.root / "v0001" / "policy.onnx"
    assert manifest.onnx_sha256 == report.onnx_sha256
    assert manifest.metrics["normalized_cost"] == 0.4
    assert manifest.metrics["export_max_abs_diff"] == report.max_abs_diff
    assert manifest.metrics["ort_latency_p99_us"] == report.latency_p99_us
    loaded = registry.load("v0001", verify_key)
    assert loaded.manifest.forget_request_id == "fr-3" and len(loaded.onnx_bytes) == report.size_bytes
