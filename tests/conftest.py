"""Test-session set-up shared by every test.

DDS must stay on loopback: the discovery range is forced to LOCALHOST and each session gets its
own ROS_DOMAIN_ID. `make test` also runs the suite under tools/loopback_guard.c (LD_PRELOAD),
which refuses and logs any send to a non-loopback address; the session fails if it logged one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))

REPO_ROOT = Path(__file__).resolve().parent.parent


def net_guard_log() -> Path | None:
    value = os.environ.get("SAFERULE_NET_GUARD_LOG")
    return Path(value) if value else None


def pytest_report_header(config: pytest.Config) -> list[str]:
    guard = "on" if "saferule_loopback_guard" in os.environ.get("LD_PRELOAD", "") else "OFF (run via make test)"
    return [f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, discovery range LOCALHOST, loopback guard {guard}"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = net_guard_log()
    if log is None or not log.exists():
        return
    refused = [line for line in log.read_text().splitlines() if line.strip()]
    if refused:
        print("\nNon-loopback network sends were attempted (and refused) during the tests:")
        for line in refused[:20]:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
