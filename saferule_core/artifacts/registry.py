"""A directory of signed, versioned policy artifacts with lineage.

Layout:

    root/
      .lock                 flock'ed by publishers (readers never lock)
      latest                the newest published version, e.g. "v0003\\n" (a file, not a symlink)
      v0001/                policy.onnx, manifest.json, manifest.sig
      v0002/ ...

Publishing builds the version under a hidden temporary name, fsyncs it and renames it into place:
the rename is the commit point, so a reader sees a whole artifact or none. Publishers serialise on
the lock, which makes version numbers distinct and monotonic. The read path (load, verify,
lineage) needs no torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey, VerifyKey

from saferule_core.artifacts.checks import check_policy_io, open_session
from saferule_core.artifacts.lineage import (
    CHECKPOINT_FILE,
    CheckpointRecord,
    parse_checkpoint_record,
    record_bytes,
    verified_checkpoint,
)
from saferule_core.artifacts.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    SIGNATURE_FILE,
    ArtifactManifest,
    ManifestFields,
    sha256_hex,
    validate_action_bounds,
    version_name,
    version_number,
)
from saferule_core.artifacts.signing import decode_signature, encode_signature, sign_manifest, verify, verify_key_hex
from saferule_core.errors import ArtifactError
from saferule_core.io_utils import atomic_directory, atomic_write_text, fsync_dir, read_regular_file
from saferule_core.limits import MAX_MANIFEST_BYTES, MAX_ONNX_BYTES, MAX_SMALL_FILE_BYTES, LimitError

LATEST_FILE = "latest"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified artifact. Build the inference session from `onnx_bytes` (the bytes that were
    hashed), not by re-reading the file, so nothing can change between check and use."""

    manifest: ArtifactManifest
    onnx_bytes: bytes
    path: Path


def _read_optional(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of a regular file of at most `max_bytes`; None when it is missing."""
    try:
        return read_regular_file(path, max_bytes)
    except FileNotFoundError:
        return None
    except LimitError as err:
        raise ArtifactError(f"refusing to read {err}") from None
    except OSError as err:
        raise ArtifactError(f"cannot read {path}: {err.strerror}") from None


def load_artifact_dir(path: Path, verify_key: VerifyKey) -> LoadedArtifact:
    """Verify an artifact directory (signature, then the ONNX hash) and return its contents."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact {path} does not exist")
    manifest_bytes = _read_optional(path / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    if manifest_bytes is None:
        raise ArtifactError(f"artifact {path} has no {MANIFEST_FILE}")
    signature_text = _read_optional(path / SIGNATURE_FILE, MAX_SMALL_FILE_BYTES)
    if signature_text is None:
        raise ArtifactError(f"artifact {path} is unsigned: {SIGNATURE_FILE} is missing")
    try:
        verify(manifest_bytes, decode_signature(signature_text), verify_key)
    except ArtifactError as err:
        raise ArtifactError(f"artifact {path}: {err}{_claimed_signer_hint(manifest_bytes, verify_key)}") from None
    manifest = ArtifactManifest.parse(manifest_bytes)
    if manifest.signer_public_key != verify_key_hex(verify_key):
        raise ArtifactError(f"artifact {path}: manifest names signer {manifest.signer_public_key[:16]}..., "
                            f"not the trusted key")
    onnx_bytes = _read_optional(path / ONNX_FILE, MAX_ONNX_BYTES)
    if onnx_bytes is None:
        raise ArtifactError(f"artifact {path} has no {ONNX_FILE}")
    digest = sha256_hex(onnx_bytes)
    if digest != manifest.onnx_sha256 or len(onnx_bytes) != manifest.onnx_size_bytes:
        raise ArtifactError(f"artifact {path}: {ONNX_FILE} was altered (sha256 {digest[:16]}..., "
                            f"manifest says {manifest.onnx_sha256[:16]}...)")
    return LoadedArtifact(manifest=manifest, onnx_bytes=onnx_bytes, path=path)


def _claimed_signer_hint(manifest_bytes: bytes, verify_key: VerifyKey) -> str:
    """When a signature fails, say whether the manifest claims another signer (a wrong key)."""
    try:
        claimed = ArtifactManifest.parse(manifest_bytes).signer_public_key
    except ArtifactError:
        return ""
    if claimed != verify_key_hex(verify_key):
        return f" (the manifest names signer {claimed[:16]}..., a different key than the trusted one)"
    return ""


def verify_artifact_dir(path: Path, verify_key: VerifyKey) -> ArtifactManifest:
    """Verify a standalone artifact directory (e.g. one handed to a policy runner by path)."""
    return load_artifact_dir(path, verify_key).manifest


def write_artifact_files(directory: Path, onnx_bytes: bytes, manifest_bytes: bytes, signature: bytes) -> None:
    (directory / ONNX_FILE).write_bytes(onnx_bytes)
    (directory / MANIFEST_FILE).write_bytes(manifest_bytes)
    (directory / SIGNATURE_FILE).write_bytes(encode_signature(signature))


class PolicyRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ----- read path (no lock: every visible version is complete) ------------------------------
    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                with contextlib.suppress(ArtifactError):
                    found.append((version_number(entry.name), entry.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        """The version the `latest` pointer names; None for an empty registry."""
        raw = _read_optional(self.root / LATEST_FILE, MAX_SMALL_FILE_BYTES)
        if raw is None:
            return None
        version = raw.decode("ascii", errors="replace").strip()
        version_number(version)
        if not (self.root / version).is_dir():
            raise ArtifactError(f"registry {self.root}: latest points at {version}, which does not exist")
        return version

    def path(self, version: str) -> Path:
        version_number(version)  # also keeps names like "../x" out of the path
        path = self.root / version
        if not path.is_dir():
            known = self.versions()
            raise ArtifactError(f"registry {self.root} has no version {version} "
                                f"(has {', '.join(known) if known else 'none'})")
        return path

    def version_for_request(self, request_id: str) -> str | None:
        """The newest version published for forget request `request_id` (its manifest names it), if any."""
        for version in reversed(self.versions()):
            if self.manifest(version).forget_request_id == request_id:
                return version
        return None

    def checkpoint_of(self, version: str) -> Path | None:
        """The model directory `version` was exported from (checked to still hold that model);
        None when the version was published without a record. ArtifactError when it is gone or changed."""
        path = self.path(version) / CHECKPOINT_FILE
        raw = _read_optional(path, MAX_SMALL_FILE_BYTES)
        return None if raw is None else verified_checkpoint(version, parse_checkpoint_record(raw, path))

    def deployed_model_dir(self, fallback: Path) -> Path:
        """Where unlearning starts: the model the latest version was exported from, or `fallback`
        when the registry is empty or its latest version records none."""
        latest = self.latest()
        found = self.checkpoint_of(latest) if latest is not None else None
        return found if found is not None else Path(fallback)

    def manifest(self, version: str) -> ArtifactManifest:
        """The manifest of `version`, parsed but NOT signature-checked (listing, display)."""
        raw = _read_optional(self.path(version) / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if raw is None:
            raise ArtifactError(f"version {version} has no {MANIFEST_FILE}")
        manifest = ArtifactManifest.parse(raw)
        if manifest.version != version:
            raise ArtifactError(f"directory {version} holds the manifest of {manifest.version}")
        return manifest

    def load(self, version: str, verify_key: VerifyKey) -> LoadedArtifact:
        """Verify `version` (signature, ONNX hash, name) and return its manifest and ONNX bytes."""
        loaded = load_artifact_dir(self.path(version), verify_key)
        # A validly signed artifact copied under another version's name is still refused.
        if loaded.manifest.version != version:
            raise ArtifactError(f"directory {version} holds the signed artifact {loaded.manifest.version}")
        return loaded

    def lineage(self, version: str, verify_key: VerifyKey | None = None) -> list[ArtifactManifest]:
        """`version` and its ancestors, newest first, ending at a root (parent_version None).

        With `verify_key`, every artifact on the way is verified.
        """
        chain: list[ArtifactManifest] = []
        current: str | None = version
        while current is not None:
            try:
                manifest = self.load(current, verify_key).manifest if verify_key else self.manifest(current)
            except ArtifactError as err:
                if chain:
                    raise ArtifactError(f"lineage of {version} is broken at {current}: {err}") from None
                raise
            chain.append(manifest)
            current = manifest.parent_version  # strictly older (manifest validation), so this ends
        return chain

    # ----- write path --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock, also if the process dies

    def _check_parent(self, fields: ManifestFields) -> None:
        if fields.parent_version is None:
            return
        parent = self.manifest(fields.parent_version)
        if (parent.task, parent.obs_dim, parent.act_dim) != (fields.task, fields.obs_dim, fields.act_dim):
            raise ArtifactError(
                f"parent {parent.version} is task {parent.task} with obs_dim={parent.obs_dim}, "
                f"act_dim={parent.act_dim}; the new policy is task {fields.task} with obs_dim={fields.obs_dim}, "
                f"act_dim={fields.act_dim}: a runner could not swap one for the other")

    def publish(self, onnx: Path | bytes, fields: ManifestFields, signing_key: SigningKey,
                checkpoint: CheckpointRecord | None = None) -> ArtifactManifest:
        """Sign and add a new version (the next number) and point `latest` at it; with `checkpoint`,
        the version records the trained model it was exported from (lineage.py).

        Refuses a model whose declared I/O does not match the fields, and a missing parent.
        """
        onnx_bytes = onnx if isinstance(onnx, bytes) else _read_onnx(Path(onnx))
        if len(onnx_bytes) > MAX_ONNX_BYTES:
            raise ArtifactError(f"the ONNX model is {len(onnx_bytes)} bytes; the limit is {MAX_ONNX_BYTES} "
                                f"(a runner would refuse to load it)")
        check_policy_io(open_session(onnx_bytes), fields.obs_dim, fields.act_dim,
                        fields.observation_input, fields.action_output)
        low, high = validate_action_bounds(fields.action_low, fields.action_high, fields.act_dim)
        with self._publish_lock():
            self._check_parent(fields)
            existing = self.versions()
            version = version_name(version_number(existing[-1]) + 1 if existing else 1)
            manifest = ArtifactManifest(
                version=version,
                parent_version=fields.parent_version,
                created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                task=fields.task,
                obs_dim=int(fields.obs_dim),
                act_dim=int(fields.act_dim),
                action_low=tuple(float(v) for v in low),
                action_high=tuple(float(v) for v in high),
                observation_input=fields.observation_input,
                action_output=fields.action_output,
                forget_request_id=fields.forget_request_id,
                dataset_hash=fields.dataset_hash,
                method=fields.method,
                metrics=_metric_values(fields.metrics),
                onnx_sha256=sha256_hex(onnx_bytes),
                onnx_size_bytes=len(onnx_bytes),
                signer_public_key=verify_key_hex(signing_key),
            )
            manifest_bytes = manifest.canonical_bytes()
            signature = sign_manifest(manifest_bytes, signing_key)
            with atomic_directory(self.root / version) as staging:
                write_artifact_files(staging, onnx_bytes, manifest_bytes, signature)
                if checkpoint is not None:
                    (staging / CHECKPOINT_FILE).write_bytes(record_bytes(checkpoint))
                # mkdtemp makes the staging directory 0700; runners may read as another user.
                os.chmod(staging, 0o755)
                fsync_dir(staging)
            atomic_write_text(self.root / LATEST_FILE, version + "\n")
            os.chmod(self.root / LATEST_FILE, 0o644)  # written via mkstemp, i.e. 0600
        return manifest


def _metric_values(metrics: Mapping[str, object]) -> dict[str, float]:
    values = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ArtifactError(f"metric {name!r} = {value!r} is not a number")
        values[str(name)] = float(value)
    return values


def _read_onnx(path: Path) -> bytes:
    onnx_bytes = _read_optional(path, MAX_ONNX_BYTES)
    if onnx_bytes is None:
        raise ArtifactError(f"cannot read ONNX file {path}: No such file or directory")
    return onnx_bytes
