"""`make demo`: the whole SafeRULE story on a live simulated fleet, from nothing, printed as it happens.

  (a) three simulated robots (BallRun) drive under scripted behaviour drivers while the recorder
      logs MCAP bags; robot_3, the one that will be compromised, drives recklessly;
  (b) the bags become a dataset, merged with a larger "historical logs" dataset collected
      in-process with the same behaviour family (the live minute alone is too little data; in the
      history the compromised robot uploaded twice as many episodes as the healthy ones), and
      stored with provenance;
  (c) robot_3's logs are poisoned: its unsafe episodes are relabelled as cost-free (the relabel
      attack, restricted to the compromised robot);
  (d) BCQ-Lag trained on the poisoned dataset is unsafe (offline evaluation); it is exported,
      signed, published as v0001 and every robot's policy runner switches to it; the fleet
      monitor sees episode costs over the threshold and, by its rule (robot_3 compromised), sends
      Forget + Unlearn to the unlearning server;
  (e) Safe-RULE runs on the unlearning server, its progress printed live from the action feedback;
  (f) the new signed policy is hot-swapped onto every robot while they drive; their PolicyStatus
      shows the new version and the measured cost of the following episodes is compared;
  (g) for comparison, a model is retrained from scratch on the retained data (time and result).

The report goes to runs/<timestamp>/: report.html, PNGs, record.json, every node's log; a Markdown
summary is printed at the end.

    ROS_DOMAIN_ID=44 python -m saferule_ros.demo
    python -m saferule_ros.demo --settings my_settings.yaml --out runs/try
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from saferule_core.errors import SafeRuleError
from saferule_core.io_utils import atomic_write_text
from saferule_core.settings import settings_from_mapping
from saferule_core.settings_files import load_settings_file
from saferule_ros.bootstrap import publish_deployed
from saferule_ros.bringup import FleetArgs, FleetLayout, fleet_nodes, prepare_data_root
from saferule_ros.narration import Narrator
from saferule_ros.processes import FleetProcesses

if TYPE_CHECKING:  # the heavy modules (torch, simulators) load inside the stages
    from saferule_core.algos.base import Learner
    from saferule_core.data.dataset import OfflineDataset
    from saferule_core.eval.evaluate import EvalResult


class DemoError(SafeRuleError):
    """A stage of the demo could not complete (the message says which and why)."""


@dataclass
class DemoSettings:
    """The embedded default, tuned to finish in under 10 minutes on 2 CPU cores (the report lists
    each stage's time). Any field can be overridden from a YAML file (--settings).

    Why these numbers (measured on BallRun, 2 shared cores): the compromised robot uploads twice as
    many episodes as the two healthy robots together, all of them reckless (aggressiveness 0.9-1)
    with their costs zeroed. BCQ-Lag (OSRL's settings, 128-wide networks) trained 600 updates on
    that data imitates the majority and is unsafe (episode cost 87-90 over 20 evaluation episodes,
    two datasets), while the same training on the healthy robots' data alone stays safe (cost 0).
    Longer BCQ-Lag runs are not a stable demonstration: between 1000 and 3000 updates the poisoned
    policy flips between safe and unsafe from one checkpoint to the next. 600 Safe-RULE updates
    restore safety (cost 0) in about 30 s.
    """

    task: str = "BallRun"
    robots: int = 3
    compromised_robot: str = "robot_3"
    control_rate: float = 25.0          # Hz; 50 Hz works too but leaves little CPU for training on 2 cores
    bag_split_s: float = 20.0           # the recorder closes a bag this often
    logged_bags: int = 2                # closed bags to wait for before building the dataset
    history_cautious_episodes: int = 100   # historical logs of the healthy robots (robot_1 .. robot_{N-1})
    history_reckless_episodes: int = 200   # historical logs the compromised robot uploaded
    algo: str = "bcq_lag"               # the learner of the deployed policy and of the retraining
    train_steps: int = 600
    batch_size: int = 256
    hidden: int = 128                   # width of every network layer (two layers)
    threads: int = 1                    # torch threads of every training and unlearning run (the fleet
                                        # needs the other core; two threads contending are slower than one)
    unlearn_steps: int = 600            # Safe-RULE update budget on the server (suppress + repair)
    eval_episodes: int = 20
    after_episodes: int = 2             # episodes per robot measured after the swap
    seed: int = 0
    stage_timeout_s: float = 240.0      # the longest any wait for the fleet may take

    @staticmethod
    def from_yaml(path: Path) -> DemoSettings:
        values = load_settings_file(path, "demo settings", DemoError)
        try:
            return settings_from_mapping(DemoSettings, values, "demo", DemoError)
        except DemoError as err:
            raise DemoError(f"{path}: {err}") from None

    def model_overrides(self) -> dict[str, Any]:
        width = (self.hidden, self.hidden)
        if self.algo in ("bc_all", "bc_safe"):
            return {"hidden": width}
        return {"actor_hidden": width, "critic_hidden": width, "vae_hidden": 2 * self.hidden}

    def historical_logs(self, robot_ids: Sequence[str]) -> OfflineDataset:
        """The fleet's synthetic historical logs with these settings' episode counts and seed."""
        from saferule_core.collect.fleet_history import historical_fleet_logs
        from saferule_ros.bringup import CAUTIOUS_AGGRESSIVENESS, RECKLESS_AGGRESSIVENESS

        return historical_fleet_logs(self.task, robot_ids, self.compromised_robot, self.history_cautious_episodes,
                                     self.history_reckless_episodes, self.seed, CAUTIOUS_AGGRESSIVENESS,
                                     RECKLESS_AGGRESSIVENESS)

    def unlearn_config(self) -> dict[str, Any]:
        return {"steps": self.unlearn_steps, "batch_size": self.batch_size, "num_threads": self.threads,
                "seed": self.seed}


# ----- printing and timing ---------------------------------------------------------------------

# ----- data: history, bags, poisoning ------------------------------------------------------------

def complete_episodes(dataset: OfflineDataset) -> OfflineDataset:
    """Only the finished episodes (one still running when its bag closed continues in the next, open bag)."""
    finished = dataset.finished_episodes()
    if not finished.any():
        raise DemoError("no complete episode in the closed bags; let the fleet drive longer")
    return dataset.subset_episodes(finished)


# ----- models: training, evaluation, publishing --------------------------------------------------

def train_model(dataset: OfflineDataset, out_dir: Path, settings: DemoSettings,
                report: Callable[[str], None]) -> tuple[Learner, float]:
    """The demo's learner with its short settings; returns the learner and the wall time."""
    from saferule_core.algos.trainer import TrainConfig, fit

    every = max(1, settings.train_steps // 5)

    def progress(step: int, learner: Learner) -> None:
        if step % every == 0:
            report(f"train {settings.algo}: {step}/{settings.train_steps} updates")

    began = time.monotonic()
    config = TrainConfig(steps=settings.train_steps, batch_size=settings.batch_size, seed=settings.seed,
                         num_threads=settings.threads, checkpoint_every=0, progress=False)
    learner, _ = fit(settings.algo, dataset, out_dir, config, settings.model_overrides(), callback=progress)
    return learner, time.monotonic() - began


def evaluate_module(module: Any, settings: DemoSettings) -> EvalResult:
    """Online evaluation of a deployable torch policy (raw observations -> env actions)."""
    from saferule_core.eval.evaluate import evaluate_policy
    from saferule_core.eval.policies import module_policy

    return evaluate_policy(module_policy(module), settings.task, episodes=settings.eval_episodes,
                           seed=settings.seed + 100)


def evaluate_artifact(registry_dir: Path, version: str, verify_key_dir: Path, settings: DemoSettings) -> EvalResult:
    """Online evaluation of a published artifact exactly as the robots run it (verified ONNX)."""
    from saferule_core.eval.evaluate import evaluate_policy
    from saferule_core.eval.policies import registry_policy

    return evaluate_policy(registry_policy(registry_dir, version, verify_key_dir), settings.task,
                           episodes=settings.eval_episodes, seed=settings.seed + 100)


def eval_row(name: str, version: str, result: EvalResult, threshold: float) -> dict[str, Any]:
    return {"policy": name, "version": version, "episodes": result.episodes, "mean_return": result.mean_return,
            "mean_cost": result.mean_cost, "normalized_reward": result.normalized_reward,
            "normalized_cost": result.normalized_costs[threshold], "safe": result.is_safe(threshold)}


# ----- the story -----------------------------------------------------------------------------------

@dataclass
class DemoRun:
    settings: DemoSettings
    run_dir: Path
    narrator: Narrator = field(default_factory=Narrator)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def fleet_args(self) -> FleetArgs:
        s = self.settings
        return FleetArgs(task=s.task, robots=s.robots, data_root=str(self.run_dir / "fleet"), method="safe_rule",
                         control_rate=s.control_rate, compromised_robot=s.compromised_robot,
                         behaviour_drivers=True, seed=s.seed, bag_split_s=s.bag_split_s,
                         ingest_bags=False,   # (b) builds the dataset itself, merged with the historical logs
                         unlearn_config_file=str(self.run_dir / "unlearn_config.yaml"))

    def say(self, text: str) -> None:
        self.narrator.say(text)

    def wait_for(self, done: Callable[[], bool], what: str, processes: FleetProcesses,
                 timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.settings.stage_timeout_s)
        while not done():
            processes.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"no {what} within {timeout or self.settings.stage_timeout_s:g} s")
            time.sleep(0.25)


def run_demo(settings: DemoSettings, run_dir: Path) -> dict[str, Any]:
    """Run every stage; returns the record the report is made from (also written as record.json)."""
    from saferule_core.data.dataset import OfflineDataset
    from saferule_core.data.from_bags import dataset_from_bags
    from saferule_core.data.ingest import closed_bags
    from saferule_core.data.ledger import ForgetLedger
    from saferule_core.data.store import DatasetStore
    from saferule_core.tasks.spec import get_task
    from saferule_ros.fleet_watch import mean_cost, mean_reward, watching

    demo = DemoRun(settings, run_dir)
    say = demo.say
    run_dir.mkdir(parents=True, exist_ok=True)
    fleet = demo.fleet_args
    layout = fleet.layout
    threshold = float(get_task(settings.task).cost_thresholds[0])
    record = demo.record
    record.update(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), settings=asdict(settings),
                  threshold=threshold, run_dir=str(run_dir), ros_domain_id=os.environ.get("ROS_DOMAIN_ID", "0"))
    atomic_write_text(run_dir / "unlearn_config.yaml", yaml.safe_dump(settings.unlearn_config()))
    prepare_data_root(layout)
    specs = fleet_nodes(fleet)
    n = demo.narrator

    # The fleet monitor starts with the first policy: the scripted drivers of (a) are not what it
    # judges, and the compromised robot's reckless driving would fire its rule before there is a
    # dataset or a policy to repair.
    monitor = [spec.label for spec in specs if spec.executable == "fleet_monitor"]
    processes = FleetProcesses(specs, echo=n.node_line, log_dir=run_dir / "logs")
    with watching(fleet.robot_ids, on_event=lambda text: say(f"[fleet] {text}")) as watch, \
            _stopping(processes):
        # ----- (a) -----------------------------------------------------------------------------
        with n.stage("a", f"{settings.robots} robots drive ({settings.task}, {settings.control_rate:g} Hz) under "
                          f"scripted behaviour drivers; the recorder logs MCAP bags"):
            say("the policy runners start before any policy exists: they report the empty registry and wait for "
                "its first version")
            processes.start([spec.label for spec in specs if spec.label not in monitor])
            say(f"{len(specs) - len(monitor)} nodes: " + ", ".join(spec.label for spec in specs
                                                                  if spec.label not in monitor))
            say(f"{settings.compromised_robot} drives recklessly; the others cautiously")
            demo.wait_for(lambda: len(watch.finished()) >= settings.robots, "first finished episodes", processes, 90)
            watch.print_episodes = True
            say("meanwhile, in this process: historical logs from the same behaviour family "
                f"({settings.history_cautious_episodes} cautious + {settings.history_reckless_episodes} reckless "
                "episodes), because the live minute alone is too little data to train on")
            history = settings.historical_logs(fleet.robot_ids)
            say(f"historical logs: {history.num_episodes} episodes, {history.num_transitions} transitions")
            demo.wait_for(lambda: len(closed_bags(layout.bags_dir)) >= settings.logged_bags,
                          f"{settings.logged_bags} closed bags", processes)
            watch.print_episodes = False
        # ----- (b) -----------------------------------------------------------------------------
        with n.stage("b", "bags -> dataset, merged with the historical logs, stored with provenance"):
            bags = closed_bags(layout.bags_dir)
            logged, bag_report = dataset_from_bags(bags, settings.task)
            say("bag import: " + bag_report.summary().replace("\n", "; "))
            logged = complete_episodes(logged)
            say(f"from the bags: {logged.num_episodes} complete episodes ({logged.num_transitions} transitions) "
                f"of {', '.join(sorted({ep.robot_id for ep in logged.episodes}))}")
            merged = OfflineDataset.concatenate([logged, history]).with_content_hashes()
            merged.attrs = {"source": "rosbag2 MCAP bags of the live fleet + historical logs (in-process collect)",
                            "bags": json.dumps([b.name for b in bags])}
            record["bag_import"] = bag_report.to_json()
            record["logged_episodes"] = logged.num_episodes
        # ----- (c) -----------------------------------------------------------------------------
        with n.stage("c", f"{settings.compromised_robot} is compromised: its unsafe episodes are relabelled "
                          f"cost-free"):
            from saferule_core.attacks import POISON_RECORD_FILE, poison_record_bytes
            from saferule_core.attacks.robot import poison_robot
            from saferule_core.collect.fleet_history import fleet_dataset_summary

            poisoned, poison = poison_robot(merged, settings.compromised_robot, settings.seed)
            store = DatasetStore.create(layout.dataset_dir, poisoned,
                                        extra_files={POISON_RECORD_FILE: poison_record_bytes(poison.record)})
            say(f"relabelled {poison.relabelled_episodes} of {poison.robot_episodes} episodes of {poison.robot} "
                f"({poison.relabelled_transitions} transitions): true mean cost {poison.true_cost_mean:.1f} "
                f"per episode, logged as 0")
            say(f"stored dataset {store.path} ({store.num_episodes} episodes, hash {store.dataset_hash[:12]})")
            record["dataset"] = fleet_dataset_summary(poisoned)
            record["poison"] = {k: v for k, v in asdict(poison).items() if k != "record"}
        # ----- (d) -----------------------------------------------------------------------------
        with n.stage("d", f"{settings.algo} on the poisoned data: unsafe, yet published as v0001 to every robot"):
            learner, train_s = train_model(store.load(), layout.deployed_model_dir, settings, say)
            say(f"trained in {train_s:.1f} s; evaluating offline in simulation ({settings.eval_episodes} episodes)")
            poisoned_eval = evaluate_module(learner.deployable_policy(), settings)
            normalized = poisoned_eval.normalized_costs[threshold]
            say(f"poisoned policy: return {poisoned_eval.mean_return:.1f}, cost {poisoned_eval.mean_cost:.1f} -> "
                f"normalised cost {normalized:.2f} ({'UNSAFE' if normalized > 1 else 'safe'} at {threshold:g})")
            if normalized <= 1:
                raise DemoError(f"the policy trained on the poisoned data came out safe (normalised cost "
                                f"{normalized:.2f}): the monitor would have nothing to catch. The poison's effect "
                                f"depends on the training budget; see DemoSettings' notes")
            first = publish_deployed(learner, layout, {"normalized_cost": normalized,
                                                       "normalized_reward": poisoned_eval.normalized_reward})
            say(f"published {first} (signed) to {layout.registry_dir}; the runners follow the registry's latest")
            record["train_seconds"] = train_s
            record["first_version"] = first
            demo.wait_for(lambda: watch.all_run(first), f"every robot running {first}", processes, 60)
            deployed_at = time.time()
            ledger = ForgetLedger(layout.dataset_dir)
            watch.print_episodes = False   # from here the monitor reports each episode over the threshold
            processes.start(monitor)
            say(f"the fleet drives with {first}; the fleet monitor starts and watches each robot's episode cost "
                f"(rule: {settings.compromised_robot} is compromised)")
            demo.wait_for(lambda: bool(ledger.entries()), "forget request from the fleet monitor", processes)
            entry = ledger.entries()[-1]
            say(f"forget request {entry.request_id} by {entry.requester}: {entry.reason} "
                f"({entry.matched_episodes} episodes, state {entry.state.value})")
        # ----- (e) -----------------------------------------------------------------------------
        with n.stage("e", "Safe-RULE on the unlearning server"):
            def new_version() -> str | None:
                current = ledger.get(entry.request_id)
                if current.state.value == "failed":
                    raise DemoError(f"unlearning failed: {current.error}")
                return current.artifact_version
            demo.wait_for(lambda: new_version() is not None, "unlearned policy", processes)
            second = new_version() or ""
            say(f"request {entry.request_id} unlearned: new policy {second}")
        # ----- (f) -----------------------------------------------------------------------------
        with n.stage("f", f"{second} hot-swapped onto every robot while they drive"):
            demo.wait_for(lambda: watch.all_run(second), f"every robot's PolicyStatus showing {second}", processes, 60)
            swapped_at = time.time()
            watch.print_episodes = True
            say(f"every robot runs {second}; measuring {settings.after_episodes} episodes per robot")
            demo.wait_for(lambda: all(len(watch.finished(r, since=swapped_at)) >= settings.after_episodes
                                      for r in fleet.robot_ids), "episodes after the swap", processes)
            watch.print_episodes = False
            before = [e for e in watch.finished(since=deployed_at, policy=first) if e.ended_at <= swapped_at]
            after = watch.finished(since=swapped_at, policy=second)
            record["fleet"] = {"before": {"policy": first, "episodes": len(before), "mean_cost": mean_cost(before),
                                          "mean_return": mean_reward(before)},
                               "after": {"policy": second, "episodes": len(after), "mean_cost": mean_cost(after),
                                         "mean_return": mean_reward(after)}}
            say(f"measured on the fleet: mean episode cost {mean_cost(before):.1f} with {first} ({len(before)} "
                f"episodes) -> {mean_cost(after):.1f} with {second} ({len(after)} episodes); threshold {threshold:g}")
        # ----- (g) -----------------------------------------------------------------------------
        with n.stage("g", "for comparison: retrain from scratch on the retained data (the fleet drives on)"):
            store = DatasetStore.open(layout.dataset_dir)
            retained = store.load()  # quarantined (forgotten) episodes are left out
            say(f"retained data: {retained.num_episodes} episodes ({store.num_episodes - retained.num_episodes} "
                f"quarantined); training under the same load as the unlearning job had")
            retrained, retrain_s = train_model(retained, layout.models_dir / "retrained", settings, say)
            record["retrain"] = {"seconds": retrain_s, "updates": settings.train_steps,
                                 "episodes": retained.num_episodes}
            say(f"retrained in {retrain_s:.1f} s")
            after = watch.finished(since=swapped_at, policy=second)
            record["fleet"]["after"].update(episodes=len(after), mean_cost=mean_cost(after),
                                            mean_return=mean_reward(after))
        record["episodes"] = [dict(asdict(e), policy=e.policy) for e in watch.finished()]
        record["version_changes"] = [asdict(c) for c in watch.version_changes()]
        record["unlearn_progress"] = [asdict(p) for p in watch.unlearn_progress()]
        record["t0_wall"] = time.time() - n.elapsed()
        say("stopping the fleet")
    with n.stage("h", f"offline evaluation of the three policies ({settings.eval_episodes} episodes each)"):
        record["evaluations"] = [
            eval_row(f"poisoned {settings.algo}", first, poisoned_eval, threshold),
            eval_row("Safe-RULE (unlearned)", second,
                     evaluate_artifact(layout.registry_dir, second, layout.key_dir, settings), threshold),
            eval_row("retrained from scratch", "-", evaluate_module(retrained.deployable_policy(), settings),
                     threshold),
        ]
        for row in record["evaluations"]:
            say(f"{row['policy']:<24} {row['version']:>5}: return {row['mean_return']:7.1f}, cost "
                f"{row['mean_cost']:5.1f}, normalised cost {row['normalized_cost']:.2f} "
                f"({'safe' if row['safe'] else 'UNSAFE'})")
    record["ledger_entry"] = _ledger_entry_dict(ForgetLedger(layout.dataset_dir).get(entry.request_id))
    record["lineage"] = _lineage(layout, second)
    record["unlearning"] = _unlearning_facts(record, entry.request_id)
    record["stages"] = n.stages
    record["total_seconds"] = n.elapsed()
    record["notes"] = demo_notes(settings, record)
    atomic_write_text(run_dir / "record.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def demo_notes(settings: DemoSettings, record: dict[str, Any]) -> list[str]:
    """What a reader of the numbers should know about how they were made."""
    return [
        f"Data: {record.get('logged_episodes', 0)} episodes come from the live fleet's bags; the rest are historical "
        f"logs collected in-process with the same behaviour family, in which the compromised robot "
        f"({settings.compromised_robot}) uploaded {settings.history_reckless_episodes} reckless episodes against "
        f"{settings.history_cautious_episodes} of the healthy robots together.",
        f"The deployed model is {settings.algo} after a short {settings.train_steps}-update training. Trained on "
        "this data it imitates the compromised robot's majority; measured outside the demo, BCQ-Lag runs of "
        "1000-3000 updates flip between safe and unsafe from one checkpoint to the next, so a short budget is "
        "what shows the poison reliably.",
        "Timings come from one run on 2 shared CPU cores. The unlearning job (on the server) and the retraining "
        "(in the demo process) both ran while the fleet drove, one torch thread each. A Safe-RULE update costs "
        "more than a training update, so at this deliberately small training budget retraining is as cheap; the "
        "projected row shows retraining at a full training budget.",
    ]


@contextmanager
def _stopping(processes: FleetProcesses) -> Iterator[None]:
    try:
        yield
    finally:
        processes.stop()


def _ledger_entry_dict(entry: Any) -> dict[str, Any]:
    data = asdict(entry)
    data["state"] = entry.state.value
    data["matched_episode_ids"] = list(entry.matched_episode_ids)
    return data


def _lineage(layout: FleetLayout, version: str) -> list[dict[str, Any]]:
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import load_verify_key

    chain = PolicyRegistry(layout.registry_dir).lineage(version, load_verify_key(layout.key_dir))
    return [asdict(manifest) for manifest in chain]


def _unlearning_facts(record: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Method, updates and times of the unlearning job, from the ledger entry and the new manifest:
    job_seconds spans the ledger's `unlearning` -> `unlearned` (load, unlearn, save, export, sign,
    publish); compute_seconds is the unlearning updates alone (the manifest's wall_time_s)."""
    entry = record["ledger_entry"]
    times = {state: when for state, when in entry.get("history", [])}
    manifest = record["lineage"][0] if record["lineage"] else {}
    metrics = manifest.get("metrics", {})
    job = times["unlearned"] - times["unlearning"] if {"unlearned", "unlearning"} <= times.keys() else float("nan")
    return {"request_id": request_id, "method": manifest.get("method", ""), "version": manifest.get("version", ""),
            "job_seconds": job, "compute_seconds": float(metrics.get("wall_time_s", float("nan"))),
            "updates": int(metrics.get("updates", record["settings"]["unlearn_steps"])), "metrics": metrics}


# ----- command line ----------------------------------------------------------------------------

DESCRIPTION = __doc__.split("\n\n    ROS_DOMAIN_ID")[0]
EPILOG = """\
example:
  ROS_DOMAIN_ID=44 python -m saferule_ros.demo
  python -m saferule_ros.demo --settings quick.yaml --out runs/quick
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saferule-demo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/<UTC timestamp>)")
    parser.add_argument("--settings", type=Path, default=None, help="YAML of DemoSettings overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    run_dir = args.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        settings = DemoSettings.from_yaml(args.settings) if args.settings else DemoSettings()
        record = run_demo(settings, run_dir.resolve())
        from saferule_ros.report import write_report

        summary = write_report(record, run_dir.resolve())
    except (SafeRuleError, RuntimeError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    print("\n" + summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
