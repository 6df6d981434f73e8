"""ROS 2 adapters over saferule_core: nodes, message conversions, the node specification."""
