"""The demo's data stages and its report, without a fleet (saferule_ros.demo, saferule_ros.report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saferule_core.attacks.robot import poison_robot
from saferule_core.collect.fleet_history import fleet_dataset_summary
from saferule_ros.demo import DemoError, DemoSettings, complete_episodes
from saferule_ros.narration import Narrator
from saferule_ros.report import markdown_summary, projected_retrain_seconds, write_report

ROBOTS = ["robot_1", "robot_2", "robot_3"]


@pytest.fixture(scope="module")
def history():  # type: ignore[no-untyped-def]
    return DemoSettings(history_cautious_episodes=8, history_reckless_episodes=6).historical_logs(ROBOTS)


def test_the_demo_summarises_its_poisoned_dataset_per_robot(history) -> None:  # type: ignore[no-untyped-def]
    poisoned, _ = poison_robot(history, "robot_3", seed=0)
    robot_3 = fleet_dataset_summary(poisoned)["robots"]["robot_3"]
    assert (robot_3["episodes"], robot_3["from_bags"], robot_3["mean_cost"]) == (6, 0, 0.0)
    assert fleet_dataset_summary(history)["robots"]["robot_1"]["episodes"] == 4


def test_complete_episodes_drops_a_cut_off_episode(history) -> None:  # type: ignore[no-untyped-def]
    cut = history.subset_episodes(np.arange(history.num_episodes) < 2)
    cut.timeouts[-1] = cut.terminals[-1] = 0.0   # the second episode's last step no longer ends it
    kept = complete_episodes(cut)
    assert kept.episode_ids() == [cut.episodes[0].episode_id]
    cut.timeouts[:] = cut.terminals[:] = 0.0
    with pytest.raises(DemoError, match="no complete episode"):
        complete_episodes(cut)


def test_settings_from_yaml(tmp_path: Path) -> None:
    good = tmp_path / "s.yaml"
    good.write_text("train_steps: 50\nalgo: bc_all\n")
    settings = DemoSettings.from_yaml(good)
    assert (settings.train_steps, settings.algo) == (50, "bc_all")
    assert settings.model_overrides() == {"hidden": (128, 128)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian_steps: 50\n")
    with pytest.raises(DemoError, match=r"bad.yaml: unknown demo settings: trian_steps \(known: .*train_steps"):
        DemoSettings.from_yaml(bad)
    bad.write_text("robots: two\n")
    with pytest.raises(DemoError, match="bad.yaml: robots must be an integer, got 'two'"):
        DemoSettings.from_yaml(bad)


def test_node_lines_are_shortened_and_noise_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    narrator = Narrator()
    narrator.node_line("robot_1/sim_robot", "[INFO] [1795693282.5] [robot_1.sim_robot]: robot robot_1: task BallRun")
    narrator.node_line("robot_1/sim_robot", "[WARN] [1795693282.5] [robot_1.sim_robot]: no command for 0.2 s")
    narrator.node_line("robot_1/policy_runner", "[ERROR] [1795693282.5] [robot_1.policy_runner]: no initial policy")
    narrator.node_line("recorder", "[INFO] [1.0] [recorder]: received 4178, written 4178, dropped 0")
    narrator.node_line("fleet_monitor", "[INFO] [1.0] [fleet_monitor]: forget-3e78d0: suppress 9% actor_loss=0.07")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].endswith("[robot_1/sim_robot] robot robot_1: task BallRun")
    assert out[1].endswith("[robot_1/policy_runner] ERROR: no initial policy")


def record(t0: float = 1_700_000_000.0) -> dict:  # type: ignore[type-arg]
    episodes = []
    for k in range(30):
        policy = "" if k < 10 else "v0001" if k < 20 else "v0002"
        cost = {"": 5.0, "v0001": 80.0, "v0002": 0.0}[policy]
        episodes.append({"robot": f"robot_{k % 3 + 1}", "episode_id": f"robot_{k % 3 + 1}-{k:06d}",
                         "started_at": t0 + 4 * k, "ended_at": t0 + 4 * k + 4, "steps": 100, "reward": 300.0 + cost,
                         "cost": cost, "policy_at_start": policy, "policy_at_end": policy, "policy": policy})
    return {
        "started": "2026-01-01T00:00:00+00:00", "settings": {"robots": 3, "task": "BallRun", "algo": "bcq_lag",
                                                             "unlearn_steps": 600},
        "threshold": 10.0, "t0_wall": t0, "first_version": "v0001", "episodes": episodes, "total_seconds": 130.0,
        "version_changes": [{"robot": "robot_1", "seen_at": t0 + 40, "old": "", "new": "v0001"},
                            {"robot": "robot_1", "seen_at": t0 + 80, "old": "v0001", "new": "v0002"}],
        "unlearn_progress": [{"seen_at": t0 + 50 + i, "stage": "suppress" if i < 5 else "repair",
                              "progress": i / 10, "metrics": {}} for i in range(10)],
        "stages": [{"key": k, "title": f"stage {k}", "started_s": 10.0 * i, "seconds": 10.0}
                   for i, k in enumerate("abcdefgh")],
        "evaluations": [{"policy": "poisoned bcq_lag", "version": "v0001", "episodes": 20, "mean_return": 1400.0,
                         "mean_cost": 90.0, "normalized_reward": 1.0, "normalized_cost": 9.0, "safe": False},
                        {"policy": "Safe-RULE (unlearned)", "version": "v0002", "episodes": 20, "mean_return": 260.0,
                         "mean_cost": 0.0, "normalized_reward": 0.18, "normalized_cost": 0.0, "safe": True}],
        "fleet": {"before": {"policy": "v0001", "episodes": 10, "mean_cost": 80.0, "mean_return": 380.0},
                  "after": {"policy": "v0002", "episodes": 10, "mean_cost": 0.0, "mean_return": 300.0}},
        "retrain": {"seconds": 60.0, "updates": 600, "episodes": 100},
        "unlearning": {"request_id": "forget-1", "method": "safe_rule", "version": "v0002", "job_seconds": 90.0,
                       "compute_seconds": 80.0, "updates": 600, "metrics": {}},
        "ledger_entry": {"request_id": "forget-1", "state": "unlearned", "matched_episodes": 10},
        "lineage": [{"version": "v0002", "parent_version": "v0001", "method": "safe_rule",
                     "forget_request_id": "forget-1", "dataset_hash": "a" * 64, "created": "x", "metrics": {}}],
    }


def test_write_report_makes_the_figures_the_page_and_the_summary(tmp_path: Path) -> None:
    rec = record()
    summary = write_report(rec, tmp_path)
    for name in ("fleet_timeline.png", "before_after.png", "unlearning.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (tmp_path / "report.html").read_text()
    assert all(f"src='{name}'" in page for name in ("fleet_timeline.png", "before_after.png", "unlearning.png"))
    assert "forget-1" in page and "v0001" in page
    assert summary == (tmp_path / "summary.md").read_text().rstrip("\n") == markdown_summary(rec, tmp_path)
    assert "normalised cost 9 (offline)" in summary and "| Safe-RULE (unlearned) | v0002 |" in summary
    assert projected_retrain_seconds(rec) == pytest.approx(60.0 / 600 * 100_000)
