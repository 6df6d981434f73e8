"""launch/unlearn.launch.py: checked without the launch system, then run with the real `ros2 launch`.

Without the launch system (a ROS 2 install has it; here set-up installs it as test tooling from
../shared/vendor/ros2-launch-cli when that folder exists):
  * the file's imports are checked from its syntax tree (only launch, launch_ros,
    ament_index_python and saferule_ros);
  * its generate_launch_description() runs with small stand-in `launch` / `launch_ros` modules
    injected into sys.modules. The stand-ins only record what the file asks for; the real
    ament_index_python finds the installed package, and the node set comes from the real
    saferule_ros.bringup.fleet_nodes;
  * every executable it launches is a console script in setup.py.
Then, where the launch system is installed, the real `ros2 launch` of the file runs as a subprocess
(LaunchService wants its process's main thread) over DDS on loopback: the node set for 1, 2 and 5
robots, a bad argument, Ctrl-C (to launch alone and to the whole process group, as a terminal sends
it), and the README's `ros2 service call /forget` and `ros2 topic echo` against a launched fleet.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rosbags.rosbag2 import Reader

from saferule_ros.bringup import PACKAGE, FleetArgs, fleet_nodes, launch_arguments
from saferule_ros.processes import CHILD_ENVIRONMENT
from tests.ros.ros_harness import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / "launch" / "unlearn.launch.py"
SETUP_PY = REPO_ROOT / "ros2_ws" / "src" / "saferule_ros" / "setup.py"
INSTALL_PREFIX = REPO_ROOT / "ros2_ws" / "install"
ALLOWED_IMPORTS = {"launch", "launch_ros", "ament_index_python", "saferule_ros"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not work in a launch file"
            names.add(node.module or "")
    return names


def console_scripts() -> dict[str, str]:
    """name -> "module:function" from setup.py's entry_points, read from its syntax tree."""
    tree = ast.parse(SETUP_PY.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    return {name.strip(): target.strip() for name, _, target in (e.partition("=") for e in entries)}
    raise AssertionError("setup.py declares no console_scripts")


# ----- the stand-ins: they record, they do not launch --------------------------------------------

@dataclass
class StandInNode:
    kwargs: dict[str, Any]


@dataclass
class StandInArgument:
    name: str
    default_value: str = ""
    description: str = ""


@dataclass
class StandInOpaqueFunction:
    function: Any


@dataclass
class StandInLaunchDescription:
    entities: list[Any] = field(default_factory=list)


@dataclass
class StandInContext:
    configurations: dict[str, str]


@dataclass
class StandInLaunchConfiguration:
    name: str

    def perform(self, context: StandInContext) -> str:
        return context.configurations[self.name]


def stand_in_modules() -> dict[str, types.ModuleType]:
    launch = types.ModuleType("launch")
    launch.LaunchDescription = StandInLaunchDescription  # type: ignore[attr-defined]
    launch.LaunchContext = StandInContext  # type: ignore[attr-defined]
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = StandInArgument  # type: ignore[attr-defined]
    actions.OpaqueFunction = StandInOpaqueFunction  # type: ignore[attr-defined]
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = StandInLaunchConfiguration  # type: ignore[attr-defined]
    launch.actions, launch.substitutions = actions, substitutions  # type: ignore[attr-defined]
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = lambda **kwargs: StandInNode(kwargs)  # type: ignore[attr-defined]
    launch_ros.actions = ros_actions  # type: ignore[attr-defined]
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


def load_launch_file(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    for name, module in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    # the real ament index, pointed at the workspace's install prefix
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(INSTALL_PREFIX))
    spec = importlib.util.spec_from_file_location("unlearn_launch", LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- tests ---------------------------------------------------------------------------------------

def test_launch_file_imports_only_launch_ros_ament_and_saferule_ros() -> None:
    modules = imported_modules(LAUNCH_FILE)
    assert {name.split(".")[0] for name in modules} <= ALLOWED_IMPORTS, modules
    assert {"launch", "launch.actions", "launch_ros.actions", "ament_index_python.packages",
            "saferule_ros.bringup"} <= modules


def test_launch_file_is_installed_with_the_package() -> None:
    installed = INSTALL_PREFIX / "share" / PACKAGE / "launch" / LAUNCH_FILE.name
    assert installed.is_file() and installed.read_text() == LAUNCH_FILE.read_text()


def test_launch_description_yields_exactly_the_fleet_node_specs(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    module = load_launch_file(monkeypatch)
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, StandInArgument)]
    opaque = [e for e in description.entities if isinstance(e, StandInOpaqueFunction)]
    assert [a.name for a in declared] == [a.name for a in launch_arguments()]
    assert {"task", "robots", "data_root", "method", "control_rate"} <= {a.name for a in declared}
    assert all(a.description for a in declared) and len(opaque) == 1

    values = {a.name: a.default_value for a in declared}
    values.update(robots="2", data_root=str(tmp_path / "fleet"), control_rate="20.0", behaviour_drivers="true",
                  compromised_robot="robot_2", method="retrain")
    nodes = opaque[0].function(StandInContext(values))
    expected = fleet_nodes(FleetArgs(robots=2, data_root=str(tmp_path / "fleet"), control_rate=20.0,
                                     behaviour_drivers=True, compromised_robot="robot_2", method="retrain"))
    assert len(nodes) == len(expected) and all(isinstance(n, StandInNode) for n in nodes)
    for node, spec in zip(nodes, expected):
        kwargs = node.kwargs
        assert (kwargs["package"], kwargs["executable"], kwargs["name"], kwargs["namespace"]) == \
            (spec.package, spec.executable, spec.name, spec.namespace)
        assert kwargs["parameters"] == list(spec.parameters) and kwargs["remappings"] == list(spec.remappings)
        # parameter files come from the installed share directory the ament index names
        files = [p for p in kwargs["parameters"] if isinstance(p, str)]
        assert all(Path(f).parent == INSTALL_PREFIX / "share" / PACKAGE / "config" and Path(f).is_file()
                   for f in files)
    # the launch prepared the data root: the runners find the verify key at start
    assert (tmp_path / "fleet" / "keys" / "verify_key").is_file()


def test_every_launched_executable_is_a_console_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scripts = console_scripts()
    specs = fleet_nodes(FleetArgs(robots=1, data_root=str(tmp_path), behaviour_drivers=True,
                                  compromised_robot="robot_1"))
    for spec in specs:
        assert scripts.get(spec.executable) == f"{PACKAGE}.{spec.executable}:main", spec.executable
        assert (INSTALL_PREFIX / "lib" / PACKAGE / spec.executable).is_file(), f"{spec.executable} not installed"
    assert scripts.get("bringup") == f"{PACKAGE}.bringup:main"


# ----- the real `ros2 launch`, as a subprocess ------------------------------------------------------

ROS2 = shutil.which("ros2", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
LAUNCH_TOOLING_MISSING = ROS2 is None or any(importlib.util.find_spec(name) is None
                                             for name in ("launch_ros", "ros2launch", "composition_interfaces"))
needs_launch = pytest.mark.skipif(
    LAUNCH_TOOLING_MISSING, reason="ROS 2 launch and the ros2 command are not installed: set-up installs them as test "
                                   "tooling from ../shared/vendor/ros2-launch-cli when that folder exists "
                                   "(a ROS 2 install has them)")
START_WAIT_S = 180.0   # every node imports torch; on 2 busy cores a fleet takes a minute to come up
STOP_WITHIN_S = 5.0    # the README's promise: a stopped node exits 0 within 5 s
# Ctrl-C trials, alternating SIGINT to `ros2 launch` alone and to its whole process group (a
# terminal's Ctrl-C); the fleet test below stops its fleet with one more. Ten (issue 13) take ~190 s
# here; SAFERULE_CTRL_C_TRIALS=N runs N instead (more to hunt a rare failure).
CTRL_C_TRIALS = int(os.environ.get("SAFERULE_CTRL_C_TRIALS", "10"))

STARTED = re.compile(r"^\[INFO\] \[(?P<process>[\w-]+)\]: process started with pid \[(?P<pid>\d+)\]$")
WRITTEN = re.compile(r"\[recorder\]: received \d+, written (\d+),")
FINISHED = re.compile(r"^\[INFO\] \[(?P<process>[\w-]+)\]: process has finished cleanly \[pid (?P<pid>\d+)\]$")
DIED = re.compile(r"^\[ERROR\] \[(?P<process>[\w-]+)\]: process has died \[pid (?P<pid>\d+), exit code")
# asyncio (Python 3.11) inside ros2 launch sometimes reaps an exited node in BaseSubprocessTransport.close()
# (Popen.poll) before its child watcher's waitpid runs; the watcher then logs this and reports exit code 255
# for a process whose real exit status nobody can read any more. Seen once in 21 Ctrl-C trials.
UNOBSERVED_EXIT = re.compile(r"Unknown child process pid (\d+), will report returncode 255")


def ros2_environment(log_dir: Path) -> dict[str, str]:
    """The environment `. ros2_ws/install/setup.sh` would give the ros2 command (the ament index of
    the workspace and of the ROS packages), with node output line by line and logs under the test."""
    prefixes = [str(INSTALL_PREFIX), *(os.environ.get("AMENT_PREFIX_PATH") or sys.prefix).split(os.pathsep)]
    return {**os.environ, **CHILD_ENVIRONMENT, "AMENT_PREFIX_PATH": os.pathsep.join(prefixes),
            "ROS_LOG_DIR": str(log_dir)}


def ros2(tmp_path: Path, *arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One `ros2 ...` command to its end (never waits past `timeout`)."""
    assert ROS2 is not None
    return subprocess.run([ROS2, *arguments], env=ros2_environment(tmp_path / "ros_log"), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Launch:
    """`ros2 launch saferule_ros unlearn.launch.py ARGS` in a session of its own (its nodes join its
    process group, as under a terminal), with its output collected line by line."""

    def __init__(self, tmp_path: Path, *arguments: str) -> None:
        assert ROS2 is not None
        self.data_root = tmp_path / "fleet"
        self.proc = subprocess.Popen(
            [ROS2, "launch", PACKAGE, LAUNCH_FILE.name, f"data_root:={self.data_root}", *arguments],
            env=ros2_environment(tmp_path / "ros_log"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_sigint)
        self.lines: list[tuple[float, str]] = []   # (monotonic time, line)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matches(self, pattern: re.Pattern[str]) -> dict[int, float]:
        """pid -> when launch printed `pattern` for it."""
        return {int(found["pid"]): at for at, line in list(self.lines) if (found := pattern.match(line))}

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float = START_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.proc.poll() is None, f"ros2 launch exited ({self.proc.returncode}) before {what}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s:\n{self.text()[-6000:]}"
            time.sleep(0.1)

    def started_nodes(self, count: int) -> dict[int, str]:
        """pid -> full node name ("/robot_1/sim_robot") of the processes launch reports started,
        read from their command lines (`--ros-args -r __node:=... -r __ns:=...`)."""
        self.wait_for(lambda: len(self.matches(STARTED)) >= count, f"{count} processes started")
        time.sleep(0.5)   # launch starts the whole set in one go: more would have come by now
        return {pid: node_name(pid) for pid in self.matches(STARTED)}

    def interrupt(self, whole_group: bool) -> float:
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        return time.monotonic()

    def wait(self, timeout: float = 60.0) -> int:
        status = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return status

    def kill(self) -> None:
        """The launch and every node of its group, at once (after a test, passed or not)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def default_sigint() -> None:
    """A test runner started in the background by a script (`cmd &`) ignores SIGINT, and its
    children would inherit that: launch would never see the Ctrl-C these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def node_name(pid: int) -> str:
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    remaps = dict(arguments[i + 1].split(":=", 1) for i, arg in enumerate(arguments[:-1]) if arg == "-r")
    return f"{remaps['__ns'].rstrip('/')}/{remaps['__node']}"


@contextlib.contextmanager
def launched(tmp_path: Path, *arguments: str) -> Iterator[Launch]:
    launch = Launch(tmp_path, *arguments)
    try:
        yield launch
    finally:
        launch.kill()
        (tmp_path / "launch.log").write_text(launch.text())   # the whole output, for a failure's post-mortem


def expected_nodes(robots: int, **fleet: Any) -> set[str]:
    return {f"/{spec.label}" for spec in fleet_nodes(FleetArgs(robots=robots, **fleet))}


def ros2_until(tmp_path: Path, arguments: tuple[str, ...], done: Callable[[str], bool], timeout: float = 60.0,
               launch: Launch | None = None) -> subprocess.CompletedProcess[str]:
    """`ros2 ARGUMENTS` until `done(its stdout)` or `timeout`: without the daemon each call discovers
    the graph anew, and on a busy machine one call's spin time may not see all of it. The last call."""
    deadline = time.monotonic() + timeout
    while True:
        result = ros2(tmp_path, *arguments)
        if (result.returncode == 0 and done(result.stdout)) or time.monotonic() > deadline:
            return result
        if launch is not None:
            assert launch.proc.poll() is None, f"ros2 launch exited ({launch.proc.returncode}):\n{launch.text()}"


def wait_until_on_dds(tmp_path: Path, launch: Launch, names: set[str]) -> None:
    """`ros2 node list` shows every node: each is past rclpy.init, so its own SIGINT handling is
    installed. (Asked from a child process: a probe node in the test process itself once crashed
    it, with a segmentation fault in rclpy's destroy_node while a fleet was on the graph.)"""
    listed = ros2_until(tmp_path, ("node", "list", "--no-daemon", "--spin-time", "2"),
                        lambda out: names <= set(out.split()), timeout=START_WAIT_S, launch=launch)
    assert names <= set(listed.stdout.split()), f"not every node on DDS:\n{listed.stdout}{listed.stderr}"


def assert_stopped_cleanly(launch: Launch, signalled_at: float, pids: set[int]) -> None:
    """Every node exited 0 within STOP_WITHIN_S, nothing printed a traceback, ros2 launch exited 0."""
    status = launch.wait()
    text = launch.text()
    finished = launch.matches(FINISHED)
    # A node whose exit launch could not observe (UNOBSERVED_EXIT) must still have gone through its own
    # signal handling ("SIGINT: stopping" in its output) and be reported gone in time.
    unobserved = {int(pid) for pid in UNOBSERVED_EXIT.findall(text)} & pids
    labels = {int(found["pid"]): found["process"] for _, line in launch.lines if (found := STARTED.match(line))}
    for pid in unobserved:
        assert re.search(rf"^\[{re.escape(labels[pid])}\] .*SIGINT: stopping$", text, re.M), \
            f"{labels[pid]} (pid {pid}) shows no clean stop:\n{text[-6000:]}"
        print(f"{labels[pid]}: exit status not observable by launch (asyncio reaped it early); it stopped on SIGINT")
    gone = {**finished, **{pid: at for pid, at in launch.matches(DIED).items() if pid in unobserved}}
    assert set(gone) == pids, f"not every node finished cleanly (exit code 0):\n{text[-6000:]}"
    slowest = max(gone.values()) - signalled_at
    print(f"every node exited 0 within {slowest:.2f} s of Ctrl-C")   # shown with pytest -rP
    assert slowest <= STOP_WITHIN_S, f"the last node exited {slowest:.1f} s after Ctrl-C:\n{text[-6000:]}"
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-6000:]
    assert status == 0 or unobserved, f"ros2 launch exited {status}:\n{text[-3000:]}"


def assert_bags_closed_and_readable(bags_dir: Path) -> None:
    bags = sorted(path for path in bags_dir.iterdir() if path.is_dir())
    assert bags, f"the recorder wrote no bag under {bags_dir}"
    for bag in bags:
        assert (bag / "metadata.yaml").is_file(), f"{bag.name} was not closed (no metadata.yaml)"
        with Reader(bag) as reader:
            assert reader.message_count == sum(1 for _ in reader.messages()) > 0, bag.name


@needs_launch
@pytest.mark.ros
@pytest.mark.parametrize("robots", [1, 2, 5])
def test_ros2_launch_starts_the_fleets_node_set(tmp_path: Path, robots: int) -> None:
    want = expected_nodes(robots, data_root=str(tmp_path / "fleet"))
    with launched(tmp_path, f"robots:={robots}") as launch:
        assert sorted(launch.started_nodes(len(want)).values()) == sorted(want), launch.text()


@needs_launch
@pytest.mark.ros
@pytest.mark.parametrize(("arguments", "error"), [
    (("robots:=2", "compromised_robot:=robot_3"), "compromised_robot 'robot_3' is not a robot of this fleet of 2"),
    (("robots:=two",), "fleet argument robots='two' is not a"),
])
def test_a_bad_launch_argument_ends_in_one_error_line(tmp_path: Path, arguments: tuple[str, ...], error: str) -> None:
    with launched(tmp_path, *arguments) as launch:
        status = launch.wait()
    errors = [line for _, line in launch.lines if "ERROR" in line or "rror:" in line]
    assert status != 0 and len(errors) == 1 and error in errors[0], launch.text()
    assert "Traceback" not in launch.text() and not launch.matches(STARTED), launch.text()


@needs_launch
@pytest.mark.ros
@pytest.mark.parametrize("trial", range(CTRL_C_TRIALS))
def test_ctrl_c_stops_every_launched_node_cleanly(tmp_path: Path, trial: int) -> None:
    whole_group = trial % 2 == 1
    # one robot: every kind of node the fleet runs (robot, runner, driver, recorder, ingestor, monitor,
    # server) in the fewest processes, so that ten trials fit the suite's time
    arguments = ("robots:=1", "behaviour_drivers:=true", "compromised_robot:=robot_1")
    want = expected_nodes(1, data_root=str(tmp_path / "fleet"), behaviour_drivers=True, compromised_robot="robot_1")
    with launched(tmp_path, *arguments) as launch:
        pids = set(launch.started_nodes(len(want)))
        wait_until_on_dds(tmp_path, launch, want)
        # recorded steps from both robots before the stop, so the bag has something to close
        launch.wait_for(lambda: any(int(n) > 0 for n in WRITTEN.findall(launch.text())),
                        "the recorder's first written messages")
        assert_stopped_cleanly(launch, launch.interrupt(whole_group), pids)
    assert_bags_closed_and_readable(launch.data_root / "bags")


# The README's commands ("How a fleet monitor calls the service"), as an operator types them.
FORGET_DRY_RUN = ("service", "call", "/forget", "saferule_interfaces/srv/Forget",
                  "{selector: {robot_ids: [robot_3]}, reason: 'robot_3 compromised', requester: ops, dry_run: true}")
FORGET_RESPONSE = re.compile(
    r"Forget_Response\(accepted=(?P<accepted>True|False), .*message=(?P<q>['\"])(?P<message>.+)(?P=q)\)")


@needs_launch
@pytest.mark.ros
def test_the_readmes_ros2_commands_answer_on_a_launched_fleet(tmp_path: Path) -> None:
    """`ros2 node list`, the README's dry-run Forget and `ros2 topic echo --once` of a robot's
    PolicyStatus against a launched fleet; then Ctrl-C stops it cleanly."""
    want = expected_nodes(3, data_root=str(tmp_path / "fleet"))
    with launched(tmp_path, "robots:=3", "task:=BallRun") as launch:   # the README's launch command
        pids = set(launch.started_nodes(len(want)))
        wait_until_on_dds(tmp_path, launch, want)   # `ros2 node list` lists every node

        # No dataset exists yet (nothing was turned into one): the server's own refusal, not a timeout.
        forget = ros2(tmp_path, *FORGET_DRY_RUN)
        answer = FORGET_RESPONSE.search(forget.stdout)
        assert forget.returncode == 0 and answer is not None, forget.stdout + forget.stderr
        assert answer["accepted"] == "True" or "no such dataset" in answer["message"], answer[0]

        echo = ros2_until(tmp_path, ("topic", "echo", "--once", "--no-daemon", "--spin-time", "3",
                                     "/robot_1/policy_status"), lambda out: "robot_id: robot_1" in out)
        assert echo.returncode == 0 and "robot_id: robot_1" in echo.stdout, echo.stdout + echo.stderr

        assert_stopped_cleanly(launch, launch.interrupt(whole_group=True), pids)
    assert_bags_closed_and_readable(launch.data_root / "bags")
