"""`saferule train`: fit an offline safe RL learner to a dataset and save it as a model directory."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

from saferule_core.algos.configs import (
    LEARNER_COMPUTE_KEYS,
    LOOP_COMPUTE_KEYS,
    PRECISIONS,
    LearnerConfig,
    TrainConfig,
)
from saferule_core.algos.registry import ALGORITHMS
from saferule_core.errors import ConfigError
from saferule_core.settings import COMPUTE_SECTION, coerce_setting, lift_section
from saferule_core.settings_files import load_settings_file

DESCRIPTION = """\
Train an offline safe RL policy on DATASET_DIR and write a model directory to --out:
  model.pt      networks, optimizer state, normalisation stats, task, spaces, dataset hash
  config.json   the settings used (readable)
  metrics.jsonl averaged training metrics every --log-every steps

Algorithms:
{algos}

--config takes a YAML mapping of algorithm settings (e.g. `critic_hidden: [256, 256]`,
`reward_scale: 0.1`) plus an optional `train:` mapping of trainer settings (`batch_size`,
`num_threads`, `log_every`, `checkpoint_every`). Command-line flags win over the file.
A run that was stopped continues from its last checkpoint with --resume.

--seeds trains several seeds of one configuration as ONE stacked model (every parameter with a
leading model axis: one batched matmul per layer for all seeds, one optimizer step), writing an
ordinary model directory per seed, --out/seed_<N>, that eval, export and unlearn load unchanged.
Model N is the same learner as a --seed N run (up to float summation order). Algorithms that
stack: {stackable}. Stacked runs do not resume.

--sisa-shards K trains a SISA ensemble for exact unlearning by sharding: the episodes are dealt at
random (by --seed) into K disjoint shards, one model per shard is fitted with --steps updates (as
one stack where the algorithm stacks), and the policy averages the shards' actions. `saferule
unlearn --method sisa` later refits only the shards that held forgotten episodes.

example:
  saferule train data/ballrun --algo bcq_lag --steps 100000 --out runs/ballrun-bcql --seed 0
  saferule train data/ballrun --algo bc_safe --steps 20000 --out runs/ballrun-bcs --cost-limit 20
  saferule train data/ballrun --algo bcq_lag --steps 20000 --out runs/bcql-5 --seeds 0 1 2 3 4
  saferule train data/ballrun --algo bcq_lag --steps 20000 --out runs/bcql-sisa --sisa-shards 4
"""

TRAIN_KEYS = ("batch_size", "num_threads", "log_every", "checkpoint_every")
STACKABLE = ("bc_all", "bc_safe", "bcq_lag", "cpq")   # kept torch-free for --help; test_commands_train checks it


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    algos = "\n".join(f"  {name:<8} {spec.summary}" for name, spec in ALGORITHMS.items())
    parser = subparsers.add_parser(
        "train", help="train an offline safe RL policy on a dataset",
        description=DESCRIPTION.format(algos=algos, stackable=", ".join(STACKABLE)),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="dataset directory (saferule dataset store)")
    parser.add_argument("--algo", required=True, choices=sorted(ALGORITHMS), help="learning algorithm")
    parser.add_argument("--out", required=True, type=Path, help="model directory to create")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="gradient updates (default %(default)s)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=TrainConfig.seed, help="random seed (default %(default)s)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                       help="train these seeds as one stacked model into --out/seed_<N> (see above)")
    parser.add_argument("--sisa-shards", type=int, default=None, metavar="K",
                        help="train a SISA ensemble of K shard models (see above)")
    parser.add_argument("--cost-limit", type=float, default=None,
                        help=f"episode cost budget (default {LearnerConfig.cost_limit:g})")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help=f"bf16: bfloat16 autocast for the matmuls, fp32 weights (default {LearnerConfig.precision})")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the loss computations")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"transitions per update (default {TrainConfig.batch_size})")
    parser.add_argument("--threads", type=int, default=None, help=f"torch CPU threads (default {TrainConfig.num_threads})")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="write a checkpoint every N steps, 0 = only at the end "
                             f"(default {TrainConfig.checkpoint_every})")
    parser.add_argument("--log-every", type=int, default=None,
                        help=f"metrics averaging window (default {TrainConfig.log_every})")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of learner settings, with optional `train:` (batch_size, log_every...) and "
                             "`compute:` (precision, compile, optimizer, device, num_threads, tune_allocator) mappings")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def read_train_settings(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(algorithm settings, trainer settings) from a YAML file: learner settings at the top level, the
    loop's in an optional `train:` mapping, and how it runs (precision, compile, optimizer, device,
    num_threads, tune_allocator) in either place or grouped in an optional `compute:` mapping."""
    if path is None:
        return {}, {}
    data = load_settings_file(path, "learner settings (and optional `train:` and `compute:` mappings)")
    data, compute = lift_section(data, COMPUTE_SECTION, LEARNER_COMPUTE_KEYS + LOOP_COMPUTE_KEYS, str(path))
    train = data.pop("train", {}) or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: `train` must be a mapping")
    unknown = sorted(set(train) - set(TRAIN_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown train settings {', '.join(unknown)} (known: {', '.join(TRAIN_KEYS)})")
    twice = sorted(key for key in compute if key in train)
    if twice:
        raise ConfigError(f"{path}: {', '.join(twice)} set both in `compute` and in `train`; set it in one place")
    data.update({key: value for key, value in compute.items() if key in LEARNER_COMPUTE_KEYS})
    train.update({key: value for key, value in compute.items() if key in LOOP_COMPUTE_KEYS})
    return data, train


def _warn_if_bf16_is_emulated(overrides: dict[str, Any]) -> None:
    from saferule_core.algos.networks import native_bf16_available

    if overrides.get("precision") == "bf16" and not native_bf16_available():
        print("saferule train: warning: this CPU has no native bfloat16 (AVX-512 BF16 or AMX); bf16 matmuls are "
              "emulated and run far slower than fp32 here: drop --precision bf16", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from saferule_core.algos.trainer import fit  # torch: imported only when needed
    from saferule_core.data.store import DatasetStore

    overrides, train_overrides = read_train_settings(args.config)
    for key, value in (("cost_limit", args.cost_limit), ("precision", args.precision), ("compile", args.compile)):
        if value is not None:
            overrides[key] = value
    for key, value in (("batch_size", args.batch_size), ("num_threads", args.threads),
                       ("checkpoint_every", args.checkpoint_every), ("log_every", args.log_every)):
        if value is not None:
            train_overrides[key] = value
    hints = typing.get_type_hints(TrainConfig)
    train_overrides = {key: coerce_setting(f"train setting {key}", hints[key], value)
                       for key, value in train_overrides.items()}
    _warn_if_bf16_is_emulated(overrides)
    if args.seeds is not None and args.sisa_shards is not None:
        raise ConfigError("--seeds and --sisa-shards do not combine: a SISA ensemble takes one --seed")
    if args.seeds is not None:
        return _run_seeds(args, overrides, train_overrides)
    if args.sisa_shards is not None:
        return _run_sisa(args, overrides, train_overrides)
    train_config = TrainConfig(steps=args.steps, seed=args.seed, progress=not args.quiet, **train_overrides)

    dataset = DatasetStore.open(args.dataset).load()
    _, result = fit(args.algo, dataset, args.out, train_config, overrides, resume=args.resume)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    print(f"trained {args.algo} for {result.steps} steps in {result.seconds:.1f} s -> {result.out_dir}")
    if summary:
        print(f"last metrics: {summary}")
    return 0


def _run_seeds(args: argparse.Namespace, overrides: dict[str, Any], train_overrides: dict[str, Any]) -> int:
    from saferule_core.algos.stacked import StackTrainConfig, check_seeds, fit_seeds, seed_dirs
    from saferule_core.data.store import DatasetStore

    check_seeds(args.seeds)                     # before the dataset is read
    if args.resume:
        raise ConfigError("--resume continues one run; stacked --seeds runs do not resume")
    if args.algo not in STACKABLE:
        raise ConfigError(f"{args.algo} cannot train several seeds as one stack; run one --seed at a time "
                          f"(stackable: {', '.join(STACKABLE)})")
    config = StackTrainConfig(steps=args.steps, progress=not args.quiet, **train_overrides)
    dataset = DatasetStore.open(args.dataset).load()
    out_dirs = seed_dirs(args.out, args.seeds)
    _, result = fit_seeds(args.algo, dataset, args.seeds, out_dirs, config, overrides)
    print(f"trained {len(args.seeds)} x {args.algo} (seeds {' '.join(map(str, args.seeds))}) for {result.steps} "
          f"steps in {result.seconds:.1f} s -> {args.out}/seed_<N>")
    for seed, metrics in zip(args.seeds, result.metrics):
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"  seed {seed}: {summary}")
    return 0


def _run_sisa(args: argparse.Namespace, overrides: dict[str, Any], train_overrides: dict[str, Any]) -> int:
    from tqdm import tqdm

    from saferule_core.algos.checkpoint import MODEL_FILE
    from saferule_core.algos.configs import TrainConfig
    from saferule_core.data.store import DatasetStore
    from saferule_core.unlearning.models import save_model_dir
    from saferule_core.unlearning.sisa import SISA_FILE, train_sisa

    shards = args.sisa_shards
    if shards < 2:
        raise ConfigError(f"--sisa-shards must be at least 2 (one shard is plain training), got {shards}")
    if args.resume:
        raise ConfigError("--resume continues one run; SISA runs do not resume")
    if args.steps <= 0:
        raise ConfigError(f"--steps must be positive, got {args.steps}")
    if (args.out / SISA_FILE).exists() or (args.out / MODEL_FILE).exists():
        raise ConfigError(f"{args.out} already holds a trained model; choose another output directory")
    dataset = DatasetStore.open(args.dataset).load()
    if shards > dataset.num_episodes:
        raise ConfigError(f"--sisa-shards {shards} would leave shards empty: the dataset has only "
                          f"{dataset.num_episodes} episodes")
    with tqdm(total=shards * args.steps, desc=f"train sisa {shards} x {args.algo}", unit="step",
              disable=args.quiet) as bar:
        defaults = TrainConfig(steps=args.steps)   # the trainer's batch size and threads unless overridden
        ensemble = train_sisa(args.algo, dataset, shards, args.steps,
                              batch_size=train_overrides.get("batch_size", defaults.batch_size), seed=args.seed,
                              overrides=overrides, num_threads=train_overrides.get("num_threads", defaults.num_threads),
                              callback=lambda _shard, _step: bar.update())
    save_model_dir(args.out, ensemble)
    sizes = " ".join(str(len(record.episode_ids)) for record in ensemble.records)
    print(f"trained a SISA ensemble of {shards} x {args.algo} ({args.steps} steps each; episodes per shard: {sizes}) "
          f"-> {args.out}")
    return 0
