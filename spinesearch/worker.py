"""A warm trial worker: one process that runs trials one after another.

`python -m spinesearch.worker [--reward=TYPE]` imports what trials of TYPE
need (spinesearch.evaluate.preload), then reads orders on stdin, one JSON line
each, and answers each on stdout with one JSON line:

  order:  {"trial_id": 12, "request": PATH, "log": PATH}
  answer: {"trial_id": 12, "result": {...}, "rss_mb": 812.5, "trials": 3}

The request file holds the trial request (see spinesearch.evaluate); files
rather than the pipe carry it, so writing an order never blocks the driver.
While a trial runs, everything written to this process's stdout and stderr
(Python, TensorFlow's C++ logs) goes to the order's log file; between trials,
to the worker's own stderr. The answer's result is what the same request gives
in a process of its own, plus `worker_rss_mb` and `worker_trial` in its
metrics: the resident memory after the trial, once Keras' state is cleared,
and how many trials this worker has run. The first trial's `seconds_startup`
is the worker's start-up; the others' is 0.

The worker ends at the end of stdin, and when the driver that started it dies
(it watches the driver's pid, as a trial process does). What to do after a
failed trial, and when a worker has run long enough, the runner decides
(spinesearch.runners.local).
"""
import argparse
import contextlib
import gc
import json
import os
import resource
import sys
import traceback
from typing import Any, Dict, Iterator, TextIO

from spinesearch import evaluate

_BYTES_PER_MB = 2 ** 20


def resident_mb() -> float:
  """This process's resident memory now (Linux), or its peak elsewhere."""
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / _BYTES_PER_MB
  except (OSError, ValueError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (_BYTES_PER_MB if sys.platform == "darwin" else 1024)


@contextlib.contextmanager
def output_to(path: str) -> Iterator[None]:
  """Sends file descriptors 1 and 2 (and so Python's and TensorFlow's output)
  to the end of `path` inside the block."""
  sys.stdout.flush()
  sys.stderr.flush()
  log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  saved = os.dup(2)
  os.dup2(log, 1)
  os.dup2(log, 2)
  os.close(log)
  try:
    yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved, 1)
    os.dup2(saved, 2)
    os.close(saved)


def release_trial_state() -> None:
  """Drops what the last trial left in the process: Keras' global graph and
  layer-name counters (models built in it keep every layer alive) and the
  objects only a collection frees."""
  if "tf_keras" in sys.modules:
    sys.modules["tf_keras"].backend.clear_session()
  gc.collect()


def run_order(order: Dict[str, Any], startup_s: float, trials: int) -> Dict[str, Any]:
  """Runs one order; its answer."""
  with output_to(order["log"]):
    try:
      with open(order["request"], encoding="utf-8") as f:
        request = json.load(f)
    except (OSError, ValueError) as e:
      traceback.print_exc()
      result = evaluate.failed(f"the worker could not read the trial request: {e}")
    else:
      result = evaluate.evaluate_safely(request, startup_s)
    release_trial_state()
  rss = resident_mb()
  metrics = dict(result.get("metrics") or {}, worker_rss_mb=rss, worker_trial=trials)
  return {"trial_id": order["trial_id"], "result": dict(result, metrics=metrics),
          "rss_mb": rss, "trials": trials}


def serve(orders: TextIO, answers: TextIO, startup_s: float) -> None:
  trials = 0
  for line in orders:
    if not line.strip():
      continue
    trials += 1
    answer = run_order(json.loads(line), startup_s, trials)
    startup_s = 0.0  # later trials find everything imported
    answers.write(json.dumps(answer) + "\n")
    answers.flush()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m spinesearch.worker",
                                   description="A warm trial worker (started by a runner).")
  parser.add_argument("--reward", choices=sorted(evaluate.REWARD_TYPES),
                      help="import what trials of this reward type need before the first")
  args = parser.parse_args(argv)
  answers = evaluate.take_stdout()
  evaluate.exit_with_parent()
  # An import that fails ends the worker with its traceback on stderr; the
  # runner fails the trial it was given with that reason.
  startup_s = evaluate.preload(args.reward)
  serve(sys.stdin, answers, startup_s)
  return 0


if __name__ == "__main__":
  sys.exit(main())
