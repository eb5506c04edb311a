"""Benchmark of the search algorithms on a reward with a known optimum.

Every algorithm searches the same space for the same hidden target
architecture (`spinesearch.rewards.TargetSimilarity`: the fraction of decisions
equal to the target's; 1.0 only at the target), with the same trial budget and
the same seeds. Trials run asynchronously as in a real search: `max_parallel`
proposals are in flight, each takes a random simulated duration, and results
are observed in completion order, so a policy update never waits for the
proposals sampled before it.

An entry of `--algorithms` is a name, or a name with options after a colon
(`ppo:normalize_advantages=false,batch_size=10`; values are JSON, as --set's), so variants
of one algorithm run side by side. `--reward_scale` multiplies the reward (one-
shot AP is about 0.03 where similarity is about 0.5): an algorithm that is
invariant to the reward's scale scores the same at any scale.

Prints per algorithm: best reward after the budget (mean +- std over seeds),
trials until the best reward first reached 0.95 (median over the seeds that
reached it), and wall time per proposal and per observation (the latter
includes the policy updates).

  python scripts/benchmark_controller.py --space=spinenet --trials=1000 --seeds=3
  python scripts/benchmark_controller.py --algorithms=ppo,ppo:normalize_advantages=false \
      --reward_scale=0.03
"""
import json
import math
import random
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow loads)
from spinesearch.algorithms.base import Observation
from spinesearch.algorithms.registry import ALGORITHMS, build_algorithm
from spinesearch.errors import ConfigError, run_cli
from spinesearch.proxy.config import parse_overrides
from spinesearch.rewards import TargetSimilarity
from spinesearch.space.registry import build_space

FLAGS = flags.FLAGS
flags.DEFINE_string("space", "spinenet", "Search space name (spinesearch.space.registry).")
flags.DEFINE_integer("trials", 1000, "Trial budget per search.")
flags.DEFINE_integer("seeds", 3, "Number of seeds (0..seeds-1) per algorithm.")
flags.DEFINE_string("algorithms", "ppo;reinforce;evolution;random",
                    "Algorithms to compare, separated by ';' (or ',' between plain names): "
                    "a name, or name:option=value,option=value.")
flags.DEFINE_float("reward_scale", 1.0, "Factor on the reward (the best stays the target's).")
flags.DEFINE_integer("max_parallel", 8, "Trials in flight at once.")
flags.DEFINE_float("failure_rate", 0.0, "Probability that a simulated trial fails.")
flags.DEFINE_float("threshold", 0.95, "Reward counted as reaching the optimum (which is 1.0).")
flags.DEFINE_bool("json", False, "Print the results as JSON instead of a table.")

# Shifts the target away from the algorithm's own seed stream.
_TARGET_SEED_OFFSET = 1000


def parse_algorithms(text: str) -> List[Tuple[str, str, Dict]]:
  """(label, name, options) for each entry of --algorithms."""
  entries = [e for e in text.split(";") if e.strip()] if ":" in text else \
      [e for e in text.replace(";", ",").split(",") if e.strip()]
  parsed = []
  for entry in entries:
    name, _, rest = entry.strip().partition(":")
    if name not in ALGORITHMS:
      raise ConfigError(f"--algorithms: unknown {name!r}; choose from {', '.join(ALGORITHMS)}")
    options = parse_overrides(filter(None, rest.split(",")))
    parsed.append((entry.strip(), name, options))
  return parsed


def run_search(name: str, space, seed: int, trials: int, max_parallel: int,
               failure_rate: float, threshold: float, options: Optional[Dict] = None,
               reward_scale: float = 1.0) -> Dict:
  """One simulated asynchronous search; returns its trace and timings
  (rewards divided back by `reward_scale`, so traces compare across scales)."""
  similarity = TargetSimilarity(space, seed + _TARGET_SEED_OFFSET)
  algorithm = build_algorithm(name, space, seed, **(options or {}))
  clock_rng = random.Random(seed)
  in_flight = []  # (finish time, trial id, proposal)
  now, next_id = 0.0, 0
  propose_seconds = observe_seconds = 0.0
  best, best_trace, reached_at = -math.inf, [], None

  def submit():
    nonlocal next_id, propose_seconds
    start = time.perf_counter()
    proposal = algorithm.propose()
    propose_seconds += time.perf_counter() - start
    # Proxy-task durations vary (architecture size, machine load): 0.5x..2x.
    in_flight.append((now + clock_rng.uniform(0.5, 2.0), next_id, proposal))
    next_id += 1

  while next_id < min(trials, max_parallel):
    submit()
  while in_flight:
    in_flight.sort(key=lambda item: item[0])
    now, trial_id, proposal = in_flight.pop(0)
    failed = clock_rng.random() < failure_rate
    reward = None if failed else similarity(proposal.decisions)
    start = time.perf_counter()
    algorithm.observe(Observation(trial_id, proposal,
                                  None if reward is None else reward * reward_scale))
    observe_seconds += time.perf_counter() - start
    if reward is not None and reward > best:
      best = reward
    best_trace.append(best)
    if reached_at is None and best >= threshold:
      reached_at = len(best_trace)
    if next_id < trials:
      submit()
  return {"best": best, "reached_at": reached_at, "best_trace": best_trace,
          "propose_ms": 1000 * propose_seconds / trials,
          "observe_ms": 1000 * observe_seconds / trials}


def summarise(name: str, runs: Sequence[Dict], trials: int) -> Dict:
  bests = [run["best"] for run in runs]
  reached = [run["reached_at"] for run in runs if run["reached_at"] is not None]
  checkpoints = sorted({trials // 4, trials // 2, trials})
  return {
      "algorithm": name,
      "best_mean": statistics.fmean(bests),
      "best_std": statistics.pstdev(bests),
      "best_at": {str(n): statistics.fmean(run["best_trace"][n - 1] for run in runs)
                  for n in checkpoints if n > 0},
      "reached": len(reached),
      "seeds": len(runs),
      "trials_to_threshold_median": statistics.median(reached) if reached else None,
      "propose_ms": statistics.fmean(run["propose_ms"] for run in runs),
      "observe_ms": statistics.fmean(run["observe_ms"] for run in runs),
  }


def format_table(summaries: List[Dict], space_name: str, trials: int, seeds: int,
                 threshold: float) -> str:
  width = max([10] + [len(s["algorithm"]) for s in summaries])
  lines = [f"space={space_name} trials={trials} seeds={seeds} "
           f"max_parallel={FLAGS.max_parallel} failure_rate={FLAGS.failure_rate} "
           f"reward_scale={FLAGS.reward_scale}",
           f"{'algorithm':<{width}} {'best (mean+-std)':>17} {'best@N/4,N/2':>13} "
           f"{'trials to ' + str(threshold):>16} {'ms/propose':>10} {'ms/observe':>10}"]
  for s in summaries:
    at = "/".join(f"{v:.3f}" for v in list(s["best_at"].values())[:-1])
    if s["reached"]:
      to_threshold = f"{s['trials_to_threshold_median']:.0f} ({s['reached']}/{s['seeds']})"
    else:
      to_threshold = "not reached"
    lines.append(f"{s['algorithm']:<{width}} {s['best_mean']:>9.3f}+-{s['best_std']:.3f} {at:>13} "
                 f"{to_threshold:>16} {s['propose_ms']:>10.2f} {s['observe_ms']:>10.2f}")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  algorithms = parse_algorithms(FLAGS.algorithms)
  if not FLAGS.reward_scale > 0:
    raise ConfigError(f"--reward_scale: must be > 0, got {FLAGS.reward_scale}")
  if FLAGS.trials < 1 or FLAGS.seeds < 1 or FLAGS.max_parallel < 1:
    raise ConfigError("--trials, --seeds and --max_parallel must be positive")
  if not 0.0 <= FLAGS.failure_rate < 1.0:
    raise ConfigError(f"--failure_rate: must be in [0, 1), got {FLAGS.failure_rate}")
  space = build_space(FLAGS.space)
  summaries = []
  for label, name, options in algorithms:
    runs = [run_search(name, space, seed, FLAGS.trials, FLAGS.max_parallel,
                       FLAGS.failure_rate, FLAGS.threshold, options, FLAGS.reward_scale)
            for seed in range(FLAGS.seeds)]
    summaries.append(summarise(label, runs, FLAGS.trials))
    if not FLAGS.json:
      print(f"  {label}: done", file=sys.stderr, flush=True)
  if FLAGS.json:
    print(json.dumps({"space": FLAGS.space, "trials": FLAGS.trials, "seeds": FLAGS.seeds,
                      "reward_scale": FLAGS.reward_scale,
                      "max_parallel": FLAGS.max_parallel, "failure_rate": FLAGS.failure_rate,
                      "threshold": FLAGS.threshold, "results": summaries}, indent=2))
  else:
    print(format_table(summaries, FLAGS.space, FLAGS.trials, FLAGS.seeds, FLAGS.threshold))


if __name__ == "__main__":
  app.run(lambda argv: run_cli(main, argv))
