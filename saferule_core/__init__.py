"""SafeRULE core: offline safe RL data, attacks, learners, unlearning and policy artifacts.

No ROS import anywhere in this package; `saferule_ros` adapts it to ROS 2.
"""

__version__ = "0.1.0"
