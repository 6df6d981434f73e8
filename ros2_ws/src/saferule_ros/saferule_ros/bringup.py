"""The fleet's node set, specified once: what `launch/unlearn.launch.py` launches on a ROS 2 install
and what the launch-free runner (`python -m saferule_ros.bringup up`) starts as processes here.

`fleet_nodes(FleetArgs(...))` lists one `NodeSpec` per node:

    /robot_<i>/sim_robot          a simulated robot (i = 1..robots)
    /robot_<i>/policy_runner      runs the registry's signed policy on that robot, follows `latest`
    /robot_<i>/behaviour_driver   only with behaviour_drivers: scripted driving until a policy runs
    /recorder                     MCAP bags of every robot's topics
    /dataset_ingestor             appends each closed bag's finished episodes to the fleet's dataset
    /unlearning_server            Forget service + Unlearn action; swaps every runner on success
    /fleet_monitor                per-robot episode cost; forgets a compromised robot's data (if one is named)

Parameters: the node's YAML file from the package's config directory, then the overrides the fleet
arguments imply (namespaced paths under the data root, task, rate, seeds). Every path a node uses
lies under one data root (see `FleetLayout`).

    python -m saferule_ros.bringup up --robots 3 --task BallRun --data-root fleet
    python -m saferule_ros.bringup show --robots 2          # the commands, without starting them
    python -m saferule_ros.bringup bootstrap --data-root fleet --task BallRun   # the first policy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from saferule_core.errors import SafeRuleError
from saferule_ros.control_path import RT_PRIORITY

PACKAGE = "saferule_ros"
ROBOT_PREFIX = "robot_"
DATASET_NAME = "dataset"                # the fleet's dataset, under the data root (default)
CAUTIOUS_AGGRESSIVENESS = (0.0, 0.6)    # behaviour drivers of healthy robots: mostly within the cost limit
RECKLESS_AGGRESSIVENESS = (0.9, 1.0)    # the compromised robot's driver: over the speed limit nearly all the time

ParameterSource = str | dict[str, Any]   # a YAML parameter file, or name -> value overrides


class FleetConfigError(SafeRuleError):
    """Fleet arguments that cannot describe a fleet (no robots, a bad rate, an unknown task)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: the fields a `launch_ros.actions.Node` takes, nothing launch-specific."""

    package: str
    executable: str                  # a console script of `package` and the module saferule_ros.<executable>
    name: str
    namespace: str                   # "/robot_1", or "/" for fleet-wide nodes
    parameters: tuple[ParameterSource, ...] = ()   # applied in order: later sources win
    remappings: tuple[tuple[str, str], ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # variables set for this node's process only

    @property
    def label(self) -> str:
        """"robot_1/sim_robot", "recorder": the node's full name without the leading slash."""
        return f"{self.namespace.strip('/')}/{self.name}".strip("/")

    def ros_arguments(self) -> list[str]:
        """The node's `--ros-args ...` for a process started without the launch system."""
        args = ["--ros-args", "-r", f"__ns:={self.namespace}", "-r", f"__node:={self.name}"]
        for source in self.parameters:
            if isinstance(source, str):
                args += ["--params-file", source]
            else:
                # JSON is YAML: strings stay strings ("123" is not an integer), lists stay lists.
                for key, value in source.items():
                    args += ["-p", f"{key}:={json.dumps(value)}"]
        for old, new in self.remappings:
            args += ["-r", f"{old}:={new}"]
        return args

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", f"{self.package}.{self.executable}", *self.ros_arguments()]


@dataclass(frozen=True)
class FleetLayout:
    """Where everything of one fleet lives, under one data root."""

    root: Path
    dataset: str = DATASET_NAME

    @property
    def bags_dir(self) -> Path:
        return self.root / "bags"

    @property
    def dataset_dir(self) -> Path:
        """The fleet's dataset (a saferule DatasetStore with its forget ledger)."""
        return self.root / self.dataset

    @property
    def deployed_model_dir(self) -> Path:
        """The checkpoint the first published policy was exported from (where unlearning starts)."""
        return self.models_dir / "deployed"

    @property
    def registry_dir(self) -> Path:
        return self.root / "policies"

    @property
    def key_dir(self) -> Path:
        """signing_key (stays with the unlearning server) and verify_key (what the robots trust)."""
        return self.root / "keys"

    @property
    def models_dir(self) -> Path:
        """Trained model directories (checkpoints) behind the published artifacts."""
        return self.root / "models"

    @property
    def work_dir(self) -> Path:
        """Unlearning jobs' outputs, one directory per forget request."""
        return self.root / "unlearning"


def _arg(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class FleetArgs:
    """What varies between fleets; everything else comes from the YAML files in config/. Each field
    is also a launch argument of unlearn.launch.py and an option of `bringup up`."""

    task: str = _arg("BallRun", "task every sim_robot simulates")
    robots: int = _arg(3, "number of robots, namespaces /robot_1 .. /robot_N")
    data_root: str = _arg("fleet", "directory of the fleet's bags, dataset, policies, keys, models")
    dataset: str = _arg(DATASET_NAME, "the fleet's dataset directory under data_root (Forget requests that name "
                                      "none use it; so does the fleet monitor)")
    method: str = _arg("safe_rule", "unlearning method the monitor asks for")
    control_rate: float = _arg(50.0, "steps per second of every sim_robot")
    control_rt_priority: int = _arg(0, "SCHED_FIFO priority (1-99) of every sim_robot and policy_runner, so that "
                                       "other processes starting wait for the control loop (needs CAP_SYS_NICE or "
                                       "an rtprio limit; refused with one line otherwise); 0 = normal scheduling")
    compromised_robot: str = _arg("", "robot whose data the monitor forgets when costs rise, e.g. robot_3 "
                                      "('' = none)")
    behaviour_drivers: bool = _arg(False, "drive every robot with scripted behaviours until its runner has a policy")
    poison_logs: bool = _arg(False, "red-team: the compromised robot's step records claim zero cost, so its "
                                    "reckless episodes enter the dataset as safe ones")
    seed: int = _arg(0, "seed of the simulators and behaviour drivers")
    bag_split_s: float = _arg(600.0, "the recorder closes a bag after this many seconds (recorded episodes join "
                                     "the dataset within about this long)")
    ingest_bags: bool = _arg(True, "append each closed bag's finished episodes to the fleet's dataset "
                                   "(dataset_ingestor)")
    unlearn_config_file: str = _arg("", "YAML of UnlearnConfig overrides for the server ('' = defaults)")
    config_dir: str = _arg("", "directory of the nodes' YAML parameter files ('' = the package's config/)")

    def __post_init__(self) -> None:
        if self.robots < 1:
            raise FleetConfigError(f"a fleet needs at least one robot, got robots={self.robots}")
        if not self.control_rate > 0:
            raise FleetConfigError(f"control_rate must be > 0 Hz, got {self.control_rate}")
        if not 0 <= self.control_rt_priority <= 99:
            raise FleetConfigError(f"control_rt_priority must be 0 (off) or 1-99, got {self.control_rt_priority}")
        if not self.bag_split_s > 0:
            raise FleetConfigError(f"bag_split_s must be > 0, got {self.bag_split_s}")
        if not self.data_root:
            raise FleetConfigError("data_root must name a directory")
        if not self.dataset or Path(self.dataset).is_absolute() or ".." in Path(self.dataset).parts:
            raise FleetConfigError(f"dataset {self.dataset!r}: name a directory under data_root (relative, no '..')")
        from saferule_core.tasks.spec import get_task

        get_task(self.task)  # TaskError (a SafeRuleError) names the known tasks
        if self.poison_logs and not self.compromised_robot:
            raise FleetConfigError("poison_logs needs compromised_robot: name the robot whose logs are poisoned")
        if self.compromised_robot and self.compromised_robot not in self.robot_ids:
            raise FleetConfigError(f"compromised_robot {self.compromised_robot!r} is not a robot of this fleet of "
                                   f"{self.robots} ({', '.join(self.robot_ids)}); name one of them, or '' for none")

    @property
    def robot_ids(self) -> list[str]:
        return [f"{ROBOT_PREFIX}{i}" for i in range(1, self.robots + 1)]

    @property
    def layout(self) -> FleetLayout:
        return FleetLayout(Path(self.data_root).expanduser().resolve(), self.dataset)

    def resolved_config_dir(self) -> Path:
        return Path(self.config_dir).expanduser() if self.config_dir else share_dir() / "config"

    @staticmethod
    def from_strings(values: Mapping[str, str]) -> FleetArgs:
        """FleetArgs from text values (launch configurations, environment); unknown names refused."""
        hints = typing.get_type_hints(FleetArgs)
        known = {f.name for f in dataclasses.fields(FleetArgs)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FleetConfigError(f"unknown fleet arguments {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        converted: dict[str, Any] = {}
        for name, text in values.items():
            kind = hints[name]
            try:
                if kind is bool:
                    lowered = text.strip().lower()
                    if lowered not in ("true", "false", "1", "0"):
                        raise ValueError
                    converted[name] = lowered in ("true", "1")
                else:
                    converted[name] = kind(text)
            except ValueError:
                raise FleetConfigError(f"fleet argument {name}={text!r} is not a {kind.__name__}") from None
        return FleetArgs(**converted)


def share_dir() -> Path:
    """The package's share directory (config/, launch/): from the ament index when it knows the
    package, else next to the installed Python package (colcon's layout), else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError):
        pass
    here = Path(__file__).resolve().parent
    installed = here.parents[3] / "share" / PACKAGE  # <prefix>/lib/pythonX.Y/site-packages/saferule_ros
    if (installed / "config").is_dir():
        return installed
    source = here.parent                              # ros2_ws/src/saferule_ros
    if (source / "config").is_dir():
        return source
    raise FleetConfigError(f"cannot find the {PACKAGE} share directory (looked in the ament index, {installed} "
                           f"and {source}); build the workspace or pass config_dir")


def _yaml(config_dir: Path, node: str) -> str:
    path = config_dir / f"{node}.yaml"
    if not path.is_file():
        raise FleetConfigError(f"no parameter file {path} for {node}")
    return str(path)


def fleet_nodes(args: FleetArgs) -> list[NodeSpec]:
    """Every node of the fleet, robots first (see the module docstring)."""
    config = args.resolved_config_dir()
    layout = args.layout
    verify_key = str(layout.key_dir / "verify_key")
    specs: list[NodeSpec] = []
    control_env = ((RT_PRIORITY, str(args.control_rt_priority)),) if args.control_rt_priority else ()
    for index, robot in enumerate(args.robot_ids):
        namespace = f"/{robot}"
        specs.append(NodeSpec(PACKAGE, "sim_robot", "sim_robot", namespace, (
            _yaml(config, "sim_robot"),
            {"task": args.task, "rate_hz": float(args.control_rate), "seed": args.seed * 1000 + index,
             "tamper_cost_log": args.poison_logs and robot == args.compromised_robot},
        ), environment=control_env))
        specs.append(NodeSpec(PACKAGE, "policy_runner", "policy_runner", namespace, (
            _yaml(config, "policy_runner"),
            {"registry_dir": str(layout.registry_dir), "verify_key": verify_key},
        ), environment=control_env))
        if args.behaviour_drivers:
            low, high = RECKLESS_AGGRESSIVENESS if robot == args.compromised_robot else CAUTIOUS_AGGRESSIVENESS
            specs.append(NodeSpec(PACKAGE, "behaviour_driver", "behaviour_driver", namespace, (
                {"task": args.task, "aggressiveness_low": low, "aggressiveness_high": high,
                 "seed": args.seed * 1000 + index},
            )))
    specs.append(NodeSpec(PACKAGE, "recorder", "recorder", "/", (
        _yaml(config, "recorder"),
        {"robots": args.robot_ids, "out_dir": str(layout.bags_dir), "split_max_duration_s": float(args.bag_split_s)},
    )))
    if args.ingest_bags:
        specs.append(NodeSpec(PACKAGE, "dataset_ingestor", "dataset_ingestor", "/", (
            _yaml(config, "dataset_ingestor"),
            {"bags_dir": str(layout.bags_dir), "dataset_dir": str(layout.dataset_dir), "task": args.task},
        )))
    # The dataset may not exist yet (it is built from the bags the fleet records): the server only
    # warns at start, and refuses requests that name no dataset until it does.
    specs.append(NodeSpec(PACKAGE, "unlearning_server", "unlearning_server", "/", (
        _yaml(config, "unlearning_server"),
        {"data_root": str(layout.root), "default_dataset": args.dataset, "model_dir": str(layout.deployed_model_dir),
         "registry_dir": str(layout.registry_dir), "signing_key": str(layout.key_dir), "work_dir": str(layout.work_dir),
         "robots": args.robot_ids, "default_method": args.method,
         "unlearn_config_file": str(Path(args.unlearn_config_file).expanduser().resolve())
         if args.unlearn_config_file else ""},
    )))
    # The monitor forgets the compromised robot's data once one of its episodes goes over the task's
    # cost threshold. Its streak rule stays off here: every robot runs the same policy, so the
    # healthy robots go over the threshold too, and their data is not what must be forgotten.
    monitor: dict[str, Any] = {"robots": args.robot_ids, "task": args.task, "cost_threshold": 0.0,
                               "compromised_robot": args.compromised_robot,
                               "auto_forget": bool(args.compromised_robot), "dataset": args.dataset,
                               "method": args.method}
    if args.compromised_robot:
        monitor["flag_streak"] = 0
    specs.append(NodeSpec(PACKAGE, "fleet_monitor", "fleet_monitor", "/", (_yaml(config, "fleet_monitor"), monitor)))
    return specs


def prepare_data_root(layout: FleetLayout) -> list[str]:
    """Create what the nodes expect to exist under the data root: a signing key pair and the
    directories. Returns what was created (nothing on a second run)."""
    from saferule_core.artifacts.signing import SIGNING_KEY_FILE, generate_keypair

    created: list[str] = []
    if not (layout.key_dir / SIGNING_KEY_FILE).exists():
        generate_keypair(layout.key_dir)
        created.append(f"signing key pair in {layout.key_dir}")
    for directory in (layout.bags_dir, layout.registry_dir, layout.models_dir, layout.work_dir):
        if not directory.is_dir():
            directory.mkdir(parents=True)
            created.append(str(directory))
    return created


# ----- command line ----------------------------------------------------------------------------

DESCRIPTION = """\
Start the SafeRULE fleet without the ROS 2 launch system: one process per node of
saferule_ros.bringup.fleet_nodes (the same node set launch/unlearn.launch.py launches), with every
line of output prefixed by the node's name. Ctrl-C stops them all (SIGINT, then SIGTERM, then
SIGKILL); if a node dies, the others are stopped and the exit status is 1.

DDS stays on loopback unless ROS_AUTOMATIC_DISCOVERY_RANGE is set; set ROS_DOMAIN_ID to keep
fleets apart. The data root gets a signing key pair and its directories on first use.
"""

EPILOG = """\
example:
  ROS_DOMAIN_ID=44 python -m saferule_ros.bringup up --robots 3 --task BallRun --data-root fleet
  python -m saferule_ros.bringup show --robots 2 --behaviour-drivers
"""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(FleetArgs)
    for spec in dataclasses.fields(FleetArgs):
        help_text = spec.metadata["help"]
        if hints[spec.name] is bool:
            parser.add_argument(_option(spec.name), action=argparse.BooleanOptionalAction, default=spec.default,
                                help=help_text)
        else:
            parser.add_argument(_option(spec.name), type=hints[spec.name], default=spec.default,
                                help=f"{help_text} (default: {spec.default!r})")


def args_from_namespace(ns: argparse.Namespace) -> FleetArgs:
    return FleetArgs(**{spec.name: getattr(ns, spec.name) for spec in dataclasses.fields(FleetArgs)})


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


def launch_arguments() -> list[LaunchArgument]:
    """FleetArgs as launch arguments (text defaults); config_dir is left to the launch file, which
    takes it from the installed package."""
    arguments = []
    for spec in dataclasses.fields(FleetArgs):
        if spec.name == "config_dir":
            continue
        default = str(spec.default).lower() if isinstance(spec.default, bool) else str(spec.default)
        arguments.append(LaunchArgument(spec.name, default, spec.metadata["help"]))
    return arguments


def _up(fleet: FleetArgs) -> int:
    from saferule_ros.processes import FleetProcesses

    for line in prepare_data_root(fleet.layout):
        print(f"[bringup] created {line}")
    stop_requested: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    specs = fleet_nodes(fleet)
    with FleetProcesses(specs) as processes:
        print(f"[bringup] {len(specs)} nodes up (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); Ctrl-C stops")
        while not stop_requested:
            dead = processes.exited()
            if dead:
                for label, status in dead:
                    print(f"[bringup] {label} exited with status {status}; stopping the fleet", file=sys.stderr)
                processes.stop()
                return 1
            time.sleep(0.2)
        print("[bringup] stopping")
        statuses = processes.stop()
    failed = {label: status for label, status in statuses.items() if status != 0}
    for label, status in failed.items():
        print(f"[bringup] {label} ended with status {status}", file=sys.stderr)
    return 1 if failed else 0


BOOTSTRAP_DESCRIPTION = """\
Give a fleet its first policy from its own recorded data: ingest the closed bags under
<data root>/bags into the fleet's dataset, train a learner on it into <data root>/models/deployed
(progress bar), export it to ONNX, check it, sign it with the fleet's key and publish it to
<data root>/policies with its checkpoint recorded. Every policy runner of a running fleet switches
to it by itself; Forget requests and unlearning then start from this model.

Run it while the fleet drives (with behaviour_drivers:=true the robots log data before any policy
exists). Refused, with the reason, when the dataset has fewer than --min-episodes finished
episodes or the fleet already has a published policy.
"""

BOOTSTRAP_EPILOG = """\
example:
  ros2 launch saferule_ros unlearn.launch.py behaviour_drivers:=true bag_split_s:=30 data_root:=/tmp/fleet
  python -m saferule_ros.bringup bootstrap --data-root /tmp/fleet --task BallRun --steps 10000
  python -m saferule_ros.bringup bootstrap --data-root /tmp/fleet --config learner.yaml   # as saferule train --config
"""


def _bootstrap(ns: argparse.Namespace) -> int:
    from saferule_core.commands.train import read_train_settings
    from saferule_ros.bootstrap import BootstrapSettings, bootstrap_first_policy

    learner_settings, train_settings = read_train_settings(ns.config)
    layout = FleetLayout(Path(ns.data_root).expanduser().resolve(), ns.dataset)
    settings = BootstrapSettings(task=ns.task, algo=ns.algo, steps=ns.steps, seed=ns.seed,
                                 min_episodes=ns.min_episodes, learner_settings=learner_settings,
                                 train_settings=train_settings, progress=not ns.quiet)
    result = bootstrap_first_policy(layout, settings, say=lambda text: print(f"[bootstrap] {text}", flush=True))
    print(f"[bootstrap] {result.version}: {settings.algo} trained on {result.episodes} episodes in "
          f"{result.train_seconds:.0f} s; checkpoint {result.model_dir}")
    return 0


def _add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    from saferule_ros.bootstrap import DEFAULT_ALGO, DEFAULT_MIN_EPISODES, DEFAULT_STEPS

    defaults = FleetArgs()
    parser.add_argument("--data-root", default=defaults.data_root, help="the fleet's data root (default: %(default)s)")
    parser.add_argument("--dataset", default=defaults.dataset, help="the fleet's dataset under the data root "
                                                                     "(default: %(default)s)")
    parser.add_argument("--task", default=defaults.task, help="the task the fleet's robots run (default: %(default)s)")
    parser.add_argument("--algo", default=DEFAULT_ALGO, help="learner (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training updates (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--min-episodes", type=int, default=DEFAULT_MIN_EPISODES,
                        help="refuse to train on fewer finished episodes (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML of learner settings plus optional train: and compute: mappings "
                             "(as saferule train --config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bringup", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the fleet's nodes and supervise them",
                             description=DESCRIPTION, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    show = commands.add_parser("show", help="print each node's command line, start nothing")
    for sub in (up, show):
        _add_fleet_arguments(sub)
    bootstrap = commands.add_parser("bootstrap", help="train and publish the fleet's first policy from its bags",
                                    description=BOOTSTRAP_DESCRIPTION, epilog=BOOTSTRAP_EPILOG,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bootstrap_arguments(bootstrap)
    ns = parser.parse_args(argv)
    try:
        if ns.command == "bootstrap":
            return _bootstrap(ns)
        fleet = args_from_namespace(ns)
        if ns.command == "show":
            import shlex

            for spec in fleet_nodes(fleet):
                print(shlex.join([f"{name}={value}" for name, value in spec.environment] + spec.command()))
            return 0
        return _up(fleet)
    except SafeRuleError as err:
        print(f"bringup: error: {err}", file=sys.stderr)
        return 2


__all__ = [
    "CAUTIOUS_AGGRESSIVENESS", "PACKAGE", "RECKLESS_AGGRESSIVENESS", "FleetArgs", "FleetConfigError", "FleetLayout",
    "LaunchArgument", "NodeSpec", "fleet_nodes", "launch_arguments", "main", "prepare_data_root", "share_dir",
]

if __name__ == "__main__":
    raise SystemExit(main())
