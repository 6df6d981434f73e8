"""The report split's table, generated from its results files and written into the README.

Reads the regime run of the report split (`benchmarks/results/regime/<regime>.json`: gates 1 and 2)
and every `benchmarks/results/report_unlearning/*.json` made on it (one per method, and the
benign-forget control's of `benchmarks/benign_forget.py`), and writes
`benchmarks/results/report_unlearning/summary.{json,md}` (stamped) and the same table into README.md
between the markers `<!-- report-table:start -->` and `<!-- report-table:end -->`. Nothing is typed
by hand: rerun this after any report-split run.

  .venv/bin/python benchmarks/report_table.py --regime report-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel-pool1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dev_unlearning import check_split, load_regime  # noqa: E402
from stamp import run_stamp  # noqa: E402

from saferule_core.io_utils import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "report_unlearning"
README = ROOT / "README.md"
START, END = "<!-- report-table:start -->", "<!-- report-table:end -->"
JOINT_GOAL, WALL_GOAL = 0.8, 0.05     # issue 14's claim: joint success >= 80% at <= 5% of retraining's wall time


def gates(regime: dict[str, Any]) -> dict[str, Any]:
    seeds = regime["seeds"]
    by_label = {m["label"]: m for m in regime["models"]}
    out: dict[str, Any] = {"seeds": seeds}
    for kind in ("clean", "retrain"):
        models = [by_label[f"{kind}-s{s}"] for s in seeds]
        out[kind] = {"safe": sum(m["safe"] for m in models), "competent": sum(m["safe"] and m["competent"] for m in models)}
    for attack in sorted({m["kind"] for m in regime["models"]} - {"clean", "retrain"}):
        out[attack] = {"valid": sum(by_label[f"clean-s{s}"]["safe"] and not by_label[f"{attack}-s{s}"]["safe"]
                                    for s in seeds)}
    return out


def method_rows(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for payload in files:
        for method in (k for k in payload["summary"] if isinstance(payload["summary"][k], dict)):
            s = payload["summary"][method]
            rows.append({"method": method, "steps": payload["steps"], "runs": s["runs"], "safe": s["safe"],
                         "joint": s["joint"], "joint_interval": s["joint_interval"],
                         "mean_reward": s["mean_reward"], "mean_cost": s["mean_cost"],
                         "wall_single": s["mean_wall_fraction_single"], "wall_stacked": s["mean_wall_fraction"],
                         "valid_cases": payload["summary"]["valid_cases"], "cases": payload["summary"]["cases"],
                         "retrain_safe": payload["summary"]["retrain_safe"], "commit": payload["commit"],
                         "git_dirty": payload["git_dirty"], "source": payload["_file"]})
    return rows


def benign_rows(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"method": method, "steps": payload["steps"], **s, "max_reward_drop": payload["max_reward_drop"],
             "source": payload["_file"], "git_dirty": payload["git_dirty"]}
            for payload in files for method, s in payload["summary"].items()]


def render(payload: dict[str, Any]) -> str:
    g, rows = payload["gates"], payload["rows"]
    n = len(g["seeds"])
    lines = [f"Report split, {payload['task']}, training seeds {g['seeds'][0]}-{g['seeds'][-1]} "
             f"(`benchmarks/results/regime/{payload['regime']}.md`): gate 1 clean {g['clean']['safe']}/{n} safe "
             f"({g['clean']['competent']}/{n} competent), random-forget retrain {g['retrain']['safe']}/{n} "
             f"({g['retrain']['competent']}/{n}); gate 2 " +
             ", ".join(f"{k} valid on {v['valid']}/{n}" for k, v in g.items() if isinstance(v, dict) and "valid" in v)
             + "."]
    if rows:
        r0 = rows[0]
        lines += [f"Valid cases (clean safe, poisoned unsafe): {r0['valid_cases']}/{r0['cases']}; exact retraining "
                  f"safe in {r0['retrain_safe']} of them. Joint success = normalised cost <= 1 and reward >= 90% of "
                  f"that seed's retraining. Goal: >= {JOINT_GOAL:.0%} joint at <= {WALL_GOAL:.0%} of a retraining's "
                  f"wall time.", "",
                  "| method | updates | safe | joint success (95% CI) | mean reward | mean cost | "
                  "wall / single retrain | wall / stacked retrain | results file |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["joint_interval"]
            lines.append(f"| {r['method']} | {r['steps']} | {r['safe']}/{r['runs']} | {r['joint']}/{r['runs']} "
                         f"({lo:.2f}-{hi:.2f}) | {r['mean_reward']:.3f} | {r['mean_cost']:.2f} | "
                         f"{r['wall_single']:.3f} | {r['wall_stacked']:.3f} | `{r['source']}`"
                         f"{' (dirty tree)' if r['git_dirty'] else ''} |")
    else:
        lines.append("No unlearning results on this regime yet.")
    if payload.get("benign_rows"):
        bound = payload["benign_rows"][0]["max_reward_drop"]
        lines += ["", f"Benign-forget control (`benchmarks/benign_forget.py`): each clean model unlearns a random clean "
                  f"10% of the episodes; a pass is safe with a reward drop of at most {bound:.0%} of the clean "
                  f"model's.", "",
                  "| method | updates | safe | benign pass (95% CI) | mean reward drop | joint vs exact retraining | "
                  "wall / single retrain | results file |", "|---|---|---|---|---|---|---|---|"]
        for r in payload["benign_rows"]:
            lo, hi = r["benign_pass_interval"]
            lines.append(f"| {r['method']} | {r['steps']} | {r['safe']}/{r['runs']} | {r['benign_pass']}/{r['runs']} "
                         f"({lo:.2f}-{hi:.2f}) | {r['mean_reward_drop']:+.1%} | {r['joint']}/{r['runs']} | "
                         f"{r['mean_wall_fraction_single']:.3f} | `{r['source']}`"
                         f"{' (dirty tree)' if r['git_dirty'] else ''} |")
    lines += ["", f"Generated by `{payload['command']}` at commit {payload['commit'][:12]} "
              f"({payload['created']}, host {payload['host']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", required=True, help="tag of the report split's regime.py results file")
    parser.add_argument("--no-readme", action="store_true", help="write the summary files only")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    regime = load_regime(parser, args.regime)
    check_split(parser, "report", regime["seeds"])
    files, benign = [], []
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "summary.json":
            continue
        data = json.loads(path.read_text())
        if data.get("regime") == args.regime and data.get("split") == "report":
            entry = {**data, "_file": str(path.relative_to(ROOT).with_suffix(".md"))}
            (benign if "max_reward_drop" in data else files).append(entry)   # benign_forget.py's files
    payload = {**run_stamp("benchmarks/report_table.py", argv), "regime": args.regime, "task": regime["task"],
               "gates": gates(regime), "rows": method_rows(files), "benign_rows": benign_rows(benign)}
    table = render(payload)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "summary.json", payload)
    atomic_write_text(RESULTS / "summary.md", "# The report split\n\n" + table)
    print(table)
    if not args.no_readme:
        text = README.read_text()
        if START not in text or END not in text:
            parser.error(f"README.md has no {START} ... {END} block to fill")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        atomic_write_text(README, f"{head}{START}\n{table}{END}{tail}")
        print(f"README.md: table written between {START} and {END}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
