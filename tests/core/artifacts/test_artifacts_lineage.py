"""Each published version can record the trained model it came from; unlearning starts from it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from saferule_core.artifacts.lineage import CHECKPOINT_FILE, checkpoint_record, model_fingerprint
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.errors import ArtifactError

FieldsFactory = Callable[..., ManifestFields]
PolicyBuilder = Callable[..., bytes]


@pytest.fixture
def registry(tmp_path: Path) -> PolicyRegistry:
    return PolicyRegistry(tmp_path / "registry")


def model_dir(path: Path, weights: bytes = b"weights-1", shards: int = 0) -> Path:
    path.mkdir(parents=True)
    if shards:
        (path / "sisa.json").write_text('{"format": "saferule-sisa"}')
        for k in range(shards):
            (path / f"shard_{k:02d}").mkdir()
            (path / f"shard_{k:02d}" / "model.pt").write_bytes(weights + bytes([k]))
    else:
        (path / "model.pt").write_bytes(weights)
    (path / "metrics.jsonl").write_text("{}\n")
    return path


def test_a_version_records_its_model_and_unlearning_starts_there(tmp_path: Path, registry: PolicyRegistry,
                                                                  policy_onnx: PolicyBuilder,
                                                                  make_fields: FieldsFactory,
                                                                  signing_key: SigningKey,
                                                                  verify_key: VerifyKey) -> None:
    fallback = tmp_path / "configured"
    assert registry.deployed_model_dir(fallback) == fallback            # empty registry
    registry.publish(policy_onnx(seed=1), make_fields(), signing_key)   # published without a record
    assert registry.checkpoint_of("v0001") is None and registry.deployed_model_dir(fallback) == fallback

    first = model_dir(tmp_path / "first")
    registry.publish(policy_onnx(seed=2), make_fields(parent_version="v0001"), signing_key, checkpoint_record(first))
    assert registry.checkpoint_of("v0002") == first.resolve() == registry.deployed_model_dir(fallback)
    registry.load("v0002", verify_key)              # the record sits beside the signed files, unsigned, harmless

    manual = model_dir(tmp_path / "manual", b"weights-2")   # an operator exports another model by hand
    registry.publish(policy_onnx(seed=3), make_fields(parent_version="v0002"), signing_key, checkpoint_record(manual))
    assert registry.deployed_model_dir(fallback) == manual.resolve()
    assert registry.checkpoint_of("v0002") == first.resolve()


@pytest.mark.parametrize("change", ["overwritten", "deleted", "moved"])
def test_a_changed_or_missing_model_is_refused_not_used(tmp_path: Path, registry: PolicyRegistry,
                                                        policy_onnx: PolicyBuilder, make_fields: FieldsFactory,
                                                        signing_key: SigningKey, change: str) -> None:
    source = model_dir(tmp_path / "model")
    registry.publish(policy_onnx(seed=1), make_fields(), signing_key, checkpoint_record(source))
    if change == "overwritten":
        (source / "model.pt").write_bytes(b"another model")
        expected = "has changed since"
    elif change == "deleted":
        (source / "model.pt").unlink()
        expected = "gone or unreadable"
    else:
        source.rename(tmp_path / "elsewhere")
        expected = "gone or unreadable"
    with pytest.raises(ArtifactError, match=expected):
        registry.deployed_model_dir(tmp_path / "fallback")


def test_the_fingerprint_covers_the_weights_of_every_shard_and_nothing_else(tmp_path: Path) -> None:
    sisa = model_dir(tmp_path / "sisa", shards=3)
    before = model_fingerprint(sisa)
    (sisa / "metrics.jsonl").write_text("more training logs\n")
    assert model_fingerprint(sisa) == before
    (sisa / "shard_02" / "model.pt").write_bytes(b"retrained shard")
    assert model_fingerprint(sisa) != before
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no trained model"):
        model_fingerprint(tmp_path / "empty")


@pytest.mark.parametrize("content", ["not json", '{"model_dir": 3, "fingerprint": "x"}', "symlink to /dev/zero"])
def test_a_damaged_record_is_an_error_naming_the_file(tmp_path: Path, registry: PolicyRegistry,
                                                      policy_onnx: PolicyBuilder, make_fields: FieldsFactory,
                                                      signing_key: SigningKey, content: str) -> None:
    registry.publish(policy_onnx(seed=1), make_fields(), signing_key, checkpoint_record(model_dir(tmp_path / "m")))
    record = registry.path("v0001") / CHECKPOINT_FILE
    record.unlink()
    if content.startswith("symlink"):
        os.symlink("/dev/zero", record)
    else:
        record.write_text(content)
    with pytest.raises(ArtifactError, match=CHECKPOINT_FILE):
        registry.checkpoint_of("v0001")
