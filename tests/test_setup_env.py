"""Set-up fails on a missing prerequisite with one sentence naming it (tools/setup_env.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "setup_env.py"


def load_setup_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("setup_env", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_python(tmp_path: Path, version: str) -> Path:
    exe = tmp_path / f"python{version}"
    exe.write_text(f"#!/bin/sh\necho {version}\n")
    exe.chmod(0o755)
    return exe


def test_wrong_python_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_env = load_setup_module()
    old = fake_python(tmp_path, "3.9")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SAFERULE_PYTHON", str(old))
    monkeypatch.setattr(setup_env.sys, "executable", str(old))
    with pytest.raises(setup_env.SetupError, match=r"Python 3\.11 .* is required"):
        setup_env.find_python311()


def test_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_env = load_setup_module()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(setup_env.SetupError, match="C/C\\+\\+ compiler is required"):
        setup_env.check_compiler()


def test_failure_prints_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    """Run the real script with no compiler on PATH: one line on stderr, exit 1."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3.11").symlink_to(sys.executable)
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": str(bindir), "HOME": str(tmp_path)})
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "compiler is required" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_log_diagnosis_names_unreachable_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_env = load_setup_module()
    log = tmp_path / "setup.log"
    log.write_text("WARNING: Retrying (Retry(total=4)) after connection broken by "
                   "'NewConnectionError(...: Failed to establish a new connection')\n")
    monkeypatch.setattr(setup_env, "LOG", log)
    assert setup_env.diagnose_log() == "the package registry is unreachable"


def test_no_launch_tooling_folder_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    setup_env = load_setup_module()
    monkeypatch.setattr(setup_env, "LAUNCH_CLI", tmp_path / "absent")
    monkeypatch.setattr(setup_env, "pip", lambda *args: pytest.fail("nothing to install"))
    setup_env.install_launch_tooling()
    assert "will skip" in capsys.readouterr().out
    assert setup_env.workspace_source_dirs() == [setup_env.WS / "src"]


def test_launch_tooling_is_installed_once_and_built_with_the_workspace(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    setup_env = load_setup_module()
    vendor = tmp_path / "ros2-launch-cli"
    (vendor / "wheels").mkdir(parents=True)
    (vendor / "wheels" / "launch-3.4.3-py3-none-any.whl").write_bytes(b"wheel")
    (vendor / "src" / "composition_interfaces").mkdir(parents=True)
    venv_stamp = tmp_path / "venv-stamp"
    venv_stamp.write_text("venv")
    calls: list[list[str]] = []
    monkeypatch.setattr(setup_env, "LAUNCH_CLI", vendor)
    monkeypatch.setattr(setup_env, "VENV_STAMP", venv_stamp)
    monkeypatch.setattr(setup_env, "LAUNCH_STAMP", tmp_path / "launch-stamp")
    monkeypatch.setattr(setup_env, "pip", lambda args, what: calls.append(args))
    setup_env.install_launch_tooling()
    setup_env.install_launch_tooling()
    assert len(calls) == 1 and calls[0][:2] == ["install", "--no-deps"]
    assert str(vendor / "wheels" / "launch-3.4.3-py3-none-any.whl") in calls[0]
    assert setup_env.workspace_source_dirs() == [setup_env.WS / "src", vendor / "src"]
