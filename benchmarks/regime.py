"""Is the learner regime valid? Clean and random-forget-retrained policies on several seeds.

Issue 14's first gate, run before any attack: for one learner configuration, train on a task's
scripted dataset
  * "clean":   seed s on the whole dataset, and
  * "retrain": seed s on the dataset minus a random 10% of its episodes (drawn per seed),
for every seed, all 2 x len(seeds) models as ONE stacked run (algos.stacked: each model with its
own dataset, seed, batches and noise). Each model is evaluated on `--episodes` episodes with the
task's start-state perturbation (evaluate_policy's random start steps, the same for every model).

The regime is valid when, for both kinds, at least 4 of 5 seeds are safe (normalised cost <= 1 at
the cost limit) with normalised reward >= the mean normalised reward of the dataset's episodes
under the cost limit, and the cost critic and the Lagrange multiplier have plateaued (the last
quarter's means within 10% of the third quarter's; plotted).

  .venv/bin/python benchmarks/regime.py --tag dev-h64 --seeds 100 101 102 103 104 --steps 10000 \
      --set actor_hidden=[64,64] critic_hidden=[64,64] vae_hidden=128 phi=0.1

Writes benchmarks/results/regime/<tag>.json, .md and .png (stamped with commit, command line, host).
Tune on the dev seeds (100-104); report on seeds 0-4 only with frozen settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import run_stamp  # noqa: E402

from saferule_core.algos.checkpoint import load_policy  # noqa: E402
from saferule_core.algos.registry import ConfigError  # noqa: E402
from saferule_core.algos.stacked import StackTrainConfig, build_stack, check_seeds, train_stack  # noqa: E402
from saferule_core.attacks import InjectConfig, PoisonResult, RelabelConfig, inject_attack, relabel_attack  # noqa: E402
from saferule_core.collect.collect import BEHAVIOUR_VERSION, collect_episodes  # noqa: E402
from saferule_core.data.dataset import OfflineDataset  # noqa: E402
from saferule_core.data.store import DatasetStore  # noqa: E402
from saferule_core.eval.evaluate import evaluate_policy  # noqa: E402
from saferule_core.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "regime"
WORK = ROOT / "runs" / "regime"
FORGET_FRACTION = 0.10
PLATEAU_TOLERANCE = 0.10
KINDS = ("clean", "retrain")
ATTACKS = ("relabel", "inject")
RECKLESS_AGGRESSIVENESS = (0.8, 1.0)     # the inject attack's episodes: reckless drivers only
RECKLESS_SEED_OFFSET = 10_000
POISON_RATE = 0.10
COLORS = {"clean": "tab:blue", "retrain": "tab:orange", "relabel": "tab:red"}


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value pairs, got {pair!r}")
        settings[key] = yaml.safe_load(value)
    return settings


def dataset_for(task: str, data_seed: int, max_aggressiveness: float = 1.0) -> OfflineDataset:
    """The scripted dataset (cached under runs/regime/data); `max_aggressiveness` < 1 leaves out the
    most reckless drivers, so fewer of its episodes are over the cost limit."""
    suffix = "" if max_aggressiveness == 1.0 else f"-a{max_aggressiveness:g}"
    directory = WORK / "data" / f"{task}-s{data_seed}-b{BEHAVIOUR_VERSION}{suffix}"
    if directory.exists():
        return DatasetStore.open(directory).load()
    dataset = collect_episodes(task, seed=data_seed, progress=True, aggressiveness_range=(0.0, max_aggressiveness))
    DatasetStore.create(directory, dataset)
    return dataset


def regime_dataset(regime: dict[str, Any]) -> OfflineDataset:
    """The dataset a regime results file was trained on (files from before max_aggressiveness was
    recorded used the whole behaviour range)."""
    return dataset_for(regime["task"], regime["data_seed"], regime.get("max_aggressiveness", 1.0))


def random_forget_mask(dataset: OfflineDataset, seed: int) -> np.ndarray:
    """The random 10% of episodes that seed `seed`'s "retrain" model was trained without."""
    rng = np.random.default_rng([seed, 0xF0])
    count = max(1, int(round(FORGET_FRACTION * dataset.num_episodes)))
    forget = np.zeros(dataset.num_episodes, dtype=bool)
    forget[rng.choice(dataset.num_episodes, count, replace=False)] = True
    return forget


def random_forget(dataset: OfflineDataset, seed: int) -> OfflineDataset:
    return dataset.subset_episodes(~random_forget_mask(dataset, seed))


def poison(dataset: OfflineDataset, attack: str, seed: int, settings: dict[str, Any] | None = None) -> PoisonResult:
    """The poisoning of training seed `seed`'s model (what dev_unlearning.py forgets again);
    `settings`: fields of the attack's config (e.g. reward_bonus), as recorded in the results file."""
    settings = dict(settings or {})
    if attack == "relabel":
        return relabel_attack(dataset, RelabelConfig(**{"rate": POISON_RATE, **settings}), rng=seed)
    if attack == "inject":
        # reckless episodes (their own rollouts, so their states are the task's) claimed at zero cost
        pool = int(settings.pop("reckless_pool", 1))   # collect pool x as many, for costliest=true to choose from
        config = InjectConfig(**{"rate": POISON_RATE, **settings})
        reckless = collect_episodes(dataset.task, episodes=pool * config.episode_count(dataset.num_episodes),
                                    seed=seed + RECKLESS_SEED_OFFSET, aggressiveness_range=RECKLESS_AGGRESSIVENESS)
        return inject_attack(dataset, reckless, config, rng=seed)
    raise ConfigError(f"unknown attack {attack!r}")


def poisoned(dataset: OfflineDataset, attack: str, seed: int, settings: dict[str, Any] | None = None
             ) -> OfflineDataset:
    return poison(dataset, attack, seed, settings).dataset


def plateau(values: list[float]) -> dict[str, float | bool]:
    """Means of the third and last quarters of a metric's log, and whether they agree within 10%."""
    n = len(values)
    third = float(np.mean(values[n // 2:3 * n // 4])) if n >= 4 else float("nan")
    last = float(np.mean(values[3 * n // 4:])) if n >= 4 else float("nan")
    scale = max(abs(third), abs(last), 1e-6)
    return {"third_quarter": third, "last_quarter": last, "plateaued": bool(abs(last - third) <= PLATEAU_TOLERANCE * scale)}


def reused_models(args: argparse.Namespace, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The clean and retrain models of `args.seeds` from earlier results files (`--reuse-clean`), each
    marked with the file it came from; a file run with other settings is refused."""
    wanted = {"task": args.task, "algo": args.algo, "steps": args.steps, "batch_size": args.batch_size,
              "data_seed": args.data_seed, "max_aggressiveness": args.max_aggressiveness,
              "eval_episodes": args.episodes, "eval_cost_limit": args.cost_limit}
    found: dict[str, dict[str, Any]] = {}
    for tag in args.reuse_clean:
        path = RESULTS / f"{tag}.json"
        if not path.is_file():
            raise ConfigError(f"--reuse-clean: no results file {path.relative_to(ROOT)}")
        earlier = json.loads(path.read_text())
        earlier.setdefault("eval_cost_limit", 10.0)     # files from before it was recorded all evaluated at 10
        earlier.setdefault("max_aggressiveness", 1.0)   # ... and used the whole behaviour range
        for key, value in wanted.items():
            if earlier.get(key) != value:
                raise ConfigError(f"--reuse-clean {tag}: {key} was {earlier.get(key)!r}, this run has {value!r}")
        if earlier.get("settings") != overrides or earlier.get("behaviour_version") != BEHAVIOUR_VERSION:
            raise ConfigError(f"--reuse-clean {tag}: trained with other learner settings or behaviour version")
        for model in earlier["models"]:
            if model["kind"] in KINDS:
                found.setdefault(model["label"], {**model, "reused_from": tag})
    missing = [f"{kind}-s{seed}" for kind in KINDS for seed in args.seeds if f"{kind}-s{seed}" not in found]
    if missing:
        raise ConfigError(f"--reuse-clean: no results for {', '.join(missing)}")
    return [found[f"{kind}-s{seed}"] for kind in KINDS for seed in args.seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True, help="name of this configuration's results files")
    parser.add_argument("--task", default="BallRun")
    parser.add_argument("--algo", default="bcq_lag")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the scripted dataset")
    parser.add_argument("--max-aggressiveness", type=float, default=1.0,
                        help="collect the dataset with behaviour aggressiveness in [0, this] (default 1: all "
                             "drivers; lower values leave out the most reckless ones, so fewer episodes are over "
                             "the cost limit)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per model")
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attacks", nargs="*", default=[], choices=ATTACKS,
                        help="also train poisoned models (gate 2: the attack works where clean is safe and "
                             "poisoned is not)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="learner settings (YAML values)")
    parser.add_argument("--attack-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="attack settings for every --attacks entry, e.g. rate=0.2 (default 0.1) or "
                             "reward_bonus=2; for inject also costliest=true reckless_pool=3 (inject the costliest "
                             "third of 3x as many reckless rollouts) (YAML values)")
    parser.add_argument("--reuse-clean", nargs="*", default=[], metavar="TAG",
                        help="take the clean and retrain models' results from these earlier results files (same "
                             "task, learner settings, updates, batch, data and evaluation; the training is "
                             "deterministic) and train only the --attacks models")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_seeds(args.seeds)
        if not 0.0 < args.max_aggressiveness <= 1.0:
            raise ConfigError(f"--max-aggressiveness must be in (0, 1], got {args.max_aggressiveness:g}")
        overrides = {"cost_limit": args.cost_limit, **parse_settings(args.set)}
        attack_settings = parse_settings(args.attack_set)
        if args.reuse_clean and not args.attacks:
            raise ConfigError("--reuse-clean trains only the --attacks models: name at least one attack")
        reused = reused_models(args, overrides) if args.reuse_clean else []
    except ConfigError as err:
        parser.error(str(err))

    stamped = run_stamp("benchmarks/regime.py", argv)           # at the start: the code that trains is the code stamped
    spec = get_task(args.task)
    dataset = dataset_for(args.task, args.data_seed, args.max_aggressiveness)
    costs, returns = dataset.episode_cost_returns(), dataset.episode_returns()
    under = costs <= args.cost_limit
    behaviour_reward = float(np.mean([spec.normalized_reward(r) for r in returns[under]]))
    kinds = [*KINDS, *args.attacks]
    trained_kinds = list(args.attacks) if reused else kinds
    datasets: list[OfflineDataset] = []
    if not reused:
        datasets += [dataset] * len(args.seeds) + [random_forget(dataset, seed) for seed in args.seeds]
    for attack in args.attacks:
        datasets += [poisoned(dataset, attack, seed, attack_settings) for seed in args.seeds]
    labels = [f"{kind}-s{seed}" for kind in trained_kinds for seed in args.seeds]
    run_dir = WORK / "models" / f"{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dirs = [run_dir / label for label in labels]
    # a stack needs distinct seeds per model: kind i's model of seed s uses seed s + 10_000 * i (i counted
    # over every kind, trained here or reused, so a model's seed does not depend on what else is trained)
    stack_seeds = [seed + 10_000 * kinds.index(kind) for kind in trained_kinds for seed in args.seeds]
    print(f"{args.task}: {dataset.num_episodes} episodes, {int(under.sum())} under cost {args.cost_limit:g} "
          f"(their mean normalised reward {behaviour_reward:.3f}); training {len(labels)} models as one stack, "
          f"{args.steps} updates", flush=True)
    began = time.perf_counter()
    stack = build_stack(args.algo, datasets, stack_seeds, overrides, args.batch_size)
    train_stack(stack, datasets, stack_seeds, out_dirs,
                StackTrainConfig(steps=args.steps, batch_size=args.batch_size, num_threads=args.threads,
                                 log_every=max(1, args.steps // 100), checkpoint_every=0))
    train_s = time.perf_counter() - began

    models: list[dict[str, Any]] = list(reused)
    for label, directory in zip(labels, out_dirs):
        policy_fn, _ = load_policy(directory)
        result = evaluate_policy(policy_fn, spec, episodes=args.episodes, seed=1, thresholds=(args.cost_limit,))
        log = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        norm_cost = result.normalized_costs[args.cost_limit]
        models.append({
            "label": label, "kind": label.split("-")[0], "normalized_reward": result.normalized_reward,
            "normalized_cost": norm_cost, "safe": bool(norm_cost <= 1.0),
            "competent": bool(result.normalized_reward >= behaviour_reward),
            "episode_costs": result.episode_costs.tolist(),
            "q_cost": plateau([line["q_cost"] for line in log if "q_cost" in line]) if "q_cost" in log[0] else None,
            "lagrange_multiplier": plateau([line["lagrange_multiplier"] for line in log])
            if "lagrange_multiplier" in log[0] else None,
            "log": {key: [line.get(key) for line in log] for key in ("step", "q_cost", "lagrange_multiplier",
                                                                        "q_reward") if key in log[0]},
        })
        print(f"  {label:<14} reward {result.normalized_reward:6.3f}  cost {norm_cost:5.2f}", flush=True)

    summary: dict[str, Any] = {}
    for kind in kinds:
        rows = [m for m in models if m["kind"] == kind]
        good = sum(m["safe"] and m["competent"] for m in rows)
        summary[kind] = {"safe": sum(m["safe"] for m in rows), "safe_and_competent": good, "models": len(rows),
                         "mean_reward": float(np.mean([m["normalized_reward"] for m in rows])),
                         "mean_cost": float(np.mean([m["normalized_cost"] for m in rows])),
                         "plateaued": sum(bool(m["q_cost"] and m["q_cost"]["plateaued"]) for m in rows),
                         "lambda_plateaued": sum(bool(m["lagrange_multiplier"] and m["lagrange_multiplier"]["plateaued"])
                                                 for m in rows)}
    valid = all(summary[k]["safe_and_competent"] >= len(args.seeds) - 1 for k in KINDS)
    clean_safe = {m["label"].split("-s")[1] for m in models if m["kind"] == "clean" and m["safe"]}
    for attack in args.attacks:
        summary[attack]["attack_worked"] = sum(1 for m in models if m["kind"] == attack and not m["safe"]
                                               and m["label"].split("-s")[1] in clean_safe)
    payload = {**stamped, "task": args.task, "algo": args.algo, "settings": overrides,
               "attack_settings": attack_settings, "steps": args.steps, "reused_clean_from": args.reuse_clean,
               "batch_size": args.batch_size, "seeds": args.seeds, "data_seed": args.data_seed,
               "max_aggressiveness": args.max_aggressiveness, "episodes_over_limit": float(np.mean(~under)),
               "behaviour_version": BEHAVIOUR_VERSION, "run_dir": str(run_dir.relative_to(ROOT)),
               "eval_episodes": args.episodes, "eval_cost_limit": args.cost_limit,
               "eval_random_start_steps": spec.eval_random_start_steps,
               "behaviour_reward_under_limit": behaviour_reward, "train_seconds": train_s,
               "summary": summary, "valid": valid, "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.tag}.json", payload)
    atomic_write_text(RESULTS / f"{args.tag}.md", render_markdown(payload))
    plot(payload, RESULTS / f"{args.tag}.png")
    print(render_markdown(payload))
    return 0


def render_markdown(payload: dict[str, Any]) -> str:
    reuse_note = (f" Clean and retrain results reused from {', '.join(payload['reused_clean_from'])} (same settings; "
                  f"only the poisoned models were trained here)." if payload.get("reused_clean_from") else "")
    lines = [f"# Regime check `{payload['command']}`", "",
             f"{payload['task']}, {payload['algo']} {json.dumps(payload['settings'])}, {payload['steps']} updates, "
             f"batch {payload['batch_size']}, seeds {payload['seeds']}; {payload['eval_episodes']} evaluation "
             f"episodes each ({payload['eval_random_start_steps']} random start steps). Behaviour episodes under "
             f"the cost limit: mean normalised reward {payload['behaviour_reward_under_limit']:.3f}"
             + (f"; dataset collected with aggressiveness up to {payload['max_aggressiveness']:g}, "
                f"{payload['episodes_over_limit']:.0%} of its episodes over the cost limit"
                if payload.get("max_aggressiveness", 1.0) != 1.0 else "") + ". "
             f"Trained as one stack in {payload['train_seconds']:.0f} s. Commit {payload['commit']}, "
             f"host {payload['host']}." + reuse_note, "",
             "| kind | safe | safe and reward >= behaviour | mean reward | mean cost | Q_c plateaued | lambda plateaued |",
             "|---|---|---|---|---|---|---|"]
    for kind, s in payload["summary"].items():
        lines.append(f"| {kind} | {s['safe']}/{s['models']} | {s['safe_and_competent']}/{s['models']} | "
                     f"{s['mean_reward']:.3f} | {s['mean_cost']:.2f} | {s['plateaued']}/{s['models']} | "
                     f"{s.get('lambda_plateaued', '-')}/{s['models']} |")
    for kind, s in payload["summary"].items():
        if "attack_worked" in s:
            rate = float(payload.get("attack_settings", {}).get("rate", POISON_RATE))
            lines += ["", f"{kind} at {rate:.0%}: worked (clean safe, poisoned unsafe) on "
                          f"{s['attack_worked']}/{s['models']} seeds"]
    lines += ["", f"Regime valid (>= {len(payload['seeds']) - 1} of {len(payload['seeds'])} safe and competent, "
                  f"both kinds): **{'yes' if payload['valid'] else 'no'}**", "",
              "| model | reward | cost | final Q_c | final lambda |", "|---|---|---|---|---|"]
    for m in payload["models"]:
        qc = m["q_cost"]["last_quarter"] if m["q_cost"] else float("nan")
        lam = m["lagrange_multiplier"]["last_quarter"] if m["lagrange_multiplier"] else float("nan")
        lines.append(f"| {m['label']} | {m['normalized_reward']:.3f} | {m['normalized_cost']:.2f} | {qc:.2f} | "
                     f"{lam:.2f} |")
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("q_cost", "lagrange_multiplier", "q_reward") if k in payload["models"][0]["log"]]
    # squeeze=False: a learner without critics (BC) logs none of the keys, and one panel is still a row
    fig, grid = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 4), squeeze=False)
    axes = list(grid[0])
    for ax, key in zip(axes, keys):
        for m in payload["models"]:
            ax.plot(m["log"]["step"], m["log"][key], color=COLORS.get(m["kind"], "gray"), alpha=0.7, lw=1)
        ax.set_title(key + " (" + ", ".join(f"{c.split(':')[1]} {k}" for k, c in COLORS.items()) + ")", fontsize=8)
        ax.set_xlabel("update")
    ax = axes[-1]
    for m in payload["models"]:
        ax.scatter(m["normalized_cost"], m["normalized_reward"], color=COLORS.get(m["kind"], "gray"))
    ax.axvline(1.0, color="red", ls="--")
    ax.axhline(payload["behaviour_reward_under_limit"], color="gray", ls=":")
    ax.set_xlabel("normalised cost")
    ax.set_ylabel("normalised reward")
    ax.set_title("evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
