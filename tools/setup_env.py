#!/usr/bin/env python3
"""Set up SafeRULE's development environment from the repository's own files.

Steps (each skipped when its inputs have not changed since the last run):
  1. check prerequisites: Python 3.11, a C/C++ compiler;
  2. `.venv` with the pinned dependencies (requirements/*.txt under requirements/constraints.txt),
     safety-gymnasium patched to import on Python 3.11, saferule installed editable;
  3. the CMake path fix for the ROS 2 wheels (they point at the build farm's Python/numpy);
  4. where ../shared/vendor/ros2-launch-cli exists: ROS 2's launch and the `ros2` command as test
     tooling (its wheels, plus osrf-pycommon and psutil from requirements/launch-tooling.txt);
  5. the loopback guard the tests run under (tools/loopback_guard.c);
  6. colcon build of ros2_ws (and of the vendor folder's composition_interfaces, which launch_ros
     imports) into ros2_ws/install, made importable from `.venv/bin/python` through a .pth file
     and an RPATH (no sourcing needed).

Every failure ends in one sentence naming what is missing; the full tool output is in
`.setup.log`.

Runs under any Python 3 (it is the bootstrapper); only the standard library is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
WS = ROOT / "ros2_ws"
LOG = ROOT / ".setup.log"
REQ = ROOT / "requirements"
PY_TAG = "3.11"
VENV_PY = VENV / "bin" / "python"
SITE = VENV / "lib" / f"python{PY_TAG}" / "site-packages"
VENV_STAMP = VENV / ".saferule-setup-stamp"
WS_STAMP = WS / "install" / ".saferule-build-stamp"
BUILD_FARM_PREFIX = "/opt/python/cp311-cp311"
# ROS 2's launch, launch_ros and ros2cli (not on any registry here), laid beside the repository;
# a ROS 2 install has its own, so without this folder only the tests that need them skip.
LAUNCH_CLI = ROOT.parent / "shared" / "vendor" / "ros2-launch-cli"
LAUNCH_REQ = REQ / "launch-tooling.txt"
LAUNCH_STAMP = VENV / ".saferule-launch-tooling-stamp"


class SetupError(Exception):
    """A prerequisite or step failed; the message is the one sentence the user sees."""


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    """Run a command with its output appended to the log; raise SetupError on failure."""
    with LOG.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SetupError(f"{what} failed ({diagnose_log()}); full output in {LOG.name}")


def diagnose_log() -> str:
    """Turn the tail of the log into a short cause."""
    tail = LOG.read_text(errors="replace")[-20000:]
    patterns = [
        (r"(NewConnectionError|Temporary failure in name resolution|Network is unreachable|"
         r"ConnectTimeout|Max retries exceeded|ProxyError)",
         "the package registry is unreachable"),
        (r"No matching distribution found for (\S+)", "no installable release of {0} on the registry"),
        (r"(No CMAKE_CXX_COMPILER could be found|No CMAKE_C_COMPILER could be found)",
         "no C/C++ compiler found"),
        (r"No space left on device", "the disk is full"),
        (r"CMake Error at ([^\n]+)", "CMake error at {0}"),
        (r"ERROR: ([^\n]+)", "{0}"),
    ]
    for pattern, message in patterns:
        found = re.findall(pattern, tail)
        if found:
            last = found[-1]
            groups = last if isinstance(last, tuple) else (last,)
            return message.format(*groups).strip()
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        h.update(os.path.relpath(path, ROOT).encode())  # vendor files lie outside ROOT
        h.update(path.read_bytes())
    return h.hexdigest()


def tree_files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def find_python311() -> str:
    """The interpreter the venv is made from: must be CPython 3.11 (the ROS 2 wheels are cp311)."""
    candidates = [os.environ.get("SAFERULE_PYTHON", ""), sys.executable, "python3.11", "python3"]
    for cand in candidates:
        if not cand:
            continue
        exe = shutil.which(cand) or (cand if Path(cand).exists() else None)
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == PY_TAG:
            return exe
    raise SetupError(
        f"Python {PY_TAG} with the venv module is required (the ROS 2 Kilted wheels are built for "
        f"CPython {PY_TAG}) and none was found; install python{PY_TAG} or set SAFERULE_PYTHON to one"
    )


def check_compiler() -> None:
    missing = [name for name in ("cc", "c++") if shutil.which(name) is None]
    if missing:
        raise SetupError(
            f"a C/C++ compiler is required to build the ROS 2 interfaces and none was found "
            f"({', '.join(missing)} missing); install gcc and g++ (Debian: apt-get install build-essential)"
        )


def pip(args: list[str], what: str) -> None:
    cmd = [str(VENV_PY), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    try:
        run([*cmd, *args], what)
    except SetupError:
        if not registry_reachable(cmd):
            raise SetupError(f"{what} failed: the package registry is unreachable "
                             f"(pip could not list ros-rclpy from its configured index); "
                             f"full output in {LOG.name}") from None
        raise


def registry_reachable(pip_cmd: list[str]) -> bool:
    """Ask the configured index for a package only the registry has (the ROS 2 wheels)."""
    try:
        proc = subprocess.run([*pip_cmd, "index", "versions", "ros-rclpy"], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def patch_safety_gymnasium() -> None:
    """safety-gymnasium 1.0.0 declares `color: np.array = COLOR[...]` dataclass fields, which
    Python 3.11 refuses as mutable defaults; give them a default_factory instead."""
    pkg = SITE / "safety_gymnasium"
    if not pkg.is_dir():
        raise SetupError("safety-gymnasium did not install into the venv")
    pattern = re.compile(r"^(\s+color: np\.array = )(COLOR\[[^\]]+\])\s*$", re.M)
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        if pattern.search(text):
            new = pattern.sub(r"\1__import__('dataclasses').field(default_factory=lambda: \2.copy())", text)
            path.write_text(new)


def fix_cmake_paths() -> None:
    """Point the wheels' exported CMake files at this interpreter and this numpy."""
    out = subprocess.run([str(VENV_PY), "-c", "import numpy, sysconfig; "
                          "print(sysconfig.get_paths()['include']); print(numpy.get_include())"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SetupError(f"the venv's numpy does not import ({out.stderr.strip().splitlines()[-1:]})")
    py_include, np_include = out.stdout.split()
    old_py = f"{BUILD_FARM_PREFIX}/include/python{PY_TAG}"
    old_np_re = re.compile(re.escape(BUILD_FARM_PREFIX) + r"/lib/python3\.11/site-packages/numpy/(_core|core)/include")
    for path in (VENV / "share").rglob("*.cmake"):
        text = path.read_text(errors="replace")
        if BUILD_FARM_PREFIX not in text:
            continue
        new = old_np_re.sub(np_include, text.replace(old_py, py_include))
        if new != text:
            path.write_text(new)


def setup_venv(base_python: str) -> None:
    req_files = [REQ / "runtime.txt", REQ / "nodeps.txt", REQ / "constraints.txt", Path(__file__).resolve(),
                 ROOT / "setup.py"]
    want = digest(req_files, extra=sys.version)
    if VENV_STAMP.exists() and VENV_STAMP.read_text() == want and VENV_PY.exists():
        log("venv up to date")
        return
    if not VENV_PY.exists():
        log(f"creating .venv with {base_python}")
        run([base_python, "-m", "venv", str(VENV)], "creating the virtual environment")
    log("installing pinned dependencies (first time: a few minutes)")
    constraints = ["-c", str(REQ / "constraints.txt")]
    pip(["install", *constraints, "-r", str(REQ / "runtime.txt")], "installing the pinned dependencies")
    pip(["install", "--no-deps", *constraints, "-r", str(REQ / "nodeps.txt")],
        "installing safety-gymnasium and gymnasium-robotics")
    pip(["install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], "installing saferule (editable)")
    patch_safety_gymnasium()
    fix_cmake_paths()
    VENV_STAMP.write_text(want)


def launch_cli_wheels() -> list[Path]:
    return sorted((LAUNCH_CLI / "wheels").glob("*.whl"))


def install_launch_tooling() -> None:
    """`ros2 launch`, `ros2 service call` & co. for the tests: the vendor folder's wheels (no deps:
    rclpy and the messages come from the Kilted wheels) and their two PyPI dependencies."""
    wheels = launch_cli_wheels()
    if not wheels:
        log(f"no ROS 2 launch/CLI wheels in {LAUNCH_CLI}: the tests of `ros2 launch` and the ros2 CLI will skip")
        return
    want = digest([*wheels, LAUNCH_REQ], extra=VENV_STAMP.read_text())
    if LAUNCH_STAMP.exists() and LAUNCH_STAMP.read_text() == want:
        log("ROS 2 launch tooling up to date")
        return
    log("installing ROS 2 launch and the ros2 command (test tooling)")
    pip(["install", "--no-deps", *map(str, wheels), "-r", str(LAUNCH_REQ)],
        "installing ROS 2 launch and the ros2 command")
    LAUNCH_STAMP.write_text(want)


def workspace_source_dirs() -> list[Path]:
    """ros2_ws/src, and the vendor folder's interface packages when it exists."""
    vendor = LAUNCH_CLI / "src"
    return [WS / "src", *([vendor] if vendor.is_dir() else [])]


def link_workspace_into_venv(install: Path) -> None:
    """Make `.venv/bin/python` see the workspace without sourcing install/setup.sh.

    Python packages: a .pth file. Libraries: symlinks in .venv/lib, which the ROS wheels'
    bootstrapper puts on LD_LIBRARY_PATH; an RPATH is not enough because rosidl_typesupport_c
    finds the per-RMW typesupport library by searching LD_LIBRARY_PATH.
    """
    ws_site = install / "lib" / f"python{PY_TAG}" / "site-packages"
    (SITE / "saferule-ros2-ws.pth").write_text(f"{ws_site}\n")
    for lib in (install / "lib").glob("lib*.so"):
        link = VENV / "lib" / lib.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(lib)


def build_workspace() -> None:
    source_dirs = workspace_source_dirs()
    # launch/ is symlinked into saferule_ros
    sources = [path for base in (*source_dirs, ROOT / "launch") for path in tree_files(base)]
    want = digest(sources, extra=VENV_STAMP.read_text())
    if WS_STAMP.exists() and WS_STAMP.read_text() == want:
        log("ros2_ws up to date")
        return
    log("building ros2_ws with colcon (first time: about a minute)")
    install = WS / "install"
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        CMAKE_PREFIX_PATH=str(VENV),
        AMENT_PREFIX_PATH=str(VENV),
        VIRTUAL_ENV=str(VENV),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
    )
    env.pop("PYTHONPATH", None)
    run([str(VENV / "bin" / "colcon"), "--log-base", str(WS / "log"), "build",
         "--base-paths", *map(str, source_dirs), "--build-base", str(WS / "build"),
         "--install-base", str(install), "--merge-install",
         "--event-handlers", "console_direct-",
         "--cmake-args", f"-DPython3_EXECUTABLE={VENV_PY}", f"-DCMAKE_INSTALL_RPATH={install / 'lib'}",
         "-DBUILD_TESTING=OFF"],
        "colcon build of ros2_ws", env=env)
    link_workspace_into_venv(install)
    WS_STAMP.write_text(want)


GUARD_SRC = ROOT / "tools" / "loopback_guard.c"
GUARD_LIB = VENV / "lib" / "saferule_loopback_guard.so"


def build_loopback_guard() -> None:
    """The LD_PRELOAD shim the test suite runs under (refuses non-loopback sends)."""
    if GUARD_LIB.exists() and GUARD_LIB.stat().st_mtime >= GUARD_SRC.stat().st_mtime:
        return
    run(["cc", "-O2", "-shared", "-fPIC", "-o", str(GUARD_LIB), str(GUARD_SRC), "-ldl"],
        "compiling the loopback guard")


def main() -> int:
    start = time.monotonic()
    LOG.write_text(f"SafeRULE set-up log, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    try:
        base_python = find_python311()
        check_compiler()
        setup_venv(base_python)
        install_launch_tooling()
        build_workspace()
        build_loopback_guard()
    except SetupError as err:
        print(f"[setup] FAILED: {err}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[setup] interrupted; re-run `make setup` to finish.", file=sys.stderr)
        return 130
    log(f"ready in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
