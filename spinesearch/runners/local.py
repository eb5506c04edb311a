"""The default runner: every trial in its own subprocess on this machine.

Each trial runs `python -m spinesearch.evaluate` in a new session (its own
process group), reading the request JSON from a file on stdin and writing the
result JSON to a file on stdout; its stderr is kept as the trial's log. Files
rather than pipes let the driver poll without ever blocking on a full pipe.

A trial that runs past the timeout has its whole process group killed. A
trial process that dies (an exception, a signal such as the out-of-memory
killer's SIGKILL) is a failed trial with the reason, and the search goes on.
Workers watch the driver's pid and end themselves when it dies, so a killed
driver leaves no training behind.

Worker processes get TensorFlow/OpenMP thread counts that split this
machine's cores between the parallel trials, so two trials on two cores do
not each start a thread per core.
"""
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import spinesearch
from spinesearch import evaluate
from spinesearch.runners.base import Runner, TrialOutcome

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(spinesearch.__file__)))
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_CHARS = 300


@dataclasses.dataclass
class _Worker:
  trial_id: int
  process: subprocess.Popen
  started: float
  request_path: str
  stdout_path: str
  stderr_path: str
  label: str


class LocalRunner(Runner):
  """Runs trials as local subprocesses (see module docstring).

  Files of running trials live in `<search_dir>/workers/` (one runner per
  search directory at a time); a finished trial's stderr is kept in
  `<search_dir>/logs/trial-NNNNNN.log` when it is not empty.
  """

  name = "local"

  def __init__(self, max_parallel: int, timeout_s: Optional[float], search_dir: str,
               num_cpus: Optional[int] = None):
    super().__init__(max_parallel, timeout_s)
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
    self._workers: List[_Worker] = []

  def num_running(self) -> int:
    return len(self._workers)

  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    if not self.free_slots():
      raise RuntimeError(f"no free slot for trial {trial_id}: {self.max_parallel} running")
    prefix = f"trial-{trial_id:06d}-"
    request_path = self._new_file(prefix, ".request.json")
    stdout_path = self._new_file(prefix, ".result.json")
    stderr_path = self._new_file(prefix, ".log")
    with open(request_path, "w", encoding="utf-8") as f:
      json.dump(request, f)
    with open(request_path, "rb") as stdin, open(stdout_path, "wb") as stdout, \
        open(stderr_path, "wb") as stderr:
      process = subprocess.Popen(
          [sys.executable, "-m", "spinesearch.evaluate"], stdin=stdin, stdout=stdout,
          stderr=stderr, env=self._worker_environment(), start_new_session=True,
          close_fds=True)
    label = f"local:pid{process.pid}"
    self._workers.append(_Worker(trial_id, process, time.monotonic(), request_path,
                                 stdout_path, stderr_path, label))
    return label

  def poll(self, wait_s: float) -> List[TrialOutcome]:
    deadline = time.monotonic() + wait_s
    while True:
      outcomes = []
      for worker in list(self._workers):
        outcome = self._check(worker)
        if outcome is not None:
          self._workers.remove(worker)
          outcomes.append(outcome)
      remaining = deadline - time.monotonic()
      if outcomes or remaining <= 0:
        return outcomes
      time.sleep(min(_POLL_INTERVAL_S, remaining))

  def shutdown(self) -> None:
    for worker in self._workers:
      _kill_group(worker.process)
      self._remove_files(worker)
    self._workers = []

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

  def _check(self, worker: _Worker) -> Optional[TrialOutcome]:
    """The worker's outcome if it has ended (or was just killed for running
    too long), else None."""
    returncode = worker.process.poll()
    if returncode is None:
      elapsed = time.monotonic() - worker.started
      if self.timeout_s is None or elapsed <= self.timeout_s:
        return None
      _kill_group(worker.process)
      return self._failed(worker, f"timed out after {self.timeout_s:g} s (--trial_timeout_s); "
                                  f"its process group was killed")
    result = _read_result(worker.stdout_path)
    if result is not None:
      return self._from_result(worker, result)
    if returncode < 0:
      name = signal.Signals(-returncode).name
      hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
      return self._failed(worker, f"worker process killed by {name}{hint}")
    tail = _last_line(worker.stderr_path)
    if returncode:
      return self._failed(worker, f"worker process exited with status {returncode}"
                                  + (f": {tail}" if tail else ""))
    return self._failed(worker, "worker process exited without writing a result")

  def _from_result(self, worker: _Worker, result: Dict[str, Any]) -> TrialOutcome:
    status, reward = result.get("status"), result.get("reward")
    metrics = result.get("metrics") or {}
    if status == "done":
      if isinstance(reward, (int, float)) and math.isfinite(reward):
        return self._finish(worker, "done", float(reward), metrics, None)
      return self._failed(worker, f"reward is {reward!r}, not a finite number", metrics)
    return self._failed(worker, str(result.get("error") or "trial failed without a reason"),
                        metrics)

  def _failed(self, worker: _Worker, error: str,
              metrics: Optional[Dict[str, Any]] = None) -> TrialOutcome:
    return self._finish(worker, "failed", None, metrics or {}, error)

  def _finish(self, worker: _Worker, status: str, reward: Optional[float],
              metrics: Dict[str, Any], error: Optional[str]) -> TrialOutcome:
    log = self._keep_log(worker)
    if error is not None and log is not None:
      error = f"{error} (log: {log})"
    self._remove_files(worker)
    return TrialOutcome(worker.trial_id, status, reward, metrics, error, worker.label)

  def _keep_log(self, worker: _Worker) -> Optional[str]:
    if not os.path.getsize(worker.stderr_path):
      return None
    log = os.path.join(self.log_dir, f"trial-{worker.trial_id:06d}.log")
    os.replace(worker.stderr_path, log)
    return log

  @staticmethod
  def _remove_files(worker: _Worker) -> None:
    for path in (worker.request_path, worker.stdout_path, worker.stderr_path):
      if os.path.exists(path):
        os.unlink(path)


def _kill_group(process: subprocess.Popen) -> None:
  """Kills the trial's whole process group (it leads its own session) and
  reaps the leader."""
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait()


def _read_result(path: str) -> Optional[Dict[str, Any]]:
  """The result object the worker wrote, or None if there is none."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  if not lines:
    return None
  try:
    result = json.loads(lines[-1])
  except json.JSONDecodeError:
    return None
  return result if isinstance(result, dict) else None


def _last_line(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1][-_LOG_TAIL_CHARS:] if lines else ""
