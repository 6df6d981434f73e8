"""unlearning_server in its own process, over DDS: the real node running the real unlearning job
on a tiny trained model (tests/ros/forget_fixtures.py), the Forget service, the Unlearn action, the
persistent queue and (in the swap test) real policy_runner processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from saferule_core.data.ledger import LedgerState, request_forget
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.limits import (
    MAX_DATASET_NAME_CHARS,
    MAX_METHOD_CHARS,
    MAX_PATH_COMPONENT_BYTES,
    MAX_REASON_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_REQUESTER_CHARS,
    MAX_SELECTOR_ID_CHARS,
)
from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.fleet_client import FleetClient, spinning_waiter
from saferule_ros.forget_messages import metrics_from_msgs
from saferule_ros.unlearning_server import STATE_FILE
from tests.ros.forget_fixtures import BASE_TIME, ROBOTS, ServerFiles, server_files
from tests.ros.ros_harness import CONFIG_DIR, NodeProcess, node_process, probe_node, spin_until
from tests.ros.unlearning_harness import forget_request, ledger_entries, ledger_entry, server_process, unlearn_goal

pytestmark = pytest.mark.ros

RESULT_WAIT_S = 30.0
MB = 2**20


@pytest.fixture
def files(tmp_path: Path) -> ServerFiles:
    return server_files(tmp_path)


@pytest.fixture
def probe() -> Iterator[tuple[Node, SingleThreadedExecutor, FleetClient]]:
    with probe_node("unlearning_probe") as (node, executor):
        client = FleetClient(node, spinning_waiter(executor), timeout_s=20.0)
        yield node, executor, client
        client.destroy()


def episodes_of(robot: str, files: ServerFiles) -> list[str]:
    return [ep.episode_id for ep in DatasetStore.open(files.dataset_dir).episodes if ep.robot_id == robot]


def wait_until(executor: SingleThreadedExecutor, done, what: str, process: NodeProcess,  # type: ignore[no-untyped-def]
               timeout: float = RESULT_WAIT_S) -> None:
    spin_until(executor, done, what, timeout=timeout, process=process)


def queued_ids(files: ServerFiles) -> list[str]:
    state = json.loads((files.work_dir / STATE_FILE).read_text())
    return [job["request_id"] for job in state["jobs"]]


# ----- bad input over the wire -------------------------------------------------------------------

def test_bad_forget_and_unlearn_requests_are_refused_with_a_reason(files: ServerFiles, tmp_path: Path,
                                                                   probe) -> None:  # type: ignore[no-untyped-def]
    node, executor, client = probe
    outside = tmp_path / "outside"
    DatasetStore.create(outside, DatasetStore.open(files.dataset_dir).load())
    (files.data_root / "escape").symlink_to(outside)
    (files.data_root / "not_a_dataset").mkdir()
    robot_1 = episodes_of("robot_1", files)

    with server_process(files, tmp_path / "server.log") as server:
        forget_cases: dict[str, tuple[object, str]] = {
            "empty selector": (forget_request(), "sets no field"),
            "unknown episode ids": (forget_request(episode_ids=[robot_1[0], "robot_1-999999"]),
                                    "1 of 2 episode ids are not in the dataset"),
            "matches nothing": (forget_request(robot_ids=["robot_9"]), "matches none"),
            "window end before start": (forget_request(window_start=Time(sec=int(BASE_TIME) + 600),
                                                       window_end=Time(sec=int(BASE_TIME))), "before window_start"),
            "nanosec out of range": (forget_request(window_start=Time(sec=5, nanosec=2_000_000_000)), "nanosec"),
            "time before 1970": (forget_request(window_end=Time(sec=-5)), "before 1970"),
            "empty id string": (forget_request(robot_ids=["robot_1", ""]), "non-empty strings"),
            "200k episode ids": (forget_request(episode_ids=[f"robot_1-{i:06d}" for i in range(200_000)]),
                                 "lists 200000 entries"),
            "dot-dot path": (forget_request(robot_ids=["robot_1"], dataset="../outside"), "'..' is not allowed"),
            "absolute path outside": (forget_request(robot_ids=["robot_1"], dataset=str(outside)),
                                      "outside the data root"),
            "symlink out of the root": (forget_request(robot_ids=["robot_1"], dataset="escape"), "outside the data root"),
            "dataset missing": (forget_request(robot_ids=["robot_1"], dataset="nope"), "no such dataset"),
            "directory not a dataset": (forget_request(robot_ids=["robot_1"], dataset="not_a_dataset"),
                                        "manifest.json is missing"),
            "no reason": (forget_request(reason=" ", robot_ids=["robot_1"]), "needs a reason"),
            "1 MB reason": (forget_request(reason="r" * MB, robot_ids=["robot_1"]),
                            f"reason is {MB} characters; the limit is {MAX_REASON_CHARS}"),
            "1 MB requester": (forget_request(requester="q" * MB, robot_ids=["robot_1"]),
                               f"requester is {MB} characters; the limit is {MAX_REQUESTER_CHARS}"),
            "1 MB dataset name": (forget_request(robot_ids=["robot_1"], dataset="d" * MB),
                                  f"dataset name is {MB} characters; the limit is {MAX_DATASET_NAME_CHARS}"),
            "dataset name component too long": (forget_request(robot_ids=["robot_1"], dataset="d" * 300),
                                                f"is 300 bytes; the limit is {MAX_PATH_COMPONENT_BYTES}"),
            "1 MB robot id": (forget_request(robot_ids=["robot_1", "r" * MB]),
                              f"robot_ids[1] is {MB} characters; the limit is {MAX_SELECTOR_ID_CHARS}"),
            "long bag name": (forget_request(bag_names=["b" * (MAX_SELECTOR_ID_CHARS + 1)]),
                              f"bag_names[0] is {MAX_SELECTOR_ID_CHARS + 1} characters"),
        }
        for case, (request, expected) in forget_cases.items():
            answer = client.forget(request)  # type: ignore[arg-type]
            assert not answer.accepted, case
            assert expected in answer.message, (case, answer.message[:300])
            assert len(answer.message) < 1000, case   # refused, not echoed
            assert answer.request_id == "" and not answer.matched_episode_ids, case

        # The node survived all of that: a dry run answers matches and records nothing...
        answer = client.forget(forget_request(robot_ids=["robot_3"], dry_run=True))
        assert answer.accepted and answer.request_id == "" and "dry run" in answer.message
        assert sorted(answer.matched_episode_ids) == sorted(episodes_of("robot_3", files))
        assert answer.matched_transitions == 20 * len(answer.matched_episode_ids)
        assert not (files.dataset_dir / "ledger.jsonl").exists()
        # ... and a real request is recorded and quarantined before the answer.
        answer = client.forget(forget_request(robot_ids=["robot_3"]))
        assert answer.accepted and answer.request_id.startswith("forget-"), answer.message
        entry = ledger_entry(files, answer.request_id)
        assert entry.state == LedgerState.QUARANTINED and entry.requester == "pytest"
        assert set(DatasetStore.open(files.dataset_dir).quarantined_ids()) == set(episodes_of("robot_3", files))

        unlearn_cases: dict[str, tuple[Unlearn.Goal, str]] = {
            "unknown request id": (unlearn_goal("forget-0123456789abcdef"), "unknown request id"),
            "malformed request id": (unlearn_goal("../../etc/passwd"), "malformed request id"),
            "unknown method": (unlearn_goal(answer.request_id, method="forget_harder"), "unknown method 'forget_harder'"),
            "id and selector": (unlearn_goal(answer.request_id, robot_ids=["robot_1"]), "not both"),
            "neither id nor selector": (unlearn_goal(), "name the request"),
            "malformed selector": (unlearn_goal(robot_ids=["robot_1", ""]), "non-empty strings"),
            "1 MB request id": (unlearn_goal("f" * MB), f"request_id is {MB} characters; the limit is "
                                                        f"{MAX_REQUEST_ID_CHARS}"),
            "1 MB method": (unlearn_goal(answer.request_id, method="m" * MB),
                            f"method is {MB} characters; the limit is {MAX_METHOD_CHARS}"),
            "1 MB episode id": (unlearn_goal(episode_ids=["e" * MB]), f"episode_ids[0] is {MB} characters"),
            "selector without a reason": (unlearn_goal(robot_ids=["robot_1"], reason=" "), "needs a reason"),
            "1 MB reason": (unlearn_goal(robot_ids=["robot_1"], reason="r" * MB),
                            f"reason is {MB} characters; the limit is {MAX_REASON_CHARS}"),
            "1 MB requester": (unlearn_goal(robot_ids=["robot_1"], requester="q" * MB),
                               f"requester is {MB} characters; the limit is {MAX_REQUESTER_CHARS}"),
            "selector of the whole dataset": (unlearn_goal(robot_ids=list(ROBOTS)), "the forget set is the whole dataset"),
        }
        ledger_before = ledger_entries(files)
        quarantined_before = set(DatasetStore.open(files.dataset_dir).quarantined_ids())
        for case, (goal, expected) in unlearn_cases.items():
            status, result = client.unlearn_result(client.send_unlearn(goal), RESULT_WAIT_S)
            assert status == "aborted" and not result.success, (case, status)
            assert expected in result.message, (case, result.message[:300])
            assert len(result.message) < 1000, case
        assert ledger_entry(files, answer.request_id).state == LedgerState.QUARANTINED
        # no refused goal recorded or quarantined anything
        assert ledger_entries(files) == ledger_before
        assert set(DatasetStore.open(files.dataset_dir).quarantined_ids()) == quarantined_before
        print(f"\nrefused over the wire: {len(forget_cases)} Forget cases, {len(unlearn_cases)} Unlearn cases")
        assert server.proc.poll() is None


# ----- the whole way: Forget -> Unlearn -> runners swapped ---------------------------------------

def test_forget_unlearn_and_swap_real_runners(files: ServerFiles, tmp_path: Path, probe) -> None:  # type: ignore[no-untyped-def]
    node, executor, client = probe
    runners = ["ut_robot_a", "ut_robot_b"]
    statuses: dict[str, PolicyStatus] = {}
    for robot in runners:
        node.create_subscription(PolicyStatus, f"/{robot}/policy_status",
                                 lambda msg, robot=robot: statuses.__setitem__(robot, msg), 10)
    runner_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={files.registry.root}",
                   "-p", f"verify_key:={files.keys}", "-p", "follow_latest:=false", "-p", "status_period_s:=0.2"]
    with node_process("policy_runner", [*runner_args, "-r", f"__ns:=/{runners[0]}"], tmp_path / "a.log") as run_a, \
            node_process("policy_runner", [*runner_args, "-r", f"__ns:=/{runners[1]}"], tmp_path / "b.log") as run_b, \
            server_process(files, tmp_path / "server.log", robots=runners) as server:
        def active(robot: str) -> str:
            return statuses[robot].active_version if robot in statuses else ""

        wait_until(executor, lambda: active(runners[0]) == active(runners[1]) == "v0001", "both runners on v0001",
                   run_a if run_a.proc.poll() is not None else run_b)
        answer = client.forget(forget_request(robot_ids=["robot_3"]))
        assert answer.accepted, answer.message
        feedback: list[Unlearn.Feedback] = []
        handle = client.send_unlearn(unlearn_goal(answer.request_id, method="finetune", swap=True), feedback.append)
        status, result = client.unlearn_result(handle, RESULT_WAIT_S)
        assert status == "succeeded" and result.success, result.message
        assert (result.new_policy_version, result.parent_policy_version) == ("v0002", "v0001")
        before, after = metrics_from_msgs(result.metrics_before), metrics_from_msgs(result.metrics_after)
        assert before and after["updates"] == 20 and after["wall_time_s"] > 0, (before, after)
        assert f"{runners[0]} now v0002" in result.message and f"{runners[1]} now v0002" in result.message
        stages = [f.stage for f in feedback]
        assert stages[0] == "finetune" and "publish" in stages and stages[-2:] == ["swap", "done"], stages
        progress = [f.progress for f in feedback]
        assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
        entry = ledger_entry(files, answer.request_id)
        assert entry.state == LedgerState.UNLEARNED and entry.artifact_version == "v0002"
        wait_until(executor, lambda: active(runners[0]) == active(runners[1]) == "v0002", "both runners on v0002",
                   server)
        assert statuses[runners[0]].swaps == 1

        # A goal with a selector records a new request itself; without swap_on_success the runners
        # stay; the job starts from the model the previous job produced.
        handle = client.send_unlearn(unlearn_goal(method="safe_rule", swap=False, robot_ids=["robot_2"]))
        status, result = client.unlearn_result(handle, RESULT_WAIT_S)
        assert status == "succeeded" and result.new_policy_version == "v0003", result.message
        assert "swaps" not in result.message
        second = [e for e in ledger_entries(files) if e.request_id != answer.request_id]
        assert len(second) == 1 and second[0].state == LedgerState.UNLEARNED
        assert (second[0].requester, second[0].reason) == ("pytest", "pytest goal")   # the goal's audit trail
        assert second[0].matched_episode_ids == tuple(episodes_of("robot_2", files))
        # v0003 was unlearned from v0002's checkpoint (the first job's model), as the registry records
        assert files.registry.checkpoint_of("v0002") == (files.work_dir / answer.request_id).resolve()
        assert files.registry.manifest("v0003").parent_version == "v0002"
        statuses.clear()
        wait_until(executor, lambda: all(robot in statuses for robot in runners), "fresh runner statuses", server)
        assert active(runners[0]) == active(runners[1]) == "v0002"

        status, result = client.unlearn_result(client.send_unlearn(unlearn_goal(answer.request_id)), RESULT_WAIT_S)
        assert status == "aborted" and "already unlearned (policy v0002)" in result.message, result.message
        assert queued_ids(files) == []


# ----- queue, cancel, failure --------------------------------------------------------------------

def test_cancel_queued_and_running_jobs_and_a_failing_job(files: ServerFiles, tmp_path: Path, probe) -> None:  # type: ignore[no-untyped-def]
    node, executor, client = probe
    with server_process(files, tmp_path / "server.log", long_jobs=True) as server:
        first = client.forget(forget_request(robot_ids=["robot_1"])).request_id
        second = client.forget(forget_request(robot_ids=["robot_2"])).request_id
        assert first and second
        running = client.send_unlearn(unlearn_goal(first, method="retrain"))
        wait_until(executor, lambda: ledger_entry(files, first).state == LedgerState.UNLEARNING, "the first job running",
                   server)
        waiting = client.send_unlearn(unlearn_goal(second))
        wait_until(executor, lambda: queued_ids(files) == [first, second], "the second job queued", server)

        status, result = client.unlearn_result(client.send_unlearn(unlearn_goal(first)), RESULT_WAIT_S)
        assert status == "aborted" and f"request {first} is already being unlearned" in result.message

        assert client.cancel(waiting)
        status, result = client.unlearn_result(waiting, RESULT_WAIT_S)
        assert status == "canceled" and "cancelled before it started" in result.message, result.message
        assert ledger_entry(files, second).state == LedgerState.QUARANTINED

        assert client.cancel(running)
        status, result = client.unlearn_result(running, RESULT_WAIT_S)
        assert status == "canceled" and not result.success and "cancelled" in result.message, result.message
        assert "previous policy stays active" in result.message
        assert ledger_entry(files, first).state == LedgerState.FAILED
        assert files.registry.latest() == "v0001"

        # a job that fails on its own: SISA needs a SISA ensemble, and the deployed model is one learner
        status, result = client.unlearn_result(client.send_unlearn(unlearn_goal(second, method="sisa")), RESULT_WAIT_S)
        assert status == "aborted" and "SISA" in result.message, result.message
        assert ledger_entry(files, second).state == LedgerState.FAILED
        assert files.registry.latest() == "v0001" and queued_ids(files) == []

        # A failed request (its episodes still quarantined) runs again when asked (with the real job too:
        # test_ros_unlearning_end_to_end.py).
        status, result = client.unlearn_result(client.send_unlearn(unlearn_goal(first)), RESULT_WAIT_S)
        assert status == "succeeded" and result.new_policy_version == "v0002", (status, result.message)
        assert ledger_entry(files, first).state == LedgerState.UNLEARNED
        assert server.proc.poll() is None


# ----- persistence -------------------------------------------------------------------------------

def test_queued_requests_survive_a_crash_or_a_stop_and_a_restart(files: ServerFiles, tmp_path: Path) -> None:
    log = tmp_path / "server.log"

    def stop_during_job(request_ids: list[str], crash: bool) -> None:
        """The first request runs (a retraining that lasts), the others wait; then SIGKILL (crash) or
        SIGINT mid-job.

        A fresh probe each time: a SIGKILLed server's endpoints stay in an old participant's graph
        until their lease expires, and a goal sent to them would be lost.
        """
        with server_process(files, log, long_jobs=True) as server, probe_node("crash_probe") as (node, executor):
            client = FleetClient(node, spinning_waiter(executor), timeout_s=20.0)
            for index, request_id in enumerate(request_ids):
                client.send_unlearn(unlearn_goal(request_id, method="finetune" if index else "retrain"))
            wait_until(executor, lambda: ledger_entry(files, request_ids[0]).state == LedgerState.UNLEARNING
                       and queued_ids(files) == request_ids, "the first job running, the others queued", server)
            if crash:
                server.proc.kill()
                server.proc.wait()
            else:
                assert server.stop() == 0
            client.destroy()

    def restart_until(request_id: str, state: LedgerState, **params: object) -> None:
        with server_process(files, log, **params) as server, \
                probe_node("restart_probe") as (_node, executor):
            wait_until(executor, lambda: ledger_entry(files, request_id).state == state,
                       f"{request_id} {state.value} after the restart", server)

    store = DatasetStore.open(files.dataset_dir)
    # half of each robot's episodes: the three requests together leave data to learn from
    first, second, third = (request_forget(store, ForgetSelector(episode_ids=tuple(episodes_of(robot, files)[:2])),
                                           "pytest", "compromised").request_id for robot in ROBOTS)
    stop_during_job([first, second], crash=True)
    # The crash left the job half done: nothing published, the first request mid-way, the second waiting.
    assert files.registry.latest() == "v0001"
    assert ledger_entry(files, first).state == LedgerState.UNLEARNING
    assert ledger_entry(files, second).state == LedgerState.QUARANTINED

    restart_until(second, LedgerState.UNLEARNED, on_interrupted="fail")
    failed = ledger_entry(files, first)
    assert failed.state == LedgerState.FAILED and "interrupted" in (failed.error or "")
    assert ledger_entry(files, second).artifact_version == "v0002" and queued_ids(files) == []

    # A clean stop (SIGINT) mid-job: the job is cut short without failing the request.
    stop_during_job([third], crash=False)
    assert ledger_entry(files, third).state == LedgerState.UNLEARNING and files.registry.latest() == "v0002"
    assert queued_ids(files) == [third]
    assert "resumes at the next start" in log.read_text()
    restart_until(third, LedgerState.UNLEARNED, on_interrupted="resume")
    assert ledger_entry(files, third).artifact_version == "v0003" and queued_ids(files) == []
    state = json.loads((files.work_dir / STATE_FILE).read_text())
    assert state["current_model_dir"] == str(files.work_dir / third)   # the lineage goes on from there
    assert "resuming" in log.read_text()


# ----- configuration refused at start ----------------------------------------------------------

@pytest.mark.parametrize(("params", "expected"), [
    ({"default_dataset": "../elsewhere"}, "default_dataset: dataset '../elsewhere': '..' is not allowed"),
    ({"on_interrupted": "maybe"}, "on_interrupted 'maybe': expected one of resume, fail"),
    ({"default_method": "magic"}, "default_method 'magic': expected one of safe_rule"),
    ({"max_pending_forget": 1000}, "max_pending_forget 1000: at most 256"),
])
def test_bad_configuration_stops_the_server_with_one_line(files: ServerFiles, tmp_path: Path,
                                                          params: dict[str, str], expected: str) -> None:
    log = tmp_path / "server.log"
    with server_process(files, log, **params) as server:
        server.proc.wait(timeout=30)
    assert server.proc.returncode == 2
    assert f"unlearning_server: error: {expected}" in log.read_text()
