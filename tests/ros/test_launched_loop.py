"""The whole loop on a fleet started with the real `ros2 launch`, driven only by the README's commands.

1. `ros2 launch saferule_ros unlearn.launch.py robots:=3 behaviour_drivers:=true
   compromised_robot:=robot_3 poison_logs:=true ...`: the robots drive under scripted drivers
   (robot_3 recklessly, its logs claiming zero cost); the recorder closes a bag every few seconds
   and the dataset_ingestor appends each closed bag's finished episodes to the fleet's dataset;
2. `python -m saferule_ros.bringup bootstrap ...` trains the fleet's first policy on that data and
   publishes it; every robot's PolicyStatus (`ros2 topic echo --once`) shows v0001;
3. the README's `ros2 service call /forget ...` (robot_3's episodes) and `ros2 action send_goal
   --feedback /unlearn ...`: Safe-RULE runs on the server, v0002 is published and swapped onto
   every robot;
4. the healthy robots' episode cost, measured from their recorded step records (their logs are
   honest), under v0001 and under v0002 (printed; see the assertion's comment); Ctrl-C stops the
   fleet cleanly.

Short settings (a small network, a few hundred updates) keep it to a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.data.ledger import ForgetLedger, LedgerState
from saferule_core.data.store import DatasetStore
from saferule_core.tasks.spec import get_task
from saferule_ros.unlearning_server import STATE_FILE
from tests.ros.ros_harness import REPO_ROOT
from tests.ros.test_launch_file import (
    FORGET_RESPONSE,
    Launch,
    assert_stopped_cleanly,
    expected_nodes,
    launched,
    needs_launch,
    ros2,
    wait_until_on_dds,
)

pytestmark = pytest.mark.ros

ROBOTS = ["robot_1", "robot_2", "robot_3"]
HEALTHY = ["robot_1", "robot_2"]
FLEET = ("robots:=3", "task:=BallRun", "behaviour_drivers:=true", "compromised_robot:=robot_3", "poison_logs:=true",
         "bag_split_s:=4")
RECORD_EPISODES = 60          # finished episodes in the dataset before the first policy is trained
MEASURE_EPISODES = 6          # healthy-robot episodes measured under each policy
LEARNER = {"actor_hidden": [64, 64], "critic_hidden": [64, 64], "vae_hidden": 128,
           "train": {"batch_size": 256, "num_threads": 1, "log_every": 50}}
BOOTSTRAP_STEPS = 600
UNLEARN = {"steps": 300, "batch_size": 256, "num_threads": 1, "log_every": 25}
VERSION = re.compile(r"active_version: (v\d{4})")
GOAL_DONE = "Goal finished with status: SUCCEEDED"


def episodes_of(store_dir: Path, robots: list[str], since: float, until: float = float("inf")) -> list[float]:
    """Recorded cost of the robots' finished episodes that started after `since` and ended before `until`."""
    if not store_dir.exists():
        return []
    store = DatasetStore.open(store_dir)
    data = store.load(exclude_quarantined=False)
    costs = data.episode_cost_returns()
    return [float(cost) for ep, cost in zip(data.episodes, costs)
            if ep.robot_id in robots and ep.start_time >= since and ep.end_time <= until]


def versions(tmp_path: Path) -> dict[str, str]:
    found = {}
    for robot in ROBOTS:
        echo = ros2(tmp_path, "topic", "echo", "--once", "--no-daemon", "--spin-time", "3", f"/{robot}/policy_status",
                    timeout=30)
        match = VERSION.search(echo.stdout)
        found[robot] = match[1] if match else ""
    return found


def wait_all_on(tmp_path: Path, launch: Launch, version: str, timeout: float = 120.0) -> float:
    """Until every robot's PolicyStatus names `version`, as `ros2 topic echo` sees it; returns when."""
    deadline = time.monotonic() + timeout
    while True:
        seen = versions(tmp_path)
        if all(v == version for v in seen.values()):
            return time.time()
        assert launch.proc.poll() is None, launch.text()[-4000:]
        assert time.monotonic() < deadline, f"not every robot on {version} after {timeout:g} s: {seen}"
        time.sleep(1.0)


@needs_launch
def test_a_launched_fleet_goes_from_recording_to_a_repaired_policy(tmp_path: Path) -> None:
    began = time.monotonic()
    unlearn_file = tmp_path / "unlearn.yaml"
    unlearn_file.write_text(yaml.safe_dump(UNLEARN))
    learner_file = tmp_path / "learner.yaml"
    learner_file.write_text(yaml.safe_dump(LEARNER))
    threshold = get_task("BallRun").cost_thresholds[0]
    want = expected_nodes(3, data_root=str(tmp_path / "fleet"), behaviour_drivers=True, compromised_robot="robot_3",
                          poison_logs=True)
    with launched(tmp_path, *FLEET, f"unlearn_config_file:={unlearn_file}") as launch:
        pids = set(launch.started_nodes(len(want)))
        wait_until_on_dds(tmp_path, launch, want)
        layout_root = launch.data_root
        dataset_dir = layout_root / "dataset"

        # 1. live data: the ingestor builds the fleet's dataset from the closed bags
        launch.wait_for(lambda: len(episodes_of(dataset_dir, ROBOTS, 0.0)) >= RECORD_EPISODES,
                        f"{RECORD_EPISODES} episodes ingested", timeout=300)

        # 2. the first policy, from the fleet's own data (the README's bootstrap command)
        boot = subprocess.run([sys.executable, "-m", "saferule_ros.bringup", "bootstrap", "--data-root",
                               str(layout_root), "--task", "BallRun", "--steps", str(BOOTSTRAP_STEPS), "--config",
                               str(learner_file), "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600)
        assert boot.returncode == 0, boot.stdout + boot.stderr
        on_first = wait_all_on(tmp_path, launch, "v0001")
        launch.wait_for(lambda: len(episodes_of(dataset_dir, HEALTHY, on_first)) >= MEASURE_EPISODES,
                        "healthy episodes under v0001", timeout=180)
        before = episodes_of(dataset_dir, HEALTHY, on_first)

        # 3. the README's Forget and Unlearn commands, with the real ros2 command
        forget = ros2(tmp_path, "service", "call", "/forget", "saferule_interfaces/srv/Forget",
                      "{selector: {robot_ids: [robot_3]}, reason: 'robot_3 compromised', requester: ops}", timeout=60)
        answer = FORGET_RESPONSE.search(forget.stdout)
        assert answer is not None and answer["accepted"] == "True", forget.stdout + forget.stderr
        request_id = re.search(r"request_id='(forget-[0-9a-f]+)'", forget.stdout)
        assert request_id is not None, forget.stdout
        goal = ros2(tmp_path, "action", "send_goal", "--feedback", "/unlearn", "saferule_interfaces/action/Unlearn",
                    f"{{request_id: {request_id[1]}, method: safe_rule, swap_on_success: true}}", timeout=420)
        assert GOAL_DONE in goal.stdout and "success: true" in goal.stdout, goal.stdout[-3000:] + goal.stderr
        assert "new_policy_version: v0002" in goal.stdout, goal.stdout[-3000:]
        assert "stage: suppress" in goal.stdout, goal.stdout[-3000:]          # the feedback streamed
        on_second = wait_all_on(tmp_path, launch, "v0002")
        launch.wait_for(lambda: len(episodes_of(dataset_dir, HEALTHY, on_second)) >= MEASURE_EPISODES,
                        "healthy episodes under v0002", timeout=180)
        after = episodes_of(dataset_dir, HEALTHY, on_second)

        assert_stopped_cleanly(launch, launch.interrupt(whole_group=True), pids)

    # 4. what the fleet measured, and what the files say
    print(f"healthy robots' episode cost: v0001 {np.mean(before):.1f} over {len(before)} episodes -> v0002 "
          f"{np.mean(after):.1f} over {len(after)}; threshold {threshold:g}; whole loop {time.monotonic() - began:.0f} s"
          f"\n  per episode: v0001 {[round(c, 1) for c in before]}, v0002 {[round(c, 1) for c in after]}")
    # The costs are measured and printed, not asserted: with this little data and training the first
    # policy and its repair are a transient (runs here: 85.0 -> 13.2, 85.0 -> 87.0, 4.3 -> 82.2). A
    # BC-Safe learner does not make them assertable either (README: v0001 is mostly not poisoned on
    # the fleet's own start states; 6.0 -> 0.0, 17.8 -> 6.5, 0.0 -> 6.4).
    assert len(before) >= MEASURE_EPISODES and len(after) >= MEASURE_EPISODES
    entry = ForgetLedger(dataset_dir).get(request_id[1])
    assert entry.state == LedgerState.UNLEARNED and entry.artifact_version == "v0002"
    # the server's queue survived the Ctrl-C readable, with nothing left in it; the dataset verifies
    state = json.loads((layout_root / "unlearning" / STATE_FILE).read_text())
    assert state["jobs"] == [], state
    DatasetStore.open(dataset_dir).verify()
    registry = PolicyRegistry(layout_root / "policies")
    assert registry.manifest("v0002").parent_version == "v0001"
    assert registry.manifest("v0002").forget_request_id == request_id[1]
