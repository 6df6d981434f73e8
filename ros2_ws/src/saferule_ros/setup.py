from glob import glob

from setuptools import find_packages, setup

PACKAGE = "saferule_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SafeRULE maintainers",
    maintainer_email="maintainers@saferule.dev",
    description="ROS 2 nodes of SafeRULE.",
    license="Apache-2.0",
    entry_points={"console_scripts": [
        "sim_robot = saferule_ros.sim_robot:main",
        "policy_runner = saferule_ros.policy_runner:main",
        "recorder = saferule_ros.recorder:main",
        "dataset_ingestor = saferule_ros.dataset_ingestor:main",
        "unlearning_server = saferule_ros.unlearning_server:main",
        "fleet_monitor = saferule_ros.fleet_monitor:main",
        "fleet_cli = saferule_ros.fleet_cli:main",
        "behaviour_driver = saferule_ros.behaviour_driver:main",
        "bringup = saferule_ros.bringup:main",
        "demo = saferule_ros.demo:main",
    ]},
)
