"""unlearning_server: the ROS face of the forget-request lifecycle (a thin adapter over saferule_core).

`forget` (saferule_interfaces/srv/Forget): checks the selector against a dataset under `data_root`;
a dry run answers what it matches; otherwise the request is recorded in the dataset's ledger and
its episodes quarantined (`request_forget`: requested -> quarantined) before the answer, which
carries the request id. Bad input is refused with accepted=false and a message naming the problem
(every string and list has a limit, `saferule_core.limits`). Requests are taken off DDS as they
come: each waits in its own executor thread for the one thread that records requests, in order;
past `max_pending_forget` waiting, a request is answered "busy" at once. DDS holds
`request_queue_depth` requests per service until the executor takes them.

`unlearn` (saferule_interfaces/action/Unlearn): a goal names a request id (or a selector, which
records a new request first) and a method. Goals queue in a state file under `work_dir` (they
survive a restart); one worker thread runs one job at a time with `run_forget_job` (saferule_core),
publishing the job's stages as feedback; a cancel request stops the job (should_stop). On
success, when the goal asks for it, each robot in `robots` is asked to swap to the new version
(`<ns>/swap_policy`); the result carries the versions and the metrics before and after.

A job starts from the model the registry's latest version was exported from (its checkpoint
record, saferule_core.artifacts.lineage), so a manual `saferule export` of another model moves the
lineage with it; a version published without a record falls back to the last model this server
produced, or `model_dir`. A recorded model that was moved or changed refuses the job.

A job that fails or is cancelled leaves the request `failed` (its data stays quarantined) and the
previous policy active. A job cut short by the server stopping (SIGINT/SIGTERM) or dying leaves
the request `unlearning` and the job in the state file; at the next start it is resumed (or
marked failed, per `on_interrupted`). A job cut short after its version was published is not run
again: the version is recorded (saferule_core's job), and a swap that was asked for and cut short
is carried out at the next start.

Crash tests: with the environment variable SAFERULE_CRASH_AT=<stage> the server kills itself
(SIGKILL) when a job reaches that stage (e.g. suppress, repair, select, publish, swap).

    python -m saferule_ros.unlearning_server --ros-args --params-file config/unlearning_server.yaml
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.data.forget_requests import ForgetRequests, dataset_path
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import ForgetRequestError, SafeRuleError
from saferule_core.limits import check_dataset_name, check_request_text
from saferule_core.settings_files import load_settings_file
from saferule_core.unlearning.forget_jobs import INTERRUPTED_POLICIES, ForgetJobs
from saferule_core.unlearning.job_queue import JobQueue, QueuedJob
from saferule_core.unlearning.methods import METHOD_NAMES
from saferule_interfaces.action import Unlearn
from saferule_interfaces.srv import Forget
from saferule_ros.fleet_client import FleetClient, event_waiter
from saferule_ros.forget_messages import metrics_to_msgs, selector_from_msg, selector_is_set
from saferule_ros.goal_order import AcceptanceOrder
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import recorder_qos

FORGET_SERVICE = "forget"
UNLEARN_ACTION = "unlearn"
STATE_FILE = "unlearning_server_state.json"
SWAP_SHARE = 0.9                            # progress fraction of the job proper when swaps follow
CRASH_AT = os.environ.get("SAFERULE_CRASH_AT", "")   # crash tests only (module docstring)
# Executor threads: a few for the action, the timer and taking requests, plus one per pending Forget
# request (each waits in its thread; threads are started only when needed), so that a request past
# the pending limit still finds a thread that answers it "busy".
BASE_THREADS = 4
MAX_PENDING_FORGET_BOUND = 256              # the largest max_pending_forget accepted


@dataclass
class UnlearningServerConfig:
    data_root: str = "data"                   # every dataset named in a request must lie inside it
    default_dataset: str = ""                 # dataset (under data_root) of requests that name none
    model_dir: str = "models/deployed"        # checkpoint of the deployed policy (start of the lineage)
    registry_dir: str = "policies"            # signed artifact registry the runners load from
    signing_key: str = "~/.config/saferule/keys"
    work_dir: str = "unlearning"              # unlearned models (<work_dir>/<request_id>/) and the queue
    robots: list[str] = field(default_factory=list)   # namespaces whose policy_runner is swapped
    default_method: str = "safe_rule"
    max_selector_entries: int = 10_000        # episode ids + robot ids + bag names in one selector
    max_queued: int = 16                      # goals waiting or running; more are rejected
    request_queue_depth: int = 256            # requests (Forget, Unlearn goals) DDS holds until they are taken
    max_pending_forget: int = 64              # Forget requests taken and not yet answered; more: "busy"
    unlearn_config_file: str = ""             # YAML of UnlearnConfig overrides; empty: defaults
    purge_after_unlearn: bool = False         # physically delete the episodes once unlearned
    on_interrupted: str = "resume"            # a job found interrupted at start: "resume" or "fail"
    swap_timeout_s: float = 10.0              # per robot: service discovery + answer


if TYPE_CHECKING:   # saferule_core.unlearning.{config,job} import torch: see UnlearningServer.__init__
    from saferule_core.unlearning.config import UnlearnConfig


class RequestRefused(SafeRuleError):
    """A Forget request or Unlearn goal that the server will not carry out (the message says why)."""


class ServerStopping(BaseException):
    """Raised inside a running job (from its should_stop callback) when the server stops. Not an
    Exception, so the job does not record a failure: the request stays `unlearning` and the job
    stays queued, to be resumed at the next start."""


@dataclass
class JobOutcome:
    success: bool
    message: str
    new_version: str = ""
    parent_version: str = ""
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    cancelled: bool = False
    interrupted: bool = False                 # the server stopped mid-job: the job stays queued
    model_dir: str | None = None              # the unlearned model (success only)

    def to_result(self) -> Unlearn.Result:
        return Unlearn.Result(success=self.success, new_policy_version=self.new_version,
                              parent_policy_version=self.parent_version,
                              metrics_before=metrics_to_msgs(self.metrics_before),
                              metrics_after=metrics_to_msgs(self.metrics_after), wall_time_s=self.wall_time_s,
                              message=self.message)


@dataclass
class _Goal:
    """An Unlearn goal between acceptance and its result."""

    handle: ServerGoalHandle
    request_id: str = ""
    outcome: JobOutcome | None = None
    done: threading.Event = field(default_factory=threading.Event)


class UnlearningServer(Node):
    def __init__(self, node_name: str = "unlearning_server", **kwargs: object) -> None:
        # torch loads here, under run_node's stop-signal handling and before the node joins the
        # graph: a node that others can see is one that answers, and stops at once when told
        importlib.import_module("saferule_core.unlearning.job")
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, UnlearningServerConfig)
        self._check_config()
        self.requests = ForgetRequests(Path(cfg.data_root), cfg.default_dataset, warn=self._warn_throttled)
        self.data_root = self.requests.data_root
        self.work_dir = Path(cfg.work_dir).expanduser()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.unlearn_config = self._load_unlearn_config()
        self.queue = JobQueue(self.work_dir / STATE_FILE, str(Path(cfg.model_dir).expanduser()))
        self.jobs = ForgetJobs(self.requests, self.queue, cfg.default_method)
        self._forget_thread = ThreadPoolExecutor(1, thread_name_prefix="forget")   # FIFO, one at a time
        self._pending_lock = threading.Lock()
        self._pending_forget = 0                  # taken and not yet answered
        self._goals_lock = threading.Lock()
        self._goals: dict[bytes, _Goal] = {}        # by goal uuid
        self._acceptance = AcceptanceOrder()
        self._stopping = threading.Event()
        self._wakeup = threading.Event()
        self.jobs_done = self.jobs_failed = 0

        self._recover()
        self._warm_up()
        group = ReentrantCallbackGroup()
        requests_qos = recorder_qos(cfg.request_queue_depth)   # reliable, volatile: the services default, deeper
        self.create_service(Forget, FORGET_SERVICE, self._on_forget, qos_profile=requests_qos, callback_group=group)
        self.action_server = ActionServer(
            self, Unlearn, UNLEARN_ACTION, execute_callback=self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted, cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=group, goal_service_qos_profile=requests_qos, result_service_qos_profile=requests_qos,
            cancel_service_qos_profile=requests_qos)
        self.fleet = FleetClient(self, event_waiter, timeout_s=cfg.swap_timeout_s, callback_group=group)
        for robot in cfg.robots:
            self.fleet.swap_client(robot)   # created now so that discovery has begun by the first swap
        # Goals cancelled while waiting are finished from here (see _finish_cancelled_waiting).
        self.create_timer(0.2, self._finish_cancelled_waiting, callback_group=MutuallyExclusiveCallbackGroup())
        self._worker = threading.Thread(target=self._work, name="unlearn-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"serving {self.resolve_service_name(FORGET_SERVICE)} and {self.resolve_service_name(UNLEARN_ACTION)}: "
            f"data root {self.data_root}, default dataset {cfg.default_dataset or '(none)'}, model "
            f"{self.queue.current_model_dir}, registry {cfg.registry_dir}, robots {', '.join(cfg.robots) or '(none)'}, "
            f"{len(self.queue.jobs())} jobs queued; request queue depth {cfg.request_queue_depth}, at most "
            f"{cfg.max_pending_forget} Forget requests pending")

    # ----- configuration ---------------------------------------------------------------------
    def _check_config(self) -> None:
        cfg = self.config
        if cfg.default_method not in METHOD_NAMES:
            raise ConfigError(f"default_method {cfg.default_method!r}: expected one of {', '.join(METHOD_NAMES)}")
        if cfg.on_interrupted not in INTERRUPTED_POLICIES:
            raise ConfigError(f"on_interrupted {cfg.on_interrupted!r}: expected one of {', '.join(INTERRUPTED_POLICIES)}")
        for name in ("max_selector_entries", "max_queued", "request_queue_depth", "max_pending_forget"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
        if cfg.max_pending_forget > MAX_PENDING_FORGET_BOUND:
            raise ConfigError(f"max_pending_forget {cfg.max_pending_forget}: at most {MAX_PENDING_FORGET_BOUND} "
                              f"(each pending request waits in an executor thread)")
        if cfg.swap_timeout_s <= 0:
            raise ConfigError(f"swap_timeout_s must be > 0, got {cfg.swap_timeout_s}")
        if not Path(cfg.data_root).expanduser().is_dir():
            raise ConfigError(f"data_root {cfg.data_root}: no such directory")
        if cfg.default_dataset:
            # It may not exist yet (a fleet builds it from its bags after starting); it must not
            # point outside the data root.
            try:
                path = dataset_path(Path(cfg.data_root).expanduser(), cfg.default_dataset)
            except ForgetRequestError as err:
                raise ConfigError(f"default_dataset: {err}") from None
            if not path.is_dir():
                self.get_logger().warning(f"default_dataset {path} does not exist yet; requests that name no "
                                          f"dataset are refused until it does")

    def _warm_up(self) -> None:
        """Open the default dataset once: the first open in a process imports pyarrow's pandas glue
        (0.3-1 s here), which would otherwise hold up the first Forget request."""
        if not self.config.default_dataset or not dataset_path(self.data_root, self.config.default_dataset).is_dir():
            return   # _check_config has said so
        try:
            DatasetStore.open(self.dataset_dir(""))
        except SafeRuleError as err:
            self.get_logger().warning(f"default dataset: {err}")

    def _load_unlearn_config(self) -> UnlearnConfig:
        from saferule_core.unlearning.config import UnlearnConfig

        path = self.config.unlearn_config_file
        try:
            return UnlearnConfig.from_dict(load_settings_file(path, "UnlearnConfig settings") if path else {})
        except SafeRuleError as err:
            raise ConfigError(f"unlearn_config_file: {err}") from None

    # ----- datasets and ledgers --------------------------------------------------------------
    def _warn_throttled(self, message: str) -> None:
        self.get_logger().warning(message, throttle_duration_sec=30.0)

    def dataset_dir(self, name: str) -> Path:
        return self.requests.dataset_dir(name)

    # ----- Forget ------------------------------------------------------------------------------
    def _on_forget(self, request: Forget.Request, response: Forget.Response) -> Forget.Response:
        """Check the fields at once; wait (in this executor thread) for the thread that records."""
        try:
            selector = self._check_forget(request)
        except SafeRuleError as err:
            return self._refuse(response, str(err))
        limit = self.config.max_pending_forget
        with self._pending_lock:
            busy = self._pending_forget >= limit
            self._pending_forget += 0 if busy else 1
        if busy:
            return self._refuse(response, f"busy: {limit} Forget requests are already pending (the limit, "
                                          f"max_pending_forget); nothing was recorded, send it again later")
        try:
            return self._forget_thread.submit(self._answer_forget, request, selector).result()
        except (CancelledError, RuntimeError):   # RuntimeError: submitted after the shutdown
            return self._refuse(response, "the server is stopping; nothing was recorded")
        finally:
            with self._pending_lock:
                self._pending_forget -= 1

    def _check_forget(self, request: Forget.Request) -> ForgetSelector:
        check_request_text(request.requester, request.reason, RequestRefused)
        check_dataset_name(request.dataset, RequestRefused)
        return selector_from_msg(request.selector, self.config.max_selector_entries)

    def _answer_forget(self, request: Forget.Request, selector: ForgetSelector) -> Forget.Response:
        response = Forget.Response()
        try:
            self._forget(request, selector, response)
        except SafeRuleError as err:
            self._refuse(response, str(err))
        except Exception as err:  # a bug must not take the node down; the caller still gets an answer
            self.get_logger().error(f"Forget failed: {traceback.format_exc()}")
            self._refuse(response, f"internal error: {type(err).__name__}: {err}")
        return response

    def _refuse(self, response: Forget.Response, message: str) -> Forget.Response:
        response.accepted, response.request_id, response.message = False, "", message
        response.matched_episode_ids, response.matched_transitions = [], 0
        self.get_logger().warning(f"Forget refused: {message}")
        return response

    def _forget(self, request: Forget.Request, selector: ForgetSelector, response: Forget.Response) -> None:
        dataset_dir = self.dataset_dir(request.dataset)
        label = self.requests.relative(dataset_dir) or "."
        if request.dry_run:
            preview = self.requests.preview(dataset_dir, selector)
            response.matched_episode_ids, response.matched_transitions = preview.episode_ids, preview.transitions
            response.accepted = True
            response.message = (f"dry run: the selector ({selector.describe()}) matches "
                                f"{len(response.matched_episode_ids)} episodes ({response.matched_transitions} "
                                f"transitions) of {label}; nothing recorded")
            return
        entry = self.requests.record(dataset_dir, selector, request.requester, request.reason)
        response.accepted = True
        response.request_id = entry.request_id
        response.matched_episode_ids = list(entry.matched_episode_ids)
        response.matched_transitions = entry.matched_transitions
        response.message = (f"request {entry.request_id} recorded: {entry.matched_episodes} episodes "
                            f"({entry.matched_transitions} transitions) of {label} quarantined; send an Unlearn "
                            f"goal with this request id to repair the policy")
        self.get_logger().info(f"{response.message} (requester {entry.requester}: {entry.reason})")

    def deployed_model_dir(self) -> Path:
        """The model a job starts from: the one the registry's latest version was exported from
        (its checkpoint record), else the last model this server produced (or model_dir)."""
        registry = PolicyRegistry(Path(self.config.registry_dir).expanduser())
        return registry.deployed_model_dir(Path(self.queue.current_model_dir))

    # ----- Unlearn: admission ------------------------------------------------------------------
    def _on_goal(self, goal: Unlearn.Goal) -> GoalResponse:
        if len(self.queue.jobs()) >= self.config.max_queued:
            self.get_logger().warning(f"Unlearn goal rejected: {self.config.max_queued} jobs are already queued")
            return GoalResponse.REJECT
        self._acceptance.take_ticket(goal)
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle: ServerGoalHandle) -> None:
        """Admit the goal into the queue; a refused goal is finished at once with its reason."""
        goal = _Goal(handle)
        with self._goals_lock:
            self._goals[bytes(handle.goal_id.uuid)] = goal
        with self._acceptance.turn(handle.request):
            try:
                self._admit(goal)
            except SafeRuleError as err:
                self._finish_unstarted(goal, JobOutcome(False, str(err)), "Unlearn goal refused")
                return
            except Exception as err:
                self.get_logger().error(f"Unlearn admission failed: {traceback.format_exc()}")
                self._finish_unstarted(goal, JobOutcome(False, f"internal error: {type(err).__name__}: {err}"),
                                       "Unlearn goal refused")
                return
        self._wakeup.set()

    def _admit(self, pending: _Goal) -> None:
        goal: Unlearn.Goal = pending.handle.request
        request_id, has_selector = goal.request_id.strip(), selector_is_set(goal.selector)
        if request_id and has_selector:
            raise RequestRefused("name either a request_id or a selector, not both")
        if not request_id and not has_selector:
            raise RequestRefused("name the request to unlearn: a request_id (from Forget) or a selector")
        swap, goal_id = bool(goal.swap_on_success), bytes(pending.handle.goal_id.uuid).hex()
        if has_selector:
            from saferule_core.unlearning.job import check_new_request

            check_request_text(goal.requester, goal.reason, RequestRefused)
            selector = selector_from_msg(goal.selector, self.config.max_selector_entries)
            model_dir = self.deployed_model_dir()
            admitted = self.jobs.admit_new(
                self.dataset_dir(""), selector, goal.requester, goal.reason, goal.method, swap,
                lambda store, chosen: check_new_request(store, chosen, model_dir, goal.reason), goal_id)
        else:
            admitted = self.jobs.admit(request_id, goal.method, swap, goal_id)
        pending.request_id = admitted.entry.request_id
        self.get_logger().info(f"queued {admitted.entry.request_id} ({admitted.job.method}, "
                               f"{admitted.entry.matched_episodes} episodes, state {admitted.entry.state.value}); "
                               f"{len(self.queue.jobs())} jobs in the queue")

    def _goal_of(self, job: QueuedJob) -> _Goal | None:
        """The live goal that queued `job`; None for a job queued before a restart."""
        try:
            key = bytes.fromhex(job.goal_id)
        except ValueError:
            return None
        with self._goals_lock:
            goal = self._goals.get(key)
        return goal if goal is not None and goal.outcome is None else None

    def _finish_cancelled_waiting(self) -> None:
        with self._goals_lock:
            waiting = [g for g in self._goals.values() if g.request_id and g.outcome is None]
        for goal in waiting:
            if goal.handle.is_cancel_requested and self.queue.drop_waiting(goal.request_id):
                self._finish_unstarted(goal, JobOutcome(False, f"cancelled before it started; request "
                                                               f"{goal.request_id} stays quarantined", cancelled=True),
                                       "Unlearn goal cancelled")

    def _finish_unstarted(self, goal: _Goal, outcome: JobOutcome, what: str) -> None:
        """Give a goal that never ran its result (refused, or cancelled while waiting)."""
        goal.outcome = outcome
        goal.done.set()
        self.get_logger().warning(f"{what}: {outcome.message}")
        goal.handle.execute()

    # ----- Unlearn: the goal's result --------------------------------------------------------
    def _execute(self, handle: ServerGoalHandle) -> Unlearn.Result:
        """Runs in an executor thread once the worker starts the job (or at once for a refusal):
        waits for the worker's outcome and sets the goal's final state."""
        key = bytes(handle.goal_id.uuid)
        with self._goals_lock:
            goal = self._goals.get(key)
        if goal is None:
            handle.abort()
            return Unlearn.Result(success=False, message="internal error: unknown goal")
        while not goal.done.wait(0.5):
            if self._stopping.is_set() and not self._worker.is_alive():
                break
        outcome = goal.outcome or JobOutcome(False, "the server stopped; the request stays queued", interrupted=True)
        with self._goals_lock:
            self._goals.pop(key, None)
        if outcome.success:
            handle.succeed()
        elif outcome.cancelled and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return outcome.to_result()

    # ----- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            job = self.queue.take_next()
            if job is None:
                self._wakeup.wait(1.0)
                self._wakeup.clear()
                continue
            goal = self._goal_of(job)
            if goal is not None and goal.handle.is_cancel_requested:
                self.queue.finish(job.request_id)
                self._finish_unstarted(goal, JobOutcome(False, f"cancelled before it started; request "
                                                               f"{job.request_id} stays quarantined", cancelled=True),
                                       "Unlearn goal cancelled")
                continue
            if goal is not None:
                goal.handle.execute()   # EXECUTING; _execute waits for the outcome in an executor thread
            outcome = self._run(job, goal)
            if outcome.interrupted:
                self.queue.release(job.request_id)
            else:
                self.queue.finish(job.request_id, outcome.model_dir)
            if goal is not None:
                goal.outcome = outcome
                goal.done.set()

    def _feedback(self, goal: _Goal | None, stage: str, progress: float, metrics: dict[str, float]) -> None:
        if stage == CRASH_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        if goal is None:
            self.get_logger().info(f"{stage} {progress:.0%}", throttle_duration_sec=2.0)
            return
        goal.handle.publish_feedback(Unlearn.Feedback(stage=stage, progress=float(min(max(progress, 0.0), 1.0)),
                                                      metrics=metrics_to_msgs(metrics)))

    def _run(self, job: QueuedJob, goal: _Goal | None) -> JobOutcome:
        cfg = self.config
        began = time.monotonic()
        swap = job.swap_on_success and bool(self.config.robots)
        share = SWAP_SHARE if swap else 1.0

        def progress(stage: str, fraction: float, metrics: dict[str, float]) -> None:
            self._feedback(goal, stage, fraction * share, metrics)

        def should_stop() -> bool:
            if self._stopping.is_set():
                raise ServerStopping
            return goal is not None and goal.handle.is_cancel_requested

        finished = self.jobs.unlearned_version(job)
        if finished is not None:   # published and recorded before the server stopped; only its swap was cut short
            message = f"{job.request_id} was unlearned as {finished} before a restart"
            if swap:
                self._feedback(goal, "swap", SWAP_SHARE, {})
                message += "; " + self._swap_all(finished)
            self.get_logger().info(message)
            return JobOutcome(True, message, finished, wall_time_s=time.monotonic() - began)
        self.get_logger().info(f"unlearning {job.request_id} with {job.method} (dataset {job.dataset})")
        from saferule_core.unlearning.job import JobPaths, run_forget_job

        try:
            paths = JobPaths(
                dataset_dir=self.jobs.dataset_dir(job),
                model_dir=self.deployed_model_dir(), registry_dir=Path(cfg.registry_dir).expanduser(),
                signing_key=Path(cfg.signing_key).expanduser(), work_dir=self.work_dir)
            result = run_forget_job(paths, job.request_id, job.method, self.unlearn_config, progress, should_stop,
                                  cfg.purge_after_unlearn)
        except ServerStopping:
            return self._failed(job, "the server stopped during the job", began, interrupted=True)
        except SafeRuleError as err:
            cancelled = goal is not None and goal.handle.is_cancel_requested
            return self._failed(job, str(err), began, cancelled=cancelled)
        except Exception as err:  # a bug in a job: the ledger marks it failed; the node lives on
            self.get_logger().error(f"{job.request_id}: {traceback.format_exc()}")
            return self._failed(job, f"internal error: {type(err).__name__}: {err}", began)
        message = (f"unlearned {job.request_id} with {job.method}: policy {result.new_version} "
                   f"(parent {result.parent_version or 'none'})")
        if swap:
            self._feedback(goal, "swap", SWAP_SHARE, {})
            message += "; " + self._swap_all(result.new_version)
        self._feedback(goal, "done", 1.0, dict(result.metrics_after))
        self.jobs_done += 1
        self.get_logger().info(message)
        return JobOutcome(True, message, result.new_version, result.parent_version or "", dict(result.metrics_before),
                          dict(result.metrics_after), time.monotonic() - began, model_dir=str(result.model_dir))

    def _failed(self, job: QueuedJob, message: str, began: float, cancelled: bool = False,
                interrupted: bool = False) -> JobOutcome:
        self.jobs_failed += 1
        if interrupted:
            message = f"{message}; {job.request_id} stays queued (unlearning) and resumes at the next start"
        text = f"{job.request_id} {'cancelled' if cancelled else 'failed'}: {message}; the previous policy stays active"
        self.get_logger().warning(text)
        return JobOutcome(False, text, wall_time_s=time.monotonic() - began, cancelled=cancelled,
                          interrupted=interrupted)

    def _swap_all(self, version: str) -> str:
        """Ask every configured runner to swap; one line of outcomes."""
        parts = []
        for robot, answer in self.fleet.swap_all(self.config.robots, version, self.config.swap_timeout_s).items():
            if isinstance(answer, str) or not answer.ok:
                text = answer if isinstance(answer, str) else f"refused ({answer.message})"
                self.get_logger().warning(f"swap of {robot} to {version}: {text}")
            else:
                text = f"now {answer.active_version}"
            parts.append(f"{robot} {text}")
        return "swaps: " + ", ".join(parts)

    # ----- start-up and shutdown -------------------------------------------------------------
    def _recover(self) -> None:
        """Jobs left in the state file: waiting ones stay; interrupted ones resume or fail."""
        log = self.get_logger()
        for found in self.jobs.recover(self.config.on_interrupted, swaps=bool(self.config.robots)):
            # one call site per severity: rclpy refuses a call site that changes its severity
            if found.level == "error":
                log.error(found.message)
            elif found.level == "warning":
                log.warning(found.message)
            else:
                log.info(found.message)

    def close(self) -> None:
        self._forget_thread.shutdown(wait=True, cancel_futures=True)
        self._stopping.set()
        self._wakeup.set()
        self._worker.join()
        with self._goals_lock:
            goals = list(self._goals.values())
        for goal in goals:
            if goal.outcome is None:
                goal.outcome = JobOutcome(False, f"the server stopped; request {goal.request_id} stays queued and "
                                                 f"runs after the next start", interrupted=True)
            goal.done.set()
        self.get_logger().info(f"stopped: {self.jobs_done} jobs done, {self.jobs_failed} failed, "
                               f"{len(self.queue.jobs())} still queued")


def main(args: Sequence[str] | None = None) -> int:
    def unlearning_server() -> UnlearningServer:   # run_node names the process's errors after it
        return UnlearningServer()

    return run_node(unlearning_server, args, threads=BASE_THREADS + MAX_PENDING_FORGET_BOUND)


if __name__ == "__main__":
    raise SystemExit(main())
