"""Forget requests in bursts from several clients at once, over DDS, against the real unlearning server:
every request is answered, none twice, and the ledger holds exactly what
was accepted. Each client is a node in its own rclpy context (its own DDS participant), as a
fleet monitor per site would be, with FleetClient's reply queue (ROS's default of 10 loses replies
when many arrive at once, see fleet_client.REPLY_QUEUE_DEPTH)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from rclpy.client import Client
from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future

from saferule_core.data.store import DatasetStore
from saferule_interfaces.srv import Forget
from saferule_ros.fleet_client import reply_qos
from tests.ros.forget_fixtures import ServerFiles, server_files
from tests.ros.ros_harness import WAIT_S, NodeProcess, probe_node, spin_until
from tests.ros.unlearning_harness import forget_request, ledger_entries, server_process

pytestmark = pytest.mark.ros

CLIENTS = 5
PER_CLIENT = 10


@dataclass
class ForgetClient:
    client: Client
    executor: SingleThreadedExecutor


@pytest.fixture
def clients() -> Iterator[list[ForgetClient]]:
    with ExitStack() as stack:
        probes = [stack.enter_context(probe_node(f"site_monitor_{i}")) for i in range(CLIENTS)]
        yield [ForgetClient(node.create_client(Forget, "/forget", qos_profile=reply_qos()), executor)
               for node, executor in probes]


def episode_ids(files: ServerFiles) -> list[str]:
    return [ep.episode_id for ep in DatasetStore.open(files.dataset_dir).episodes]


def send_burst(clients: list[ForgetClient], requests: list[Forget.Request], server: NodeProcess,
               ) -> list[Forget.Response | None]:
    """Send every request at once (round robin over the clients), then wait for the answers; None
    for a request never answered."""
    for each in clients:
        spin_until(each.executor, each.client.service_is_ready, "the Forget service", process=server)
    futures: list[tuple[ForgetClient, Future]] = [
        (clients[i % len(clients)], clients[i % len(clients)].client.call_async(request))
        for i, request in enumerate(requests)]
    began = time.monotonic()
    while not all(future.done() for _, future in futures) and time.monotonic() - began < WAIT_S:
        for each in clients:
            each.executor.spin_once(timeout_sec=0.01)
    print(f"\n{len(requests)} Forget requests from {len(clients)} clients: "
          f"{sum(future.done() for _, future in futures)} answered in {time.monotonic() - began:.2f} s")
    return [future.result() if future.done() else None for _, future in futures]


def test_fifty_concurrent_requests_from_five_clients_are_all_answered_once(
        tmp_path: Path, clients: list[ForgetClient]) -> None:
    files = server_files(tmp_path, episodes_per_robot=20)
    episodes = episode_ids(files)
    count = CLIENTS * PER_CLIENT
    # Each request names one episode of its own, and every fifth one also an episode another request
    # names: overlapping requests are each recorded (quarantine is idempotent).
    requests = [forget_request(reason=f"burst {n}", episode_ids=[episodes[n], *([episodes[0]] if n % 5 == 4 else [])])
                for n in range(count)]
    with server_process(files, tmp_path / "server.log") as server:
        answers = send_burst(clients, requests, server)
    assert all(answer is not None for answer in answers), f"{answers.count(None)} of {count} never answered"
    assert all(answer.accepted for answer in answers), {answer.message for answer in answers if not answer.accepted}
    request_ids = [answer.request_id for answer in answers]
    assert len(set(request_ids)) == count
    entries = {entry.request_id: entry for entry in ledger_entries(files)}
    assert len(entries) == count and set(entries) == set(request_ids)
    for n, answer in enumerate(answers):
        entry = entries[answer.request_id]
        assert entry.reason == f"burst {n}" and set(entry.matched_episode_ids) == set(requests[n].selector.episode_ids)
        assert entry.state.value == "quarantined"
    assert set(DatasetStore.open(files.dataset_dir).quarantined_ids()) == set(episodes[:count])


def test_a_burst_past_the_pending_limit_is_answered_busy_never_silence(
        tmp_path: Path, clients: list[ForgetClient]) -> None:
    files = server_files(tmp_path, episodes_per_robot=20)
    episodes = episode_ids(files)
    limit, count = 2, 40
    requests = [forget_request(reason=f"burst {n}", episode_ids=[episodes[n]]) for n in range(count)]
    with server_process(files, tmp_path / "server.log", max_pending_forget=limit) as server:
        answers = send_burst(clients, requests, server)
    assert all(answer is not None for answer in answers), f"{answers.count(None)} of {count} never answered"
    accepted = [answer for answer in answers if answer.accepted]
    busy = [answer for answer in answers if not answer.accepted]
    assert accepted and busy, "a burst of 40 against a limit of 2 should see both"
    for answer in busy:
        assert answer.message.startswith(f"busy: {limit} Forget requests are already pending (the limit"), \
            answer.message
        assert answer.request_id == "" and not answer.matched_episode_ids
    print(f"pending limit {limit}: {len(accepted)} accepted, {len(busy)} answered busy")
    # Only what was accepted is in the ledger, each once.
    assert sorted(entry.request_id for entry in ledger_entries(files)) == sorted(a.request_id for a in accepted)
