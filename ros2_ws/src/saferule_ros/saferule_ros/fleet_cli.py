"""fleet_cli: send the fleet's calls by hand (Forget, Unlearn, SwapPolicy) and see the fleet's status.

    python -m saferule_ros.fleet_cli forget --robot robot_3 --reason "compromised controller" --dry-run
    python -m saferule_ros.fleet_cli forget --robot robot_3 --reason "compromised controller"
    python -m saferule_ros.fleet_cli unlearn forget-0123456789abcdef --method safe_rule --wait
    python -m saferule_ros.fleet_cli swap --robot robot_1 --version v0002
    python -m saferule_ros.fleet_cli status --robot robot_1 --robot robot_2

Uses ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE from the environment like any ROS 2 tool.
Exit status: 0 done, 1 refused or failed, 2 bad arguments or no answer.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SafeRuleError
from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import PolicyStatus
from saferule_interfaces.srv import Forget
from saferule_ros.fleet_client import (
    DEFAULT_FORGET_SERVICE,
    DEFAULT_UNLEARN_ACTION,
    FleetClient,
    spinning_waiter,
)
from saferule_ros.fleet_monitor import FLEET_STATUS_TOPIC
from saferule_ros.forget_messages import metrics_from_msgs, selector_to_msg
from saferule_ros.topics import POLICY_STATUS_TOPIC

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
SHOWN_IDS = 10


class CliError(SafeRuleError):
    """Bad arguments (exit status 2)."""


def parse_time(text: str) -> float:
    """POSIX seconds, or an ISO 8601 date/time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"time {text!r}: give POSIX seconds or an ISO 8601 time such as 2025-06-01T12:00:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def default_requester() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (OSError, KeyError):
        return "fleet_cli"


def shorten(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f", ... ({len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else "")


@contextmanager
def fleet_client(args: argparse.Namespace) -> Iterator[tuple[FleetClient, Node, SingleThreadedExecutor]]:
    context = rclpy.Context()
    rclpy.init(args=["--ros-args"], context=context)
    node = Node(f"fleet_cli_{int(time.time() * 1000) % 1_000_000}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    client = FleetClient(node, spinning_waiter(executor), args.forget_service, args.unlearn_action, args.timeout)
    try:
        yield client, node, executor
    finally:
        client.destroy()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


# ----- forget ---------------------------------------------------------------------------------------

def cmd_forget(args: argparse.Namespace) -> int:
    selector = ForgetSelector(episode_ids=tuple(args.episode), robot_ids=tuple(args.robot), bag_names=tuple(args.bag),
                              window_start=parse_time(args.since) if args.since else None,
                              window_end=parse_time(args.until) if args.until else None)
    if not args.dry_run and not args.reason.strip():
        raise CliError("--reason is required (it is kept in the forget ledger); --dry-run needs none")
    request = Forget.Request(selector=selector_to_msg(selector), dataset=args.dataset, reason=args.reason or "dry run",
                             requester=args.requester, dry_run=args.dry_run)
    with fleet_client(args) as (client, _node, _executor):
        answer = client.forget(request)
    if not answer.accepted:
        print(f"refused: {answer.message}")
        return EXIT_REFUSED
    ids = list(answer.matched_episode_ids)
    if args.dry_run:
        print(f"dry run: would forget {len(ids)} episodes ({answer.matched_transitions} transitions): {shorten(ids)}")
        return EXIT_OK
    print(f"accepted: request {answer.request_id}: {len(ids)} episodes ({answer.matched_transitions} transitions) "
          f"quarantined: {shorten(ids)}")
    print(f"next: python -m saferule_ros.fleet_cli unlearn {answer.request_id} --wait")
    return EXIT_OK


# ----- unlearn ------------------------------------------------------------------------------------

def print_feedback(feedback: Unlearn.Feedback) -> None:
    metrics = " ".join(f"{k}={v:.4g}" for k, v in metrics_from_msgs(feedback.metrics).items())
    print(f"[{feedback.progress:4.0%}] {feedback.stage:<10} {metrics}".rstrip(), flush=True)


def print_metrics(result: Unlearn.Result) -> None:
    before, after = metrics_from_msgs(result.metrics_before), metrics_from_msgs(result.metrics_after)
    names = sorted(set(before) | set(after))
    if not names:
        return
    width = max(len(n) for n in names)
    print(f"  {'metric':<{width}}  {'before':>12}  {'after':>12}")
    for name in names:
        cells = [f"{table[name]:12.4g}" if name in table else f"{'-':>12}" for table in (before, after)]
        print(f"  {name:<{width}}  {cells[0]}  {cells[1]}")


def cmd_unlearn(args: argparse.Namespace) -> int:
    goal = Unlearn.Goal(request_id=args.request_id, method=args.method, swap_on_success=not args.no_swap)
    with fleet_client(args) as (client, _node, _executor):
        handle = client.send_unlearn(goal, on_feedback=print_feedback if args.wait else None)
        goal_id = bytes(handle.goal_id.uuid).hex()
        if not args.wait:
            print(f"goal {goal_id} accepted: the server queues and runs it; follow it with --wait, or see the "
                  f"request's state in the dataset's ledger")
            return EXIT_OK
        print(f"goal {goal_id} accepted; waiting (Ctrl-C cancels the job)", flush=True)
        try:
            status, result = client.unlearn_result(handle, args.result_timeout)
        except KeyboardInterrupt:
            print("cancelling ...", flush=True)
            if not client.cancel(handle):
                print("the server did not accept the cancel (the job may already be over)")
            status, result = client.unlearn_result(handle, args.timeout)
    print(f"{status}: {result.message}")
    if result.success:
        print(f"  policy {result.new_policy_version} (parent {result.parent_policy_version or 'none'}), "
              f"{result.wall_time_s:.1f} s")
    print_metrics(result)
    return EXIT_OK if result.success else EXIT_REFUSED


# ----- swap ---------------------------------------------------------------------------------------

def cmd_swap(args: argparse.Namespace) -> int:
    if bool(args.version) == bool(args.artifact):
        raise CliError("give either --version or --artifact")
    with fleet_client(args) as (client, _node, _executor):
        answer = client.swap(args.robot, version=args.version, artifact_path=args.artifact)
    if not answer.ok:
        print(f"refused: {answer.message}")
        return EXIT_REFUSED
    print(f"{args.robot}: {answer.message} (active {answer.active_version}, previous {answer.previous_version or 'none'})")
    return EXIT_OK


# ----- status -------------------------------------------------------------------------------------

def status_topics(node: Node, robots: Sequence[str]) -> list[tuple[str, str]]:
    """(robot, topic) of each robot's policy_status: the named robots, or every one in the graph."""
    if robots:
        return [(robot.strip("/"), f"/{robot.strip('/')}/{POLICY_STATUS_TOPIC}") for robot in robots]
    suffix = f"/{POLICY_STATUS_TOPIC}"
    return sorted((name[:-len(suffix)].strip("/"), name) for name, _types in node.get_topic_names_and_types()
                  if name.endswith(suffix))


def cmd_status(args: argparse.Namespace) -> int:
    statuses: dict[str, PolicyStatus] = {}
    fleet: list[str] = []
    with fleet_client(args) as (client, node, executor):
        deadline = time.monotonic() + args.seconds
        node.create_subscription(String, f"/{FLEET_STATUS_TOPIC}", lambda msg: fleet.append(msg.data), 10)
        subscribed: set[str] = set()
        server_up = client.forget_client.service_is_ready()
        while time.monotonic() < deadline:
            for robot, topic in status_topics(node, args.robot):
                if topic not in subscribed:
                    subscribed.add(topic)
                    node.create_subscription(PolicyStatus, topic,
                                             lambda msg, robot=robot: statuses.__setitem__(robot, msg), 10)
            executor.spin_once(timeout_sec=0.1)
            # a fresh node discovers the server and each runner in its own time: stop early only
            # when every named robot has answered and the server has been seen
            server_up = client.forget_client.service_is_ready()
            if args.robot and server_up and all(robot.strip("/") in statuses for robot in args.robot):
                break
    print(f"unlearning server ({args.forget_service}): {'up' if server_up else 'not found'}")
    if not statuses:
        print(f"no policy_status heard in {args.seconds:g} s" + ("" if args.robot else " (no runner found)"))
    else:
        print(f"{'robot':<16} {'version':<8} {'sha256':<12} {'ticks':>9} {'misses':>7} {'swaps':>5} {'rollbk':>6} "
              f"{'p50 us':>8} {'p99 us':>8}")
        for robot in sorted(statuses):
            s = statuses[robot]
            print(f"{robot:<16} {s.active_version or '-':<8} {s.artifact_sha256[:12]:<12} {s.ticks:>9} "
                  f"{s.deadline_misses:>7} {s.swaps:>5} {s.rollbacks:>6} {s.latency_p50_us:>8.1f} "
                  f"{s.latency_p99_us:>8.1f}")
    if fleet:
        report = json.loads(fleet[-1])
        for robot, health in sorted(report.get("robots", {}).items()):
            skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(health.get("skipped", {}).items()))
            print(f"monitor: {robot}: {health['episodes']} episodes judged, {health['flagged_episodes']} flagged, "
                  f"streak {health['streak']}, {health.get('skipped_episodes', 0)} not policy-driven (skipped"
                  f"{': ' + skipped if skipped else ''})")
        for rule, outcome in sorted(report.get("rules_fired", {}).items()):
            print(f"monitor: rule {rule}: {outcome}")
    missing = [robot.strip("/") for robot in args.robot if robot.strip("/") not in statuses]
    return EXIT_REFUSED if missing else EXIT_OK


# ----- arguments ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saferule_ros.fleet_cli", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send Forget / Unlearn / SwapPolicy calls to the fleet by hand and show its status.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to find a service and get an answer")
    parser.add_argument("--forget-service", default=DEFAULT_FORGET_SERVICE)
    parser.add_argument("--unlearn-action", default=DEFAULT_UNLEARN_ACTION)
    sub = parser.add_subparsers(dest="command", required=True)

    forget = sub.add_parser("forget", help="ask the unlearning server to forget logged episodes",
                            description="Record a forget request (the episodes are quarantined at once), or with "
                                        "--dry-run only show what the selector matches. Selector fields combine with "
                                        "AND; repeat --robot/--episode/--bag for several.",
                            epilog="example: forget --robot robot_3 --since 2025-06-01T00:00:00 --reason 'compromised'")
    forget.add_argument("--robot", action="append", default=[], help="robot id (repeatable)")
    forget.add_argument("--episode", action="append", default=[], help="episode id (repeatable)")
    forget.add_argument("--bag", action="append", default=[], help="source bag name (repeatable)")
    forget.add_argument("--since", help="episodes starting at or after (POSIX seconds or ISO 8601, UTC by default)")
    forget.add_argument("--until", help="episodes starting at or before")
    forget.add_argument("--dataset", default="", help="dataset under the server's data root (default: the server's)")
    forget.add_argument("--reason", default="", help="why (kept in the ledger; required unless --dry-run)")
    forget.add_argument("--requester", default=default_requester())
    forget.add_argument("--dry-run", action="store_true", help="only report what the selector matches")
    forget.set_defaults(handler=cmd_forget)

    unlearn = sub.add_parser("unlearn", help="run unlearning for a recorded forget request",
                             description="Send an Unlearn goal for a request id returned by `forget`.",
                             epilog="example: unlearn forget-0123456789abcdef --method safe_rule --wait")
    unlearn.add_argument("request_id")
    unlearn.add_argument("--method", default="", help="safe_rule, retrain, finetune, ... (default: the server's)")
    unlearn.add_argument("--no-swap", action="store_true", help="do not swap the robots' policies on success")
    unlearn.add_argument("--wait", action="store_true", help="show progress and wait for the result")
    unlearn.add_argument("--result-timeout", type=float, default=24 * 3600.0, help="with --wait: give up after")
    unlearn.set_defaults(handler=cmd_unlearn)

    swap = sub.add_parser("swap", help="ask a robot's policy runner to swap its policy",
                          description="Call <robot>/swap_policy with a registry version or an artifact path.",
                          epilog="example: swap --robot robot_1 --version v0002")
    swap.add_argument("--robot", required=True)
    swap.add_argument("--version", default="")
    swap.add_argument("--artifact", default="", help="artifact directory inside the runner's registry")
    swap.set_defaults(handler=cmd_swap)

    status = sub.add_parser("status", help="show what each policy runner runs, and the monitor's flags",
                            description="Listen to policy_status (and fleet_status) for a few seconds.",
                            epilog="example: status --robot robot_1 --robot robot_2 --seconds 3")
    status.add_argument("--robot", action="append", default=[], help="robot namespace (default: all found)")
    status.add_argument("--seconds", type=float, default=5.0,
                        help="how long to listen (default 5; with --robot, until every named robot "
                             "and the server are heard)")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0:
        print("error: --timeout must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except SafeRuleError as err:   # bad arguments, a selector refused before sending, no answer
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
