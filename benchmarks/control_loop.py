"""The robot-side loop under load: control at 100 Hz with hot swaps, recording throughput, bag import.

Three measurements, every node a real process talking Fast DDS on loopback:

  control   sim_robot (BallRun, PyBullet) and policy_runner at `--rate` Hz for `--duration` s, the
            recorder logging the robot's topics meanwhile. The policies are BCQ-Lag deployable
            policies at OSRL's sizes (random weights, one per version), exported to ONNX before the
            run; during the run `--swaps` new versions are published (signed) to the registry and the
            runner is asked to swap to each (SwapPolicy). Reported: the runner's deadline misses
            (a control callback longer than one period) and inference latency over the whole run
            (its PolicyStatus) next to the same model in a plain process (back to back, and one
            run per control period), the observation -> action time seen by a third node, and per swap
            the time from the SwapPolicy request to the first action that only the new policy
            would have produced (each action is checked against both policies' outputs).
  recorder  a publisher sends Float32MultiArray observations (7 floats + step key) at a robot's
            topic, paced at 5,000 and 10,000 msg/s and then as fast as it can, while the recorder
            records; then published vs in the bag (no loss expected) and the recorded rate.
  churn     right after the control run, `--churn` s of DDS graph churn around the same loop
            (saferule_ros.graph_churn: a participant joining every second and leaving 3 s later, half
            of them killed with SIGKILL, and a service server killed and restarted every third one).
            For both phases a watcher process (saferule_ros.action_gaps) records every action's send
            and arrival time: the longest gap between consecutive actions and the deadline misses
            counted from outside (gaps over two control periods), next to the runner's own count (a
            tick that never runs is never timed by the runner).
  import    the bags of the control run -> dataset (saferule_core.data.from_bags) against plain
            `rosbags` reading (iterate + deserialize every message) of the same bags.

The machine is shared (2 cores, other work running): the numbers are noisy; the load average is
recorded with them.

    ROS_DOMAIN_ID=45 .venv/bin/python benchmarks/control_loop.py            # ~5 minutes
    ROS_DOMAIN_ID=45 .venv/bin/python benchmarks/control_loop.py --duration 10 --swaps 3   # smoke
    ROS_DOMAIN_ID=45 .venv/bin/python benchmarks/control_loop.py --quick   # control + churn only, ~1 minute

Writes benchmarks/results/control_loop.json and control_loop.md (--quick: control_loop_quick.*).
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

sys.path.insert(0, str(ROOT / "benchmarks"))
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from stamp import run_stamp  # noqa: E402
from std_msgs.msg import Float32MultiArray  # noqa: E402

from saferule_core.artifacts.checks import open_session  # noqa: E402
from saferule_core.artifacts.manifest import ONNX_FILE, ManifestFields  # noqa: E402
from saferule_core.artifacts.registry import PolicyRegistry  # noqa: E402
from saferule_core.artifacts.signing import generate_keypair, load_signing_key  # noqa: E402
from saferule_core.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402
from saferule_interfaces.msg import PolicyStatus  # noqa: E402
from saferule_ros.action_gaps import MISS_PERIODS, ActionStamps, watching_actions  # noqa: E402
from saferule_ros.bringup import NodeSpec, share_dir  # noqa: E402
from saferule_ros.control_path import RT_PRIORITY  # noqa: E402
from saferule_ros.conversions import array_of, float32_array, label_of  # noqa: E402
from saferule_ros.fleet_client import FleetClient, event_waiter  # noqa: E402
from saferule_ros.graph_churn import ChurnSettings, graph_churn  # noqa: E402
from saferule_ros.processes import FleetProcesses  # noqa: E402
from saferule_ros.topics import STREAM_QOS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASK = "BallRun"
ROBOT = "bench_robot"
PACKAGE = "saferule_ros"
ROBOT_LIMIT = 1.0
P99_GOAL_US = 200.0
RECORDER_GOAL = 5000.0
BURST_SECONDS = 4.0


@dataclass
class Settings:
    duration_s: float = 60.0
    rate_hz: float = 100.0
    swaps: int = 10
    churn_s: float = 20.0                                      # graph churn after the control run
    control_only: bool = False                                 # --quick: no recorder bursts, no import
    rt_priority: int = 0                                       # >0: also run control + churn with the robot's
                                                               # nodes under SCHED_FIFO at this priority
    burst_rates: tuple[float, ...] = (5000.0, 10000.0, 0.0)   # 0: as fast as the publisher can
    burst_max_messages: int = 60_000
    import_repeats: int = 3


# ----- policies ------------------------------------------------------------------------------------

def export_policies(count: int, work: Path) -> list[bytes]:
    """ONNX bytes of `count` BCQ-Lag deployable policies (OSRL sizes, random weights, seeds 0..)."""
    import torch

    from saferule_core.algos.bcq_lag import BCQLag, BCQLagConfig
    from saferule_core.artifacts.export import default_check_observations, export_onnx
    from saferule_core.data.dataset import EpisodeInfo, OfflineDataset

    spec = get_task(TASK)
    rng = np.random.default_rng(0)
    rows, episodes = 200, 2
    dataset = OfflineDataset(
        observations=rng.normal(size=(rows, spec.obs_dim)), next_observations=rng.normal(size=(rows, spec.obs_dim)),
        actions=rng.uniform(-1, 1, size=(rows, spec.act_dim)), rewards=rng.normal(size=rows),
        costs=np.zeros(rows), terminals=np.zeros(rows), timeouts=np.tile(np.r_[np.zeros(99), 1.0], episodes),
        episodes=[EpisodeInfo(f"bench-{i:06d}", "bench", "none", float(i), float(i) + 1) for i in range(episodes)],
        episode_lengths=np.full(episodes, rows // episodes), task=TASK)
    torch.set_num_threads(1)
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        learner = BCQLag.from_dataset(dataset, BCQLagConfig())
        stats = learner.info.stats
        path = work / f"policy_{seed}.onnx"
        export_onnx(learner.deployable_policy(), spec.obs_dim, spec.act_dim, path, stats.action_low, stats.action_high,
                    check_batch=default_check_observations(spec.obs_dim, stats.obs_mean, stats.obs_std), latency_runs=10)
        out.append(path.read_bytes())
    return out


def ort_baseline_us(onnx: bytes, runs: int, period_s: float = 0.0) -> dict[str, float]:
    """The same model run in this process, one observation at a time (the runner's session
    settings), back to back or one run per `period_s` as in a control loop: what inference costs
    without the node around it."""
    session = open_session(onnx)
    name = session.get_inputs()[0].name
    observation = np.zeros((1, get_task(TASK).obs_dim), dtype=np.float32)
    for _ in range(100):
        session.run(None, {name: observation})
    times = np.empty(runs)
    for i in range(runs):
        if period_s:
            time.sleep(period_s)
        began = time.perf_counter_ns()
        session.run(None, {name: observation})
        times[i] = (time.perf_counter_ns() - began) / 1e3
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(times.max())}


def wake_cost_us(period_s: float, runs: int = 300) -> dict[str, float]:
    """A 1x16 @ 16x16 numpy matmul back to back and after sleeping `period_s`: what waking up
    costs ANY code on this machine (caches, TLBs and predictors cold after the core idled), the
    part of the paced inference latency that no model or runner change removes."""
    row, weights = np.ones((1, 16), dtype=np.float32), np.ones((16, 16), dtype=np.float32)
    out = {}
    for label, pause in (("back_to_back", 0.0), ("paced", period_s)):
        times = np.empty(runs)
        for i in range(runs):
            if pause:
                time.sleep(pause)
            began = time.perf_counter_ns()
            np.matmul(row, weights)
            times[i] = (time.perf_counter_ns() - began) / 1e3
        out[f"{label}_p50"], out[f"{label}_p99"] = (float(v) for v in np.percentile(times, [50, 99]))
    return out


def publish(registry: PolicyRegistry, onnx: bytes, key: Any) -> str:
    spec = get_task(TASK)
    fields = ManifestFields(task=TASK, obs_dim=spec.obs_dim, act_dim=spec.act_dim, action_low=[-1.0] * spec.act_dim,
                            action_high=[1.0] * spec.act_dim, dataset_hash="0" * 64, method="bench",
                            parent_version=registry.latest())
    return registry.publish(onnx, fields, key).version


@dataclass
class Judge:
    """Expected (clipped) actions of one policy, for telling which policy produced an action."""

    version: str
    session: Any
    input_name: str
    output_name: str

    def action(self, observation: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: observation[None].astype(np.float32)})
        return np.clip(out[0], -ROBOT_LIMIT, ROBOT_LIMIT)


def judge_of(registry: PolicyRegistry, version: str) -> Judge:
    manifest = registry.manifest(version)
    onnx = (registry.path(version) / ONNX_FILE).read_bytes()
    return Judge(version, open_session(onnx), manifest.observation_input, manifest.action_output)


# ----- the observer node -------------------------------------------------------------------------

@dataclass
class SwapRecord:
    version: str
    requested_at: float
    answered_s: float = float("nan")          # SwapPolicy round trip
    first_new_action_s: float = float("nan")  # request -> first action only the new policy gives
    ok: bool = False
    message: str = ""


@dataclass
class Observer:
    """Watches the robot's observations, actions and status from a third node."""

    node: Node
    observations: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    obs_times: list[float] = field(default_factory=list)
    obs_to_action_s: list[float] = field(default_factory=list)
    actions: int = 0
    status: PolicyStatus | None = None
    pending: tuple[SwapRecord, Judge, Judge] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.node.create_subscription(Float32MultiArray, f"/{ROBOT}/observation", self._on_observation, STREAM_QOS)
        self.node.create_subscription(Float32MultiArray, f"/{ROBOT}/action", self._on_action, STREAM_QOS)
        self.node.create_subscription(PolicyStatus, f"/{ROBOT}/policy_status",
                                      lambda msg: setattr(self, "status", msg), 10)

    def _on_observation(self, msg: Float32MultiArray) -> None:
        now = time.monotonic()
        self.obs_times.append(now)
        self.observations[label_of(msg)] = (array_of(msg).copy(), now)
        if len(self.observations) > 2000:
            for key in list(self.observations)[:1000]:
                del self.observations[key]

    def _on_action(self, msg: Float32MultiArray) -> None:
        now = time.monotonic()
        self.actions += 1
        seen = self.observations.get(label_of(msg))
        if seen is None:
            return
        observation, seen_at = seen
        self.obs_to_action_s.append(now - seen_at)
        with self.lock:
            pending = self.pending
        if pending is None:
            return
        record, new, old = pending
        action = array_of(msg)
        by_new, by_old = new.action(observation), old.action(observation)
        if np.allclose(action, by_new, atol=1e-4) and not np.allclose(action, by_old, atol=1e-4):
            record.first_new_action_s = now - record.requested_at
            with self.lock:
                self.pending = None


@contextmanager
def observer_node(name: str) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    """A node spun by a background thread (so the main thread can wait on service answers)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, name="observer-spin", daemon=True)
    thread.start()
    try:
        yield node, executor
    finally:
        stop.set()
        thread.join()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def wait_for(condition: Any, what: str, processes: FleetProcesses, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:g} s")
        time.sleep(0.05)


def percentiles_us(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(np.asarray(values) * 1e6, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(np.max(values) * 1e6)}


# ----- 1. control loop with hot swaps ------------------------------------------------------------

def run_control(settings: Settings, work: Path, rt_priority: int = 0) -> dict[str, Any]:
    """The control run (and churn) on a fresh robot; `rt_priority` > 0: its sim_robot and
    policy_runner under SCHED_FIFO (saferule_ros.control_path)."""
    work.mkdir(parents=True, exist_ok=True)
    registry = PolicyRegistry(work / "registry")
    generate_keypair(work / "keys")
    key = load_signing_key(work / "keys")
    print(f"exporting {settings.swaps + 1} BCQ-Lag policies to ONNX ...", flush=True)
    policies = export_policies(settings.swaps + 1, work)
    baseline = {"back_to_back": ort_baseline_us(policies[0], 3000),
                "paced": ort_baseline_us(policies[0], 500, period_s=1.0 / settings.rate_hz),
                "paced_1ms": ort_baseline_us(policies[0], 1000, period_s=0.001),
                "wake_numpy": wake_cost_us(1.0 / settings.rate_hz)}
    publish(registry, policies[0], key)
    config = share_dir() / "config"
    period_ms = 1000.0 / settings.rate_hz
    specs = [
        NodeSpec(PACKAGE, "sim_robot", "sim_robot", f"/{ROBOT}", (
            str(config / "sim_robot.yaml"), {"task": TASK, "rate_hz": settings.rate_hz})),
        NodeSpec(PACKAGE, "policy_runner", "policy_runner", f"/{ROBOT}", (
            str(config / "policy_runner.yaml"),
            {"registry_dir": str(registry.root), "verify_key": str(work / "keys"), "follow_latest": False,
             "deadline_ms": period_ms, "latency_window": int(settings.duration_s * settings.rate_hz * 1.5) + 1000})),
        NodeSpec(PACKAGE, "recorder", "recorder", "/", (
            str(config / "recorder.yaml"), {"robots": [ROBOT], "out_dir": str(work / "bags")})),
    ]
    swaps: list[SwapRecord] = []
    phases: dict[str, tuple[int, int, PolicyStatus, PolicyStatus]] = {}   # name -> wall ns span, status at ends
    env = {**os.environ, RT_PRIORITY: str(rt_priority)} if rt_priority else None
    with FleetProcesses(specs, echo=None, log_dir=work / "logs", env=env) as processes, \
            observer_node("bench_observer") as (node, _executor), \
            watching_actions(f"/{ROBOT}/action", work / "action_stamps.json") as watch:
        observer = Observer(node)
        client = FleetClient(node, event_waiter, timeout_s=10.0)
        wait_for(lambda: observer.status is not None and observer.status.active_version == "v0001"
                 and observer.actions > settings.rate_hz, "the loop running v0001", processes)
        watch.wait_ready()
        start_status = observer.status
        assert start_status is not None
        start_ticks, start_misses = start_status.ticks, start_status.deadline_misses
        observer.obs_times.clear()
        observer.obs_to_action_s.clear()
        began, began_ns = time.monotonic(), time.time_ns()
        interval = settings.duration_s / (settings.swaps + 1)
        for index in range(1, settings.swaps + 1):
            while time.monotonic() < began + index * interval:
                processes.check_alive()
                time.sleep(0.05)
            old = judge_of(registry, registry.latest() or "v0001")
            version = publish(registry, policies[index], key)
            record = SwapRecord(version, time.monotonic())
            with observer.lock:
                observer.pending = (record, judge_of(registry, version), old)
            answer = client.swap(ROBOT, version=version)
            record.answered_s = time.monotonic() - record.requested_at
            record.ok, record.message = answer.ok, answer.message
            swaps.append(record)
            print(f"swap {index}: {old.version} -> {version}: answered {record.answered_s * 1e3:.1f} ms", flush=True)
        while time.monotonic() < began + settings.duration_s:
            processes.check_alive()
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        time.sleep(1.5)   # one more PolicyStatus
        status = observer.status
        assert status is not None
        obs_intervals = np.diff(np.asarray(observer.obs_times))
        obs_to_action = percentiles_us(observer.obs_to_action_s)
        phases["control"] = (began_ns, began_ns + int(elapsed * 1e9), start_status, status)
        if settings.churn_s > 0:
            phases["churn"] = run_churn_phase(settings, processes, observer)
        processes.stop()
        logs = {label: (work / "logs" / f"{label.replace('/', '.')}.log").read_text(errors="replace")
                for label in processes.nodes}
    safe_stop = re.search(r"(\d+) safe-stop steps", logs.get(f"{ROBOT}/sim_robot", ""))
    ticks = int(status.ticks - start_ticks)
    return {
        "duration_s": elapsed, "rate_hz": settings.rate_hz, "deadline_ms": period_ms,
        "ticks": ticks, "ticks_per_s": ticks / elapsed,
        "deadline_misses": int(status.deadline_misses - start_misses),
        "inference_latency_us": {"p50": status.latency_p50_us, "p99": status.latency_p99_us,
                                 "max": status.latency_max_us, "window": "every tick since start (runner's window)"},
        "inference_in_process_us": baseline,
        "observation_interval_ms": {"p50": float(np.percentile(obs_intervals, 50) * 1e3),
                                    "p99": float(np.percentile(obs_intervals, 99) * 1e3),
                                    "max": float(obs_intervals.max() * 1e3)} if obs_intervals.size else {},
        "observation_to_action_us": obs_to_action,
        "runner_swaps": int(status.swaps), "rollbacks": int(status.rollbacks), "active_version": status.active_version,
        "sim_safe_stop_steps": int(safe_stop.group(1)) if safe_stop else None,
        "swaps": [asdict(s) for s in swaps],
        "swap_answer_ms": percentiles_ms([s.answered_s for s in swaps]),
        "swap_to_first_new_action_ms": percentiles_ms([s.first_new_action_s for s in swaps]),
        "bags": [str(p) for p in sorted((work / "bags").glob("*")) if (p / "metadata.yaml").exists()],
        "outside": {name: outside_view(watch.stamps, span, settings.rate_hz) for name, span in phases.items()},
    }


def run_churn_phase(settings: Settings, processes: FleetProcesses,
                    observer: Observer) -> tuple[int, int, PolicyStatus, PolicyStatus]:
    """`churn_s` s of graph churn around the running loop; (wall ns span, runner status before, after)."""
    before = observer.status
    assert before is not None
    print(f"graph churn for {settings.churn_s:g} s ...", flush=True)
    began = time.time_ns()
    with graph_churn(ChurnSettings(robot=f"/{ROBOT}")) as churn:
        deadline = time.monotonic() + settings.churn_s
        while time.monotonic() < deadline:
            processes.check_alive()
            time.sleep(0.05)
    ended = time.time_ns()
    time.sleep(1.5)   # one more PolicyStatus
    after = observer.status
    assert after is not None
    print(f"churn: {churn.joiners_started} participants joined, "
          f"{sum(1 for _, what in churn.events if what == 'SIGKILL server')} server kills", flush=True)
    return began, ended, before, after


def outside_view(stamps: ActionStamps, span: tuple[int, int, PolicyStatus, PolicyStatus],
                 rate_hz: float) -> dict[str, Any]:
    """The watcher's gaps over one phase, next to the runner's own tick and miss counts over it."""
    began, ended, before, after = span
    return {"seconds": (ended - began) / 1e9, **stamps.window(began, ended).summary(1.0 / rate_hz),
            "runner_ticks": int(after.ticks - before.ticks),
            "runner_deadline_misses": int(after.deadline_misses - before.deadline_misses)}


def percentiles_ms(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"p50": float("nan"), "max": float("nan"), "count": 0}
    return {"p50": float(np.median(finite) * 1e3), "max": float(np.max(finite) * 1e3), "count": len(finite)}


# ----- 2. recorder throughput --------------------------------------------------------------------

def run_recorder(settings: Settings, work: Path, qos_history: str | None = None) -> dict[str, Any]:
    """Bursts at the recorder; `qos_history` None keeps the recorder.yaml settings, "keep_last" uses
    its qos_depth (DDS may then overwrite what the recorder has not taken: the recorder's
    missing_steps should say so)."""
    from rosbags.rosbag2 import Reader

    robots = [f"burst_{int(rate) if rate else 'max'}" for rate in settings.burst_rates]
    label = qos_history or "yaml"
    out_dir = work / f"burst_bags_{label}"
    overrides: dict[str, Any] = {"robots": robots, "topics": ["observation"], "out_dir": str(out_dir),
                                 "stats_period_s": 1.0}
    if qos_history is not None:
        overrides["qos_history"] = qos_history
    spec = NodeSpec(PACKAGE, "recorder", "recorder", "/", (str(share_dir() / "config" / "recorder.yaml"), overrides))
    # The publisher keeps every sample of a burst (KEEP_LAST as deep as the burst): it never
    # overwrites an unacknowledged one, so a loss would be the recorder's. (KEEP_ALL would make
    # publish() wait for acknowledgements, which Fast DDS paces by its heartbeat period.)
    largest = max(int(rate * BURST_SECONDS) if rate else settings.burst_max_messages for rate in settings.burst_rates)
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=largest, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
    published: dict[str, dict[str, float]] = {}
    with FleetProcesses([spec], echo=None, log_dir=work / f"burst_logs_{label}") as processes, \
            observer_node("bench_burst") as (node, _executor):
        publishers = {robot: node.create_publisher(Float32MultiArray, f"/{robot}/observation", qos) for robot in robots}
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers.values()), "the recorder's subscriptions",
                 processes)
        observation = np.linspace(-1, 1, get_task(TASK).obs_dim).astype(np.float32)
        for robot, rate in zip(robots, settings.burst_rates):
            count = int(rate * BURST_SECONDS) if rate else settings.burst_max_messages
            pub = publishers[robot]
            began = time.perf_counter()
            for i in range(count):
                pub.publish(float32_array(observation, f"{robot}-000000@{i}"))
                if rate and i % 50 == 49:
                    ahead = began + (i + 1) / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
            seconds = time.perf_counter() - began
            published[robot] = {"target_rate": rate, "messages": count, "seconds": seconds,
                                "publish_rate": count / seconds}
            print(f"published {count} messages to /{robot}/observation in {seconds:.2f} s "
                  f"({count / seconds:,.0f}/s)", flush=True)
        # Let the recorder drain what DDS still holds for it: until it has everything, or makes no
        # progress for 5 s (its log reports its counts every second).
        total, seen, still_since = sum(p["messages"] for p in published.values()), -1, time.monotonic()
        while time.monotonic() - still_since < 5.0:
            time.sleep(0.5)
            written = recorder_written(processes)
            if written >= total:
                break
            if written != seen:
                seen, still_since = written, time.monotonic()
        processes.stop()
        log = (work / f"burst_logs_{label}" / "recorder.log").read_text(errors="replace")
    in_bag: dict[str, list[int]] = {f"/{robot}/observation": [] for robot in robots}
    for bag in sorted(out_dir.glob("*")):
        with Reader(bag) as reader:
            for connection, stamp, _raw in reader.messages():
                in_bag[connection.topic].append(stamp)
    results = []
    for robot in robots:
        stamps = np.asarray(sorted(in_bag[f"/{robot}/observation"]), dtype=np.int64)
        span = (stamps[-1] - stamps[0]) / 1e9 if stamps.size > 1 else float("nan")
        results.append({"robot": robot, **published[robot], "in_bag": int(stamps.size),
                        "lost": int(published[robot]["messages"] - stamps.size),
                        "recorded_rate": stamps.size / span if span and span > 0 else float("nan")})
    stopped = re.search(r"stopped: (\{.*?\})", log)
    counts = ast.literal_eval(stopped.group(1)) if stopped else {}
    yaml_qos = yaml.safe_load((share_dir() / "config" / "recorder.yaml").read_text())["/**"]["ros__parameters"]
    history = qos_history or yaml_qos["qos_history"]
    qos_text = f"{history}, depth {yaml_qos['qos_depth']}" if history == "keep_last" else history
    return {"qos": f"{qos_text}{'' if qos_history else ', recorder.yaml'}", "bursts": results,
            "recorder_counts": counts}


def recorder_written(processes: FleetProcesses) -> int:
    counts = [int(m.group(1)) for line in processes.nodes["recorder"].tail
              if (m := re.search(r"written (\d+),", line))]
    return counts[-1] if counts else 0


# ----- 3. bag import -----------------------------------------------------------------------------

def run_import(settings: Settings, bags: list[str]) -> dict[str, Any]:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from saferule_core.data.from_bags import dataset_from_bags

    paths = [Path(b) for b in bags]
    typestore = get_typestore(Stores.ROS2_KILTED)

    def plain(deserialize: bool) -> int:
        count = 0
        for bag in paths:
            with Reader(bag) as reader:
                for connection, _stamp, raw in reader.messages():
                    if deserialize:
                        typestore.deserialize_cdr(raw, connection.msgtype)
                    count += 1
        return count

    def best(fn: Any) -> tuple[float, Any]:
        times, value = [], None
        for _ in range(settings.import_repeats):
            began = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - began)
        return min(times), value

    raw_s, messages = best(lambda: plain(False))
    decode_s, _ = best(lambda: plain(True))
    import_s, (dataset, report) = best(lambda: dataset_from_bags(paths, TASK))
    return {"bags": len(paths), "messages": messages, "transitions": dataset.num_transitions,
            "episodes": dataset.num_episodes, "dropped_steps": report.dropped_steps,
            "rosbags_iterate_s": raw_s, "rosbags_iterate_deserialize_s": decode_s, "dataset_from_bags_s": import_s,
            "rosbags_deserialize_msgs_per_s": messages / decode_s, "dataset_from_bags_msgs_per_s": messages / import_s,
            "import_vs_plain_deserialize": import_s / decode_s}


# ----- report ------------------------------------------------------------------------------------

def outside_rows(c: dict[str, Any], label: str = "") -> list[tuple[str, str, str]]:
    """Per phase: the longest gap between actions and the misses seen from outside, vs the runner's own."""
    rows = []
    for phase, view in c.get("outside", {}).items():
        sent, arrived = view["sent"], view["arrived"]
        what = ("control run with swaps" if phase == "control" else "graph churn") + label
        rows += [
            (f"{what} ({view['seconds']:.0f} s): longest gap between actions, by send / by arrival (watcher)",
             f"{sent['longest_gap_ms']:.0f} / {arrived['longest_gap_ms']:.0f} ms "
             f"({sent['longest_gap_periods']:.1f} / {arrived['longest_gap_periods']:.1f} periods)",
             f"<= {MISS_PERIODS:g} periods"),
            (f"{what}: deadline misses counted from outside (gaps > {MISS_PERIODS:g} periods), by send / by arrival",
             f"{sent['misses']} / {arrived['misses']} ({sent['missed_ticks']} / {arrived['missed_ticks']} ticks "
             f"lost; {view['unseen']} actions never seen)", "0"),
            (f"{what}: the runner's own count (ticks, deadline misses)",
             f"{view['runner_ticks']} ticks, {view['runner_deadline_misses']} misses", ""),
        ]
    return rows


def markdown(result: dict[str, Any]) -> str:
    c, i = result["control"], result.get("import")
    lat, o2a, base = c["inference_latency_us"], c["observation_to_action_us"], c["inference_in_process_us"]
    swap_first, swap_answer = c["swap_to_first_new_action_ms"], c["swap_answer_ms"]
    rows = [
        ("control ticks", f"{c['ticks']} in {c['duration_s']:.1f} s ({c['ticks_per_s']:.1f}/s at {c['rate_hz']:g} Hz)", ""),
        ("deadline misses (> 1 period)", f"{c['deadline_misses']}", "0"),
        ("inference latency in the runner p50 / p99 / max",
         f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} us", f"p99 < {P99_GOAL_US:.0f} us"),
        ("same model in a plain process, back to back p50 / p99",
         f"{base['back_to_back']['p50']:.0f} / {base['back_to_back']['p99']:.0f} us", ""),
        (f"same model in a plain process, one run per {c['deadline_ms']:g} ms p50 / p99",
         f"{base['paced']['p50']:.0f} / {base['paced']['p99']:.0f} us", ""),
        ("same model in a plain process, one run per 1 ms p50 / p99",
         f"{base['paced_1ms']['p50']:.0f} / {base['paced_1ms']['p99']:.0f} us", ""),
        (f"tiny numpy matmul back to back / after a {c['deadline_ms']:g} ms sleep, p50",
         f"{base['wake_numpy']['back_to_back_p50']:.1f} / {base['wake_numpy']['paced_p50']:.1f} us", ""),
        ("observation -> action (third node) p50 / p99", f"{o2a['p50']:.0f} / {o2a['p99']:.0f} us", ""),
        ("observation interval p50 / p99 / max", f"{c['observation_interval_ms'].get('p50', float('nan')):.2f} / "
         f"{c['observation_interval_ms'].get('p99', float('nan')):.2f} / "
         f"{c['observation_interval_ms'].get('max', float('nan')):.2f} ms", ""),
        ("hot swaps done / rollbacks", f"{c['runner_swaps']} / {c['rollbacks']}", f"{len(c['swaps'])} / 0"),
        ("SwapPolicy answer p50 / max", f"{swap_answer['p50']:.1f} / {swap_answer['max']:.1f} ms", ""),
        ("swap request -> first new action p50 / max",
         f"{swap_first['p50']:.1f} / {swap_first['max']:.1f} ms ({swap_first['count']} swaps seen)", ""),
        ("sim safe-stop steps (no fresh command)", f"{c['sim_safe_stop_steps']}", "0"),
        *outside_rows(c),
    ]
    if "control_rt" in result:
        rt = result["control_rt"]
        rows += outside_rows(rt, f" [robot under SCHED_FIFO {result['settings']['rt_priority']}]")
        rows.append((f"[SCHED_FIFO {result['settings']['rt_priority']}] sim safe-stop steps; inference p99",
                     f"{rt['sim_safe_stop_steps']}; {rt['inference_latency_us']['p99']:.0f} us", ""))
    for run in result.get("recorder", []):
        for burst in run["bursts"]:
            target = f"{burst['target_rate']:,.0f}/s" if burst["target_rate"] else "unpaced"
            rows.append((f"recorder ({run['qos']}), {target} publisher",
                         f"{burst['in_bag']:,} of {burst['messages']:,} in the bag (lost {burst['lost']:,}), "
                         f"published {burst['publish_rate']:,.0f}/s, recorded {burst['recorded_rate']:,.0f}/s",
                         f">= {RECORDER_GOAL:,.0f}/s, no loss"))
        counts = run["recorder_counts"]
        # Step keys show holes inside a burst; messages lost before its first or after its last
        # received one are beyond what sequence numbers can tell.
        rows.append((f"recorder ({run['qos']}), its own loss counters over all bursts",
                     f"missing steps {counts.get('missing_steps', '?')}, lost in DDS {counts.get('lost_in_dds', '?')}, "
                     f"dropped {counts.get('dropped', '?')}", ""))
    rows += [] if i is None else [
        ("bags -> dataset (saferule)", f"{i['dataset_from_bags_s'] * 1e3:.0f} ms for {i['messages']:,} messages "
         f"({i['dataset_from_bags_msgs_per_s']:,.0f} msg/s; {i['transitions']} transitions)", ""),
        ("plain rosbags iterate + deserialize", f"{i['rosbags_iterate_deserialize_s'] * 1e3:.0f} ms "
         f"({i['rosbags_deserialize_msgs_per_s']:,.0f} msg/s); iterate only {i['rosbags_iterate_s'] * 1e3:.0f} ms",
         ""),
        ("import / plain deserialize", f"{i['import_vs_plain_deserialize']:.2f}x", ""),
    ]
    lines = [f"# Control loop benchmark ({result['when']})", "",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_before']} before, "
             f"{result['machine']['load_after']} after (shared with other work: noisy numbers).", "",
             "| measure | result | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    stamped = run_stamp("benchmarks/control_loop.py", list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of control loop")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="control rate, Hz (the fleet runs at 50; a rate other than 100 writes control_loop_<rate>hz.*)")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--churn", type=float, default=20.0, help="seconds of DDS graph churn after the control run")
    parser.add_argument("--quick", action="store_true",
                        help="a short check: 10 s control with 2 swaps, 10 s churn, no recorder or import runs; "
                             "writes control_loop_quick.*")
    parser.add_argument("--rt-priority", type=int, default=0, metavar="N",
                        help="also run the control run and the churn again, with the robot's sim_robot and "
                             "policy_runner under SCHED_FIFO priority N (1-99), side by side in the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 0 <= args.rt_priority <= 99:
        parser.error("--rt-priority takes 1-99 (0: off)")
    settings = Settings(duration_s=args.duration, rate_hz=args.rate, swaps=args.swaps, churn_s=args.churn,
                        rt_priority=args.rt_priority)
    if args.quick:
        settings = Settings(duration_s=10.0, rate_hz=args.rate, swaps=2, churn_s=10.0, control_only=True,
                            rt_priority=args.rt_priority)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="saferule-control-bench-") as tmp:
        work = Path(tmp)
        control = run_control(settings, work)
        bags = control.pop("bags")
        measured: dict[str, Any] = {"control": control}
        if settings.rt_priority:
            control_rt = run_control(settings, work / "rt", rt_priority=settings.rt_priority)
            control_rt.pop("bags")
            measured["control_rt"] = control_rt
        if not settings.control_only:
            measured["recorder"] = [run_recorder(settings, work), run_recorder(settings, work, qos_history="keep_last")]
            measured["import"] = run_import(settings, bags)
    result = {**stamped, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": asdict(settings),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_before": [round(v, 2) for v in load_before],
                          "load_after": [round(v, 2) for v in os.getloadavg()]}, **measured}
    args.out.mkdir(parents=True, exist_ok=True)
    # The default rate (100 Hz, twice the fleet's 50 Hz) keeps the plain names; another rate names its files.
    name = ("control_loop_quick" if args.quick else "control_loop") + ("" if args.rate == 100.0 else f"_{args.rate:g}hz")
    atomic_write_json(args.out / f"{name}.json", result)
    text = markdown(result)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
