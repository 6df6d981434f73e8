"""fleet_cli against an unlearning server (the real job on a tiny model) and a real policy_runner,
over DDS: output and exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saferule_core.data.ledger import LedgerState
from saferule_ros import fleet_cli
from tests.ros.forget_fixtures import server_files
from tests.ros.ros_harness import CONFIG_DIR, node_process
from tests.ros.unlearning_harness import ledger_entry, server_process

pytestmark = pytest.mark.ros


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = fleet_cli.main(["--timeout", "15", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_forget_unlearn_swap_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = server_files(tmp_path)
    runner_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={files.registry.root}",
                   "-p", f"verify_key:={files.keys}", "-p", "follow_latest:=false", "-p", "status_period_s:=0.2",
                   "-r", "__ns:=/cli_robot"]
    with server_process(files, tmp_path / "server.log"), \
            node_process("policy_runner", runner_args, tmp_path / "runner.log"):
        code, out, _ = run_cli(capsys, "forget", "--robot", "robot_3", "--dry-run")
        assert code == 0 and out.startswith("dry run: would forget 4 episodes (80 transitions): robot_3-000000")

        code, out, _ = run_cli(capsys, "forget", "--robot", "robot_3", "--since", "2023-11-14T22:13:20",
                               "--reason", "compromised controller")
        assert code == 0, out
        match = re.search(r"accepted: request (forget-[0-9a-f]+): 4 episodes \(80 transitions\) quarantined", out)
        assert match, out
        request_id = match.group(1)
        assert f"next: python -m saferule_ros.fleet_cli unlearn {request_id} --wait" in out
        entry = ledger_entry(files, request_id)
        assert entry.reason == "compromised controller" and entry.selector["window_start"] == 1_700_000_000.0

        code, out, _ = run_cli(capsys, "unlearn", request_id, "--method", "finetune", "--no-swap", "--wait")
        assert code == 0, out
        lines = out.splitlines()
        assert any(re.match(r"\[ *\d+%\] finetune", line) for line in lines), out
        assert f"succeeded: unlearned {request_id} with finetune: policy v0002 (parent v0001)" in out
        assert re.search(r"cost_value\s+-?\d[\d.e-]*\s+-?\d[\d.e-]*", out), out   # the metrics table
        assert ledger_entry(files, request_id).state == LedgerState.UNLEARNED

        code, out, _ = run_cli(capsys, "swap", "--robot", "cli_robot", "--version", "v0002")
        assert code == 0 and "switched from v0001 to v0002" in out and "active v0002" in out, out
        # the runner talks UDP loopback only (control path): discovery by a fresh CLI node can take ~1 s
        code, out, _ = run_cli(capsys, "status", "--robot", "cli_robot", "--seconds", "8")
        assert code == 0 and "unlearning server (/forget): up" in out
        assert re.search(r"^cli_robot\s+v0002\s", out, re.MULTILINE), out

        # Refusals: exit 1 with the server's reason; bad arguments: exit 2 before anything is sent.
        code, out, _ = run_cli(capsys, "forget", "--robot", "robot_9", "--reason", "typo")
        assert code == 1 and out.startswith("refused: the selector (robot_ids=['robot_9']) matches none"), out
        code, out, _ = run_cli(capsys, "unlearn", "forget-0000000000000000", "--wait")
        assert code == 1 and "aborted: unknown request id 'forget-0000000000000000'" in out, out
        code, out, _ = run_cli(capsys, "unlearn", request_id, "--wait")
        assert code == 1 and "already unlearned (policy v0002)" in out, out
        code, out, _ = run_cli(capsys, "swap", "--robot", "cli_robot", "--version", "v0042")
        assert code == 1 and out.startswith("refused: refused v0042"), out
        code, _, err = run_cli(capsys, "forget", "--reason", "nothing selected")
        assert code == 2 and "the selector sets no field" in err
        code, _, err = run_cli(capsys, "forget", "--robot", "robot_3")
        assert code == 2 and "--reason is required" in err
        code, _, err = run_cli(capsys, "forget", "--robot", "robot_3", "--since", "yesterday", "--reason", "x")
        assert code == 2 and "time 'yesterday'" in err
        code, _, err = run_cli(capsys, "swap", "--robot", "cli_robot")
        assert code == 2 and "either --version or --artifact" in err
    code, _, err = run_cli(capsys, "--timeout", "1", "swap", "--robot", "nobody_here", "--version", "v0001")
    assert code == 2 and "no /nobody_here/swap_policy service" in err
