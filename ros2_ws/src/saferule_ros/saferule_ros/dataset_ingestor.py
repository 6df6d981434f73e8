"""dataset_ingestor: closed bags become part of the fleet's dataset, without a hand step.

Every `poll_period_s` it looks for bags in `bags_dir` that the recorder has closed and the dataset
has not taken yet, and appends their finished episodes, with provenance (robot, bag, time), to the
dataset at `dataset_dir` (created on first use). Each ingestion is one atomic commit of the
dataset (see `saferule_core.data.ingest`): a bag is taken once, an episode that continues in a bag
still being written waits for it, and a kill -9 mid-ingestion leaves the dataset as before (the
bag is taken at the next start). Forget requests therefore select live episodes within about one
bag split (the recorder's `split_max_duration_s`) plus one poll period of their recording.

Each ingestion that changed something is logged and published as JSON on `ingest_report`
(std_msgs/String, latched: a late subscriber gets the last report).

    python -m saferule_ros.dataset_ingestor --ros-args -p bags_dir:=fleet/bags \
        -p dataset_dir:=fleet/dataset -p task:=BallRun
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from saferule_core.data.ingest import IngestReport, ingest_closed_bags
from saferule_core.errors import SafeRuleError
from saferule_core.tasks.spec import get_task
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node

INGEST_REPORT_TOPIC = "ingest_report"
CLOSE_WAIT_S = 2.0   # a running ingestion is crash-safe: past this, stopping does not wait for it
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class DatasetIngestorConfig:
    bags_dir: str = "bags"
    dataset_dir: str = "dataset"
    task: str = "BallRun"
    poll_period_s: float = 2.0


class DatasetIngestor(Node):
    def __init__(self, node_name: str = "dataset_ingestor", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, DatasetIngestorConfig)
        if not cfg.poll_period_s > 0:
            raise ConfigError(f"poll_period_s must be > 0, got {cfg.poll_period_s}")
        if not cfg.bags_dir or not cfg.dataset_dir:
            raise ConfigError("bags_dir and dataset_dir must name directories")
        try:
            get_task(cfg.task)
        except SafeRuleError as err:
            raise ConfigError(f"task {cfg.task!r}: {err}") from None
        self.bags_dir = Path(cfg.bags_dir).expanduser()
        self.dataset_dir = Path(cfg.dataset_dir).expanduser()
        self.report_pub = self.create_publisher(String, INGEST_REPORT_TOPIC, LATCHED_QOS)
        self.totals = {"ingestions": 0, "bags": 0, "episodes": 0, "transitions": 0, "failures": 0}
        self._stop = threading.Event()
        # Ingestion reads and writes files for seconds: off the executor, so that stopping is prompt.
        self._worker = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._worker.start()
        self.get_logger().info(f"ingesting closed bags of {self.bags_dir} into {self.dataset_dir} ({cfg.task}) "
                               f"every {cfg.poll_period_s:g} s")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ingest_once()
            self._stop.wait(self.config.poll_period_s)

    def ingest_once(self) -> IngestReport | None:
        try:
            report = ingest_closed_bags(self.bags_dir, self.dataset_dir, self.config.task)
        except SafeRuleError as err:
            # A bad bag or a dataset of another task: say so each time, keep the fleet running.
            self.totals["failures"] += 1
            self.get_logger().error(f"ingestion failed: {err}")
            return None
        except OSError as err:
            self.totals["failures"] += 1
            self.get_logger().error(f"ingestion failed: {type(err).__name__}: {err}")
            return None
        if report.changed or report.bags_held:
            self.totals["ingestions"] += 1
            self.totals["bags"] += len(report.bags_taken)
            self.totals["episodes"] += report.episodes_added
            self.totals["transitions"] += report.transitions_added
            self.get_logger().info(report.summary())
            self.report_pub.publish(String(data=json.dumps(report.to_json(), sort_keys=True)))
        return report

    def close(self) -> None:
        self._stop.set()
        self._worker.join(CLOSE_WAIT_S)
        still = " (an ingestion was still running; it commits whole or not at all)" if self._worker.is_alive() else ""
        t = self.totals
        self.get_logger().info(f"ingested {t['episodes']} episodes ({t['transitions']} transitions) from {t['bags']} "
                               f"bags in {t['ingestions']} ingestions, {t['failures']} failed{still}")


def main(args: Sequence[str] | None = None) -> int:
    return run_node(DatasetIngestor, args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
