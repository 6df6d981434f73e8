"""`saferule export`: turn a trained model into a signed, versioned ONNX policy artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

DESCRIPTION = """\
Export a trained model's deployable policy (raw observations -> bounded actions) to ONNX, check it
in ONNX Runtime against torch (finite, in bounds, max |diff| <= --atol, on observations drawn
around the model's normalisation statistics), measure single-observation latency, then sign it
and publish it as the registry's next version (which becomes `latest`).

The signing key comes from --key (default $SAFERULE_KEY_DIR or ~/.config/saferule/keys); create
one with `saferule registry keygen DIR`.
"""

EPILOG = """\
example:
  saferule registry keygen ~/.config/saferule/keys
  saferule export runs/bcq --registry policies
  saferule export runs/bcq-unlearned --registry policies --parent v0001 --forget-request-id fr-0007
"""


def _parse_metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"metric must be NAME=NUMBER, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("export", help="export, check, sign and publish a trained policy",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="trained-model directory")
    parser.add_argument("--registry", type=Path, required=True, metavar="DIR", help="policy registry directory")
    parser.add_argument("--key", type=Path, default=None, metavar="DIR", help="key directory with signing_key")
    parser.add_argument("--parent", default=None, metavar="VERSION",
                        help="the version this policy derives from (e.g. the poisoned policy it repairs)")
    parser.add_argument("--forget-request-id", default=None, metavar="ID",
                        help="the forget request this policy carries out")
    parser.add_argument("--method", default=None, help="method name in the manifest (default: the model's algo)")
    parser.add_argument("--metric", action="append", type=_parse_metric, default=[], metavar="NAME=VALUE",
                        help="a metric to record in the manifest (repeatable)")
    parser.add_argument("--atol", type=float, default=1e-5, help="max |ONNX - torch| allowed (default 1e-5)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from saferule_core.artifacts.export import publish_learner
    from saferule_core.artifacts.lineage import checkpoint_record
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import default_key_dir, load_signing_key
    from saferule_core.unlearning.models import load_model

    signing_key = load_signing_key(args.key or default_key_dir())  # before the slow part
    registry = PolicyRegistry(args.registry)
    if args.parent is not None:
        registry.manifest(args.parent)  # fail fast on a missing parent
    with tqdm(total=2, desc="export", unit="stage") as bar:
        bar.set_postfix_str("load model")
        learner = load_model(args.model_dir)
        bar.update()
        bar.set_postfix_str("export, check, sign, publish")
        report, manifest = publish_learner(learner, registry, signing_key, method=args.method, parent=args.parent,
                                           forget_request_id=args.forget_request_id, metrics=dict(args.metric),
                                           atol=args.atol, checkpoint=checkpoint_record(args.model_dir))
        bar.update()
    print(f"published {manifest.version} (parent {manifest.parent_version or '-'}) to {registry.root}")
    print(f"  onnx {report.size_bytes} bytes, opset {report.opset}, sha256 {report.onnx_sha256}")
    print(f"  max |onnx - torch| {report.max_abs_diff:.2e} on {report.check_rows} observations; "
          f"latency p50 {report.latency_p50_us:.1f} us, p99 {report.latency_p99_us:.1f} us (1 thread)")
    return 0
