from __future__ import annotations

import json
from dataclasses import replace

import pytest

from saferule_core.artifacts.manifest import ArtifactManifest, validate_action_bounds, version_name, version_number
from saferule_core.errors import ArtifactError


def sample_manifest(**overrides: object) -> ArtifactManifest:
    values: dict[str, object] = dict(
        version="v0002", parent_version="v0001", created="2025-01-01T00:00:00.000+00:00", task="BallRun",
        obs_dim=3, act_dim=2, action_low=(-1.0, -0.5), action_high=(1.0, 0.5), observation_input="observation",
        action_output="action", forget_request_id="fr-1", dataset_hash="cd" * 32, method="safe_rule",
        metrics={"normalized_cost": 0.7}, onnx_sha256="ab" * 32, onnx_size_bytes=123, signer_public_key="ef" * 32)
    values.update(overrides)
    return ArtifactManifest(**values)  # type: ignore[arg-type]


def test_canonical_bytes_round_trip() -> None:
    manifest = sample_manifest()
    raw = manifest.canonical_bytes()
    assert ArtifactManifest.parse(raw) == manifest
    assert json.loads(raw)["onnx_sha256"] == "ab" * 32


def test_non_canonical_manifest_is_refused() -> None:
    raw = sample_manifest().canonical_bytes()
    compact = json.dumps(json.loads(raw), sort_keys=True).encode()
    with pytest.raises(ArtifactError, match="canonical"):
        ArtifactManifest.parse(compact)


def test_unknown_and_missing_fields_are_refused() -> None:
    data = json.loads(sample_manifest().canonical_bytes())
    data["extra"] = 1
    del data["task"]
    with pytest.raises(ArtifactError, match=r"missing \['task'\], unknown \['extra'\]"):
        ArtifactManifest.from_dict(data)


@pytest.mark.parametrize("overrides, message", [
    ({"version": "7"}, "not a policy version"),
    ({"parent_version": "v0003"}, "not older"),
    ({"obs_dim": 0}, "obs_dim"),
    ({"action_low": (-1.0,)}, "expected act_dim=2"),
    ({"action_low": (2.0, -0.5)}, "low > high in dim 0"),
    ({"metrics": {"cost": float("nan")}}, "not a finite number"),
    ({"onnx_sha256": "xyz"}, "64 lowercase hex"),
    ({"format": 2}, "format 2 is not supported"),
])
def test_invalid_manifest_fields_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        sample_manifest(**overrides)


def test_version_names() -> None:
    assert version_name(7) == "v0007"
    assert version_number("v0007") == 7
    assert version_number(version_name(12345)) == 12345
    with pytest.raises(ArtifactError):
        version_number("../v0001")


def test_validate_action_bounds_shapes() -> None:
    low, high = validate_action_bounds([-1, -2], [1, 2], 2)
    assert low.tolist() == [-1.0, -2.0] and high.tolist() == [1.0, 2.0]
    with pytest.raises(ArtifactError, match="finite"):
        validate_action_bounds([-1, float("inf")], [1, 2], 2)


def test_replace_keeps_validation() -> None:
    with pytest.raises(ArtifactError):
        replace(sample_manifest(), act_dim=3)
