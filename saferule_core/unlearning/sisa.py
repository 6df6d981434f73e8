"""SISA (Sharded, Isolated, Sliced, Aggregated; Bourtoule et al. 2021), by episode.

`train_sisa` splits a dataset's episodes at random into K shards and fits one model per shard
(each with its own normalisation statistics, each for the full number of updates a single model
gets). Shards of a stackable learner train as ONE stacked run (`algos.stacked`): shard k is the
same model a separate fit would give, at a fraction of the wall time. The ensemble's policy is the mean of the shard
policies' actions. Forgetting retrains, from scratch, only the shards that held a forget episode:
exact unlearning at the cost of those shards. An ensemble is a `Learner`, so it goes through
`unlearn`, the job and the export like any model; it is saved as a directory of shard models plus
`sisa.json` (`save_sisa`, `load_sisa`).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from saferule_core.algos.base import Learner, Metrics, ModelInfo
from saferule_core.algos.batch import Batch, NormalizationStats
from saferule_core.algos.checkpoint import load_learner, save_model
from saferule_core.algos.configs import LearnerConfig, TrainConfig
from saferule_core.algos.registry import get_algo
from saferule_core.algos.stacked import LearnerStack, StackCallback, StackTrainConfig, build_stack, train_stack
from saferule_core.algos.trainer import fit
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import ModelError, UnlearningError
from saferule_core.io_utils import atomic_write_json
from saferule_core.unlearning.methods import MethodOutcome
from saferule_core.unlearning.parts import clone_learner

if TYPE_CHECKING:
    from saferule_core.unlearning.session import Session

SISA_FILE = "sisa.json"
SISA_FORMAT = "saferule-sisa"
ALGO_PREFIX = "sisa_"

StepCallback = Callable[[int, Learner], None]


@dataclass
class ShardRecord:
    episode_ids: tuple[str, ...]
    seed: int
    steps: int
    batch_size: int


class ShardAverage(nn.Module):
    """Raw observations -> the mean of the shard policies' unit-box actions (each shard normalises
    with its own statistics). Plain tensor ops, exportable to ONNX."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def __init__(self, cores: Sequence[nn.Module], stats: Sequence[NormalizationStats]) -> None:
        super().__init__()
        self.cores = nn.ModuleList(cores)
        self.register_buffer("obs_mean", torch.stack([torch.from_numpy(s.obs_mean) for s in stats]))
        self.register_buffer("obs_std", torch.stack([torch.from_numpy(s.obs_std) for s in stats]))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        actions = [core((obs - self.obs_mean[k]) / self.obs_std[k]) for k, core in enumerate(self.cores)]
        return torch.stack(actions).mean(dim=0)


class SISAEnsemble(Learner):
    """K shard learners of one algorithm. Its own normalisation is the identity (each shard
    normalises inside the policy core), so `deployable_policy()` maps raw observations to the
    mean of the shard policies' env-scaled actions."""

    def __init__(self, shards: Sequence[Learner], records: Sequence[ShardRecord], task: str,
                 dataset_hash: str) -> None:
        if not shards or len(shards) != len(records):
            raise UnlearningError("a SISA ensemble needs one record per shard and at least one shard")
        first = shards[0]
        info = first.info
        identity = NormalizationStats(np.zeros(info.obs_dim), np.ones(info.obs_dim), info.stats.action_low,
                                      info.stats.action_high)
        super().__init__(copy.deepcopy(first.config), ModelInfo(
            algo=ALGO_PREFIX + info.algo, task=task, obs_dim=info.obs_dim, act_dim=info.act_dim,
            dataset_hash=dataset_hash, stats=identity))
        self.shards = list(shards)
        self.records = list(records)
        self.num_updates = sum(shard.num_updates for shard in shards)

    @classmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        raise UnlearningError("a SISA ensemble is named after its shards' algorithm (sisa_<algo>)")

    @property
    def base_algo(self) -> str:
        return self.info.algo[len(ALGO_PREFIX):]

    def update(self, batch: Batch) -> Metrics:
        raise UnlearningError("a SISA ensemble is trained shard by shard (train_sisa), not by update()")

    def policy_core(self) -> nn.Module:
        return ShardAverage([shard.policy_core() for shard in self.shards], [shard.info.stats for shard in self.shards])

    def networks(self) -> dict[str, nn.Module]:
        return {f"shard{k}/{name}": module for k, shard in enumerate(self.shards)
                for name, module in shard.networks().items()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {f"shard{k}/{name}": opt for k, shard in enumerate(self.shards)
                for name, opt in shard.optimizers().items()}

    def clone(self) -> SISAEnsemble:
        return SISAEnsemble([clone_learner(shard) for shard in self.shards], copy.deepcopy(self.records),
                            self.info.task, self.info.dataset_hash)


def shard_assignment(episode_ids: Sequence[str], shards: int, seed: int) -> list[tuple[str, ...]]:
    """Episodes dealt at random (seeded) into `shards` groups of near-equal size, dataset order kept."""
    if shards > len(episode_ids):
        raise UnlearningError(f"cannot split {len(episode_ids)} episodes into {shards} shards")
    order = np.random.default_rng(seed).permutation(len(episode_ids))
    group_of = np.empty(len(episode_ids), dtype=np.int64)
    group_of[order] = np.arange(len(episode_ids)) % shards
    return [tuple(eid for eid, g in zip(episode_ids, group_of) if g == k) for k in range(shards)]


def _episode_subset(dataset: OfflineDataset, episode_ids: Sequence[str]) -> OfflineDataset:
    wanted = np.isin(np.array(dataset.episode_ids(), dtype=object), np.array(list(episode_ids), dtype=object))
    return dataset.subset_episodes(wanted)


def fit_shards(algo: str, datasets: Sequence[OfflineDataset], records: Sequence[ShardRecord],
               overrides: dict[str, Any], num_threads: int,
               callback: Callable[[int, int], None] | None = None) -> list[Learner]:
    """One model per shard, fitted from scratch (seeded: the same record and data give the same
    weights). Stackable learners with equal step counts and batch sizes train as one stack;
    `callback(shard, step)` after every update of a shard (every shard's, for a stack)."""
    shape = {(record.steps, record.batch_size) for record in records}
    if get_algo(algo).learner_class.stackable and len(shape) == 1 and len(records) > 1:
        steps, batch_size = shape.pop()
        seeds = [record.seed for record in records]
        config = StackTrainConfig(steps=steps, batch_size=batch_size, num_threads=num_threads,
                                  log_every=max(1, min(100, steps)), checkpoint_every=0, progress=False)
        stack_callback: StackCallback | None = None
        if callback is not None:
            def stack_callback(step: int, _stack: LearnerStack) -> None:
                for k in range(len(records)):
                    callback(k, step)
        stack = build_stack(algo, datasets, seeds, overrides, batch_size)
        with tempfile.TemporaryDirectory(prefix="saferule-sisa-") as tmp:
            train_stack(stack, datasets, seeds, [Path(tmp) / shard_dir_name(k) for k in range(len(records))], config,
                        stack_callback)
        return stack.learners
    learners = []
    for k, (data, record) in enumerate(zip(datasets, records)):
        step_callback = None if callback is None else (lambda step, _l, k=k: callback(k, step))
        learners.append(fit_shard(algo, data, record, overrides, num_threads, step_callback))
    return learners


def fit_shard(algo: str, data: OfflineDataset, record: ShardRecord, overrides: dict[str, Any], num_threads: int,
              callback: StepCallback | None = None) -> Learner:
    """One shard model fitted from scratch on its own."""
    config = TrainConfig(steps=record.steps, batch_size=record.batch_size, seed=record.seed, num_threads=num_threads,
                         log_every=max(1, min(100, record.steps)), checkpoint_every=0, progress=False)
    with tempfile.TemporaryDirectory(prefix="saferule-sisa-") as tmp:
        learner, _ = fit(algo, data, Path(tmp) / "shard", config, overrides=overrides, callback=callback)
    return learner


def train_sisa(algo: str, dataset: OfflineDataset, shards: int, steps_per_shard: int, batch_size: int = 256,
               seed: int = 0, overrides: dict[str, Any] | None = None, num_threads: int = 2,
               callback: Callable[[int, int], None] | None = None) -> SISAEnsemble:
    """Fit `shards` models of `algo` on disjoint random episode shards of `dataset`.

    `callback(shard_index, step)` is called after every update (for progress or cancellation)."""
    assignment = shard_assignment(dataset.episode_ids(), shards, seed)
    records = [ShardRecord(ids, seed * 1000 + k, steps_per_shard, batch_size) for k, ids in enumerate(assignment)]
    learners = fit_shards(algo, [_episode_subset(dataset, ids) for ids in assignment], records, dict(overrides or {}),
                          num_threads, callback)
    return SISAEnsemble(learners, records, dataset.task, dataset.dataset_hash())


def unlearn_sisa(ensemble: SISAEnsemble, retained: OfflineDataset, forget_ids: set[str], steps_per_shard: int,
                 num_threads: int, callback: Callable[[int, int, int], None] | None = None) -> tuple[SISAEnsemble, int]:
    """A new ensemble whose shards that held forget episodes are refitted from scratch on their
    remaining episodes (a shard left empty is dropped). Returns it and the number of shards refitted.

    The refits train as one stack where the learner allows it. `callback(shard, affected, step)`
    after every update of every refitted shard (`shard` indexes the refits)."""
    affected = [k for k, record in enumerate(ensemble.records) if forget_ids.intersection(record.episode_ids)]
    shards, records = list(ensemble.shards), list(ensemble.records)
    present = set(retained.episode_ids())
    dropped: list[int] = []
    refits: dict[int, ShardRecord] = {}
    for k in affected:
        kept = tuple(eid for eid in records[k].episode_ids if eid not in forget_ids and eid in present)
        if kept:
            refits[k] = replace(records[k], episode_ids=kept, steps=steps_per_shard or records[k].steps)
        else:
            dropped.append(k)
    if refits:
        order = list(refits)
        step_callback = None if callback is None else (lambda index, step: callback(index, len(affected), step))
        refitted = fit_shards(ensemble.base_algo, [_episode_subset(retained, refits[k].episode_ids) for k in order],
                              [refits[k] for k in order], shards[order[0]].config_dict(), num_threads, step_callback)
        for k, learner in zip(order, refitted):
            shards[k], records[k] = learner, refits[k]
    keep = [k for k in range(len(shards)) if k not in dropped]
    if not keep:
        raise UnlearningError("every SISA shard held only forget episodes; nothing is left to form a policy")
    new = SISAEnsemble([shards[k] for k in keep], [records[k] for k in keep], ensemble.info.task,
                       retained.dataset_hash())
    return new, len(affected)


def run_sisa(session: Session) -> MethodOutcome:
    """The `sisa` method's runner: refit the shards of the session's ensemble that held forget episodes."""
    ensemble = session.learner
    if not isinstance(ensemble, SISAEnsemble):
        raise UnlearningError(f"sisa unlearns only SISA ensembles; this model is a single {ensemble.info.algo} model")
    forget_ids = set(session.split.forget.episode_ids())
    record_steps = session.config.sisa.steps_per_shard or ensemble.records[0].steps
    updates_before = session.updates

    def on_step(shard: int, affected: int, step: int) -> None:
        session.updates += 1           # one shard's update (a stacked refit advances every shard at once)
        if step % session.config.log_every == 0:
            done = session.updates - updates_before
            session.report_progress("sisa", min(1.0, done / max(affected * record_steps, 1)))
        session.check_stop("sisa")

    new, refitted = unlearn_sisa(ensemble, session.split.retained, forget_ids, session.config.sisa.steps_per_shard,
                                 session.config.num_threads, on_step)
    return MethodOutcome(learner=new, details={"shards_retrained": float(refitted), "shards": float(len(new.shards))})


# ----- saving and loading ---------------------------------------------------------------------------

def shard_dir_name(index: int) -> str:
    return f"shard_{index:02d}"


def save_sisa(directory: Path, ensemble: SISAEnsemble) -> None:
    """Write shard_KK/ model directories and sisa.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for k, shard in enumerate(ensemble.shards):
        save_model(directory / shard_dir_name(k), shard)
    atomic_write_json(directory / SISA_FILE, {
        "format": SISA_FORMAT, "version": 1, "algo": ensemble.base_algo, "task": ensemble.info.task,
        "dataset_hash": ensemble.info.dataset_hash,
        "shards": [{"dir": shard_dir_name(k), **asdict(record), "episode_ids": list(record.episode_ids)}
                   for k, record in enumerate(ensemble.records)],
    })


def is_sisa_dir(directory: Path) -> bool:
    return (Path(directory) / SISA_FILE).is_file()


def load_sisa(directory: Path, device: str = "cpu") -> SISAEnsemble:
    directory = Path(directory)
    try:
        meta = json.loads((directory / SISA_FILE).read_text())
        if meta.get("format") != SISA_FORMAT:
            raise ModelError(f"{directory / SISA_FILE} is not a SISA ensemble description")
        records, shards = [], []
        for entry in meta["shards"]:
            records.append(ShardRecord(tuple(entry["episode_ids"]), int(entry["seed"]), int(entry["steps"]),
                                       int(entry["batch_size"])))
            shards.append(load_learner(directory / entry["dir"], device=device))
        return SISAEnsemble(shards, records, str(meta["task"]), str(meta["dataset_hash"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{directory} is not a readable SISA ensemble ({type(err).__name__}: {err})") from err
