"""`saferule registry`: list, inspect and verify signed policy artifacts; create signing keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the artifacts modules import onnxruntime: load them only when a command runs
    from saferule_core.artifacts.registry import PolicyRegistry

DESCRIPTION = """\
Inspect a policy registry: a directory of signed, versioned ONNX policy artifacts (v0001, v0002,
...) with a `latest` pointer. `list`, `show` and `lineage` read manifests without checking
signatures; `verify` checks the signature, the ONNX hash and the model's input/output shapes, as
a policy runner does before it loads an artifact. `keygen` creates an Ed25519 key pair.
"""

EPILOG = """\
examples:
  saferule registry keygen ~/.config/saferule/keys
  saferule registry list --registry policies
  saferule registry show v0002 --registry policies
  saferule registry lineage v0003 --registry policies
  saferule registry verify v0003 --registry policies --key ~/.config/saferule/keys
  saferule registry verify /robots/r1/policies/v0003 --key robot_keys/
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("registry", help="list, show, verify policy artifacts; create keys",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="registry_action", metavar="ACTION", required=True)

    def with_registry(sub: argparse.ArgumentParser, required: bool = True) -> argparse.ArgumentParser:
        sub.add_argument("--registry", type=Path, required=required, metavar="DIR",
                         help="policy registry directory")
        return sub

    with_registry(actions.add_parser("list", help="all versions, oldest first (* = latest)"))
    with_registry(actions.add_parser("show", help="one version's manifest as JSON")).add_argument(
        "version", metavar="VERSION")
    lineage = with_registry(actions.add_parser("lineage", help="a version and its ancestors"))
    lineage.add_argument("version", metavar="VERSION")
    lineage.add_argument("--key", type=Path, default=None, metavar="DIR",
                         help="also verify every artifact on the way with this verify key")
    verify = with_registry(actions.add_parser("verify", help="check signature, hash and shapes"), required=False)
    verify.add_argument("version", metavar="VERSION|PATH", help="a version in --registry, or an artifact directory")
    verify.add_argument("--key", type=Path, default=None, metavar="DIR",
                        help="key directory (or verify_key file); default $SAFERULE_KEY_DIR or ~/.config/saferule/keys")
    actions.add_parser("keygen", help="create signing_key (0600) and verify_key in DIR").add_argument(
        "directory", metavar="DIR", type=Path)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from saferule_core.artifacts.registry import PolicyRegistry

    action = args.registry_action
    if action == "keygen":
        return _keygen(args.directory)
    if action == "verify":
        return _verify(args)
    registry = PolicyRegistry(args.registry)
    if action == "list":
        return _list(registry)
    if action == "show":
        print(registry.manifest(args.version).canonical_bytes().decode("ascii"), end="")
        return 0
    verify_key = None
    if args.key is not None:
        from saferule_core.artifacts.signing import load_verify_key
        verify_key = load_verify_key(args.key)
    for manifest in registry.lineage(args.version, verify_key):
        print(manifest.summary())
    return 0


def _keygen(directory: Path) -> int:
    from saferule_core.artifacts.signing import SIGNING_KEY_FILE, generate_keypair, verify_key_hex

    verify_key = generate_keypair(directory)
    print(f"signing key: {directory / SIGNING_KEY_FILE} (keep it on the publishing host only)")
    print(f"verify key:  {verify_key_hex(verify_key)} (copy {directory / 'verify_key'} to the robots)")
    return 0


def _list(registry: PolicyRegistry) -> int:
    versions = registry.versions()
    if not versions:
        print(f"registry {registry.root} is empty")
        return 0
    latest = registry.latest()
    for version in versions:
        marker = "*" if version == latest else " "
        print(f"{marker} {registry.manifest(version).summary()}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from saferule_core.artifacts.checks import check_policy_io, open_session
    from saferule_core.artifacts.manifest import version_number
    from saferule_core.artifacts.registry import PolicyRegistry, load_artifact_dir
    from saferule_core.artifacts.signing import default_key_dir, load_verify_key
    from saferule_core.errors import ArtifactError

    verify_key = load_verify_key(args.key or default_key_dir())
    target = Path(args.version)
    if args.registry is not None:
        loaded = PolicyRegistry(args.registry).load(args.version, verify_key)
    elif target.is_dir():
        loaded = load_artifact_dir(target, verify_key)
    else:
        version_number(args.version)
        raise ArtifactError(f"{args.version} is a version name: say which registry with --registry DIR")
    manifest = loaded.manifest
    check_policy_io(open_session(loaded.onnx_bytes), manifest.obs_dim, manifest.act_dim,
                    manifest.observation_input, manifest.action_output)
    print(f"{manifest.version} OK: signed by {manifest.signer_public_key[:16]}..., "
          f"sha256 {manifest.onnx_sha256[:16]}..., {manifest.observation_input}[batch, {manifest.obs_dim}] -> "
          f"{manifest.action_output}[batch, {manifest.act_dim}]")
    return 0
