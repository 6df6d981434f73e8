"""K independent models of one learner trained as one: seeds, SISA shards, repeated trainings.

`LearnerStack` takes K ordinary learners (same algorithm and settings; each built under its own
seed, each for its own dataset) and holds [K, ...] copies of their parameters, optimizer states
and controller buffers. One stacked update runs the learner's own `update_step` with every phase
mapped over the model axis (`algos.functional`): each layer is one batched matmul over the K
weight sets, there is one optimizer step for all K models and one Python dispatch per op.

Model k draws its batches from its own sampler (seeded with its seed, on its own dataset) and its
noise from its own generator, which starts where the global RNG stood right after model k was
built, exactly as in a single run. So model k follows the updates of `fit(..., seed=seed_k)` up
to summation order (tests/core/algos/test_algos_stacked.py checks this update by update).

`write_back()` copies the stack into the K learners, which are then saved as ordinary model
directories: eval, export and unlearn load them unchanged.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from saferule_core.algos.base import Learner, Metrics
from saferule_core.algos.batch import Batch, BatchSampler
from saferule_core.algos.checkpoint import MODEL_FILE, save_model
from saferule_core.algos.configs import LoopConfig, TrainConfig
from saferule_core.algos.functional import ModelState
from saferule_core.algos.registry import get_algo, make_config
from saferule_core.algos.trainer import METRICS_FILE, PROGRESS_KEYS, mean_metrics, seed_everything, tune_cpu_allocator
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import ConfigError

MAX_MODELS = 64
# Below this much memory left over after the estimate, a stacked run is refused before it starts.
MEMORY_HEADROOM_BYTES = 1 << 30

StackCallback = Callable[[int, "LearnerStack"], None]


class LearnerStack:
    """K learners of one algorithm and configuration, trained as one."""

    def __init__(self, learners: Sequence[Learner], generators: Sequence[torch.Generator]) -> None:
        if not learners:
            raise ConfigError("a stack needs at least one model")
        if len(generators) != len(learners):
            raise ValueError("one noise generator per model")
        template = learners[0]
        if not template.stackable:
            raise ConfigError(f"{template.info.algo} cannot train several models as one stack; train one seed at a "
                              f"time (stackable: {', '.join(stackable_algorithms())})")
        if template.config.compile:
            raise ConfigError("compile is not supported for stacked training (torch.compile of vmapped phases)")
        for other in learners[1:]:
            if type(other) is not type(template) or other.config != template.config or \
                    (other.info.obs_dim, other.info.act_dim) != (template.info.obs_dim, template.info.act_dim):
                raise ConfigError("every model of a stack must have the same algorithm, settings and spaces")
        self.learners = list(learners)
        self.generators = list(generators)
        self.template = template
        # a stack of one is the learner itself: its own update, with no model axis to map over
        self.state = template.own_state() if len(learners) == 1 else self._stack_state()

    @property
    def models(self) -> int:
        return len(self.learners)

    def _stack_state(self) -> ModelState:
        states = [learner.own_state() for learner in self.learners]
        first = states[0]
        params = {net: {name: torch.stack([s.params[net][name].detach() for s in states])
                        .requires_grad_(tensor.requires_grad)
                        for name, tensor in tensors.items()}
                  for net, tensors in first.params.items()}
        # the stacked tensor standing in for each of the template's parameters (optimizer mapping)
        stand_in = {id(first.params[net][name]): params[net][name] for net in params for name in params[net]}
        optimizers: dict[str, torch.optim.Optimizer] = {}
        for opt_name, opt in first.optimizers.items():
            groups = [{**{k: v for k, v in group.items() if k != "params"},
                       "params": [stand_in[id(p)] for p in group["params"]]} for group in opt.param_groups]
            stacked_opt = cast(Any, type(opt))(groups)   # the same optimizer class, over the stacked parameters
            stacked_opt.load_state_dict(_stack_optimizer_states([s.optimizers[opt_name].state_dict() for s in states]))
            optimizers[opt_name] = stacked_opt
        controllers = {}
        for name, controller in first.controllers.items():
            stacked = copy.deepcopy(controller)       # same settings; every buffer gets the model axis
            for buffer_name, _ in controller.named_buffers():
                stacked.register_buffer(buffer_name, torch.stack([s.controllers[name].get_buffer(buffer_name)
                                                                  for s in states]))
            controllers[name] = stacked
        return ModelState(params=params, optimizers=optimizers, controllers=controllers, models=len(states))

    def update(self, batches: Sequence[Batch]) -> Metrics:
        """One update of every model, model k on batches[k]; metrics are [K] tensors."""
        if self.state.models is None:
            metrics = self.template.update_step(self.state, batches[0],
                                                self.template.draw_noise(batches[0].size, self.generators[0]))
            self.template.num_updates += 1
            return {key: value.unsqueeze(0) for key, value in metrics.items()}
        batch = Batch(*(torch.stack(columns) for columns in zip(*(
            (b.observations, b.actions, b.rewards, b.costs, b.next_observations, b.terminals) for b in batches))))
        noises = [learner.draw_noise(batches[0].size, gen)
                  for learner, gen in zip(self.learners, self.generators)]
        noise = {key: torch.stack([n[key] for n in noises]) for key in noises[0]}
        metrics = self.template.update_step(self.state, batch, noise)
        for learner in self.learners:
            learner.num_updates += 1
        return metrics

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked parameters, optimizer states and controller buffers into the K learners."""
        if self.state.models is None:
            return                       # a stack of one trains its learner's own parameters
        stacked_opts = {name: opt.state_dict() for name, opt in self.state.optimizers.items()}
        for k, learner in enumerate(self.learners):
            own = learner.own_state()
            for net, tensors in self.state.params.items():
                for name, tensor in tensors.items():
                    own.params[net][name].copy_(tensor[k])
            for name, controller in self.state.controllers.items():
                for buffer_name, buffer in controller.named_buffers():
                    own.controllers[name].get_buffer(buffer_name).copy_(buffer[k])
            for name, state_dict in stacked_opts.items():
                own.optimizers[name].load_state_dict(_slice_optimizer_state(state_dict, k))


def _stack_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = states[0]
    stacked_state = {}
    for index, per_param in first["state"].items():
        stacked_state[index] = {key: torch.stack([s["state"][index][key] for s in states])
                                if key != "step" else value for key, value in per_param.items()}
    return {"state": stacked_state, "param_groups": first["param_groups"]}


def _slice_optimizer_state(state: dict[str, Any], k: int) -> dict[str, Any]:
    sliced = {index: {key: value[k].clone() if key != "step" else value.clone() for key, value in per_param.items()}
              for index, per_param in state["state"].items()}
    return {"state": sliced, "param_groups": state["param_groups"]}


def stackable_algorithms() -> list[str]:
    from saferule_core.algos.registry import ALGORITHMS
    return [name for name, spec in ALGORITHMS.items() if spec.learner_class.stackable]


# ----- memory estimate -------------------------------------------------------------------------------

def estimate_bytes_per_model(learner: Learner, batch_size: int) -> int:
    """A rough upper estimate of one stacked model's memory: parameters x 6 (weights, gradients,
    two Adam moments, targets, the stack's own copy) plus the activations of one update, taken as
    the widest layer's output for every row the update evaluates, x 3 (forward, backward, vmap copies)."""
    params = sum(p.numel() for p in learner.parameters())
    widths = [p.shape[0] if p.dim() == 1 else p.shape[-1] for p in learner.parameters()]
    rows = batch_size * (int(getattr(learner.config, "num_sampled_actions", 1)) + 2)
    layers = sum(1 for p in learner.parameters() if p.dim() >= 2)
    return 4 * (6 * params + 3 * rows * max(widths) * layers)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ----- the stacked training loop -----------------------------------------------------------------------

StackTrainConfig = LoopConfig
"""A stack's training loop: `LoopConfig` (the seeds are per model)."""


@dataclass
class StackTrainResult:
    out_dirs: list[Path]
    steps: int
    seconds: float
    metrics: list[dict[str, float]]         # per model: the last logged averages


def check_seeds(seeds: Sequence[int]) -> None:
    if not seeds:
        raise ConfigError("name at least one seed")
    duplicates = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if duplicates:
        raise ConfigError(f"--seeds repeats {', '.join(map(str, duplicates))}: each model needs its own seed "
                          f"(identical seeds would train identical models)")
    if len(seeds) > MAX_MODELS:
        raise ConfigError(f"{len(seeds)} models in one stack; the limit is {MAX_MODELS}")


def build_stack(algo: str, datasets: Sequence[OfflineDataset], seeds: Sequence[int],
                overrides: dict[str, Any] | None = None, batch_size: int = 512,
                memory_limit_bytes: int | None = None) -> LearnerStack:
    """K untrained learners of `algo` (model k built under seed k for datasets[k]) as one stack.

    Refused before anything is built beyond the first model when the estimated memory of the stack
    does not fit in `memory_limit_bytes` (default: what the machine has available)."""
    check_seeds(seeds)
    if len(datasets) != len(seeds):
        raise ValueError("one dataset per seed")
    spec = get_algo(algo)
    config = make_config(algo, overrides)
    learners: list[Learner] = []
    generators: list[torch.Generator] = []
    for k, (dataset, seed) in enumerate(zip(datasets, seeds)):
        seed_everything(seed)
        learner = spec.learner_class.from_dataset(dataset, config)
        if k == 0:
            if not learner.stackable:
                raise ConfigError(f"{algo} cannot train several models as one stack; train one seed at a time "
                                  f"(stackable: {', '.join(stackable_algorithms())})")
            _check_memory(learner, len(seeds), batch_size, memory_limit_bytes)
        generator = torch.Generator(device=learner.device)
        generator.set_state(torch.get_rng_state())
        learners.append(learner)
        generators.append(generator)
    return LearnerStack(learners, generators)


def _check_memory(learner: Learner, models: int, batch_size: int, limit: int | None) -> None:
    per_model = estimate_bytes_per_model(learner, batch_size)
    limit = limit if limit is not None else available_memory_bytes()
    if limit is None:
        return
    needed = per_model * models + MEMORY_HEADROOM_BYTES
    if needed > limit:
        fit = max(0, (limit - MEMORY_HEADROOM_BYTES) // per_model)
        raise ConfigError(f"{models} stacked {learner.info.algo} models need about {needed / 2**30:.1f} GiB "
                          f"({per_model / 2**20:.0f} MiB each at batch {batch_size}, plus 1 GiB headroom) but "
                          f"{limit / 2**30:.1f} GiB is available; at most {fit} fit")


def train_stack(stack: LearnerStack, datasets: Sequence[OfflineDataset], seeds: Sequence[int],
                out_dirs: Sequence[Path], config: StackTrainConfig,
                callback: StackCallback | None = None) -> StackTrainResult:
    """Train the stack for `config.steps` updates; model k writes an ordinary model directory to
    out_dirs[k] (model.pt, config.json, metrics.jsonl) at every checkpoint and at the end."""
    config.validate()
    out_dirs = [Path(d) for d in out_dirs]
    if len(out_dirs) != stack.models or len(datasets) != stack.models or len(seeds) != stack.models:
        raise ValueError("one dataset, seed and output directory per model")
    taken = [d for d in out_dirs if (d / MODEL_FILE).exists()]
    if taken:
        raise ConfigError(f"{taken[0]} already holds a trained model; choose another output directory "
                          f"(stacked runs do not resume)")
    torch.set_num_threads(config.num_threads)
    if config.tune_allocator:
        tune_cpu_allocator()
    samplers = [BatchSampler(learner.training_data(dataset, learner.config), learner.info.stats,
                             config.batch_size, learner.device, seed)
                for learner, dataset, seed in zip(stack.learners, datasets, seeds)]
    for directory in out_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    logs = [(d / METRICS_FILE).open("w") for d in out_dirs]

    def save_all(step: int) -> None:
        stack.write_back()
        for learner, directory, seed, sampler, generator in zip(stack.learners, out_dirs, seeds, samplers,
                                                                 stack.generators):
            train_config = TrainConfig(**{**asdict(config), "steps": config.steps, "seed": seed})
            save_model(directory, learner, {"step": step, "train_config": asdict(train_config),
                                            "sampler": sampler.state_dict(),
                                            "noise_generator": generator.get_state(),
                                            "stacked_with": [str(d) for d in out_dirs]})

    windows: list[Metrics] = []
    last: list[dict[str, float]] = [{} for _ in out_dirs]
    began = time.perf_counter()
    try:
        with tqdm(total=config.steps, disable=not config.progress, unit="step", dynamic_ncols=True,
                  desc=f"train {stack.models} x {stack.template.info.algo}") as bar:
            for step in range(1, config.steps + 1):
                windows.append(stack.update([s.sample() for s in samplers]))
                if step % config.log_every == 0 or step == config.steps:
                    seconds = round(time.perf_counter() - began, 3)
                    for k, log in enumerate(logs):
                        last[k] = mean_metrics([{key: value[k] for key, value in m.items()} for m in windows])
                        log.write(json.dumps({"step": step, "seconds": seconds, **last[k]}) + "\n")
                        log.flush()
                    windows.clear()
                    shown = {key: f"{sum(m[key] for m in last) / len(last):.3g}" for key in PROGRESS_KEYS
                             if key in last[0]}
                    bar.set_postfix(shown, refresh=False)
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step != config.steps:
                    save_all(step)
                if callback is not None:
                    callback(step, stack)
                bar.update(1)
        save_all(config.steps)
    finally:
        for log in logs:
            log.close()
    return StackTrainResult(out_dirs=out_dirs, steps=config.steps, seconds=time.perf_counter() - began,
                            metrics=last)


def fit_seeds(algo: str, dataset: OfflineDataset, seeds: Sequence[int], out_dirs: Sequence[Path],
              config: StackTrainConfig, overrides: dict[str, Any] | None = None,
              callback: StackCallback | None = None) -> tuple[LearnerStack, StackTrainResult]:
    """`fit` for several seeds of one configuration on one dataset, trained as one stack."""
    config.validate()
    torch.set_num_threads(config.num_threads)
    datasets = [dataset] * len(seeds)
    stack = build_stack(algo, datasets, seeds, overrides, config.batch_size)
    return stack, train_stack(stack, datasets, seeds, out_dirs, config, callback)


def seed_dirs(out: Path, seeds: Sequence[int]) -> list[Path]:
    """Where a multi-seed run writes model k: <out>/seed_<seed>."""
    return [Path(out) / f"seed_{seed}" for seed in seeds]


__all__ = ["LearnerStack", "StackTrainConfig", "StackTrainResult", "build_stack", "check_seeds",
           "estimate_bytes_per_model", "fit_seeds", "seed_dirs", "stackable_algorithms", "train_stack"]
