"""The one training loop every learner uses.

Seeds everything, samples batches on the learner's device, calls `learner.update`, shows a tqdm
bar with live metrics, appends averaged metrics to `metrics.jsonl` every `log_every` steps and
writes an atomic checkpoint (`model.pt` + `config.json`) every `checkpoint_every` steps and at the
end. A run stopped part-way continues from its last checkpoint with `resume=True`, bit for bit on
the same machine: the checkpoint carries the sampler's and the global RNG states.
"""

from __future__ import annotations

import ctypes
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from saferule_core.algos.base import Learner, Metrics
from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.checkpoint import MODEL_FILE, check_compatible, read_checkpoint, save_model
from saferule_core.algos.configs import TrainConfig
from saferule_core.algos.registry import get_algo, make_config
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import ConfigError, ModelError
from saferule_core.io_utils import atomic_write_text

METRICS_FILE = "metrics.jsonl"
# Metrics shown on the progress bar (when the learner reports them).
PROGRESS_KEYS: tuple[str, ...] = ("actor_loss", "reward_critic_loss", "cost_critic_loss", "q_cost",
                                  "lagrange_multiplier", "alpha")

# Settings that only change how updates are computed, not what is learned: may differ on resume.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"precision", "compile", "optimizer", "device"})

StepCallback = Callable[[int, Learner], None]
"""Called after every update (and its logging/checkpointing) with (updates done, learner)."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    seconds: float
    metrics: dict[str, float]        # the last logged averages


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing big blocks back to the OS.

    Every update allocates the same multi-megabyte activations; by default glibc serves those with
    fresh mmaps, so each one page-faults and is zeroed again. Raising the mmap and trim
    thresholds keeps them in the heap (memory stays at the peak of one update). Process-wide and
    idempotent; returns False where it does not apply (not Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3       # <malloc.h>
    one_gib = 1 << 30
    return bool(libc.mallopt(m_mmap_threshold, one_gib)) and bool(libc.mallopt(m_trim_threshold, one_gib))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))


def mean_metrics(window: list[Metrics]) -> dict[str, float]:
    keys = window[0].keys()
    stacked = torch.stack([torch.stack([m[k].float() for k in keys]) for m in window]).mean(dim=0)
    return dict(zip(keys, stacked.tolist()))


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the metric lines up to `last_step` (lines after a checkpoint are redone on resume)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def train(learner: Learner, dataset: OfflineDataset, out_dir: Path, config: TrainConfig,
          callback: StepCallback | None = None, resume: bool = False) -> TrainResult:
    """Train `learner` on `dataset` for `config.steps` updates in total, writing into `out_dir`."""
    config.validate()
    out_dir = Path(out_dir)
    check_compatible(learner.info, dataset)
    torch.set_num_threads(config.num_threads)
    if config.tune_allocator:
        tune_cpu_allocator()
    sampler = BatchSampler(learner.training_data(dataset, learner.config), learner.info.stats,
                           config.batch_size, learner.device, config.seed)
    metrics_path = out_dir / METRICS_FILE
    start = 0
    if (out_dir / MODEL_FILE).exists():
        if not resume:
            raise ConfigError(f"{out_dir} already holds a trained model; resume it or choose another output directory")
        start = _restore(learner, sampler, out_dir, dataset)
        _truncate_metrics(metrics_path, start)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")

    def trainer_state(step: int) -> dict[str, Any]:
        return {"step": step, "train_config": asdict(config), "sampler": sampler.state_dict(), "rng": _rng_state()}

    learner.train_mode(True)
    window: list[Metrics] = []
    last: dict[str, float] = {}
    began = time.perf_counter()
    with metrics_path.open("a") as log, tqdm(total=config.steps, initial=start, disable=not config.progress,
                                            desc=f"train {learner.info.algo}", unit="step", dynamic_ncols=True) as bar:
        for step in range(start + 1, config.steps + 1):
            window.append(learner.update(sampler.sample()))
            if step % config.log_every == 0 or step == config.steps:
                last = mean_metrics(window)
                window.clear()
                log.write(json.dumps({"step": step, "seconds": round(time.perf_counter() - began, 3), **last}) + "\n")
                log.flush()
                bar.set_postfix({k: f"{last[k]:.3g}" for k in PROGRESS_KEYS if k in last}, refresh=False)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step != config.steps:
                save_model(out_dir, learner, trainer_state(step))
            if callback is not None:
                callback(step, learner)
            bar.update(1)
    save_model(out_dir, learner, trainer_state(max(config.steps, start)))
    return TrainResult(out_dir=out_dir, steps=max(config.steps, start), seconds=time.perf_counter() - began,
                       metrics=last)


def _restore(learner: Learner, sampler: BatchSampler, out_dir: Path, dataset: OfflineDataset) -> int:
    payload = read_checkpoint(out_dir)
    saved_algo = payload["info"]["algo"]
    if saved_algo != learner.info.algo:
        raise ModelError(f"{out_dir} holds a {saved_algo} model, cannot resume it as {learner.info.algo}")
    if payload["info"]["dataset_hash"] != dataset.dataset_hash():
        raise ModelError(f"{out_dir} was trained on a different dataset; resume only with the same data")
    trainer = payload.get("trainer") or {}
    if "step" not in trainer:
        raise ModelError(f"{out_dir}/{MODEL_FILE} has no trainer state to resume from")
    saved, current = payload["config"], learner.config_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        raise ModelError(f"{out_dir} was trained with other settings ({', '.join(changed)}); "
                         f"resume with the same settings")
    learner.load_state_dict(payload["state"])
    sampler.load_state_dict(trainer["sampler"])
    _set_rng_state(trainer["rng"])
    return int(trainer["step"])


def fit(algo: str, dataset: OfflineDataset, out_dir: Path, train_config: TrainConfig,
        overrides: dict[str, Any] | None = None, callback: StepCallback | None = None,
        resume: bool = False) -> tuple[Learner, TrainResult]:
    """Seed, build `algo`'s learner for `dataset` (config = defaults + overrides) and train it."""
    train_config.validate()
    seed_everything(train_config.seed)
    torch.set_num_threads(train_config.num_threads)
    learner = get_algo(algo).learner_class.from_dataset(dataset, make_config(algo, overrides))
    result = train(learner, dataset, out_dir, train_config, callback=callback, resume=resume)
    return learner, result
