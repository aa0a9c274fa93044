"""index.html of a report: the run's settings and figures, then each section's picture and caption (or why it is left
out), the probe table, the config. One file, no scripts, nothing fetched: a browser opens it from disk."""
from __future__ import annotations

import datetime
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evaluation.report import COLUMNS, setup_line, table_rows
from reporting import ReportError
from util.files import write_file_atomic

STYLE = """body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
td.n { text-align: right; } img { max-width: 100%; } .note { color: #a40; } pre { background: #f6f6f6; padding: 8px; }
caption, .caption { color: #555; font-size: 0.9em; text-align: left; }"""


@dataclass
class Section:
    name: str
    title: str
    png: Optional[str] = None  # the picture's file name, beside index.html
    caption: str = ""
    note: Optional[str] = None  # why the section is left out
    table: Optional[str] = None  # HTML of a table (escaped already)


def probe_section(path: Path, explicit: bool) -> Section:
    """The probe table of eval.py's --json file at `path`. A file the caller named must be there and readable
    (ReportError otherwise); the run folder's own probe.json leaves a note when it is missing or unreadable."""
    title = "Probes: the trained target encoder beside its random init"
    try:
        if not path.is_file():
            raise ReportError(f"{path}: no such file; eval.py --json FILE writes the probe figures")
        results = json.loads(path.read_text())
        table = probe_table(results)
        caption = f"eval.py on {results['setup']['checkpoint']}: {setup_line(results)}."
    except (ReportError, OSError, ValueError, KeyError, TypeError) as err:
        message = str(err) if isinstance(err, ReportError) else (
            f"{path}: not eval.py's --json output ({type(err).__name__}: {err}); give the file eval.py --json wrote")
        if explicit:
            raise ReportError(f"--probe {message}") from None
        return Section("probe", title, note=f"{message} (or give one with --probe)")
    return Section("probe", title, caption=caption, table=table)


def probe_table(results: dict) -> str:
    """eval.py's table as HTML: kNN, linear, attentive and low-shot top-1 of the checkpoint and its random init, and
    the margin."""
    e = html.escape
    head = "".join(f"<th>{e(name)} top-1</th>" for name in COLUMNS.values())
    head += f"<th>low-shot {e(str(results['setup']['low_shot']))} top-1</th>"
    body = "".join(f"<tr><th>{e(name)}</th>" + "".join(f'<td class="n">{e(c)}</td>' for c in cells) + "</tr>"
                   for name, cells in table_rows(results))
    return f"<table><tr><th>encoder</th>{head}</tr>{body}</table>"


def run_facts(run) -> list[tuple[str, str]]:
    """(name, value) rows of the table at the top: what ran, where, and its figures."""
    cfg, m = run.cfg, run.cfg.model
    facts = [("run folder", str(run.path)), ("run.name", cfg.run.name), ("device", cfg.run.device),
             ("model", f"{m.arch}: patch {m.patch_size}, width {m.embed_dim}, depth {m.depth}, {m.num_heads} heads; "
                       f"predictor depth {m.pred_depth}, width {m.pred_emb_dim}; crops of {cfg.data.crop_size} px"),
             ("data.shards", cfg.data.shards)]
    facts += [("plan", line.removeprefix("# plan: ")) for line in plan_lines(run.path / "config.yaml")]
    if run.summary:
        facts += summary_facts(run.summary)
    else:
        facts.append(("summary.json", "none yet: no launch of the run has ended (one killed without a signal writes "
                                      "none)"))
    if run.log is not None and (loss := run.log.get("Train_loss")) is not None and len(loss.steps):
        facts.append(("last logged loss", f"{loss.values[-1]:.4f} at step {loss.steps[-1]}"))
    facts.append(("newest checkpoint", str(run.checkpoint) if run.checkpoint else "none"))
    return facts


def summary_facts(s: dict) -> list[tuple[str, str]]:
    """The rows of summary.json: the whole run (every launch, each from its process start), then each launch."""
    launches = s.get("launches", [])
    span = f" (steps {s['first_step']}–{s['last_step']})" if "first_step" in s else ""
    count = f" in {len(launches)} launch{'es' if len(launches) > 1 else ''}" if launches else ""
    facts = [("steps", f"{s['steps']}{span}{count}, {float(s['seconds']):.1f} s from process start, on "
                       f"{s['world_size']} rank(s)"),
             ("images/s per GPU", f"{float(s['images_per_s_per_gpu']):.1f} (the whole run, start-up included)"),
             ("images per GPU-hour", f"{float(s['images_per_gpu_hour']):,.0f}"),
             ("bad samples skipped", str(s.get("skipped_samples", 0)))]
    for i, x in enumerate(launches, start=1):
        facts.append((f"launch {i}", f"steps {x['first_step']}–{x['last_step']} on {x['world_size']} rank(s): "
                                     f"{x['seconds']:.1f} s, of it {x['seconds'] - x['loop_seconds']:.1f} s start-up; "
                                     f"{x['images_per_s_per_gpu']:.1f} images/s per GPU; ended at "
                                     f"{'its last step' if x['ended'] == 'last step' else 'a stop signal'}"))
    return facts


def plan_lines(config_yaml: Path) -> list[str]:
    return [line for line in config_yaml.read_text().splitlines() if line.startswith("# plan: ")]


def write_page(path: Path, run, sections: list[Section]) -> None:
    e = html.escape
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>I-JEPA run {e(run.cfg.run.name)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>I-JEPA run <code>{e(run.cfg.run.name)}</code></h1><p class='caption'>report.py, {when}</p>",
             "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in run_facts(run)) + "</table>"]
    for s in sections:
        parts.append(f"<h2 id='{e(s.name)}'>{e(s.title)}</h2>")
        if s.note:
            parts.append(f"<p class='note'>Left out: {e(s.note)}</p>")
            continue
        if s.png:
            parts.append(f"<img src='{e(s.png)}' alt='{e(s.title)}'>")
        if s.table:
            parts.append(s.table)
        parts.append(f"<p class='caption'>{e(s.caption)}</p>")
    config = (run.path / "config.yaml").read_text()
    parts.append(f"<h2 id='config'>Settings</h2><details open><summary>{e(str(run.path / 'config.yaml'))}</summary>"
                 f"<pre>{e(config)}</pre></details></body></html>")
    write_file_atomic(path, "\n".join(parts).encode(), sync=False)
