"""Launch the SafeRULE fleet on a ROS 2 install (Jazzy, Kilted): simulated robots with their policy
runners, the bag recorder, the unlearning server and the fleet monitor.

The node set is not written here: `saferule_ros.bringup.fleet_nodes` specifies it once, and this
file turns each of its NodeSpecs into a launch_ros Node. The launch-free runner
(`python -m saferule_ros.bringup up`) starts the very same specs as plain processes.

    ros2 launch saferule_ros unlearn.launch.py robots:=3 task:=BallRun data_root:=/tmp/fleet
    ros2 launch saferule_ros unlearn.launch.py robots:=2 behaviour_drivers:=true compromised_robot:=robot_2

No robot is compromised unless `compromised_robot` names one of robot_1 .. robot_<robots>; naming
another ends the launch with one error line. `dataset` (default: dataset) is the dataset under
data_root that Forget requests naming none use. With behaviour_drivers:=true the compromised robot
drives recklessly from the start, so the fleet monitor may act on those scripted episodes before a
dataset or a policy exists; `make demo` therefore starts the monitor together with the first policy.
"""

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from saferule_ros.bringup import PACKAGE, FleetArgs, NodeSpec, fleet_nodes, launch_arguments, prepare_data_root


def ros_node(spec: NodeSpec) -> Node:
    return Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                parameters=list(spec.parameters), remappings=list(spec.remappings), output="screen",
                emulate_tty=True, additional_env=dict(spec.environment))


def launch_fleet(context: LaunchContext) -> list[Node]:
    values = {argument.name: LaunchConfiguration(argument.name).perform(context) for argument in launch_arguments()}
    values["config_dir"] = f"{get_package_share_directory(PACKAGE)}/config"
    fleet = FleetArgs.from_strings(values)
    prepare_data_root(fleet.layout)  # the runners need the verify key before they start
    return [ros_node(spec) for spec in fleet_nodes(fleet)]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(argument.name, default_value=argument.default, description=argument.description)
                for argument in launch_arguments()]
    return LaunchDescription([*declared, OpaqueFunction(function=launch_fleet)])
