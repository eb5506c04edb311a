"""What a worker process runs for one trial.

`python -m spinesearch.evaluate` reads a request (JSON) on stdin, evaluates it,
and writes the result (one JSON line) on stdout; anything else the trial prints
goes to stderr, the trial's log (--trial_isolation=process). A warm worker
(`spinesearch.worker`) runs many trials the same way, one after another.
`evaluate_trial` is the same thing as a function.

A request::

  {"trial_id": 12, "seed": 0,
   "architecture": {...},            # the shared architecture schema
   "decisions": [3, 0, 5, ...],      # the space's decisions for it
   "space": {...},                   # the space's config()
   "reward": {"type": "proxy",
              "proxy": {"preset": "quickstart", "overrides": {"train_steps": 200}},
              "dataset": {...},      # DatasetPaths fields (rewards that train)
              "zero_shot": {...},    # ZenSettings fields (zero_shot: spinesearch.zeroshot)
              "cost": {"metric": "multiply_adds", "target": 2.0,   # or null
                       "cost_weight": 0.07, "hard_constraint": false}}}

A result: {"status": "done" | "failed", "reward": float | null,
"metrics": {...}, "error": str | null}. A reward that builds a model adds
where the trial's time went (spinesearch.phases): `seconds_<phase>` for each
phase that ran, `seconds_startup` (the process's start and imports; 0 for a
warm worker's later trials), `seconds_total` (wall) and `cpu_seconds` (this
process's CPU time in the trial, all threads, start-up excluded).

Reward types are a small registry (`register_reward`): each says whether it
trains on the dataset and whether it measures a model's cost, so the driver
knows what to prepare, and which modules it imports, so a worker imports them
once before its first trial. `target_similarity` imports no TensorFlow.

For testing the search machinery, the environment variable SPINESEARCH_FAULTS
makes chosen trials misbehave: a comma-separated list of KIND@TRIAL, where
TRIAL is a trial id or `*` (every trial) and KIND is `crash` (raise),
`kill` (the process SIGKILLs itself, as the out-of-memory killer would),
`nan` (reward NaN), `sleep` (sleep an hour) or `sleep:SECONDS` (sleep, then
evaluate normally). Example: SPINESEARCH_FAULTS="crash@3,sleep@5,sleep:0.2@*".
"""
import dataclasses
import gc
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Optional, Tuple

import spinesearch  # noqa: F401  (sets the TensorFlow environment first)
from spinesearch import phases

FAULTS_ENV = "SPINESEARCH_FAULTS"
# Set by the runner that starts a worker: the driver's pid. The worker ends
# itself when that process is gone.
PARENT_PID_ENV = "SPINESEARCH_PARENT_PID"
# Set by the runner that starts a worker: time.time() when it started it, so
# the worker can tell its start-up time (interpreter, imports).
LAUNCHED_AT_ENV = "SPINESEARCH_LAUNCHED_AT"
_GIGA = 1e9

Result = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RewardType:
  """A way to score an architecture.

  needs_dataset: the driver prepares the dataset and sends its paths.
  measures_cost: results carry params / multiply_adds / latency_ms, so a cost
    target (--target_flops, --target_latency_ms) can apply.
  modules: what its evaluation imports (TensorFlow, Model Garden), imported
    by `preload` as part of a worker's start-up.
  """
  name: str
  evaluate: Callable[[Dict[str, Any]], Result]
  needs_dataset: bool
  measures_cost: bool
  description: str
  modules: Tuple[str, ...] = ()


REWARD_TYPES: Dict[str, RewardType] = {}


def register_reward(name: str, *, needs_dataset: bool, measures_cost: bool,
                    description: str, modules: Tuple[str, ...] = ()):
  """Decorator: registers `fn(request) -> result` as the reward type `name`."""
  def register(fn: Callable[[Dict[str, Any]], Result]):
    REWARD_TYPES[name] = RewardType(name, fn, needs_dataset, measures_cost, description,
                                    modules)
    return fn
  return register


def evaluate_trial(request: Dict[str, Any], startup_s: Optional[float] = None) -> Result:
  """Scores one trial; a reward that is not a finite number fails the trial.
  `startup_s` is what the process spent starting before this trial (see
  `preload`), reported with the trial's phases."""
  started, cpu_started = time.perf_counter(), time.process_time()
  with phases.record() as seconds:
    result = _injected_fault(request.get("trial_id"))
    if result is None:
      result = REWARD_TYPES[request["reward"]["type"]].evaluate(request)
  reward = result.get("reward")
  if result["status"] == "done" and (reward is None or not math.isfinite(reward)):
    result = failed(f"reward is {reward}, not a finite number", result.get("metrics"))
  if seconds:  # a reward that builds models; a similarity score takes microseconds
    timing = {f"seconds_{name}": value for name, value in seconds.items()}
    timing["seconds_startup"] = startup_s or 0.0
    timing["seconds_total"] = timing["seconds_startup"] + time.perf_counter() - started
    timing["cpu_seconds"] = time.process_time() - cpu_started
    result = dict(result, metrics=dict(result.get("metrics") or {}, **timing))
  return result


def evaluate_safely(request: Dict[str, Any], startup_s: Optional[float] = None) -> Result:
  """`evaluate_trial`, with an exception of the trial's own (its traceback on
  stderr, the trial's log) as a failed result."""
  try:
    return evaluate_trial(request, startup_s)
  except Exception as e:  # the trial's own failure, reported as its result
    traceback.print_exc()
    return failed(f"{type(e).__name__}: {e}")


def done(reward: float, metrics: Dict[str, Any]) -> Result:
  return {"status": "done", "reward": float(reward), "metrics": metrics, "error": None}


def failed(error: str, metrics: Optional[Dict[str, Any]] = None) -> Result:
  return {"status": "failed", "reward": None, "metrics": metrics or {}, "error": error}


# ---- reward types ----------------------------------------------------------------

@register_reward("target_similarity", needs_dataset=False, measures_cost=False,
                 description="similarity to a hidden target architecture drawn from the "
                             "space by --seed (known optimum 1.0; no training, for testing "
                             "and benchmarking the search)",
                 modules=("spinesearch.rewards", "spinesearch.space.registry"))
def _target_similarity(request: Dict[str, Any]) -> Result:
  from spinesearch import rewards
  from spinesearch.space.registry import space_from_config
  space = space_from_config(request["space"])
  similarity = rewards.target_similarity(space, request["decisions"], request["seed"])
  return done(similarity, {"similarity": similarity})


@register_reward("proxy", needs_dataset=True, measures_cost=True,
                 description="AP after training a scaled-down RetinaNet on the proxy task "
                             "(--proxy_preset and overrides), optionally traded against a "
                             "cost target",
                 modules=("spinesearch.proxy.task",))
def _proxy(request: Dict[str, Any]) -> Result:
  from spinesearch.data.dataset import DatasetPaths
  from spinesearch.progress import step_logger
  from spinesearch.proxy import ProxyConfig, ProxyTask
  from spinesearch.proxy import checkpoint as checkpoint_lib
  from spinesearch.space.architecture import Architecture
  settings = request["reward"]
  config = ProxyConfig.from_preset(settings["proxy"]["preset"], **settings["proxy"]["overrides"])
  dataset = DatasetPaths(**dict(settings["dataset"],
                                class_names=tuple(settings["dataset"]["class_names"])))
  architecture = Architecture.from_dict(request["architecture"])
  cost = settings.get("cost")
  # Multiply-adds come from the graph; latency is timed, seconds per trial,
  # so only a latency target pays for it.
  # A long run (a validation's) may ask for a checkpoint, and logs its steps.
  checkpoint = checkpoint_lib.of_request(request)
  trial = ProxyTask(config, dataset, checkpoint).run(
      architecture, progress=step_logger("training", every=max(100, config.train_steps // 10))
      if checkpoint else None, measure_latency=bool(cost) and cost["metric"] == "latency_ms")
  if checkpoint:
    checkpoint.remove()
  metrics = {k: v for k, v in trial.to_dict().items() if k not in ("status", "error")}
  if trial.status != "done":
    return failed(trial.error or "proxy task failed without a reason", metrics)
  return _with_cost(trial.ap, metrics, cost)


@register_reward("oneshot", needs_dataset=True, measures_cost=True,
                 description="AP of the architecture on a trained supernet's shared weights "
                             "(--supernet), after recomputing its batch-norm statistics "
                             "(seconds per trial, no training), optionally traded against "
                             "a cost target",
                 modules=("spinesearch.oneshot.reward", "spinesearch.oneshot.evaluation",
                          "spinesearch.oneshot.supernet"))
def _oneshot(request: Dict[str, Any]) -> Result:
  from spinesearch.oneshot import reward
  trial, metrics = reward.evaluate_request(request)
  if trial.status != "done":
    return failed(trial.error or "one-shot scoring failed without a reason", metrics)
  return _with_cost(trial.ap, metrics, request["reward"].get("cost"))


@register_reward("zero_shot", needs_dataset=False, measures_cost=True,
                 description="Zen-score of the untrained architecture at the proxy's "
                             "scaling (seconds per trial; --zero_shot_part, "
                             "--zero_shot_image_size, --zero_shot_batch_size, "
                             "--zero_shot_repeats), optionally traded against a cost target",
                 modules=("spinesearch.zeroshot",))
def _zero_shot(request: Dict[str, Any]) -> Result:
  from spinesearch import zeroshot
  score, metrics = zeroshot.score_request(request)
  cost = request["reward"].get("cost")
  if not cost:
    return done(score, metrics)
  if not score > 0:
    return failed(f"zen score {score:.3f} is not positive; a cost target scales the "
                  f"score, which needs a positive one", metrics)
  return _with_cost(score, metrics, cost)


def _with_cost(accuracy: float, metrics: Dict[str, Any],
               cost: Optional[Dict[str, Any]]) -> Result:
  """Accuracy as the reward, or the MnasNet trade-off against a cost target
  (multiply-adds are compared in G, as --target_flops is given)."""
  metrics = dict(metrics, accuracy=accuracy)
  if not cost:
    return done(accuracy, metrics)
  from spinesearch import rewards
  measured = metrics.get(cost["metric"])
  if measured is None:
    return failed(f"the proxy task measured no {cost['metric']} for the cost target", metrics)
  if cost["metric"] == "multiply_adds":
    measured /= _GIGA
  metrics["cost"] = measured
  reward = rewards.reward_with_cost_target(accuracy, measured, cost["target"],
                                           cost_weight=cost["cost_weight"],
                                           hard_constraint=cost["hard_constraint"])
  return done(reward, metrics)


# ---- fault injection (testing only; see module docstring) ---------------------------

_FAULT_KINDS = ("crash", "kill", "nan", "sleep")


def _injected_fault(trial_id: Optional[int]) -> Optional[Result]:
  """Acts out the fault SPINESEARCH_FAULTS names for this trial; returns the
  result to report instead of evaluating, if the fault has one."""
  for entry in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
    kind, _, target = entry.strip().partition("@")
    kind, _, seconds = kind.partition(":")
    if kind not in _FAULT_KINDS or not target:
      raise ValueError(f"{FAULTS_ENV}: cannot read {entry!r}; expected KIND@TRIAL with KIND "
                       f"in {', '.join(_FAULT_KINDS)}")
    if target not in ("*", str(trial_id)):
      continue
    if kind == "crash":
      raise RuntimeError(f"injected crash in trial {trial_id}")
    if kind == "kill":
      os.kill(os.getpid(), signal.SIGKILL)
    if kind == "nan":
      return done(math.nan, {})
    if kind == "sleep":
      time.sleep(float(seconds) if seconds else 3600)
  return None


# ---- trial processes ------------------------------------------------------------------

_PARENT_CHECK_INTERVAL_S = 1.0


def preload(reward_type: Optional[str]) -> float:
  """Imports what trials of `reward_type` (if any) need; returns this
  process's start-up time so far, from its launch by a runner
  (LAUNCHED_AT_ENV) or, when started otherwise, from this call."""
  started = time.perf_counter()
  for module in REWARD_TYPES[reward_type].modules if reward_type else ():
    importlib.import_module(module)
  # What the imports made lives as long as the process: kept out of the
  # cyclic garbage collector's full passes, which otherwise walk all of
  # TensorFlow's objects (0.3 s a pass here; 0.03-0.07 s after this).
  gc.collect()
  gc.freeze()
  launched = os.environ.get(LAUNCHED_AT_ENV)
  if launched:
    return max(0.0, time.time() - float(launched))
  return time.perf_counter() - started


def exit_with_parent() -> None:
  """Ends this worker (and its process group) if the driver that started it
  dies, so a killed driver leaves no orphaned training behind. The driver's
  pid comes from the environment: it may have died before this ran."""
  parent = int(os.environ.get(PARENT_PID_ENV) or os.getppid())

  def watch():
    while os.getppid() == parent:
      time.sleep(_PARENT_CHECK_INTERVAL_S)
    if os.getpgrp() == os.getpid():
      os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def take_stdout():
  """The process's stdout as a text file for results only; whatever else
  writes to fd 1 (libraries print progress bars and warnings) goes to
  stderr, the log."""
  sys.stdout.flush()
  results = os.fdopen(os.dup(1), "w", encoding="utf-8")
  os.dup2(2, 1)
  return results


def main() -> int:
  """Request on stdin, result on stdout (see module docstring)."""
  request = json.load(sys.stdin)
  results = take_stdout()
  exit_with_parent()
  try:
    startup_s = preload(request["reward"]["type"])
  except Exception as e:  # a broken install fails the trial with its reason
    traceback.print_exc()
    result = failed(f"{type(e).__name__}: {e}")
  else:
    result = evaluate_safely(request, startup_s)
  results.write(json.dumps(result) + "\n")
  results.close()
  return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
  sys.exit(main())
