from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey, VerifyKey

from saferule_core.artifacts import registry as registry_module
from saferule_core.artifacts.checks import check_policy_outputs, open_session
from saferule_core.artifacts.manifest import ArtifactManifest, ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry, verify_artifact_dir
from saferule_core.errors import ArtifactError
from saferule_core.limits import MAX_ONNX_BYTES

REPO_ROOT = Path(__file__).resolve().parents[3]
FieldsFactory = Callable[..., ManifestFields]
PolicyBuilder = Callable[..., bytes]


@pytest.fixture
def registry(tmp_path: Path) -> PolicyRegistry:
    return PolicyRegistry(tmp_path / "registry")


@pytest.fixture
def three_versions(registry: PolicyRegistry, policy_onnx: PolicyBuilder, make_fields: FieldsFactory,
                   signing_key: SigningKey) -> PolicyRegistry:
    registry.publish(policy_onnx(seed=1), make_fields(), signing_key)
    registry.publish(policy_onnx(seed=2), make_fields(parent_version="v0001", method="safe_rule",
                                                      forget_request_id="fr-1"), signing_key)
    registry.publish(policy_onnx(seed=3), make_fields(parent_version="v0002", method="safe_rule"), signing_key)
    return registry


def test_publish_versions_latest_and_load(registry: PolicyRegistry, policy_onnx: PolicyBuilder,
                                          make_fields: FieldsFactory, signing_key: SigningKey,
                                          verify_key: VerifyKey) -> None:
    assert registry.versions() == [] and registry.latest() is None
    model = policy_onnx()
    manifest = registry.publish(model, make_fields(), signing_key)
    assert manifest.version == "v0001" and manifest.parent_version is None
    assert registry.versions() == ["v0001"] and registry.latest() == "v0001"
    assert (registry.root / "latest").read_text() == "v0001\n" and not (registry.root / "latest").is_symlink()
    loaded = registry.load("v0001", verify_key)
    assert loaded.onnx_bytes == model and loaded.manifest == manifest
    assert loaded.manifest.metrics == {"normalized_reward": 0.5, "normalized_cost": 0.8}
    assert sorted(p.name for p in (registry.root / "v0001").iterdir()) == ["manifest.json", "manifest.sig",
                                                                          "policy.onnx"]
    # Readable by a policy runner running as another user; nothing in a registry is secret.
    assert stat.S_IMODE((registry.root / "v0001").stat().st_mode) & 0o005 == 0o005
    assert stat.S_IMODE((registry.root / "latest").stat().st_mode) & 0o004
    actions = check_policy_outputs(loaded.onnx_bytes, np.ones((4, 3), np.float32), manifest.action_low,
                                   manifest.action_high)
    assert actions.shape == (4, 2)


def test_versions_lineage_and_latest(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    registry = three_versions
    assert registry.versions() == ["v0001", "v0002", "v0003"]
    assert registry.latest() == "v0003"
    assert [m.version for m in registry.lineage("v0003")] == ["v0003", "v0002", "v0001"]
    assert [m.version for m in registry.lineage("v0003", verify_key)] == ["v0003", "v0002", "v0001"]
    assert [m.version for m in registry.lineage("v0001")] == ["v0001"]
    assert registry.manifest("v0002").forget_request_id == "fr-1"


def test_publish_from_path(registry: PolicyRegistry, policy_onnx: PolicyBuilder, make_fields: FieldsFactory,
                           signing_key: SigningKey, verify_key: VerifyKey, tmp_path: Path) -> None:
    path = tmp_path / "exported.onnx"
    path.write_bytes(policy_onnx())
    registry.publish(path, make_fields(), signing_key)
    assert registry.load("v0001", verify_key).onnx_bytes == path.read_bytes()


def test_missing_parent_is_refused(registry: PolicyRegistry, policy_onnx: PolicyBuilder,
                                   make_fields: FieldsFactory, signing_key: SigningKey) -> None:
    with pytest.raises(ArtifactError, match="has no version v0004"):
        registry.publish(policy_onnx(), make_fields(parent_version="v0004"), signing_key)
    assert registry.versions() == []


def test_incompatible_parent_is_refused(three_versions: PolicyRegistry, policy_onnx: PolicyBuilder,
                                        make_fields: FieldsFactory, signing_key: SigningKey) -> None:
    with pytest.raises(ArtifactError, match="could not swap"):
        three_versions.publish(policy_onnx(obs_dim=4), make_fields(obs_dim=4, parent_version="v0003"),
                               signing_key)
    assert three_versions.versions() == ["v0001", "v0002", "v0003"]


def test_model_that_does_not_match_the_fields_is_refused(registry: PolicyRegistry, policy_onnx: PolicyBuilder,
                                                         make_fields: FieldsFactory,
                                                         signing_key: SigningKey) -> None:
    with pytest.raises(ArtifactError, match="obs_dim mismatch"):
        registry.publish(policy_onnx(obs_dim=5), make_fields(), signing_key)
    with pytest.raises(ArtifactError, match="expected act_dim=2"):
        registry.publish(policy_onnx(), make_fields(action_low=[-1.0]), signing_key)
    assert registry.versions() == []


# ----- tamper detection ---------------------------------------------------------------------------

def test_flipped_onnx_byte_fails_load(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    path = three_versions.root / "v0002" / "policy.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="policy.onnx was altered"):
        three_versions.load("v0002", verify_key)
    three_versions.load("v0003", verify_key)  # the others still load


def test_edited_manifest_metrics_fail_load(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    path = three_versions.root / "v0002" / "manifest.json"
    manifest = ArtifactManifest.parse(path.read_bytes())
    # Kept in canonical form, so only the signature can catch it.
    path.write_bytes(replace(manifest, metrics={**manifest.metrics, "normalized_cost": 0.1}).canonical_bytes())
    with pytest.raises(ArtifactError, match="bad signature: the manifest was altered"):
        three_versions.load("v0002", verify_key)
    with pytest.raises(ArtifactError, match="lineage of v0003 is broken at v0002"):
        three_versions.lineage("v0003", verify_key)


def test_hand_edited_manifest_fails_load(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    path = three_versions.root / "v0001" / "manifest.json"
    data = json.loads(path.read_bytes())
    data["metrics"]["normalized_cost"] = 0.1
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(ArtifactError, match="v0001"):
        three_versions.load("v0001", verify_key)


def test_removed_signature_fails_load(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    (three_versions.root / "v0003" / "manifest.sig").unlink()
    with pytest.raises(ArtifactError, match="unsigned: manifest.sig is missing"):
        three_versions.load("v0003", verify_key)


def test_wrong_key_fails_load(three_versions: PolicyRegistry) -> None:
    with pytest.raises(ArtifactError, match="bad signature.*different key than the trusted one"):
        three_versions.load("v0001", SigningKey.generate().verify_key)


def test_artifact_renamed_to_another_version_fails_load(three_versions: PolicyRegistry,
                                                        verify_key: VerifyKey) -> None:
    # A validly signed v0001 put in place of v0003 (a rollback attack) is refused by name.
    shutil.rmtree(three_versions.root / "v0003")
    shutil.copytree(three_versions.root / "v0001", three_versions.root / "v0003")
    with pytest.raises(ArtifactError, match="directory v0003 holds"):
        three_versions.load("v0003", verify_key)


def test_only_regular_files_within_the_size_limit_are_read(three_versions: PolicyRegistry,
                                                          verify_key: VerifyKey) -> None:
    # A symlink to /dev/zero would otherwise be read without end; an oversized file is refused
    # before a byte of it is read (a sparse file: nothing is written).
    onnx_file = three_versions.root / "v0002" / "policy.onnx"
    onnx_file.unlink()
    onnx_file.symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="policy.onnx is a character device; only a regular file is read"):
        three_versions.load("v0002", verify_key)
    onnx_file.unlink()
    with open(onnx_file, "wb") as fh:
        fh.truncate(MAX_ONNX_BYTES + 1)
    too_big = f"policy.onnx is {MAX_ONNX_BYTES + 1} bytes; the limit is {MAX_ONNX_BYTES}"
    with pytest.raises(ArtifactError, match=too_big):
        three_versions.load("v0002", verify_key)
    with pytest.raises(ArtifactError, match="the limit is"):
        open_session(onnx_file)
    signature = three_versions.root / "v0003" / "manifest.sig"
    signature.unlink()
    signature.symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="manifest.sig is a character device"):
        three_versions.load("v0003", verify_key)
    latest = three_versions.root / "latest"
    latest.unlink()
    os.mkfifo(latest)   # a FIFO without a writer: reading it would block for ever
    with pytest.raises(ArtifactError, match="latest is a FIFO"):
        three_versions.latest()
    three_versions.load("v0001", verify_key)  # the others still load


def test_publish_refuses_an_onnx_model_over_the_limit(registry: PolicyRegistry, make_fields: FieldsFactory,
                                                      signing_key: SigningKey, tmp_path: Path) -> None:
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_ONNX_BYTES + 1)
    with pytest.raises(ArtifactError, match=f"the limit is {MAX_ONNX_BYTES}"):
        registry.publish(huge, make_fields(), signing_key)
    assert registry.versions() == []


def test_verify_standalone_artifact_dir(three_versions: PolicyRegistry, verify_key: VerifyKey,
                                        tmp_path: Path) -> None:
    copy = shutil.copytree(three_versions.root / "v0002", tmp_path / "robot" / "current")
    assert verify_artifact_dir(copy, verify_key).version == "v0002"
    (copy / "policy.onnx").write_bytes(b"\0" + (copy / "policy.onnx").read_bytes())
    with pytest.raises(ArtifactError, match="altered"):
        verify_artifact_dir(copy, verify_key)
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact_dir(tmp_path / "nothing", verify_key)


def test_bad_version_names_are_refused(three_versions: PolicyRegistry, verify_key: VerifyKey) -> None:
    with pytest.raises(ArtifactError, match="not a policy version"):
        three_versions.load("../registry/v0001", verify_key)
    with pytest.raises(ArtifactError, match=r"has no version v0009 \(has v0001, v0002, v0003\)"):
        three_versions.load("v0009", verify_key)


# ----- atomic and concurrent publishing ----------------------------------------------------------

def test_failure_mid_publish_leaves_no_version(three_versions: PolicyRegistry, policy_onnx: PolicyBuilder,
                                               make_fields: FieldsFactory, signing_key: SigningKey,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in three_versions.root.iterdir())

    def write_then_fail(directory: Path, onnx_bytes: bytes, manifest_bytes: bytes, signature: bytes) -> None:
        (directory / "policy.onnx").write_bytes(onnx_bytes)
        (directory / "manifest.json").write_bytes(manifest_bytes)
        raise OSError("disk full")

    monkeypatch.setattr(registry_module, "write_artifact_files", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        three_versions.publish(policy_onnx(), make_fields(parent_version="v0003"), signing_key)
    assert three_versions.versions() == ["v0001", "v0002", "v0003"]
    assert three_versions.latest() == "v0003"
    assert sorted(p.name for p in three_versions.root.iterdir()) == before  # no staging leftovers


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
from saferule_core.artifacts import registry as registry_module
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.signing import load_signing_key

def write_then_die(directory, onnx_bytes, manifest_bytes, signature):
    (directory / "policy.onnx").write_bytes(onnx_bytes)
    os._exit(3)  # the process dies mid-publish, holding the lock

registry_module.write_artifact_files = write_then_die
root, key_dir, onnx_path = sys.argv[1:]
fields = ManifestFields(task="BallRun", obs_dim=3, act_dim=2, action_low=[-1.0, -1.0], action_high=[1.0, 1.0],
                        dataset_hash="ab" * 32, method="bc")
registry_module.PolicyRegistry(Path(root)).publish(Path(onnx_path), fields, load_signing_key(Path(key_dir)))
"""


def test_crash_mid_publish_leaves_no_version(registry: PolicyRegistry, policy_onnx: PolicyBuilder,
                                             make_fields: FieldsFactory, signing_key: SigningKey,
                                             verify_key: VerifyKey, key_dir: Path, tmp_path: Path) -> None:
    registry.publish(policy_onnx(), make_fields(), signing_key)
    onnx_path = tmp_path / "p.onnx"
    onnx_path.write_bytes(policy_onnx(seed=5))
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(registry.root), str(key_dir), str(onnx_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert registry.versions() == ["v0001"] and registry.latest() == "v0001"
    leftovers = [p.name for p in registry.root.iterdir() if p.name.startswith(".v0002")]
    assert leftovers  # the half-built artifact exists, hidden
    manifest = registry.publish(policy_onnx(seed=6), make_fields(parent_version="v0001"), signing_key)
    assert manifest.version == "v0002"  # the dead process's lock was released
    registry.load("v0002", verify_key)


CONCURRENT_SCRIPT = """
import sys, time
from pathlib import Path
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_signing_key

root, key_dir, onnx_path, go_file, count = sys.argv[1:]
registry = PolicyRegistry(Path(root))
key = load_signing_key(Path(key_dir))
fields = ManifestFields(task="BallRun", obs_dim=3, act_dim=2, action_low=[-1.0, -1.0], action_high=[1.0, 1.0],
                        dataset_hash="ab" * 32, method="bc")
print("ready", flush=True)
while not Path(go_file).exists():
    time.sleep(0.002)
for _ in range(int(count)):
    print(registry.publish(Path(onnx_path), fields, key).version, flush=True)
"""


def test_concurrent_publishers_get_distinct_versions(registry: PolicyRegistry, policy_onnx: PolicyBuilder,
                                                     key_dir: Path, verify_key: VerifyKey,
                                                     tmp_path: Path) -> None:
    onnx_path = tmp_path / "p.onnx"
    onnx_path.write_bytes(policy_onnx())
    go_file = tmp_path / "go"
    per_process = 5
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(registry.root), str(key_dir),
                                   str(onnx_path), str(go_file), str(per_process)],
                                  cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    go_file.touch()
    published: list[str] = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        published += out.split()
    expected = [f"v{i:04d}" for i in range(1, 2 * per_process + 1)]
    assert sorted(published) == expected  # distinct, no gaps
    assert registry.versions() == expected and registry.latest() == expected[-1]
    for version in expected:
        assert registry.load(version, verify_key).manifest.version == version


def test_readers_need_no_torch(three_versions: PolicyRegistry, key_dir: Path) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import saferule_core.artifacts
import saferule_core.artifacts.export  # importable; torch is only needed to call it
from saferule_core.artifacts import PolicyRegistry, check_policy_outputs, load_verify_key
registry = PolicyRegistry({str(three_versions.root)!r})
loaded = registry.load(registry.latest(), load_verify_key({str(key_dir)!r}))
actions = check_policy_outputs(loaded.onnx_bytes, np.zeros((2, 3), np.float32), loaded.manifest.action_low,
                               loaded.manifest.action_high)
print(loaded.manifest.version, actions.shape)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["v0003", "(2,", "2)"]
