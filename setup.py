"""The `saferule` distribution: the `saferule_core` library and the `saferule` command."""

from setuptools import find_packages, setup

setup(
    name="saferule",
    version="0.1.0",
    description="Safe Reinforcement UnLEarning: remove poisoned logged data from offline safe RL policies.",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["saferule_core", "saferule_core.*"]),
    package_data={"saferule_core": ["py.typed"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pyarrow",
        "h5py",
        "onnx",
        "onnxruntime",
        "pynacl",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "gymnasium",
        "pybullet",
        "bullet-safety-gym",
        "rosbags",
    ],
    entry_points={"console_scripts": ["saferule = saferule_core.cli:main"]},
)
