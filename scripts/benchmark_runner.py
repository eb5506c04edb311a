"""Scheduler overhead of the trial runners: local and Ray, each with warm
workers and with a process per trial (--trial_isolation).

Runs the same search with each runner and isolation: the real search driver
(random search, trial store, checkpoints) keeping `--parallel` trials in
flight, `--trials` trials in all, each of which only sleeps for a duration
drawn between `--min_sleep_s` and `--max_sleep_s` (the SPINESEARCH_FAULTS
sleep hook, then the target_similarity reward: no TensorFlow). A trial still
runs in a real trial process, under Ray inside an actor: a warm worker
(`python -m spinesearch.worker`, started once per slot) or a new `python -m
spinesearch.evaluate` per trial, so the cost of handing a trial to a process
is part of the overhead measured.

Per runner, from the driver's side:
  utilisation    the trials' sleep / (parallel x wall time from the first
                 submission to the last outcome); `bound` is the same for a
                 zero-overhead scheduler given these durations (the tail, when
                 fewer trials than slots remain, idles slots in any scheduler)
  efficiency     utilisation / bound: the zero-overhead wall time / the wall time
  overhead       per trial, the time it held a slot beyond its sleep: process
                 (and Ray task) start, result return, detection
  turnaround     from an outcome reaching the driver to the next trial's
                 submission in the freed slot (store, observe, propose)
  end->next      a slot's idle time between two trials' work: a trial's
                 overhead plus the turnaround after it
  start-up       the runner's own start and rounds of `--parallel` trials
                 that do no work, outside the timing, until one takes under a
                 second (for Ray: a local instance and its actors; with warm
                 workers: starting them)
Also, alone on an idle runner, the time from submitting a trial that does no
work to its outcome: a new trial process, and a warm worker.

Ray's CPUs are scheduling units: sleeping trials need no core, so the local
Ray instance here declares `--parallel` CPUs on any machine.

  python scripts/benchmark_runner.py --trials=320 --parallel=32 --min_sleep_s=2 \
      --max_sleep_s=8 --json
"""
import heapq
import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

from absl import app, flags

import spinesearch  # noqa: F401  (the TensorFlow environment first)
from spinesearch import evaluate
from spinesearch.driver import SearchDriver, SearchSettings
from spinesearch.errors import ConfigError, check_choices, run_cli
from spinesearch.runners.base import Runner, TrialOutcome
from spinesearch.runners.local import ISOLATIONS, LocalRunner
from spinesearch.space.registry import build_space

FLAGS = flags.FLAGS
flags.DEFINE_list("runners", ["local", "ray"], "Runners to compare.")
flags.DEFINE_list("isolations", list(ISOLATIONS), "Trial isolations to compare (each runner "
                  "with each).")
flags.DEFINE_integer("trials", 320, "Trials per runner.")
flags.DEFINE_integer("parallel", 32, "Trials in flight at once.")
flags.DEFINE_float("min_sleep_s", 0.5, "Shortest trial.")
flags.DEFINE_float("max_sleep_s", 2.0, "Longest trial.")
flags.DEFINE_integer("seed", 0, "Seed of the trial durations.")
flags.DEFINE_integer("process_repeats", 10, "Lone trials timed, per isolation.")
flags.DEFINE_bool("json", False, "Print the results as JSON instead of a table.")

_REWARD = {"type": "target_similarity", "cost": None}
_RUNNERS = ("local", "ray")
# Trial ids of the warm-up rounds: none of the search's, so they do not sleep.
_WARM_UP_IDS = 1_000_000
_WARM_UP_ROUNDS = 30
_SETTLED_ROUND_S = 1.0


class TimedRunner(Runner):
  """Passes everything to `runner`, noting when each trial was submitted and
  when its outcome reached the driver."""

  name = "timed"

  def __init__(self, runner: Runner):
    super().__init__(runner.max_parallel, runner.timeout_s)
    self.runner = runner
    self.submitted: Dict[int, float] = {}
    self.returned: Dict[int, float] = {}
    self.order: List[tuple] = []  # ("submit" | "outcome", trial id, time) in order

  def num_running(self) -> int:
    return self.runner.num_running()

  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    worker = self.runner.submit(trial_id, request)
    self.submitted[trial_id] = time.monotonic()
    self.order.append(("submit", trial_id, self.submitted[trial_id]))
    return worker

  def poll(self, wait_s: float) -> List[TrialOutcome]:
    outcomes = self.runner.poll(wait_s)
    now = time.monotonic()
    for outcome in outcomes:
      self.returned[outcome.trial_id] = now
      self.order.append(("outcome", outcome.trial_id, now))
    return outcomes

  def shutdown(self) -> None:
    self.runner.shutdown()


def sleep_faults(durations: Sequence[float]) -> str:
  return ",".join(f"sleep:{d:.3f}@{i}" for i, d in enumerate(durations, start=1))


def zero_overhead_makespan(durations: Sequence[float], parallel: int) -> float:
  """Wall time of the same trials, started in order on the first free slot,
  with no overhead at all."""
  slots = [0.0] * parallel
  for duration in durations:
    heapq.heappush(slots, heapq.heappop(slots) + duration)
  return max(slots)


def percentiles(values: Sequence[float]) -> Dict[str, float]:
  ordered = sorted(values)
  return {"median": statistics.median(ordered),
          "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]}


def run_search(runner: str, isolation: str, durations: Sequence[float], parallel: int,
               work_dir: str) -> Dict[str, Any]:
  """One search of sleeping trials on `runner` with `isolation`; its timings."""
  started = time.monotonic()
  if runner == "ray":
    from spinesearch.runners import ray_runner
    ray_runner.start_local_instance(num_cpus=parallel)
  os.environ[evaluate.FAULTS_ENV] = sleep_faults(durations)
  settings = SearchSettings(
      search_dir=os.path.join(work_dir, f"{runner}-{isolation}"), search_space="spinenet",
      space_options={}, algorithm="random", algorithm_options={}, seed=FLAGS.seed,
      defining_flags={"benchmark": "runner"}, num_trials=len(durations),
      max_parallel_trials=parallel, max_failed_trials=0, trial_timeout_s=600.0,
      runner=runner, runner_options={"trial_isolation": isolation})
  driver = SearchDriver(settings, lambda space: dict(_REWARD), out=io.StringIO())
  warm_up(driver.runner, parallel)
  setup_s = time.monotonic() - started
  timed = TimedRunner(driver.runner)
  driver.runner = timed
  status = driver.run()
  if status != 0:
    raise RuntimeError(f"the {runner} search ended with status {status}")
  return summarise(f"{runner}/{isolation}", timed, durations, parallel, setup_s)


def no_work_request(space, trial_id: int) -> Dict[str, Any]:
  decisions = space.sample(random.Random(trial_id))
  return {"trial_id": trial_id, "seed": 0, "decisions": decisions,
          "architecture": space.decode(decisions).to_dict(), "space": space.config(),
          "reward": dict(_REWARD)}


def warm_up(runner: Runner, parallel: int) -> None:
  """Rounds of `parallel` trials that do no work, outside the timing, until
  the runner is past its start-up: a round takes under _SETTLED_ROUND_S, or
  no less than the round before it. Ray's actors and the warm workers are
  then up; and for some seconds after a local Ray instance has started its
  actors, calls to them start late, one after another (measured here: 32
  first calls took up to 7 s, none after a 20 s pause). Process-per-trial
  runners get the same rounds."""
  space = build_space("spinenet")
  previous = math.inf
  for round_number in range(_WARM_UP_ROUNDS):
    started = time.monotonic()
    first_id = _WARM_UP_IDS + round_number * parallel
    for trial_id in range(first_id, first_id + parallel):
      runner.submit(trial_id, no_work_request(space, trial_id))
    finished = 0
    while finished < parallel:
      finished += len(runner.poll(1.0))
    took = time.monotonic() - started
    if took < _SETTLED_ROUND_S or took > 0.9 * previous:
      return
    previous = took


def summarise(runner: str, timed: TimedRunner, durations: Sequence[float], parallel: int,
              setup_s: float) -> Dict[str, Any]:
  wall = max(timed.returned.values()) - min(timed.submitted.values())
  makespan = zero_overhead_makespan(durations, parallel)
  work = sum(durations)
  overhead = {i: timed.returned[i] - timed.submitted[i] - durations[i - 1]
              for i in timed.returned}
  # Each submission after the first `parallel` fills the slot of the oldest
  # outcome not yet followed by one.
  pending_outcomes, turnaround, end_to_next = [], [], []
  submissions = 0
  for kind, trial_id, when in timed.order:
    if kind == "outcome":
      pending_outcomes.append((trial_id, when))
    else:
      submissions += 1
      if submissions > parallel:
        ended_id, ended = pending_outcomes.pop(0)
        turnaround.append(when - ended)
        end_to_next.append(overhead[ended_id] + when - ended)
  return {
      "runner": runner, "trials": len(durations), "parallel": parallel,
      "startup_s": setup_s, "wall_s": wall, "work_s": work,
      "utilisation": work / (parallel * wall),
      "utilisation_bound": work / (parallel * makespan),
      "efficiency": makespan / wall,
      "overhead_s": percentiles(list(overhead.values())),
      "turnaround_s": percentiles(turnaround),
      "end_to_next_start_s": percentiles(end_to_next),
  }


def time_lone_trials(isolation: str, repeats: int, work_dir: str) -> Dict[str, float]:
  """Submit-to-outcome time of trials that do no work, one at a time on a
  one-slot local runner: with "process" each is a new trial process (what
  every trial pays), with "worker" each goes to the same warm worker (started
  by an untimed first trial)."""
  space = build_space("spinenet")
  runner = LocalRunner(max_parallel=1, timeout_s=600.0,
                       search_dir=os.path.join(work_dir, f"lone-{isolation}"),
                       trial_isolation=isolation)
  seconds = []
  try:
    for trial_id in range(repeats + 1):
      started = time.monotonic()
      runner.submit(trial_id, no_work_request(space, trial_id))
      outcomes: List[TrialOutcome] = []
      while not outcomes:
        outcomes = runner.poll(0.5)
      if outcomes[0].status != "done":
        raise RuntimeError(f"a lone trial failed: {outcomes[0].error}")
      seconds.append(time.monotonic() - started)
  finally:
    runner.shutdown()
  return percentiles(seconds[1:])


def format_table(results: List[Dict[str, Any]], lone: Dict[str, Dict[str, float]]) -> str:
  first = results[0]
  width = max(16, max(len(r["runner"]) for r in results) + 2)
  lines = [f"scheduler overhead: {first['trials']} trials sleeping {FLAGS.min_sleep_s:g}-"
           f"{FLAGS.max_sleep_s:g} s, {first['parallel']} at once, on "
           f"{len(os.sched_getaffinity(0))} cores",
           f"{'':<34}" + "".join(f"{r['runner']:>{width}}" for r in results)]

  def row(label, value):
    lines.append(f"{label:<34}" + "".join(f"{value(r):>{width}}" for r in results))

  row("utilisation", lambda r: f"{r['utilisation']:.1%}")
  row("  zero-overhead bound", lambda r: f"{r['utilisation_bound']:.1%}")
  row("  efficiency (of the bound)", lambda r: f"{r['efficiency']:.1%}")
  row("wall time (s)", lambda r: f"{r['wall_s']:.1f}")
  for key, label in (("overhead_s", "overhead per trial"), ("turnaround_s", "driver turnaround"),
                     ("end_to_next_start_s", "end -> next start")):
    row(f"{label} median / p95 (ms)",
        lambda r, k=key: f"{r[k]['median'] * 1e3:.0f} / {r[k]['p95'] * 1e3:.0f}")
  row("runner start-up (s)", lambda r: f"{r['startup_s']:.1f}")
  for isolation, seconds in lone.items():
    lines.append(f"a lone no-work trial, {isolation}: median {seconds['median'] * 1e3:.0f} ms, "
                 f"p95 {seconds['p95'] * 1e3:.0f} ms")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, given, known in (("runners", FLAGS.runners, _RUNNERS),
                             ("isolations", FLAGS.isolations, ISOLATIONS)):
    check_choices(name, given, known)
  if FLAGS.trials < 1 or FLAGS.parallel < 1 or FLAGS.process_repeats < 1:
    raise ConfigError("--trials, --parallel and --process_repeats must be positive")
  if not 0 <= FLAGS.min_sleep_s <= FLAGS.max_sleep_s:
    raise ConfigError(f"--min_sleep_s={FLAGS.min_sleep_s:g} --max_sleep_s="
                      f"{FLAGS.max_sleep_s:g}: need 0 <= min <= max")
  rng = random.Random(FLAGS.seed)
  durations = [rng.uniform(FLAGS.min_sleep_s, FLAGS.max_sleep_s) for _ in range(FLAGS.trials)]
  results = []
  # Ray's driver prints its cluster's warnings on stdout; keep them off the
  # results.
  results_out, sys.stdout = sys.stdout, sys.stderr
  with tempfile.TemporaryDirectory(prefix="benchmark-runner-") as work_dir:
    for runner in FLAGS.runners:
      for isolation in FLAGS.isolations:
        results.append(run_search(runner, isolation, durations, FLAGS.parallel, work_dir))
        if runner == "ray":
          import ray
          ray.shutdown()
        if not FLAGS.json:
          print(f"  {runner}/{isolation}: done", file=sys.stderr, flush=True)
    os.environ.pop(evaluate.FAULTS_ENV, None)
    lone = {isolation: time_lone_trials(isolation, FLAGS.process_repeats, work_dir)
            for isolation in FLAGS.isolations}
  if FLAGS.json:
    print(json.dumps({"trials": FLAGS.trials, "parallel": FLAGS.parallel,
                      "sleep_s": [FLAGS.min_sleep_s, FLAGS.max_sleep_s], "seed": FLAGS.seed,
                      "cores": len(os.sched_getaffinity(0)), "results": results,
                      "lone_trial_s": lone}, indent=2), file=results_out)
  else:
    print(format_table(results, lone), file=results_out)


if __name__ == "__main__":
  app.run(lambda argv: run_cli(main, argv))
