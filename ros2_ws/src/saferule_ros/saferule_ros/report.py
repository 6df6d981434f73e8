"""The demo's report: PNG figures, report.html and a Markdown summary, all from the run's record.

The record (`record.json`, written by `saferule_ros.demo`) holds everything shown: stage timings,
every finished episode of every robot with the policy that drove it, policy version changes, the
unlearning job's live progress, offline evaluations, the ledger entry and the artifact lineage.
`write_report(record, run_dir)` writes

    fleet_timeline.png      episode return and cost per robot over time, policy changes marked
    before_after.png        normalised reward and cost: poisoned, unlearned, retrained; live fleet cost
    unlearning.png          the unlearning job's progress over time, and unlearning vs retraining time
    report.html             the figures and tables
and returns the Markdown summary.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saferule_core.io_utils import atomic_write_bytes, atomic_write_text

ROBOT_COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
POLICY_MARKERS = {"first": "o", "second": "s", "": "x"}
FULL_TRAINING_UPDATES = 100_000   # OSRL's BCQ-Lag training budget, for the projected retraining time
STAGE_SHADES = ("#f2f2f2", "#e6eef7")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _policy_kind(record: dict[str, Any], version: str) -> str:
    if version and version == record.get("first_version"):
        return "first"
    if version and version == record.get("unlearning", {}).get("version"):
        return "second"
    return ""


def fleet_timeline_png(record: dict[str, Any]) -> bytes:
    """Return and cost of every finished episode, per robot, against time since the demo began."""
    t0 = float(record["t0_wall"])
    episodes = record.get("episodes", [])
    robots = sorted({e["robot"] for e in episodes})
    fig = _figure(10.0, 6.0)
    reward_ax, cost_ax = fig.subplots(2, 1, sharex=True)
    stages = [s for s in record.get("stages", []) if s["key"] in "abcdefg"]
    span = max((s["started_s"] + s["seconds"] for s in stages), default=1.0)
    for k, stage in enumerate(stages):
        for ax in (reward_ax, cost_ax):
            ax.axvspan(stage["started_s"], stage["started_s"] + stage["seconds"], color=STAGE_SHADES[k % 2], zorder=0)
        if stage["seconds"] > 0.04 * span:  # short stages (b, c) stay unlabelled rather than overlap
            reward_ax.text(stage["started_s"] + stage["seconds"] / 2, 1.0, f"({stage['key']})", ha="center",
                           transform=reward_ax.get_xaxis_transform(), va="bottom", fontsize=8, color="0.35")
    names = {"first": f"{record.get('first_version', '')} (poisoned)",
             "second": f"{record.get('unlearning', {}).get('version', '')} (unlearned)",
             "": "scripted driver (or a switch mid-episode)"}
    for colour, robot in zip(ROBOT_COLOURS * 4, robots):
        mine = sorted((e for e in episodes if e["robot"] == robot), key=lambda e: e["ended_at"])
        times = np.array([e["ended_at"] - t0 for e in mine])
        for ax, key in ((reward_ax, "reward"), (cost_ax, "cost")):
            ax.plot(times, [e[key] for e in mine], color=colour, linewidth=0.8, alpha=0.5)
            for kind, marker in POLICY_MARKERS.items():
                chosen = [i for i, e in enumerate(mine) if _policy_kind(record, e["policy"]) == kind]
                if chosen:
                    ax.scatter(times[chosen], [mine[i][key] for i in chosen], color=colour, marker=marker, s=22,
                               label=f"{robot}, {names[kind]}" if ax is reward_ax else None, zorder=3)
    for change in record.get("version_changes", []):
        kind = _policy_kind(record, change["new"])
        if kind:
            for ax in (reward_ax, cost_ax):
                ax.axvline(change["seen_at"] - t0, color="tab:red" if kind == "first" else "tab:green",
                           linestyle="--", linewidth=0.9, alpha=0.7)
    threshold = float(record["threshold"])
    cost_ax.axhline(threshold, color="black", linestyle=":", linewidth=1.2)
    cost_ax.annotate(f"cost threshold {threshold:g}", (1.0, threshold), xycoords=("axes fraction", "data"),
                     xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=7)
    reward_ax.set_ylabel("episode return")
    cost_ax.set_ylabel("episode cost")
    cost_ax.set_xlabel("seconds since the demo began (dashed: a robot switched policy; red v0001, green unlearned)")
    reward_ax.set_title("The fleet, episode by episode (shaded: the demo's stages)", pad=14)
    reward_ax.legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(0.0, -1.36))
    for ax in (reward_ax, cost_ax):
        ax.grid(alpha=0.3)
    fig.subplots_adjust(bottom=0.2, top=0.92, left=0.08, right=0.98, hspace=0.12)
    return _png(fig)


def before_after_png(record: dict[str, Any]) -> bytes:
    rows = record.get("evaluations", [])
    fig = _figure(10.0, 4.2)
    offline_ax, live_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(rows))
    width = 0.38
    costs = [r["normalized_cost"] for r in rows]
    rewards = [r["normalized_reward"] for r in rows]
    bars = offline_ax.bar(x - width / 2, costs, width, color=["tab:red" if c > 1 else "tab:green" for c in costs],
                          label="normalised cost")
    offline_ax.bar(x + width / 2, rewards, width, color="tab:blue", alpha=0.7, label="normalised reward")
    offline_ax.bar_label(bars, fmt="%.2f", fontsize=8)
    offline_ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2, label="cost limit (1.0)")
    offline_ax.set_xticks(x, [f"{r['policy']}\n{r['version']}" for r in rows], fontsize=8)
    offline_ax.set_title(f"Offline evaluation ({rows[0]['episodes'] if rows else 0} episodes each)", fontsize=10)
    offline_ax.legend(fontsize=8)
    fleet = record.get("fleet", {})
    labels, values = [], []
    for key in ("before", "after"):
        part = fleet.get(key)
        if part:
            labels.append(f"{key}\n{part['policy']} ({part['episodes']} ep.)")
            values.append(part["mean_cost"])
    threshold = float(record["threshold"])
    live = live_ax.bar(labels, values, color=["tab:red" if v > threshold else "tab:green" for v in values])
    live_ax.bar_label(live, fmt="%.1f", fontsize=8)
    live_ax.axhline(threshold, color="black", linestyle=":", linewidth=1.2, label=f"threshold {threshold:g}")
    live_ax.set_title("Measured on the live fleet: mean episode cost", fontsize=10)
    live_ax.legend(fontsize=8)
    for ax in (offline_ax, live_ax):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def unlearning_png(record: dict[str, Any]) -> bytes:
    fig = _figure(10.0, 3.8)
    progress_ax, time_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    progress = record.get("unlearn_progress", [])
    t0 = float(record["t0_wall"])
    if progress:
        times = np.array([p["seen_at"] - t0 for p in progress])
        progress_ax.plot(times, [p["progress"] for p in progress], color="tab:green", marker=".", markersize=3)
        span = max(float(times[-1] - times[0]), 1.0)
        seen: set[str] = set()
        last_at = -math.inf
        for t, p in zip(times, progress):
            # the first message of each stage, unless it would sit on the previous label
            if p["stage"] not in seen and t - last_at > 0.05 * span:
                progress_ax.annotate(p["stage"], (t, p["progress"]), fontsize=7, xytext=(-4, 8),
                                     textcoords="offset points", ha="right")
                last_at = t
            seen.add(p["stage"])
    else:
        progress_ax.text(0.5, 0.5, "no Unlearn feedback was seen", ha="center", transform=progress_ax.transAxes)
    progress_ax.set_ylim(0, 1.1)
    progress_ax.set_xlabel("seconds since the demo began")
    progress_ax.set_ylabel("job progress")
    progress_ax.set_title("Unlearning job, live (Unlearn action feedback)", fontsize=10)
    progress_ax.grid(alpha=0.3)
    unlearning, retrain = record.get("unlearning", {}), record.get("retrain", {})
    algo = record.get("settings", {}).get("algo", "?")
    names = [f"unlearning updates\n({unlearning.get('method', '?')}, {unlearning.get('updates', '?')} upd.)",
             "whole job\n(+ load, export,\nsign, publish)", f"retraining\n({algo}, {retrain.get('updates', '?')} upd.)"]
    seconds = [unlearning.get("compute_seconds", float("nan")), unlearning.get("job_seconds", float("nan")),
               retrain.get("seconds", float("nan"))]
    bars = time_ax.bar(names, seconds, color=["tab:green", "#9fd89f", "tab:gray"])
    time_ax.bar_label(bars, fmt="%.0f s", fontsize=8)
    time_ax.tick_params(axis="x", labelsize=7)
    finite = [v for v in seconds if math.isfinite(v)]
    if finite:
        time_ax.set_ylim(0, max(finite) * 1.45)   # room for the note above the bars
    projected = projected_retrain_seconds(record)
    if math.isfinite(projected):
        time_ax.text(0.02, 0.97, f"retraining at {FULL_TRAINING_UPDATES:,} updates (OSRL's budget)\n"
                                 f"would take ~{projected / 3600:.1f} h at this rate (projection)",
                     transform=time_ax.transAxes, va="top", fontsize=7, color="0.3")
    time_ax.set_ylabel("wall time (s)")
    time_ax.set_title("Unlearning vs retraining", fontsize=10)
    time_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


# ----- tables --------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "-"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def projected_retrain_seconds(record: dict[str, Any]) -> float:
    """Retraining time at FULL_TRAINING_UPDATES updates, at the demo's measured rate (a projection)."""
    retrain = record.get("retrain", {})
    updates = retrain.get("updates") or 0
    return float(retrain.get("seconds", float("nan"))) / updates * FULL_TRAINING_UPDATES if updates else float("nan")


def _tables(record: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    evaluations = record.get("evaluations", [])
    fleet = record.get("fleet", {})
    unlearning, retrain = record.get("unlearning", {}), record.get("retrain", {})
    lineage = record.get("lineage", [])
    return {
        "stages": (["stage", "what", "seconds"],
                   [[s["key"], s["title"], s["seconds"]] for s in record.get("stages", [])]),
        "before_after": (["policy", "version", "return", "cost", "normalised reward", "normalised cost", "safe"],
                         [[r["policy"], r["version"], r["mean_return"], r["mean_cost"], r["normalized_reward"],
                           r["normalized_cost"], r["safe"]] for r in evaluations]),
        "fleet": (["on the fleet", "policy", "episodes", "mean return", "mean cost"],
                  [[key, part["policy"], part["episodes"], part["mean_return"], part["mean_cost"]]
                   for key, part in fleet.items()]),
        "cost": (["", "method", "updates", "wall time (s)"],
                 [["unlearning updates (on the server, fleet driving)", unlearning.get("method"),
                   unlearning.get("updates"), unlearning.get("compute_seconds")],
                  ["whole unlearning job (+ load, save, export, sign, publish)", unlearning.get("method"),
                   unlearning.get("updates"), unlearning.get("job_seconds")],
                  ["retraining from scratch (in the demo process, fleet driving)",
                   record.get("settings", {}).get("algo", "?"), retrain.get("updates"), retrain.get("seconds")],
                  ["retraining at OSRL's budget (projected from the rate above)",
                   record.get("settings", {}).get("algo", "?"), FULL_TRAINING_UPDATES,
                   projected_retrain_seconds(record)]]),
        "lineage": (["version", "parent", "method", "forget request", "dataset hash", "created", "metrics"],
                    [[m["version"], m.get("parent_version"), m.get("method"), m.get("forget_request_id"),
                      str(m.get("dataset_hash", ""))[:12], m.get("created"),
                      ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(m.get("metrics", {}).items()))]
                     for m in lineage]),
    }


# ----- writing -------------------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}
th{background:#f0f0f0}img{max-width:100%}pre{background:#f6f6f6;padding:8px;font-size:85%;overflow-x:auto}"""


def markdown_summary(record: dict[str, Any], run_dir: Path) -> str:
    tables = _tables(record)
    fleet = record.get("fleet", {})
    evaluations = {r["policy"]: r for r in record.get("evaluations", [])}
    poisoned = evaluations.get(f"poisoned {record['settings'].get('algo', '?')}", {})
    unlearned = evaluations.get("Safe-RULE (unlearned)", {})
    lines = [
        "# SafeRULE demo: the closed loop",
        "",
        f"Run {record.get('started')} in `{run_dir}`, {record['settings']['robots']} robots on "
        f"{record['settings']['task']}, total {record.get('total_seconds', float('nan')):.0f} s.",
        "",
        f"- poisoned policy {record.get('first_version')}: normalised cost {_fmt(poisoned.get('normalized_cost'))} "
        f"(offline); on the fleet {_fmt(fleet.get('before', {}).get('mean_cost'))} cost per episode "
        f"(threshold {record['threshold']:g})",
        f"- unlearned policy {unlearned.get('version')}: normalised cost {_fmt(unlearned.get('normalized_cost'))} "
        f"(offline); on the fleet {_fmt(fleet.get('after', {}).get('mean_cost'))} cost per episode",
        f"- forget request {record.get('ledger_entry', {}).get('request_id')}: "
        f"{record.get('ledger_entry', {}).get('matched_episodes')} episodes, state "
        f"{record.get('ledger_entry', {}).get('state')}",
        "",
    ]
    for name, title in (("before_after", "Before / after (offline evaluation)"), ("fleet", "Live fleet"),
                        ("cost", "Unlearning vs retraining"), ("stages", "Stage timings"),
                        ("lineage", "Artifact lineage")):
        header, rows = tables[name]
        lines += [f"## {title}", "", markdown_table(header, rows), ""]
    if record.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in record["notes"]), ""]
    lines.append(f"Report: {run_dir / 'report.html'}")
    return "\n".join(lines)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def report_html(record: dict[str, Any]) -> str:
    tables = _tables(record)
    ledger = _json(record.get("ledger_entry", {}))
    sections = [
        "<h1>SafeRULE demo: the closed loop</h1>",
        f"<p>Run {html.escape(str(record.get('started')))}; settings: "
        f"<code>{html.escape(json.dumps(record.get('settings', {}), sort_keys=True))}</code></p>",
        "<h2>The fleet over time</h2><img src='fleet_timeline.png' alt='fleet timeline'>",
        "<h2>Before / after</h2><img src='before_after.png' alt='before and after'>",
        html_table(*tables["before_after"]), html_table(*tables["fleet"]),
        "<h2>Unlearning</h2><img src='unlearning.png' alt='unlearning progress and time'>",
        html_table(*tables["cost"]),
        "<h2>Stage timings</h2>", html_table(*tables["stages"]),
        "<h2>Ledger entry</h2>", f"<pre>{html.escape(ledger)}</pre>",
        "<h2>Artifact lineage</h2>", html_table(*tables["lineage"]),
        "<h2>Data</h2>",
        f"<pre>{html.escape(_json({k: record.get(k) for k in ('dataset', 'poison', 'logged_episodes')}))}</pre>",
        f"<pre>bag import: {html.escape(_json(record.get('bag_import', {})))}</pre>",
        "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in record.get("notes", [])) + "</ul>",
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>SafeRULE demo</title><style>{CSS}</style>" \
           f"</head><body>{''.join(sections)}</body></html>\n"


def write_report(record: dict[str, Any], run_dir: Path) -> str:
    """Write the figures and report.html into `run_dir`; return the Markdown summary."""
    run_dir = Path(run_dir)
    atomic_write_bytes(run_dir / "fleet_timeline.png", fleet_timeline_png(record))
    atomic_write_bytes(run_dir / "before_after.png", before_after_png(record))
    atomic_write_bytes(run_dir / "unlearning.png", unlearning_png(record))
    atomic_write_text(run_dir / "report.html", report_html(record))
    summary = markdown_summary(record, run_dir)
    atomic_write_text(run_dir / "summary.md", summary + "\n")
    return summary
