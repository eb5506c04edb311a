"""The default runner: trials in processes on this machine.

Two ways to isolate trials (`trial_isolation`, --trial_isolation):

- "worker" (the default): a pool of warm workers, one per slot
  (`python -m spinesearch.worker`, processes.WarmWorker). A worker imports
  TensorFlow and Model Garden once and runs trials one after another,
  clearing Keras' state between them. A worker whose trial failed in any way
  (raised, was killed, returned NaN, ran out of time) is replaced by a new
  process, since a failure may have left it in any state; so is a worker that
  has run `worker_max_trials` trials, or whose resident memory after a trial
  exceeds `worker_max_rss_mb`, so memory never creeps.
- "process": every trial in a new `python -m spinesearch.evaluate`
  (processes.TrialProcess), paying the start-up each time.

Either way a trial's request goes to its process in a file, its log is what
the process writes to stdout and stderr during it, and its outcome is the
same: a process that dies (an exception, a signal such as the out-of-memory
killer's SIGKILL) is a failed trial with the reason, and a trial past the
timeout has its whole process group killed. The driver never waits on a
process: results come through files and non-blocking pipes. Processes watch
the driver's pid and end themselves when it dies, so a killed driver leaves
no training behind.

Processes get TensorFlow/OpenMP thread counts that split this machine's cores
between the parallel trials, so two trials on two cores do not each start a
thread per core.
"""
import dataclasses
import json
import math
import os
import select
import signal
import tempfile
import time
from typing import Any, Dict, List, Optional, Union

import spinesearch
from spinesearch import evaluate
from spinesearch.errors import ConfigError
from spinesearch.runners.base import Runner, TrialOutcome
from spinesearch.runners.processes import Ended, TrialProcess, WarmWorker

ISOLATIONS = ("worker", "process")
DEFAULT_WORKER_MAX_TRIALS = 100
DEFAULT_WORKER_MAX_RSS_MB = 4096

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(spinesearch.__file__)))
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_CHARS = 300

Process = Union[TrialProcess, WarmWorker]


@dataclasses.dataclass
class _Running:
  trial_id: int
  process: Process
  started: float
  request_path: str
  log_path: str
  label: str
  extra_paths: List[str]  # the result file of a TrialProcess


class LocalRunner(Runner):
  """Runs trials in local processes (see module docstring).

  Files of running trials and workers live in `<search_dir>/workers/` (one
  runner per search directory at a time); a finished trial's log is kept in
  `<search_dir>/logs/trial-NNNNNN.log` when it is not empty.
  """

  name = "local"

  def __init__(self, max_parallel: int, timeout_s: Optional[float], search_dir: str,
               num_cpus: Optional[int] = None, trial_isolation: str = "worker",
               worker_max_trials: int = DEFAULT_WORKER_MAX_TRIALS,
               worker_max_rss_mb: float = DEFAULT_WORKER_MAX_RSS_MB):
    super().__init__(max_parallel, timeout_s)
    self.check_isolation(trial_isolation, worker_max_trials, worker_max_rss_mb)
    self.trial_isolation = trial_isolation
    self.worker_max_trials = worker_max_trials
    self.worker_max_rss_mb = worker_max_rss_mb
    self.work_dir = os.path.join(search_dir, "workers")
    self.log_dir = os.path.join(search_dir, "logs")
    os.makedirs(self.work_dir, exist_ok=True)
    os.makedirs(self.log_dir, exist_ok=True)
    # Files of trials in flight when an earlier driver was killed; the store's
    # lock means no other driver of this search is running.
    for leftover in os.listdir(self.work_dir):
      os.unlink(os.path.join(self.work_dir, leftover))
    cpus = num_cpus or len(os.sched_getaffinity(0))
    self.threads_per_trial = max(1, cpus // max_parallel)
    self._running: List[_Running] = []
    self._idle: List[WarmWorker] = []

  @staticmethod
  def check_isolation(trial_isolation: str, worker_max_trials: int,
                      worker_max_rss_mb: float) -> None:
    """Refuses, in one line, settings no runner can use."""
    if trial_isolation not in ISOLATIONS:
      raise ConfigError(f"--trial_isolation={trial_isolation}: choose one of "
                        f"{', '.join(ISOLATIONS)}")
    for flag, value in (("worker_max_trials", worker_max_trials),
                        ("worker_max_rss_mb", worker_max_rss_mb)):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ConfigError(f"--{flag}={value}: must be a number >= 1")

  def num_running(self) -> int:
    return len(self._running)

  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    if not self.free_slots():
      raise RuntimeError(f"no free slot for trial {trial_id}: {self.max_parallel} running")
    prefix = f"trial-{trial_id:06d}-"
    request_path = self._new_file(prefix, ".request.json")
    log_path = self._new_file(prefix, ".log")
    with open(request_path, "w", encoding="utf-8") as f:
      json.dump(request, f)
    extra_paths = []
    if self.trial_isolation == "process":
      result_path = self._new_file(prefix, ".result.json")
      extra_paths.append(result_path)
      process: Process = TrialProcess(request_path, log_path, result_path,
                                      self._worker_environment())
    else:
      process = self._idle_worker() or WarmWorker(
          self._new_file("worker-", ".log"), self._worker_environment(),
          request["reward"]["type"])
      process.start_trial(trial_id, request_path, log_path)
    label = f"local:pid{process.pid}"
    self._running.append(_Running(trial_id, process, time.monotonic(), request_path,
                                  log_path, label, extra_paths))
    return label

  def poll(self, wait_s: float) -> List[TrialOutcome]:
    deadline = time.monotonic() + wait_s
    while True:
      outcomes = []
      for running in list(self._running):
        outcome = self._check(running)
        if outcome is not None:
          self._running.remove(running)
          outcomes.append(outcome)
      remaining = deadline - time.monotonic()
      if outcomes or remaining <= 0:
        return outcomes
      self._wait(min(remaining, self._time_to_next_timeout()))

  def shutdown(self) -> None:
    for running in self._running:
      self._stop(running.process)
      self._remove_files(running)
    for worker in self._idle:
      self._stop(worker)
    self._running, self._idle = [], []

  # ---- helpers -------------------------------------------------------------

  def _new_file(self, prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(dir=self.work_dir, prefix=prefix, suffix=suffix)
    os.close(fd)
    return path

  def _worker_environment(self) -> Dict[str, str]:
    env = dict(os.environ)
    threads = str(self.threads_per_trial)
    env.update(TF_NUM_INTRAOP_THREADS=threads,
               TF_NUM_INTEROP_THREADS=str(min(2, self.threads_per_trial)),
               OMP_NUM_THREADS=threads)
    env[evaluate.PARENT_PID_ENV] = str(os.getpid())
    # Workers import the same spinesearch as the driver, wherever they start.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env

  def _wait(self, seconds: float) -> None:
    """Sleeps until a warm worker answers (or dies: its pipe reaches its end)
    or `seconds` pass. A trial process gives no such signal, so with one
    running the wait is a short sleep between checks."""
    if any(isinstance(r.process, TrialProcess) for r in self._running) or not self._running:
      time.sleep(max(0.0, min(_POLL_INTERVAL_S, seconds)))
      return
    select.select([r.process.answers for r in self._running], [], [], max(0.0, seconds))

  def _time_to_next_timeout(self) -> float:
    if self.timeout_s is None or not self._running:
      return math.inf
    oldest = min(r.started for r in self._running)
    return max(0.0, oldest + self.timeout_s - time.monotonic()) + 0.001

  def _idle_worker(self) -> Optional[WarmWorker]:
    """An idle worker that is still alive (one can die while idle, e.g. to the
    out-of-memory killer), or None."""
    while self._idle:
      worker = self._idle.pop()
      if worker.alive():
        return worker
      self._stop(worker)
    return None

  def _check(self, running: _Running) -> Optional[TrialOutcome]:
    """The trial's outcome if it has ended (or was just killed for running
    too long), else None. A worker goes back to the idle pool only after a
    trial that was done and left it within its limits."""
    ended = running.process.poll()
    if ended is None:
      elapsed = time.monotonic() - running.started
      if self.timeout_s is None or elapsed <= self.timeout_s:
        return None
      running.process.stop()
      outcome = self._failed(running, f"timed out after {self.timeout_s:g} s "
                                      f"(--trial_timeout_s); its process group was killed")
    else:
      outcome = self._outcome(running, ended)
    if isinstance(running.process, WarmWorker):
      if self._keeps_working(running.process, outcome, ended):
        self._idle.append(running.process)
      else:
        self._stop(running.process)
    return outcome

  def _keeps_working(self, worker: WarmWorker, outcome: TrialOutcome,
                     ended: Optional[Ended]) -> bool:
    return (ended is not None and ended.returncode is None and outcome.status == "done"
            and worker.trials < self.worker_max_trials
            and (ended.rss_mb is None or ended.rss_mb <= self.worker_max_rss_mb))

  def _outcome(self, running: _Running, ended: Ended) -> TrialOutcome:
    if ended.result is not None:
      return self._from_result(running, ended.result)
    if ended.returncode is None:
      return self._failed(running, "the worker process answered without a readable result")
    if ended.returncode < 0:
      name = signal.Signals(-ended.returncode).name
      hint = " (out of memory?)" if -ended.returncode == signal.SIGKILL else ""
      return self._failed(running, f"worker process killed by {name}{hint}")
    tail = self._last_log_line(running)
    if ended.returncode:
      return self._failed(running, f"worker process exited with status {ended.returncode}"
                                   + (f": {tail}" if tail else ""))
    return self._failed(running, "worker process exited without writing a result")

  def _from_result(self, running: _Running, result: Dict[str, Any]) -> TrialOutcome:
    status, reward = result.get("status"), result.get("reward")
    metrics = result.get("metrics") or {}
    if status == "done":
      if isinstance(reward, (int, float)) and math.isfinite(reward):
        return self._finish(running, "done", float(reward), metrics, None)
      return self._failed(running, f"reward is {reward!r}, not a finite number", metrics)
    return self._failed(running, str(result.get("error") or "trial failed without a reason"),
                        metrics)

  def _failed(self, running: _Running, error: str,
              metrics: Optional[Dict[str, Any]] = None) -> TrialOutcome:
    return self._finish(running, "failed", None, metrics or {}, error)

  def _finish(self, running: _Running, status: str, reward: Optional[float],
              metrics: Dict[str, Any], error: Optional[str]) -> TrialOutcome:
    if error is not None and isinstance(running.process, WarmWorker):
      # What the worker wrote outside the trial (an import that failed before
      # it read the request) belongs to the failed trial's log.
      _append(running.log_path, running.process.log_path)
    log = self._keep_log(running)
    if error is not None and log is not None:
      error = f"{error} (log: {log})"
    self._remove_files(running)
    return TrialOutcome(running.trial_id, status, reward, metrics, error, running.label)

  def _last_log_line(self, running: _Running) -> str:
    paths = [running.log_path]
    if isinstance(running.process, WarmWorker):
      paths.append(running.process.log_path)
    for path in paths:
      line = _last_line(path)
      if line:
        return line
    return ""

  def _keep_log(self, running: _Running) -> Optional[str]:
    if not os.path.getsize(running.log_path):
      return None
    log = os.path.join(self.log_dir, f"trial-{running.trial_id:06d}.log")
    os.replace(running.log_path, log)
    return log

  @staticmethod
  def _stop(process: Process) -> None:
    """Ends a process for good, with its files."""
    process.stop()
    if isinstance(process, WarmWorker) and os.path.exists(process.log_path):
      os.unlink(process.log_path)

  @staticmethod
  def _remove_files(running: _Running) -> None:
    for path in (running.request_path, running.log_path, *running.extra_paths):
      if os.path.exists(path):
        os.unlink(path)


def _append(path: str, source: str) -> None:
  if not os.path.exists(source) or not os.path.getsize(source):
    return
  with open(source, "rb") as src, open(path, "ab") as dst:
    dst.write(src.read())
  # Once in the trial's log, not again in the next failure's.
  open(source, "wb").close()


def _last_line(path: str) -> str:
  if not os.path.exists(path):
    return ""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1][-_LOG_TAIL_CHARS:] if lines else ""
