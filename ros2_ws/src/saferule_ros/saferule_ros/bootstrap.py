"""The fleet's first policy, from its own recorded data: ingest, train, export, sign, publish.

`python -m saferule_ros.bringup bootstrap --data-root fleet --task BallRun` (see `bootstrap_first_policy`):

1. the closed bags under <data root>/bags not yet in the fleet's dataset are ingested (what the
   dataset_ingestor node does every few seconds; done here too so that nothing waits for its poll);
2. a learner is trained on the dataset (quarantined episodes left out) into
   <data root>/models/deployed, with a progress bar;
3. its policy is exported to ONNX, checked against torch, signed with the fleet's key and published
   to <data root>/policies with the checkpoint it came from recorded (lineage), so that unlearning
   later starts from exactly this model. Every policy runner follows the registry's latest version
   and switches to it within its poll period; the unlearning server and the fleet monitor need no
   restart.

The fleet may be running meanwhile (that is the point: it records while this trains). A fleet that
already has a published policy is refused: later versions come from unlearning (or `saferule
train` + `saferule export` by hand), and the deployed checkpoint is never overwritten.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferule_core.errors import SafeRuleError
from saferule_ros.bringup import FleetLayout

DEFAULT_ALGO = "bcq_lag"
DEFAULT_STEPS = 10_000
DEFAULT_MIN_EPISODES = 20


class BootstrapError(SafeRuleError):
    """The fleet cannot be given a first policy this way (no data yet, a policy already published)."""


@dataclass
class BootstrapSettings:
    task: str = "BallRun"
    algo: str = DEFAULT_ALGO
    steps: int = DEFAULT_STEPS
    seed: int = 0
    min_episodes: int = DEFAULT_MIN_EPISODES
    learner_settings: dict[str, Any] = field(default_factory=dict)   # as `saferule train --config`
    train_settings: dict[str, Any] = field(default_factory=dict)     # its `train:` mapping
    progress: bool = True


@dataclass(frozen=True)
class BootstrapResult:
    version: str
    episodes: int
    transitions: int
    train_seconds: float
    ingest_summary: str
    model_dir: Path


def bootstrap_first_policy(layout: FleetLayout, settings: BootstrapSettings,
                           say: Callable[[str], None] = print) -> BootstrapResult:
    """Steps 1-3 of the module docstring; returns the published version."""
    from saferule_core.algos.registry import ALGORITHMS, ConfigError
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import load_signing_key

    if settings.algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {settings.algo!r} (known: {', '.join(sorted(ALGORITHMS))})")
    if settings.steps <= 0 or settings.min_episodes <= 0:
        raise ConfigError(f"steps and min_episodes must be positive, got {settings.steps} and "
                          f"{settings.min_episodes}")
    registry = PolicyRegistry(layout.registry_dir)
    if registry.latest() is not None:
        raise BootstrapError(f"the fleet already has a policy ({registry.latest()} in {layout.registry_dir}); "
                             f"bootstrap only publishes the first one")
    if layout.deployed_model_dir.exists():
        raise BootstrapError(f"{layout.deployed_model_dir} already exists but no policy was published from it "
                             f"(an interrupted bootstrap?): remove it and run bootstrap again")
    load_signing_key(layout.key_dir)   # a missing or bad key fails here, before the slow part

    from saferule_core.data.ingest import ingest_closed_bags
    from saferule_core.data.store import DatasetStore

    report = ingest_closed_bags(layout.bags_dir, layout.dataset_dir, settings.task, progress=settings.progress)
    say(f"ingest: {report.summary()}")
    if not layout.dataset_dir.exists():
        raise BootstrapError(f"no dataset at {layout.dataset_dir} yet: no closed bag holds a finished episode "
                             f"(bags close every bag_split_s; let the fleet drive longer)")
    dataset = DatasetStore.open(layout.dataset_dir).load()
    if dataset.num_episodes < settings.min_episodes:
        raise BootstrapError(f"the dataset has {dataset.num_episodes} usable episodes, fewer than min_episodes="
                             f"{settings.min_episodes}; let the fleet record longer")
    say(f"training {settings.algo} on {dataset.num_episodes} episodes ({dataset.num_transitions} transitions), "
        f"{settings.steps} updates")
    learner, seconds = _train(dataset, layout.deployed_model_dir, settings)
    version = publish_deployed(learner, layout, {"train_seconds": seconds})
    say(f"published {version} to {layout.registry_dir}; every policy runner switches to it")
    return BootstrapResult(version, dataset.num_episodes, dataset.num_transitions, seconds,
                           report.summary(), layout.deployed_model_dir)


def publish_deployed(learner: Any, layout: FleetLayout, metrics: dict[str, float]) -> str:
    """Export, check, sign and publish the policy of the learner saved in the fleet's deployed model
    folder, with that checkpoint recorded (lineage: unlearning starts from it); returns the version."""
    from saferule_core.artifacts.export import publish_learner
    from saferule_core.artifacts.lineage import checkpoint_record
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import load_signing_key

    registry = PolicyRegistry(layout.registry_dir)
    _, manifest = publish_learner(learner, registry, load_signing_key(layout.key_dir), parent=registry.latest(),
                                  metrics=metrics, checkpoint=checkpoint_record(layout.deployed_model_dir))
    return manifest.version


def _train(dataset: Any, out_dir: Path, settings: BootstrapSettings) -> tuple[Any, float]:
    """Train into a temporary directory next to `out_dir`, then rename it: an interrupted bootstrap
    leaves no half-written deployed model behind."""
    from saferule_core.algos.trainer import TrainConfig, fit

    partial = out_dir.with_name(f".{out_dir.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    config = TrainConfig(steps=settings.steps, seed=settings.seed, progress=settings.progress,
                         **{"checkpoint_every": 0, **settings.train_settings})
    began = time.perf_counter()
    learner, _ = fit(settings.algo, dataset, partial, config, dict(settings.learner_settings))
    seconds = time.perf_counter() - began
    partial.rename(out_dir)
    return learner, seconds
