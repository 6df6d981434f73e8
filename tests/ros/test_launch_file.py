"""launch/unlearn.launch.py: as far as it can be checked without the ROS 2 launch system.

`launch`, `launch_ros` and `launch_testing` cannot be installed from the package registries here
(ROS 2's launch is not on PyPI; PyPI's `launch` is an unrelated project). So:
  * the file's imports are checked from its syntax tree (only launch, launch_ros,
    ament_index_python and saferule_ros);
  * its generate_launch_description() runs with small stand-in `launch` / `launch_ros` modules
    injected into sys.modules. This is the one mock of the test suite, and it sits at the edge:
    the stand-ins only record what the file asks for; the real ament_index_python finds the
    installed package, and the node set comes from the real saferule_ros.bringup.fleet_nodes;
  * every executable it launches is a console script in setup.py;
  * a test that really launches the file with the launch system runs where launch_ros is
    importable (a ROS 2 Jazzy/Kilted install) and is skipped here.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saferule_ros.bringup import PACKAGE, FleetArgs, fleet_nodes, launch_arguments
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


LAUNCH_ROS_MISSING = any(importlib.util.find_spec(name) is None for name in ("launch_ros", "launch_testing"))


@pytest.mark.ros
@pytest.mark.skipif(LAUNCH_ROS_MISSING, reason="launch_ros / launch_testing cannot be installed from the package "
                                               "registries here (ROS 2 launch is not on PyPI); this test runs on a "
                                               "ROS 2 Jazzy/Kilted install")
def test_launching_the_file_brings_up_every_robot(tmp_path: Path) -> None:  # pragma: no cover - needs ROS 2 launch
    import asyncio
    import threading

    import launch
    import launch_testing  # noqa: F401  (present with launch_ros on a ROS 2 install)
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from saferule_interfaces.msg import PolicyStatus
    from std_msgs.msg import Float64MultiArray
    from tests.ros.ros_harness import probe_node, spin_until

    robots = ["robot_1", "robot_2"]
    service = launch.LaunchService()
    service.include_launch_description(launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={"robots": "2", "data_root": str(tmp_path / "fleet"), "compromised_robot": "robot_2"}.items()))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(service.run_async()), daemon=True)
    thread.start()
    try:
        with probe_node("launch_probe") as (node, executor):
            statuses: set[str] = set()
            steps: set[str] = set()
            for robot in robots:
                node.create_subscription(PolicyStatus, f"/{robot}/policy_status",
                                         lambda msg, r=robot: statuses.add(r), 10)
                node.create_subscription(Float64MultiArray, f"/{robot}/step_record",
                                         lambda msg, r=robot: steps.add(r), 10)
            spin_until(executor, lambda: statuses == set(robots) and steps == set(robots),
                       "PolicyStatus and step records from every launched robot", timeout=60)
            names = {f"{ns.rstrip('/')}/{name}" for name, ns in node.get_node_names_and_namespaces()}
            assert {"/robot_1/sim_robot", "/robot_2/policy_runner", "/recorder", "/unlearning_server",
                    "/fleet_monitor"} <= names
    finally:
        loop.call_soon_threadsafe(lambda: loop.create_task(service.shutdown()))
        thread.join(timeout=30)
        time.sleep(0.1)
