"""Versioned, signed ONNX policy artifacts: export, sign, publish, verify, check before a swap.

Everything here but `export` needs only numpy, onnxruntime and PyNaCl (a policy runner imports no
torch); `export` imports torch when it is called. See docs/artifacts.md.
"""

from saferule_core.artifacts.checks import check_policy_io, check_policy_outputs, measure_latency_us, open_session
from saferule_core.artifacts.manifest import ArtifactManifest, ManifestFields
from saferule_core.artifacts.registry import LoadedArtifact, PolicyRegistry, load_artifact_dir, verify_artifact_dir
from saferule_core.artifacts.signing import generate_keypair, load_signing_key, load_verify_key, sign_manifest, verify

__all__ = [
    "ArtifactManifest",
    "LoadedArtifact",
    "ManifestFields",
    "PolicyRegistry",
    "check_policy_io",
    "check_policy_outputs",
    "generate_keypair",
    "load_artifact_dir",
    "load_signing_key",
    "load_verify_key",
    "measure_latency_us",
    "open_session",
    "sign_manifest",
    "verify",
    "verify_artifact_dir",
]
