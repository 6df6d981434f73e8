"""The `saferule export` and `saferule registry` commands, end to end through the CLI.

`saferule export` loads MODEL_DIR with saferule_core.unlearning.models.load_model (a single learner
or a SISA ensemble). One test saves
a real (untrained) learner; the others stand in a learner with the same surface
(info + deployable_policy()) so they do not depend on the learners' internals."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from saferule_core.algos import checkpoint
from saferule_core.algos.base import ModelInfo
from saferule_core.algos.batch import NormalizationStats
from saferule_core.algos.bc import BC, BCConfig
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_verify_key
from saferule_core.cli import main
from saferule_core.unlearning import models

torch.set_num_threads(1)


class UnitBoxPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 2)
        self.register_buffer("obs_mean", torch.tensor([10.0, 0.0, -5.0]))
        self.register_buffer("obs_std", torch.tensor([2.0, 1.0, 4.0]))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net((obs - self.obs_mean) / self.obs_std))


class FakeLearner:
    def __init__(self, model_dir: Path) -> None:
        stats = types.SimpleNamespace(obs_mean=np.array([10.0, 0.0, -5.0], np.float32),
                                      obs_std=np.array([2.0, 1.0, 4.0], np.float32),
                                      action_low=np.array([-1.0, -1.0], np.float32),
                                      action_high=np.array([1.0, 1.0], np.float32))
        self.info = types.SimpleNamespace(algo="bcq_lag", task="BallRun", obs_dim=3, act_dim=2,
                                          dataset_hash="12" * 32, stats=stats)
        self.model_dir = model_dir

    def deployable_policy(self) -> nn.Module:
        return UnitBoxPolicy()


@pytest.fixture
def fake_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    loaded: list[Path] = []

    def load_model(model_dir: Path) -> FakeLearner:
        loaded.append(Path(model_dir))
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        (Path(model_dir) / "model.pt").write_bytes(b"stand-in weights")   # what the checkpoint record fingerprints
        return FakeLearner(Path(model_dir))

    monkeypatch.setattr(models, "load_model", load_model)
    return loaded


def test_export_a_saved_learner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = NormalizationStats(obs_mean=np.linspace(-1, 1, 7), obs_std=np.full(7, 0.5),
                               action_low=np.array([-2.0, -1.0]), action_high=np.array([2.0, 1.0]))
    info = ModelInfo(algo="bc_all", task="BallRun", obs_dim=7, act_dim=2, dataset_hash="ab" * 32, stats=stats)
    checkpoint.save_model(tmp_path / "model", BC(BCConfig(hidden=(16,)), info))
    keys, registry = tmp_path / "keys", tmp_path / "registry"
    assert main(["registry", "keygen", str(keys)]) == 0
    assert main(["export", str(tmp_path / "model"), "--registry", str(registry), "--key", str(keys)]) == 0
    assert "published v0001" in capsys.readouterr().out
    manifest = PolicyRegistry(registry).load("v0001", load_verify_key(keys)).manifest
    assert (manifest.task, manifest.method, manifest.obs_dim, manifest.act_dim) == ("BallRun", "bc_all", 7, 2)
    assert manifest.action_low == (-2.0, -1.0) and manifest.action_high == (2.0, 1.0)
    assert manifest.dataset_hash == "ab" * 32


def test_keygen_export_list_show_lineage_verify(tmp_path: Path, fake_checkpoint: list[Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    keys, registry = tmp_path / "keys", tmp_path / "registry"
    assert main(["registry", "keygen", str(keys)]) == 0
    assert (keys / "signing_key").exists() and (keys / "verify_key").exists()

    assert main(["export", str(tmp_path / "run1"), "--registry", str(registry), "--key", str(keys),
                 "--metric", "normalized_cost=1.4"]) == 0
    assert fake_checkpoint == [tmp_path / "run1"]
    assert main(["export", str(tmp_path / "run2"), "--registry", str(registry), "--key", str(keys),
                 "--parent", "v0001", "--forget-request-id", "fr-9", "--method", "safe_rule"]) == 0
    out = capsys.readouterr().out
    assert "published v0001" in out and "published v0002 (parent v0001)" in out

    assert main(["registry", "list", "--registry", str(registry)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  v0001") and lines[1].startswith("* v0002")

    assert main(["registry", "show", "v0001", "--registry", str(registry)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["method"] == "bcq_lag" and shown["metrics"]["normalized_cost"] == 1.4
    assert shown["task"] == "BallRun" and shown["dataset_hash"] == "12" * 32

    assert main(["registry", "lineage", "v0002", "--registry", str(registry), "--key", str(keys)]) == 0
    lineage = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lineage] == ["v0002", "v0001"] and "forget=fr-9" in lineage[0]

    assert main(["registry", "verify", "v0002", "--registry", str(registry), "--key", str(keys)]) == 0
    assert "v0002 OK" in capsys.readouterr().out
    assert main(["registry", "verify", str(registry / "v0001"), "--key", str(keys)]) == 0
    assert "v0001 OK" in capsys.readouterr().out


def test_verify_reports_tampering_as_one_line(tmp_path: Path, fake_checkpoint: list[Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    keys, registry = tmp_path / "keys", tmp_path / "registry"
    main(["registry", "keygen", str(keys)])
    main(["export", str(tmp_path / "run"), "--registry", str(registry), "--key", str(keys)])
    onnx_path = registry / "v0001" / "policy.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    capsys.readouterr()
    assert main(["registry", "verify", "v0001", "--registry", str(registry), "--key", str(keys)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferule registry: error: artifact") and "policy.onnx was altered" in err
    assert len(err.splitlines()) == 1


def test_export_refuses_missing_key_and_parent(tmp_path: Path, fake_checkpoint: list[Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "registry"
    assert main(["export", str(tmp_path / "run"), "--registry", str(registry), "--key", str(tmp_path / "none")]) == 2
    assert "registry keygen" in capsys.readouterr().err
    main(["registry", "keygen", str(tmp_path / "keys")])
    assert main(["export", str(tmp_path / "run"), "--registry", str(registry), "--key", str(tmp_path / "keys"),
                 "--parent", "v0007"]) == 2
    assert "has no version v0007" in capsys.readouterr().err
    assert fake_checkpoint == []  # refused before loading the model
    assert main(["registry", "keygen", str(tmp_path / "keys")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_verify_needs_a_registry_for_a_version_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["registry", "keygen", str(tmp_path / "keys")])
    assert main(["registry", "verify", "v0001", "--key", str(tmp_path / "keys")]) == 2
    assert "--registry" in capsys.readouterr().err
