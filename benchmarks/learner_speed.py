"""How fast is one BCQ-Lag update, and what does each speed lever buy?

Times our BCQ-Lag update (batch sampling included, steady state after warm-up, OSRL's sizes:
256x256 actor/critics, VAE 400, 10 sampled next actions, batch 512) on synthetic datasets with
the BallRun and CarCircle spaces, for a ladder of variants that switch the levers on one by one:

  separate+unshared  four separate critic MLPs, reward and cost targets each draw their own next
                     actions, for-loop Adam, fp32 (OSRL's structure, in our code)
  +batched critics   the four critics as ONE ensemble (one bmm per layer)
  +shared actions    reward and cost targets share the sampled next actions
  +fused adam        torch.optim.Adam(fused=True)
  +malloc            glibc keeps freed activations for reuse (no page faults per update)
  +bf16              bfloat16 autocast for the matmuls (fp32 master weights and losses)
  +fused targets     the target computation (no autograd) in bfloat16 with each activation fused
                     into its matmul (oneDNN post-op), instead of under autocast
  +compile           torch.compile of the loss computations (only with --compile: slow to build)

Each measurement runs in a fresh subprocess (the allocator setting is process-wide) and the
variants are interleaved round by round, so background load hits them alike; the table reports
the median wall ms per update over rounds, the fastest round, the speed-up over the baseline and
the median CPU ms (all threads; less disturbed by other processes, but it counts OpenMP spinning).
Timings mean little while other work shares the cores: run it on a quiet machine. With .venv-osrl
present (benchmarks/osrl/setup_venv.sh) OSRL's own
BCQ-Lag, with its own DataLoader, is timed the same way as the reference. The vectorised batch
sampler is also timed against per-sample Python indexing (what a map-style DataLoader does).

  .venv/bin/python benchmarks/learner_speed.py                 # ~5 minutes on 2 quiet cores
  .venv/bin/python benchmarks/learner_speed.py --rounds 1 --steps 10 --tasks BallRun   # smoke

Writes benchmarks/results/learner_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import run_stamp  # noqa: E402

from saferule_core.algos.base import frozen_copy  # noqa: E402
from saferule_core.algos.batch import BatchSampler, NormalizationStats  # noqa: E402
from saferule_core.algos.bcq_lag import BCQLag, BCQLagConfig  # noqa: E402
from saferule_core.algos.networks import mlp, native_bf16_available  # noqa: E402
from saferule_core.algos.registry import make_config  # noqa: E402
from saferule_core.algos.stacked import build_stack  # noqa: E402
from saferule_core.algos.trainer import seed_everything, tune_cpu_allocator  # noqa: E402
from saferule_core.data.dataset import TRANSITION_KEYS, EpisodeInfo, OfflineDataset  # noqa: E402
from saferule_core.io_utils import atomic_write_json  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "learner_speed.json"
STACK_PREFIX = "stack K="
OSRL_PYTHON = ROOT / ".venv-osrl" / "bin" / "python"
OSRL_WORKER = ROOT / "benchmarks" / "osrl" / "osrl_bcql_worker.py"

# name -> levers; each row adds one lever to the row above.
LADDER: dict[str, dict[str, Any]] = {
    "separate+unshared": {"batched": False, "shared": False, "optimizer": "for_loop", "malloc": False, "precision": "fp32"},
    "+batched critics": {"batched": True, "shared": False, "optimizer": "for_loop", "malloc": False, "precision": "fp32"},
    "+shared actions": {"batched": True, "shared": True, "optimizer": "for_loop", "malloc": False, "precision": "fp32"},
    "+fused adam": {"batched": True, "shared": True, "optimizer": "fused", "malloc": False, "precision": "fp32"},
    "+malloc": {"batched": True, "shared": True, "optimizer": "fused", "malloc": True, "precision": "fp32"},
    "+bf16": {"batched": True, "shared": True, "optimizer": "fused", "malloc": True, "precision": "bf16",
              "fused_targets": False},
    "+fused targets": {"batched": True, "shared": True, "optimizer": "fused", "malloc": True, "precision": "bf16",
                       "fused_targets": True},
}
COMPILE_LADDER: dict[str, dict[str, Any]] = {
    "+bf16+compile": {**LADDER["+bf16"], "compile": True},
    "fp32+malloc+compile": {**LADDER["+malloc"], "compile": True},
}


# ----- the "lever off" variants, built by overriding parts of our BCQ-Lag ------------------------
class SeparateCritics(nn.Module):
    """Four independent MLP critics with the ensemble's interface ([members, B] out)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], members: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(mlp(obs_dim + act_dim, hidden, 1) for _ in range(members))

    def forward(self, obs: torch.Tensor, act: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        nets = list(self.nets)[members] if members is not None else list(self.nets)
        return torch.stack([net(x).squeeze(-1) for net in nets])


class BenchBCQLag(BCQLag):
    """Our BCQ-Lag with the batched-critic and shared-sample levers switchable."""

    def __init__(self, config: BCQLagConfig, info: Any, batched: bool = True, shared: bool = True) -> None:
        super().__init__(config, info)
        self.shared = shared
        if not batched:
            self.critics = SeparateCritics(info.obs_dim, info.act_dim, config.critic_hidden, 4).to(self.device)
            self.critics_target = frozen_copy(self.critics)
            self.critic_optim = type(self.critic_optim)(self.critics.parameters(), **self.critic_optim.defaults)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        noise = super().draw_noise(batch_size, generator)
        if not self.shared:       # a second draw of the sampled next actions, for the cost targets
            noise["latents"] = torch.cat([noise["latents"], super().draw_noise(batch_size, generator)["latents"]])
        return noise

    def _critic_targets_impl(self, vae, actor_target, critics_target, obs, next_obs, rewards, costs,  # type: ignore[no-untyped-def]
                             terminals, latents):
        if self.shared:
            return super()._critic_targets_impl(vae, actor_target, critics_target, obs, next_obs, rewards, costs,
                                                terminals, latents)
        # Reward and cost targets each from their own sampled next actions (OSRL's way).
        first, second = latents.chunk(2)
        reward_targets, behaviour = super()._critic_targets_impl(vae, actor_target, critics_target, obs, next_obs,
                                                                 rewards, costs, terminals, first)
        cost_targets, _ = super()._critic_targets_impl(vae, actor_target, critics_target, obs, next_obs, rewards,
                                                       costs, terminals, second)
        return torch.cat([reward_targets[:2], cost_targets[2:]]), behaviour


# ----- synthetic data with a task's spaces ----------------------------------------------------------
def synthetic_dataset(task: str, episodes: int, seed: int = 0) -> OfflineDataset:
    spec = get_task(task)
    rng = np.random.default_rng(seed)
    rows = episodes * spec.episode_len
    timeouts = np.zeros(rows, dtype=np.float32)
    timeouts[spec.episode_len - 1::spec.episode_len] = 1.0
    obs = rng.normal(size=(rows, spec.obs_dim))
    return OfflineDataset(
        observations=obs, next_observations=obs + 0.05 * rng.normal(size=obs.shape),
        actions=np.tanh(rng.normal(size=(rows, spec.act_dim))), rewards=rng.random(rows),
        costs=(rng.random(rows) < 0.05).astype(np.float32), terminals=np.zeros(rows), timeouts=timeouts,
        episodes=[EpisodeInfo(f"ep{i}", "bench", "synthetic", 0.0, 0.0) for i in range(episodes)],
        episode_lengths=np.full(episodes, spec.episode_len), task=spec.name)


# ----- one measurement (runs in a subprocess) -----------------------------------------------------------
def measure_ours(task: str, levers: dict[str, Any], steps: int, warmup: int, threads: int, episodes: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    if levers["malloc"]:
        tune_cpu_allocator()
    seed_everything(0)
    dataset = synthetic_dataset(task, episodes)
    config = make_config("bcq_lag", {"precision": levers["precision"], "optimizer": levers["optimizer"],
                                     "fused_targets": bool(levers.get("fused_targets", False)),
                                     "compile": bool(levers.get("compile", False))})
    assert isinstance(config, BCQLagConfig)
    reference = BCQLag.from_dataset(dataset, config)
    learner = BenchBCQLag(reference.config, reference.info, batched=levers["batched"], shared=levers["shared"])
    sampler = BatchSampler(dataset, learner.info.stats, 512, seed=0)
    began = time.perf_counter()
    for _ in range(warmup):
        learner.update(sampler.sample())
    warmup_s = time.perf_counter() - began
    began, cpu_began = time.perf_counter(), time.process_time()
    for _ in range(steps):
        metrics = learner.update(sampler.sample())
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    finite = all(bool(torch.isfinite(v)) for v in metrics.values())
    # CPU time (all threads) is less disturbed than wall time when other work shares the cores.
    return {"ms_per_update": 1000 * seconds / steps, "cpu_ms_per_update": 1000 * cpu_seconds / steps,
            "warmup_s": warmup_s, "finite": finite}


def best_precision() -> str:
    """bf16 where the CPU has it natively; emulated bf16 is hundreds of times slower than fp32."""
    return "bf16" if native_bf16_available() else "fp32"


def measure_stack(task: str, models: int, steps: int, warmup: int, threads: int, episodes: int) -> dict[str, Any]:
    """K BCQ-Lag models (seeds 0..K-1) trained as one stack: wall ms per stacked update, per model,
    and the process's peak RSS."""
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    dataset = synthetic_dataset(task, episodes)
    seeds = tuple(range(models))
    stack = build_stack("bcq_lag", [dataset] * models, seeds, {"precision": best_precision(), "optimizer": "fused"})
    samplers = [BatchSampler(dataset, learner.info.stats, 512, seed=seed) for learner, seed in zip(stack.learners, seeds)]
    began = time.perf_counter()
    for _ in range(warmup):
        stack.update([s.sample() for s in samplers])
    warmup_s = time.perf_counter() - began
    began, cpu_began = time.perf_counter(), time.process_time()
    for _ in range(steps):
        metrics = stack.update([s.sample() for s in samplers])
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    finite = all(bool(torch.isfinite(v).all()) for v in metrics.values())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms_per_update": 1000 * seconds / steps / models, "ms_per_stacked_update": 1000 * seconds / steps,
            "cpu_ms_per_update": 1000 * cpu_seconds / steps / models, "warmup_s": warmup_s, "finite": finite,
            "models": models, "peak_rss_bytes": peak_rss, "precision": best_precision()}


def measure_osrl(task: str, steps: int, warmup: int, threads: int, episodes: int) -> dict[str, Any] | None:
    if not (OSRL_PYTHON.exists() and OSRL_WORKER.exists()):
        return None
    dataset = synthetic_dataset(task, episodes)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, **{key: getattr(dataset, key) for key in TRANSITION_KEYS})
        out = subprocess.run([str(OSRL_PYTHON), str(OSRL_WORKER), "--data", str(data), "--episode-len",
                              str(get_task(task).episode_len), "--steps", str(steps), "--warmup", str(warmup),
                              "--threads", str(threads)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"OSRL worker failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_sampler(task: str, episodes: int, repeats: int = 2000) -> dict[str, float]:
    """µs per batch of 512: our vectorised sampler vs per-sample Python indexing + collation."""
    torch.set_num_threads(1)
    dataset = synthetic_dataset(task, episodes)
    sampler = BatchSampler(dataset, NormalizationStats.from_dataset(dataset), 512)
    for _ in range(50):
        sampler.sample()
    began = time.perf_counter()
    for _ in range(repeats):
        sampler.sample()
    ours = (time.perf_counter() - began) / repeats
    rng = np.random.default_rng(0)
    arrays = [getattr(dataset, key) for key in ("observations", "next_observations", "actions", "rewards", "costs",
                                                "terminals")]
    per_sample_repeats = max(repeats // 20, 10)
    began = time.perf_counter()
    for _ in range(per_sample_repeats):
        rows = [tuple(a[int(rng.integers(dataset.num_transitions))] for a in arrays) for _ in range(512)]
        [torch.as_tensor(np.stack(column)) for column in zip(*rows)]
    per_sample = (time.perf_counter() - began) / per_sample_repeats
    return {"vectorised_us": 1e6 * ours, "per_sample_python_us": 1e6 * per_sample}


# ----- driver --------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace, variant: str, task: str) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--worker", variant, "--tasks", task, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--episodes", str(args.episodes)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{variant} on {task} failed: {out.stderr.strip()[-800:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="BallRun,CarCircle", help="comma-separated task names (spaces only)")
    parser.add_argument("--steps", type=int, default=30, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=200, help="synthetic dataset size in episodes")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants (minutes to build)")
    parser.add_argument("--no-osrl", action="store_true", help="skip OSRL's own implementation")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2, 5, 10],
                        help="K of the stacked rows (K models trained as one; default 1 2 5 10)")
    parser.add_argument("--stacks-only", action="store_true", help="OSRL and the stacked rows only (no lever ladder)")
    parser.add_argument("--ladder-only", action="store_true", help="no stacked rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    stamped = run_stamp("benchmarks/learner_speed.py", sys.argv[1:])
    ladder = {**LADDER, **(COMPILE_LADDER if args.compile else {})}

    if args.worker is not None:      # one measurement, printed as one JSON line
        if args.worker == "osrl":
            result = measure_osrl(tasks[0], args.steps, args.warmup, args.threads, args.episodes)
        elif args.worker.startswith(STACK_PREFIX):
            result = measure_stack(tasks[0], int(args.worker[len(STACK_PREFIX):]), args.steps, args.warmup,
                                   args.threads, args.episodes)
        else:
            result = measure_ours(tasks[0], {**LADDER, **COMPILE_LADDER}[args.worker], args.steps, args.warmup,
                                  args.threads, args.episodes)
        print(json.dumps(result))
        return

    if not native_bf16_available():
        skipped = [name for name, levers in ladder.items() if levers["precision"] == "bf16"]
        print(f"this CPU has no native bfloat16: skipping {', '.join(skipped)} (emulated bf16 runs at ~1 GFLOP/s)",
              file=sys.stderr)
        ladder = {name: levers for name, levers in ladder.items() if levers["precision"] != "bf16"}
    if args.ladder_only:
        stacks: list[str] = []
    else:
        stacks = [f"{STACK_PREFIX}{k}" for k in args.models]
    if args.stacks_only:
        ladder = {}
    variants = (["osrl"] if not args.no_osrl and OSRL_PYTHON.exists() else []) + list(ladder) + stacks
    samples: dict[tuple[str, str], list[float]] = {(v, t): [] for v in variants for t in tasks}
    cpu_samples: dict[tuple[str, str], list[float]] = {(v, t): [] for v in variants for t in tasks}
    warmups: dict[tuple[str, str], float] = {}
    extras: dict[tuple[str, str], dict[str, Any]] = {}
    for round_index in range(args.rounds):
        for task in tasks:
            for variant in variants:
                result = run_worker(args, variant, task)
                if result is None:
                    continue
                samples[(variant, task)].append(result["ms_per_update"])
                if "cpu_ms_per_update" in result:
                    cpu_samples[(variant, task)].append(result["cpu_ms_per_update"])
                warmups[(variant, task)] = result.get("warmup_s", float("nan"))
                if "models" in result:
                    previous = extras.get((variant, task), {}).get("peak_rss_bytes", 0)
                    extras[(variant, task)] = {"models": result["models"], "precision": result["precision"],
                                               "peak_rss_bytes": max(previous, result["peak_rss_bytes"])}
                print(f"round {round_index + 1}/{args.rounds}  {task:<10} {variant:<20} "
                      f"{result['ms_per_update']:8.1f} ms/update", file=sys.stderr, flush=True)

    rows = []
    for task in tasks:
        baseline = samples.get(("osrl", task)) or samples.get(("separate+unshared", task))
        base_ms = statistics.median(baseline) if baseline else float("nan")
        for variant in variants:
            values = samples[(variant, task)]
            if not values:
                continue
            median = statistics.median(values)
            cpu = cpu_samples[(variant, task)]
            rows.append({"task": task, "variant": variant, "levers": ladder.get(variant, {}),
                         "ms_median": median, "ms_min": min(values), "ms_rounds": values,
                         "cpu_ms_median": statistics.median(cpu) if cpu else None,
                         "speedup_vs_baseline": base_ms / median, "warmup_s": warmups.get((variant, task)),
                         **extras.get((variant, task), {})})
    sampler = {task: measure_sampler(task, args.episodes) for task in tasks}

    print(f"\nBCQ-Lag update, batch 512, {args.threads} threads, median of {args.rounds} rounds x {args.steps} steps "
          f"(baseline: {'OSRL' if 'osrl' in variants else 'separate+unshared'})")
    print("(stacked rows: ms per model = wall ms of one stacked update / K)")
    print(f"{'task':<10} {'variant':<22} {'ms/update':>10} {'min':>8} {'speedup':>8} {'cpu ms':>8} {'peak RSS':>9}")
    for row in rows:
        cpu_ms = f"{row['cpu_ms_median']:8.1f}" if row["cpu_ms_median"] is not None else f"{'-':>8}"
        rss = f"{row['peak_rss_bytes'] / 2**20:7.0f}MB" if "peak_rss_bytes" in row else f"{'-':>9}"
        print(f"{row['task']:<10} {row['variant']:<22} {row['ms_median']:10.1f} {row['ms_min']:8.1f} "
              f"{row['speedup_vs_baseline']:7.2f}x {cpu_ms} {rss}")
    for task, times in sampler.items():
        print(f"sampler {task}: vectorised {times['vectorised_us']:.1f} us/batch, "
              f"per-sample Python {times['per_sample_python_us']:.0f} us/batch")

    payload = {**stamped, "machine": machine(), "native_bf16": native_bf16_available(), "threads": args.threads,
               "steps": args.steps, "warmup": args.warmup,
               "rounds": args.rounds, "episodes": args.episodes, "baseline": "osrl" if "osrl" in variants else
               "separate+unshared", "results": rows, "sampler": sampler,
               }
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
