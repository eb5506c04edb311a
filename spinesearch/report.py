"""The report of a search: `python -m spinesearch.report --search_dir DIR`.

The search driver writes it when a search reaches its budget; this command
writes it again for any search directory whose driver is not running (the
trial store admits one process at a time). Files in `<search_dir>/report/`
(or `--output_dir`):

  report.md              settings, cost, the top-k trials, links to the plots
  progress.png           reward of every finished trial and the best so far
  accuracy_vs_cost.png   AP (or the reward, for searches that measure no AP)
                         against multiply-adds (or parameters, when no trial
                         counted multiply-adds), with the Pareto front; left
                         out, with a note, when no trial measured a cost
  best_architecture.png  diagram of the best trial's architecture

Every file is written atomically; a plot that cannot be drawn this time is
removed rather than left over from an earlier report.
"""
import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spinesearch import report_plots
from spinesearch.errors import ConfigError, EXIT_USER_ERROR, run_cli
from spinesearch.files import write_text_atomically
from spinesearch.progress import format_duration
from spinesearch.space.architecture import Architecture
from spinesearch.store import DB_NAME, Trial, TrialStore

REPORT_DIR = "report"
MARKDOWN = "report.md"
PROGRESS_PLOT = "progress.png"
COST_PLOT = "accuracy_vs_cost.png"
ARCHITECTURE_PLOT = "best_architecture.png"
_GIGA = 1e9
_MEGA = 1e6


@dataclasses.dataclass(frozen=True)
class ReportFiles:
  """What a report wrote: the markdown file and the plots (name -> path)."""
  folder: str
  markdown: str
  plots: Dict[str, str]


def write_report(search_dir: str, *, top_k: int = 5,
                 output_dir: Optional[str] = None) -> ReportFiles:
  """Reads the search in `search_dir` and writes its report (see module docstring)."""
  if top_k < 1:
    raise ConfigError(f"top_k: expected a positive integer, got {top_k}")
  if not os.path.isfile(os.path.join(search_dir, DB_NAME)):
    raise ConfigError(f"{search_dir}: no search here (no {DB_NAME})")
  if importlib.util.find_spec("matplotlib") is None:
    raise ConfigError("the search report needs matplotlib: pip install 'spinesearch[viz]'")
  with TrialStore(search_dir) as store:
    metadata = store.metadata() or {}
    trials = store.trials()
    finished = store.finished_trials()
  folder = output_dir or os.path.join(search_dir, REPORT_DIR)
  os.makedirs(folder, exist_ok=True)
  done = sorted((t for t in trials if t.status == "done"), key=lambda t: (-t.reward, t.id))
  plots, notes = _write_plots(folder, metadata, done, finished, top_k)
  text = markdown(search_dir, folder, metadata, trials, done[:top_k], plots, notes)
  path = os.path.join(folder, MARKDOWN)
  write_text_atomically(path, text)
  return ReportFiles(folder, path, plots)


def _write_plots(folder: str, metadata: Dict[str, Any], done: List[Trial],
                 finished: List[Trial], top_k: int) -> Tuple[Dict[str, str], Dict[str, str]]:
  """Draws what the trials allow; returns the plots written and, for each
  left out, the reason."""
  plots, notes = {}, {}
  reward_type = metadata.get("flags", {}).get("reward") or "reward"
  targets = {name: os.path.join(folder, name)
             for name in (PROGRESS_PLOT, COST_PLOT, ARCHITECTURE_PLOT)}
  if finished:
    report_plots.plot_progress(
        [t.reward if t.status == "done" else None for t in finished], targets[PROGRESS_PLOT],
        title=f"{reward_type} reward of {len(finished)} finished trials")
    plots[PROGRESS_PLOT] = targets[PROGRESS_PLOT]
  else:
    notes[PROGRESS_PLOT] = "no trial has finished yet"
  axes = cost_axes(done, reward_type)
  if axes is None:
    notes[COST_PLOT] = ("no trial measured a cost (multiply-adds or parameters), "
                        "so there is no accuracy-vs-cost plot")
  else:
    points, x_label, y_label = axes
    report_plots.plot_pareto(points, targets[COST_PLOT], x_label=x_label, y_label=y_label,
                             highlight=[t.id for t in done[:top_k]])
    plots[COST_PLOT] = targets[COST_PLOT]
  if done:
    best = done[0]
    report_plots.plot_architecture(
        Architecture.from_dict(best.architecture), targets[ARCHITECTURE_PLOT],
        title=f"best architecture: trial {best.id}, reward {best.reward:.4f}")
    plots[ARCHITECTURE_PLOT] = targets[ARCHITECTURE_PLOT]
  else:
    notes[ARCHITECTURE_PLOT] = "no trial is done yet"
  for name, path in targets.items():
    if name not in plots and os.path.exists(path):
      os.unlink(path)
  return plots, notes


def cost_axes(done: Sequence[Trial], reward_type: str
              ) -> Optional[Tuple[List[Tuple[float, float, int]], str, str]]:
  """Points (cost, accuracy, trial id) of the accuracy-vs-cost plot and the
  axis labels: AP if trials measured it (else the reward) against G
  multiply-adds (else M parameters); None when no done trial has a cost."""
  measured_ap = any(_number(t.metrics.get("ap")) is not None for t in done)
  y_key, y_label = ("ap", "AP") if measured_ap else (None, f"reward ({reward_type})")
  for x_key, scale, x_label in (("multiply_adds", _GIGA, "G multiply-adds"),
                                ("params", _MEGA, "parameters (M)")):
    points = []
    for t in done:
      x = _number(t.metrics.get(x_key))
      y = _number(t.metrics.get(y_key)) if y_key else t.reward
      if x is not None and y is not None:
        points.append((x / scale, y, t.id))
    if points:
      return points, x_label, y_label
  return None


# ---- report.md -------------------------------------------------------------------------

_TOP_COLUMNS = (("reward", "reward", 1.0, ".4f"), ("ap", "AP", 1.0, ".4f"),
                ("ap50", "AP50", 1.0, ".4f"), ("multiply_adds", "G mult-adds", _GIGA, ".3f"),
                ("params", "params (M)", _MEGA, ".2f"), ("latency_ms", "latency (ms)", 1.0, ".1f"),
                ("zen_score", "zen score", 1.0, ".2f"))


def markdown(search_dir: str, folder: str, metadata: Dict[str, Any], trials: Sequence[Trial],
             top: Sequence[Trial], plots: Dict[str, str], notes: Dict[str, str]) -> str:
  """The text of report.md."""
  lines = [f"# Search report: {search_dir}", "",
           f"Written {_utc(datetime.datetime.now(datetime.timezone.utc).timestamp())} "
           f"by SpineSearch {metadata.get('version', '?')}.", ""]
  lines += _settings_section(metadata)
  lines += _cost_section(trials)
  lines += _plot_section("Progress", PROGRESS_PLOT, "reward per trial", plots, notes)
  lines += _plot_section("Accuracy vs cost", COST_PLOT, "accuracy vs cost with the Pareto front",
                         plots, notes)
  lines += _top_section(search_dir, folder, top)
  lines += _plot_section("Best architecture", ARCHITECTURE_PLOT, "best architecture", plots, notes)
  return "\n".join(lines).rstrip() + "\n"


def _settings_section(metadata: Dict[str, Any]) -> List[str]:
  lines = ["## Settings", ""]
  if not metadata:
    return lines + ["No search metadata in the store.", ""]
  lines += ["| flag | value |", "|---|---|"]
  for name, value in sorted(metadata.get("flags", {}).items()):
    if value is not None:
      lines.append(f"| --{name} | {_flag_text(value)} |")
  lines += ["", f"Search space: `{json.dumps(metadata.get('space'), sort_keys=True)}`", ""]
  if "created" in metadata:
    lines += [f"Created {_utc(metadata['created'])}.", ""]
  return lines


def _cost_section(trials: Sequence[Trial]) -> List[str]:
  counts = {status: sum(t.status == status for t in trials)
            for status in ("done", "failed", "pending", "running")}
  finished = [t for t in trials if t.status in ("done", "failed")]
  trial_seconds = sum(t.finished - t.started for t in finished
                      if t.started is not None and t.finished is not None)
  lines = ["## Cost", "",
           f"- trials: {len(trials)} ({counts['done']} done, {counts['failed']} failed, "
           f"{counts['pending'] + counts['running']} not finished)",
           f"- trial time: {format_duration(trial_seconds)} in all"
           + (f", {format_duration(trial_seconds / len(finished))} per finished trial"
              if finished else "")]
  if finished:
    wall = max(t.finished for t in finished) - min(t.created for t in trials)
    lines.append(f"- wall time: {format_duration(wall)} from the first trial's creation to the "
                 f"last one's end (including any pauses between runs)")
  prefilter = [t.metrics["prefilter_seconds"] for t in trials
               if _number(t.metrics.get("prefilter_seconds")) is not None]
  if prefilter:
    lines.append(f"- zero-shot prefilter: {format_duration(sum(prefilter))} scoring candidates in "
                 f"the driver for {len(prefilter)} trials")
  return lines + [""]


def _top_section(search_dir: str, folder: str, top: Sequence[Trial]) -> List[str]:
  lines = [f"## Top {len(top)} trials", ""]
  if not top:
    return lines + ["No trial is done yet.", ""]
  columns = [c for c in _TOP_COLUMNS
             if c[0] == "reward" or any(_number(t.metrics.get(c[0])) is not None for t in top)]
  lines += ["| rank | trial | " + " | ".join(c[1] for c in columns) + " | architecture |",
            "|---" * (len(columns) + 3) + "|"]
  for rank, trial in enumerate(top, start=1):
    cells = []
    for key, _, scale, spec in columns:
      value = trial.reward if key == "reward" else _number(trial.metrics.get(key))
      cells.append("-" if value is None else format(value / scale, spec))
    best_file = os.path.join(search_dir, "best", f"rank{rank:02d}-trial{trial.id:04d}.json")
    link = (f"[json]({os.path.relpath(best_file, folder)})" if os.path.exists(best_file)
            else "-")
    lines.append(f"| {rank} | {trial.id} | " + " | ".join(cells) + f" | {link} |")
  return lines + [""]


def _plot_section(title: str, name: str, alt: str, plots: Dict[str, str],
                  notes: Dict[str, str]) -> List[str]:
  body = f"![{alt}]({name})" if name in plots else f"No plot: {notes.get(name, 'not drawn')}."
  return [f"## {title}", "", body, ""]


def _number(value: Any) -> Optional[float]:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return float(value)


def _flag_text(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def _utc(timestamp: float) -> str:
  return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC")


# ---- the command ---------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
  """A bad argument is one line on stderr and exit status 2, like every
  SpineSearch command."""

  def error(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _OneLineParser(prog="python -m spinesearch.report",
                          description="Writes the report of a search (see the module docstring).")
  parser.add_argument("--search_dir", required=True, help="folder of the search")
  parser.add_argument("--top_k", type=int, default=5, help="trials in the top table (default 5)")
  parser.add_argument("--output_dir", default=None,
                      help="where the report goes (default: <search_dir>/report)")
  args = parser.parse_args(argv)
  files = write_report(args.search_dir, top_k=args.top_k, output_dir=args.output_dir)
  print(f"report: {files.markdown}")
  for path in files.plots.values():
    print(f"plot: {path}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return run_cli(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
