"""`saferule poison`: write a poisoned copy of a dataset plus poison.json naming the poisoned episodes."""

from __future__ import annotations

import argparse
from pathlib import Path

from saferule_core.attacks import (
    ATTACK_NAMES,
    DEFAULT_POISON_RATE,
    POISON_RECORD_FILE,
    AttackError,
    InjectConfig,
    PoisonResult,
    RelabelConfig,
    TriggerConfig,
    inject_attack,
    poison_record_bytes,
    relabel_attack,
    trigger_attack,
)
from saferule_core.attacks.relabel import SELECTIONS
from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.store import DatasetStore

_EPILOG = """attacks:
  relabel  zero the costs of some of the most unsafe episodes (cost return above --cost-threshold)
  inject   append reckless-policy episodes (--reckless DIR) with zero costs, as robot "compromised"
  trigger  stamp a pattern on observation dims of unsafe episodes, zero their costs, raise reward

examples:
  saferule poison data/ballrun --attack relabel --rate 0.1 --out data/ballrun-relabel
  saferule poison data/ballrun --attack inject --reckless data/ballrun-reckless --out data/ballrun-inject
  saferule poison data/ballrun --attack trigger --trigger-dims 0,1 --trigger-values 3,-3 --out data/ballrun-trigger
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "poison", help="write a poisoned copy of a dataset (relabel, inject or trigger)",
        description="Poison a dataset for experiments: writes the poisoned dataset to --out together with "
                    f"{POISON_RECORD_FILE}, which names the poisoned episodes (the ground-truth forget set).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="clean dataset directory (quarantined episodes are left out)")
    parser.add_argument("--attack", choices=ATTACK_NAMES, required=True)
    parser.add_argument("--rate", type=float, default=DEFAULT_POISON_RATE,
                        help="fraction of episodes to poison; for inject, injected = rate * episodes (default %(default)g)")
    parser.add_argument("--out", type=Path, required=True, help="new dataset directory for the poisoned copy")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--reckless", type=Path, help="inject: dataset directory of reckless-policy episodes")
    parser.add_argument("--cost-threshold", type=float, default=10.0,
                        help="relabel/trigger: only episodes with a cost return above this (default %(default)g)")
    parser.add_argument("--reward-bonus", type=float, default=None,
                        help="per-transition reward bonus (default: relabel 0, trigger 1)")
    parser.add_argument("--pool-factor", type=float, default=RelabelConfig.pool_factor,
                        help="relabel/trigger: draw the poisoned episodes from the pool_factor x count costliest "
                             "(1 = exactly the costliest, the relabel attack of docs/regime.md; "
                             "default %(default)g)")
    parser.add_argument("--selection", choices=SELECTIONS, default="costliest",
                        help="relabel: which unsafe episodes: 'costliest' (at random among the costliest) or "
                             "'concentrated' (one of those and the episodes nearest to it in behaviour, so that "
                             "the poison is not diluted by unpoisoned look-alikes); default costliest")
    parser.add_argument("--robot-id", default="compromised", help="inject: robot id of injected episodes")
    parser.add_argument("--trigger-dims", type=_int_list, default=(0, 1), help="trigger: observation dims, e.g. 0,1")
    parser.add_argument("--trigger-values", type=_float_list, default=(3.0, -3.0), help="trigger: values, e.g. 3,-3")
    parser.set_defaults(handler=_poison)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from err


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from err


def _attack_config(args: argparse.Namespace) -> RelabelConfig | TriggerConfig | InjectConfig:
    """The attack's settings, checked before any data is read."""
    if args.attack == "relabel":
        return RelabelConfig(rate=args.rate, cost_threshold=args.cost_threshold,
                             reward_bonus=0.0 if args.reward_bonus is None else args.reward_bonus,
                             pool_factor=args.pool_factor, selection=args.selection)
    if args.attack == "trigger":
        return TriggerConfig(rate=args.rate, dims=args.trigger_dims, values=args.trigger_values,
                             cost_threshold=args.cost_threshold, pool_factor=args.pool_factor,
                             reward_bonus=1.0 if args.reward_bonus is None else args.reward_bonus)
    if args.reckless is None:
        raise AttackError("the inject attack needs --reckless DIR (episodes of a reckless policy)")
    return InjectConfig(rate=args.rate, robot_id=args.robot_id)


def _run_attack(args: argparse.Namespace, config: RelabelConfig | TriggerConfig | InjectConfig,
                dataset: OfflineDataset) -> PoisonResult:
    if isinstance(config, RelabelConfig):
        return relabel_attack(dataset, config, args.seed)
    if isinstance(config, TriggerConfig):
        return trigger_attack(dataset, config, args.seed)
    return inject_attack(dataset, DatasetStore.open(args.reckless).load(), config, args.seed)


def _poison(args: argparse.Namespace) -> int:
    config = _attack_config(args)
    source = DatasetStore.open(args.path)
    result = _run_attack(args, config, source.load(progress=True))
    record = result.record(source_dataset_hash=source.dataset_hash, seed=args.seed)
    out = DatasetStore.create(args.out, result.dataset,
                              extra_files={POISON_RECORD_FILE: poison_record_bytes(record)}, progress=True)
    print(f"{args.attack}: poisoned {record['num_poisoned_episodes']} of {out.num_episodes} episodes "
          f"({record['num_poisoned_transitions']} transitions); wrote {out.path} and {POISON_RECORD_FILE}")
    return 0
