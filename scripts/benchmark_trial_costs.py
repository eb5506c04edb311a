"""Where a trial's time goes, with warm workers and with a process per trial.

For each reward (the quickstart proxy preset on the synthetic set, the
zero-shot score of configs/search/zeroshot.flags, and, with --supernet, the
one-shot reward on that supernet; PPO over the SpineNet space) and each trial isolation, runs a real search of
`--trials` trials, one at a time (`python -m spinesearch.controller
--runner=local --max_parallel_trials=1 --trial_isolation=...`), and reads the
phases every trial recorded (spinesearch.phases) from its trial store:

  start-up   process start and imports (a warm worker's first trial only)
  build      Keras models and Model Garden tasks
  trace      a training step's first call
  train      the other training steps
  evaluate   AP, or the Zen-score's forward passes
  cost       multiply-adds (and latency with a latency target)
  other      the rest of the trial's wall time: input pipelines, batch-norm
             recalibration, clearing Keras' state

Per reward and isolation it prints the mean over the trials after the first
(the steady state a search runs in) and the first trial alone, the CPU
seconds per trial, the share of wall time outside training steps and
evaluation, a warm worker's resident memory after its first and last trial,
and the ratio of the two isolations' mean trial times, all measured in one
run. Extra controller flags (`--search_flag=--proxy_train_steps=40`) apply to
every search.

  python scripts/benchmark_trial_costs.py --supernet=/tmp/exp/sn/calib --json
  python scripts/benchmark_trial_costs.py --rewards=zero_shot --isolations=worker \\
      --trials=100     # resident memory over 100 trials of one warm worker
"""
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

from absl import app, flags

from spinesearch.errors import ConfigError, check_choices, run_cli
from spinesearch.phases import PHASES
from spinesearch.runners.local import ISOLATIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SEARCH = ("--search_space=spinenet", "--algorithm=ppo", "--controller_batch_size=4", "--seed=0")
REWARDS = {
    # The quickstart proxy preset on the synthetic set.
    "proxy": (*_SEARCH, "--reward=proxy", "--proxy_preset=quickstart", "--dataset=synthetic"),
    "zero_shot": ("--flagfile=configs/search/zeroshot.flags",),
    # The supernet fixes the proxy settings and the data set.
    "oneshot": (*_SEARCH, "--reward=oneshot"),
}
COLUMNS = PHASES + ("other",)

FLAGS = flags.FLAGS
flags.DEFINE_list("rewards", list(REWARDS), "Rewards to measure (oneshot needs --supernet).")
flags.DEFINE_list("isolations", list(ISOLATIONS), "Trial isolations to compare.")
flags.DEFINE_integer("trials", 4, "Trials per reward and isolation (at least 2).")
flags.DEFINE_string("supernet", None, "A trained supernet for the oneshot reward.")
flags.DEFINE_multi_string("search_flag", [], "A controller flag added to every search.")
flags.DEFINE_bool("json", False, "Print the results as JSON instead of a table.")


def run_search(reward: str, isolation: str, work_dir: str) -> Dict[str, Any]:
  """One search of FLAGS.trials trials; its trials' phases and its wall time."""
  search_dir = os.path.join(work_dir, f"{reward}-{isolation}")
  command = [sys.executable, "-m", "spinesearch.controller", *REWARDS[reward],
             f"--search_dir={search_dir}", f"--num_trials={FLAGS.trials}",
             "--max_parallel_trials=1", "--runner=local", f"--trial_isolation={isolation}",
             *FLAGS.search_flag]
  if reward == "oneshot":
    command.append(f"--supernet={FLAGS.supernet}")
  started = time.monotonic()
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  wall = time.monotonic() - started
  if done.returncode != 0:
    lines = done.stderr.strip().splitlines() or ["no output"]
    raise RuntimeError(f"the {reward} search ({isolation}) failed: {lines[-1]}")
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    rows = conn.execute("SELECT status, metrics FROM trials ORDER BY finish_order").fetchall()
  failed = [status for status, _ in rows if status != "done"]
  if failed:
    raise RuntimeError(f"the {reward} search ({isolation}): {len(failed)} trials failed")
  return {"reward": reward, "isolation": isolation, "search_wall_s": wall,
          "trials": [json.loads(metrics) for _, metrics in rows]}


def phases_of(metrics: Dict[str, Any]) -> Dict[str, float]:
  seconds = {phase: metrics.get(f"seconds_{phase}", 0.0) for phase in PHASES}
  seconds["other"] = max(0.0, metrics["seconds_total"] - sum(seconds.values()))
  return seconds


def mean(values: Sequence[float]) -> float:
  return statistics.mean(values) if values else 0.0


def summarise(search: Dict[str, Any]) -> Dict[str, Any]:
  trials = search["trials"]
  steady = trials[1:]
  steady_phases = [phases_of(m) for m in steady]
  summary = {
      "reward": search["reward"], "isolation": search["isolation"], "trials": len(trials),
      "search_wall_s": search["search_wall_s"],
      "first": phases_of(trials[0]),
      "steady": {column: mean([p[column] for p in steady_phases]) for column in COLUMNS},
      "steady_total_s": mean([m["seconds_total"] for m in steady]),
      "steady_cpu_s": mean([m.get("cpu_seconds", 0.0) for m in steady]),
  }
  summary["outside_train_evaluate"] = 1.0 - (
      (summary["steady"]["train"] + summary["steady"]["evaluate"])
      / summary["steady_total_s"]) if summary["steady_total_s"] else 0.0
  rss = [m["worker_rss_mb"] for m in trials if "worker_rss_mb" in m]
  if rss:
    summary["worker_rss_mb"] = {"first": rss[0], "last": rss[-1], "max": max(rss)}
  return summary


def format_table(summaries: List[Dict[str, Any]], ratios: Dict[str, float]) -> str:
  lines = [f"per-trial cost, seconds: mean of trials 2-{FLAGS.trials} (first trial in "
           f"brackets), one trial at a time, {len(os.sched_getaffinity(0))} cores"]
  header = f"{'':<22}" + "".join(f"{c:>14}" for c in COLUMNS + ("total", "cpu", "outside"))
  lines.append(header)
  for s in summaries:
    cells = [f"{s['steady'][c]:.2f} [{s['first'][c]:.1f}]" for c in COLUMNS]
    cells += [f"{s['steady_total_s']:.2f}", f"{s['steady_cpu_s']:.2f}",
              f"{s['outside_train_evaluate']:.1%}"]
    lines.append(f"{s['reward'] + '/' + s['isolation']:<22}" + "".join(f"{c:>14}" for c in cells))
  for s in summaries:
    if "worker_rss_mb" in s:
      rss = s["worker_rss_mb"]
      lines.append(f"{s['reward']}/{s['isolation']}: worker resident memory {rss['first']:.0f} MB "
                   f"after trial 1, {rss['last']:.0f} MB after trial {s['trials']} "
                   f"(max {rss['max']:.0f})")
  for reward, ratio in ratios.items():
    lines.append(f"{reward}: process / worker mean trial time {ratio:.2f}x")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, given, known in (("rewards", FLAGS.rewards, REWARDS),
                             ("isolations", FLAGS.isolations, ISOLATIONS)):
    check_choices(name, given, known)
  if FLAGS.trials < 2:
    raise ConfigError(f"--trials={FLAGS.trials}: need at least 2 (the first trial is "
                      f"reported apart)")
  if "oneshot" in FLAGS.rewards and not FLAGS.supernet:
    raise ConfigError("--rewards=oneshot needs --supernet (a trained supernet's folder)")
  summaries = []
  with tempfile.TemporaryDirectory(prefix="benchmark-trial-costs-") as work_dir:
    for reward in FLAGS.rewards:
      for isolation in FLAGS.isolations:
        summaries.append(summarise(run_search(reward, isolation, work_dir)))
        # On stderr as each search ends, so a later failure loses nothing.
        print(f"  {reward}/{isolation}: {json.dumps(summaries[-1])}", file=sys.stderr,
              flush=True)
  by_key = {(s["reward"], s["isolation"]): s for s in summaries}
  ratios = {reward: by_key[(reward, "process")]["steady_total_s"]
            / by_key[(reward, "worker")]["steady_total_s"]
            for reward in FLAGS.rewards
            if (reward, "process") in by_key and (reward, "worker") in by_key}
  if FLAGS.json:
    print(json.dumps({"trials": FLAGS.trials, "cores": len(os.sched_getaffinity(0)),
                      "search_flags": FLAGS.search_flag, "results": summaries,
                      "process_over_worker": ratios}, indent=2))
  else:
    print(format_table(summaries, ratios))


if __name__ == "__main__":
  app.run(lambda argv: run_cli(main, argv))
