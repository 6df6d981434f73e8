"""`saferule unlearn`: carry out a forget request on a deployed model and publish the repaired policy."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any

from saferule_core.commands.selector_args import add_selector_arguments, selector_from_args
from saferule_core.errors import UnlearningError
from saferule_core.settings_files import load_settings_file
from saferule_core.unlearning.config import UnlearnConfig
from saferule_core.unlearning.methods import METHOD_NAMES, methods_help

# Metrics shown on the progress bar when the method reports them (the constraint first).
PROGRESS_KEYS: tuple[str, ...] = ("q_cost", "lagrange_multiplier", "alpha", "forget_cost_hinge", "forget_reward_hinge",
                                  "forget_behaviour_hinge", "forget_actor_hinge", "actor_loss", "cost_value",
                                  "forget_action_distance")

DESCRIPTION = """\
Remove forgotten episodes' influence from the model in --model, then export the new policy to ONNX,
sign it and publish it to --registry as the next version (its parent is the registry's latest),
recording every step in the dataset's forget ledger:

  requested -> quarantined -> unlearning -> unlearned [-> purged with --purge]

Name an existing forget request with --request-id, or select episodes with the selector flags (as
in `saferule dataset forget`), which records and quarantines a new request first. A failure after
the ledger says `unlearning` marks the request failed and leaves the registry as it was (its
episodes stay quarantined: run it again with --request-id to re-run it); refusals
(empty forget set, the whole dataset, episodes already purged, a model that does not match the
dataset) change nothing.

Methods:
{methods}

--config takes a YAML mapping of unlearning settings (e.g. `steps: 2000`, `safe_rule:
{{repair_fraction: 0.5}}`, `compute: {{num_threads: 1}}`); see saferule_core/unlearning/config.py.
"""

EPILOG = """\
examples:
  saferule unlearn --dataset data/fleet --model runs/bcq --registry policies --key keys \\
      --robot robot_3 --reason "tampered cost sensor" --method safe_rule
  saferule unlearn --dataset data/fleet --model runs/bcq --registry policies --key keys \\
      --request-id forget-3f2a9c1e0b7d4a55 --purge
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("unlearn", help="unlearn forgotten episodes from a model and publish the result",
                                   description=DESCRIPTION.format(methods=methods_help()), epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="dataset directory (with ledger)")
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="the deployed model's directory")
    parser.add_argument("--registry", type=Path, required=True, metavar="DIR", help="policy registry directory")
    parser.add_argument("--key", type=Path, required=True, metavar="FILE",
                        help="Ed25519 signing key file (or the key directory holding signing_key)")
    parser.add_argument("--request-id", default=None, metavar="ID", help="an existing forget request to carry out")
    add_selector_arguments(parser)
    parser.add_argument("--reason", default=None, help="why (with selector flags; recorded in the ledger)")
    parser.add_argument("--requester", default=None, help="who asks (with selector flags; default: the user name)")
    parser.add_argument("--method", choices=METHOD_NAMES, default="safe_rule", help="unlearning method")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML of unlearning settings")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"update budget of the approximate methods (default: --config's, else {UnlearnConfig.steps})")
    parser.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                        help="where the unlearned model is written, as DIR/<request id> "
                             "(default: an `unlearned` folder next to --model)")
    parser.add_argument("--purge", action="store_true", help="physically delete the forgotten episodes afterwards")
    parser.set_defaults(handler=run)


def _has_selector(args: argparse.Namespace) -> bool:
    return bool(args.episode or args.robot or args.bag or args.since is not None or args.until is not None
                or args.ids_from is not None)


def _config_values(path: Path | None) -> dict[str, Any]:
    return {} if path is None else load_settings_file(path, "unlearning settings", UnlearningError)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from saferule_core.artifacts.signing import load_signing_key
    from saferule_core.data.store import DatasetStore
    from saferule_core.unlearning.config import UnlearnConfig
    from saferule_core.unlearning.job import JobPaths, admit_new_request, run_forget_job

    if (args.request_id is None) == (not _has_selector(args)):
        raise UnlearningError("name either --request-id or episodes with selector flags (--episode, --robot, --bag, "
                              "--since/--until, --ids-from), not both and not neither")
    values = _config_values(args.config)
    if args.steps is not None:
        values["steps"] = args.steps
    config = UnlearnConfig.from_dict(values)
    load_signing_key(args.key)                       # refuse a bad key before recording anything
    paths = JobPaths(dataset_dir=args.dataset, model_dir=args.model, registry_dir=args.registry,
                     signing_key=args.key, work_dir=args.work_dir or args.model.resolve().parent / "unlearned")
    request_id = args.request_id
    if request_id is None:
        if not args.reason:
            raise UnlearningError("a new forget request needs --reason")
        store = DatasetStore.open(args.dataset)
        entry = admit_new_request(store, selector_from_args(args), args.model, args.requester or getpass.getuser(),
                                  args.reason)
        request_id = entry.request_id
        print(f"request {request_id}: quarantined {entry.matched_episodes} episodes "
              f"({entry.matched_transitions} transitions)")

    bar: tqdm | None = None   # opened on the first progress report, so that a refusal prints no bar

    def progress(stage: str, fraction: float, metrics: dict[str, float]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=100, desc=f"unlearn {args.method}", unit="%", dynamic_ncols=True)
        bar.set_description_str(f"unlearn {args.method}: {stage}", refresh=False)
        shown = [k for k in PROGRESS_KEYS if k in metrics][:5]
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in shown}, refresh=False)
        bar.update(max(0, int(round(fraction * 100)) - bar.n))

    try:
        result = run_forget_job(paths, request_id, args.method, config, progress=progress, purge=args.purge)
    finally:
        if bar is not None:
            bar.close()
    report = result.report
    if report is None:
        print(f"request {request_id}: {result.new_version} had been published for it before an interruption; "
              f"recorded it")
    else:
        print(f"request {request_id}: unlearned with {report.method} in {report.wall_time_s:.1f} s "
              f"({report.updates} updates; forgot {report.forget_episodes} episodes, kept "
              f"{report.retain_transitions} transitions)")
    print(f"published {result.new_version} (parent {result.parent_version or '-'}); model in {result.model_dir}")
    for name in ("reward_value", "cost_value", "forget_action_distance"):
        if name in result.metrics_before and name in result.metrics_after:
            print(f"  {name}: {result.metrics_before[name]:.4g} -> {result.metrics_after[name]:.4g}")
    if args.purge:
        print(f"request {request_id}: episodes purged from {args.dataset}")
    return 0
