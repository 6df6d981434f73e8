"""saferule_ros.bringup: the one specification of the fleet's node set (no processes started here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saferule_core.errors import SafeRuleError, TaskError
from saferule_ros.bringup import (
    DATASET_NAME,
    PACKAGE,
    FleetArgs,
    FleetConfigError,
    NodeSpec,
    fleet_nodes,
    launch_arguments,
    prepare_data_root,
    share_dir,
)
from tests.ros.ros_harness import REPO_ROOT


def by_label(specs: list[NodeSpec]) -> dict[str, NodeSpec]:
    return {spec.label: spec for spec in specs}


def overrides(spec: NodeSpec) -> dict[str, object]:
    merged: dict[str, object] = {}
    for source in spec.parameters:
        if isinstance(source, dict):
            merged.update(source)
    return merged


def test_fleet_nodes_lists_each_node_once_with_its_namespace(tmp_path: Path) -> None:
    specs = fleet_nodes(FleetArgs(robots=3, data_root=str(tmp_path)))
    labels = [spec.label for spec in specs]
    assert labels == ["robot_1/sim_robot", "robot_1/policy_runner", "robot_2/sim_robot", "robot_2/policy_runner",
                      "robot_3/sim_robot", "robot_3/policy_runner", "recorder", "dataset_ingestor", "unlearning_server",
                      "fleet_monitor"]
    assert all(spec.package == PACKAGE for spec in specs)
    assert {spec.namespace for spec in specs if spec.executable == "sim_robot"} == {"/robot_1", "/robot_2", "/robot_3"}
    assert {spec.namespace for spec in specs if spec.executable in ("recorder", "unlearning_server")} == {"/"}
    with_drivers = fleet_nodes(FleetArgs(robots=2, data_root=str(tmp_path), behaviour_drivers=True,
                                         compromised_robot="robot_2"))
    assert [s.label for s in with_drivers if s.executable == "behaviour_driver"] == [
        "robot_1/behaviour_driver", "robot_2/behaviour_driver"]


def test_every_executable_is_a_module_of_the_package(tmp_path: Path) -> None:
    for spec in fleet_nodes(FleetArgs(robots=1, data_root=str(tmp_path), behaviour_drivers=True,
                                      compromised_robot="robot_1")):
        assert importlib.util.find_spec(f"{spec.package}.{spec.executable}") is not None, spec.executable


def test_parameters_are_the_yaml_file_then_the_fleet_overrides(tmp_path: Path) -> None:
    fleet = FleetArgs(task="CarRun", robots=2, data_root=str(tmp_path / "root"), method="retrain", control_rate=20,
                      compromised_robot="robot_2", behaviour_drivers=True, bag_split_s=30.0)
    specs = by_label(fleet_nodes(fleet))
    config = share_dir() / "config"
    for spec in specs.values():
        files = [p for p in spec.parameters if isinstance(p, str)]
        assert all(Path(f).is_file() and Path(f).parent == config for f in files), spec.label
        assert spec.parameters[-1] is not None and isinstance(spec.parameters[-1], dict), "overrides come last"
    root = (tmp_path / "root").resolve()
    sim = overrides(specs["robot_2/sim_robot"])
    assert (sim["task"], sim["rate_hz"]) == ("CarRun", 20.0)
    assert overrides(specs["robot_1/sim_robot"])["seed"] != sim["seed"]
    runner = overrides(specs["robot_1/policy_runner"])
    assert runner["registry_dir"] == str(root / "policies")
    assert runner["verify_key"] == str(root / "keys" / "verify_key")
    recorder = overrides(specs["recorder"])
    assert recorder["robots"] == ["robot_1", "robot_2"] and recorder["out_dir"] == str(root / "bags")
    assert recorder["split_max_duration_s"] == 30.0
    server = overrides(specs["unlearning_server"])
    assert server["data_root"] == str(root) and server["robots"] == ["robot_1", "robot_2"]
    assert server["default_method"] == "retrain" and server["registry_dir"] == runner["registry_dir"]
    assert server["model_dir"] == str(root / "models" / "deployed")
    monitor = overrides(specs["fleet_monitor"])
    assert monitor["dataset"] == DATASET_NAME and monitor["method"] == "retrain" and monitor["task"] == "CarRun"
    assert monitor["robots"] == ["robot_1", "robot_2"] and monitor["compromised_robot"] == "robot_2"
    assert monitor["auto_forget"] is True and monitor["flag_streak"] == 0
    quiet = overrides(by_label(fleet_nodes(FleetArgs(data_root=str(tmp_path), compromised_robot="")))["fleet_monitor"])
    assert quiet["auto_forget"] is False and "flag_streak" not in quiet, "no suspect: the monitor only reports"
    assert overrides(specs["robot_2/behaviour_driver"])["aggressiveness_low"] > \
        overrides(specs["robot_1/behaviour_driver"])["aggressiveness_high"], "the compromised robot drives recklessly"


def test_ros_arguments_name_the_node_and_encode_values_as_yaml(tmp_path: Path) -> None:
    spec = NodeSpec(PACKAGE, "sim_robot", "sim", "/robot_9", ("/cfg/sim.yaml", {
        "task": "BallRun", "rate_hz": 25.0, "seed": 3, "robot_id": "123", "flag": True, "robots": ["a", "b"]}),
        remappings=(("action", "cmd"),))
    args = spec.ros_arguments()
    assert args[:5] == ["--ros-args", "-r", "__ns:=/robot_9", "-r", "__node:=sim"]
    assert args[5:7] == ["--params-file", "/cfg/sim.yaml"]
    assert args[-2:] == ["-r", "action:=cmd"]
    values = {}
    for flag, item in zip(args[7:-2:2], args[8:-2:2]):
        assert flag == "-p"
        key, _, text = item.partition(":=")
        values[key] = yaml.safe_load(text)
    # "123" stays a string: a robot id that looks like a number must not become an integer
    assert values == {"task": "BallRun", "rate_hz": 25.0, "seed": 3, "robot_id": "123", "flag": True,
                      "robots": ["a", "b"]}
    assert spec.command("/py")[:3] == ["/py", "-m", "saferule_ros.sim_robot"]


def test_fleet_args_refuse_what_cannot_be_a_fleet(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="at least one robot"):
        FleetArgs(robots=0)
    with pytest.raises(FleetConfigError, match="control_rate"):
        FleetArgs(control_rate=0.0)
    with pytest.raises(TaskError, match="unknown task"):
        FleetArgs(task="NoSuchTask")
    with pytest.raises(FleetConfigError, match="robot_5.*robot_1, robot_2"):
        FleetArgs(robots=2, compromised_robot="robot_5")
    with pytest.raises(FleetConfigError, match="no parameter file"):
        fleet_nodes(FleetArgs(data_root=str(tmp_path), config_dir=str(tmp_path)))


def test_control_rt_priority_reaches_only_the_control_path_processes(tmp_path: Path) -> None:
    from saferule_ros.control_path import RT_PRIORITY

    plain = fleet_nodes(FleetArgs(data_root=str(tmp_path)))
    assert all(spec.environment == () for spec in plain)
    raised = by_label(fleet_nodes(FleetArgs(robots=2, data_root=str(tmp_path), control_rt_priority=20)))
    control = {label for label, spec in raised.items() if spec.name in ("sim_robot", "policy_runner")}
    assert len(control) == 4
    for label, spec in raised.items():
        assert spec.environment == (((RT_PRIORITY, "20"),) if label in control else ()), label
    assert FleetArgs.from_strings({"control_rt_priority": "20"}).control_rt_priority == 20
    for bad in (-1, 100):
        with pytest.raises(FleetConfigError, match="control_rt_priority must be 0 .off. or 1-99"):
            FleetArgs(control_rt_priority=bad)


def test_fleet_args_from_launch_strings() -> None:
    fleet = FleetArgs.from_strings({"robots": "2", "control_rate": "20", "behaviour_drivers": "true",
                                    "compromised_robot": "", "task": "BallRun"})
    assert (fleet.robots, fleet.control_rate, fleet.behaviour_drivers, fleet.compromised_robot) == (2, 20.0, True, "")
    with pytest.raises(FleetConfigError, match="robots='two' is not a int"):
        FleetArgs.from_strings({"robots": "two"})
    with pytest.raises(FleetConfigError, match="behaviour_drivers='maybe'"):
        FleetArgs.from_strings({"behaviour_drivers": "maybe"})
    with pytest.raises(FleetConfigError, match="unknown fleet arguments colour"):
        FleetArgs.from_strings({"colour": "red"})
    # every launch argument is a FleetArgs field, with the field's default as text
    for argument in launch_arguments():
        assert FleetArgs.from_strings({argument.name: argument.default}) == FleetArgs()


def test_prepare_data_root_makes_keys_and_directories_once(tmp_path: Path) -> None:
    layout = FleetArgs(data_root=str(tmp_path / "fleet")).layout
    created = prepare_data_root(layout)
    assert (layout.key_dir / "signing_key").is_file() and (layout.key_dir / "verify_key").is_file()
    assert layout.registry_dir.is_dir() and layout.bags_dir.is_dir() and len(created) == 5
    key = (layout.key_dir / "verify_key").read_text()
    assert prepare_data_root(layout) == [] and (layout.key_dir / "verify_key").read_text() == key
    assert issubclass(FleetConfigError, SafeRuleError)


def test_show_prints_one_command_per_node(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "saferule_ros.bringup", "show", "--robots", "2", "--data-root",
                          str(tmp_path), "--behaviour-drivers", "--compromised-robot", "robot_2"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    expected = fleet_nodes(FleetArgs(robots=2, data_root=str(tmp_path), behaviour_drivers=True,
                                     compromised_robot="robot_2"))
    assert len(lines) == len(expected)
    assert all(f"-m saferule_ros.{spec.executable} " in line and f"__node:={spec.name}" in line
               for line, spec in zip(lines, expected))
    raised = subprocess.run([sys.executable, "-m", "saferule_ros.bringup", "show", "--robots", "1", "--data-root",
                             str(tmp_path), "--control-rt-priority", "20"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert raised.returncode == 0, raised.stderr
    prefixed = [line for line in raised.stdout.splitlines() if line.startswith("SAFERULE_CONTROL_RT_PRIORITY=20 ")]
    assert len(prefixed) == 2 and all("sim_robot" in line or "policy_runner" in line for line in prefixed)
    bad = subprocess.run([sys.executable, "-m", "saferule_ros.bringup", "show", "--robots", "0"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at least one robot" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("robots", [1, 2, 5])
def test_any_fleet_size_starts_with_the_default_arguments(tmp_path: Path, robots: int) -> None:
    robot_ids = [f"robot_{i}" for i in range(1, robots + 1)]
    specs = fleet_nodes(FleetArgs.from_strings({"robots": str(robots), "data_root": str(tmp_path)}))
    assert [spec.label for spec in specs] == [f"{robot}/{node}" for robot in robot_ids
                                              for node in ("sim_robot", "policy_runner")] + [
        "recorder", "dataset_ingestor", "unlearning_server", "fleet_monitor"]
    nodes = by_label(specs)
    monitor = overrides(nodes["fleet_monitor"])
    assert monitor["robots"] == robot_ids and monitor["compromised_robot"] == "" and monitor["auto_forget"] is False
    assert overrides(nodes["recorder"])["robots"] == robot_ids
    server = overrides(nodes["unlearning_server"])
    assert server["robots"] == robot_ids and server["default_dataset"] == monitor["dataset"] == DATASET_NAME


def test_a_compromised_robot_outside_the_fleet_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from saferule_ros.bringup import main

    assert main(["show", "--robots", "2", "--compromised-robot", "robot_3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "compromised_robot 'robot_3' is not a robot of this fleet of 2 (robot_1, robot_2)" in err
    with pytest.raises(FleetConfigError, match="robot_9"):
        FleetArgs.from_strings({"robots": "5", "compromised_robot": "robot_9"})


def test_the_dataset_argument_names_the_servers_default_and_the_monitors_dataset(tmp_path: Path) -> None:
    fleet = FleetArgs(robots=1, data_root=str(tmp_path), dataset="live")
    nodes = by_label(fleet_nodes(fleet))
    assert overrides(nodes["unlearning_server"])["default_dataset"] == "live"
    assert overrides(nodes["fleet_monitor"])["dataset"] == "live"
    assert fleet.layout.dataset_dir == tmp_path.resolve() / "live"
    for bad in ("", "../elsewhere", "/abs"):
        with pytest.raises(FleetConfigError, match="dataset"):
            FleetArgs(dataset=bad)
