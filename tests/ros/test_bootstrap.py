"""`bringup bootstrap`: the fleet's first policy from its own bags (ingest, train, export, sign, publish)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.data.store import DatasetStore
from saferule_ros.bringup import FleetArgs, prepare_data_root
from tests.core.data.test_data_from_bags import T0, make_episode, write_bag
from tests.ros.ros_harness import REPO_ROOT

pytestmark = pytest.mark.ros


def bootstrap(data_root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "saferule_ros.bringup", "bootstrap", "--data-root", str(data_root),
                           "--quiet", *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def record_bag(bags_dir: Path, number: int, episodes: int) -> None:
    made = [make_episode(f"robot_{1 + i % 2}", number * 100 + i, 20, T0 + (number * 100 + i) * 10**9,
                         terminated=False, seed=number * 100 + i) for i in range(episodes)]
    messages = sorted((m for ep in made for m in ep.messages), key=lambda m: m.time_ns)
    write_bag(bags_dir / f"saferule_20250101T000000Z_{number:03d}", messages)


def test_bootstrap_publishes_the_first_policy_from_the_fleets_bags(tmp_path: Path) -> None:
    layout = FleetArgs(data_root=str(tmp_path / "fleet")).layout
    prepare_data_root(layout)

    empty = bootstrap(layout.root)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert "no dataset" in empty.stderr and "let the fleet drive longer" in empty.stderr
    record_bag(layout.bags_dir, 0, 2)
    too_few = bootstrap(layout.root, "--min-episodes", "5")
    assert too_few.returncode == 2 and "2 usable episodes, fewer than min_episodes=5" in too_few.stderr

    record_bag(layout.bags_dir, 1, 6)
    done = bootstrap(layout.root, "--min-episodes", "5", "--algo", "bc_all", "--steps", "30")
    assert done.returncode == 0, done.stderr
    assert "published v0001" in done.stdout and "8 episodes" in done.stdout
    registry = PolicyRegistry(layout.registry_dir)
    assert registry.latest() == "v0001"
    # the version records the checkpoint it came from: unlearning starts from exactly this model
    assert registry.checkpoint_of("v0001") == layout.deployed_model_dir
    assert registry.deployed_model_dir(tmp_path / "elsewhere") == layout.deployed_model_dir
    assert DatasetStore.open(layout.dataset_dir).manifest.sources == ("saferule_20250101T000000Z_000",
                                                                        "saferule_20250101T000000Z_001")
    again = bootstrap(layout.root, "--min-episodes", "5", "--algo", "bc_all", "--steps", "30")
    assert again.returncode == 2 and "already has a policy (v0001" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and registry.latest() == "v0001"
