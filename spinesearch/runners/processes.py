"""The processes the local runner runs trials in.

`TrialProcess` is one `python -m spinesearch.evaluate` per trial
(--trial_isolation=process); `WarmWorker` is one `python -m
spinesearch.worker` that runs trials one after another (--trial_isolation=
worker). Both lead a session of their own (their own process group), so a
trial past its time limit ends with its whole group, and both answer the
same way: `poll()` is None while the trial runs, else how it ended (`Ended`).

Every process is told, in its environment, when it was launched
(evaluate.LAUNCHED_AT_ENV), so the trial can report its start-up time.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from spinesearch import evaluate

_READ_BYTES = 65536


@dataclasses.dataclass(frozen=True)
class Ended:
  """How a trial's process answered: `result` is None when the trial
  reported nothing; `returncode` is None when the process lives on (a worker,
  idle again). `rss_mb`: a worker's resident memory after the trial."""
  result: Optional[Dict[str, Any]]
  returncode: Optional[int]
  rss_mb: Optional[float] = None


def _start(command: List[str], env: Dict[str, str], **streams) -> subprocess.Popen:
  env = dict(env, **{evaluate.LAUNCHED_AT_ENV: repr(time.time())})
  return subprocess.Popen(command, env=env, start_new_session=True, close_fds=True, **streams)


def kill_group(process: subprocess.Popen) -> None:
  """Kills a process's whole group (it leads its own session) and reaps the
  leader."""
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait()


class TrialProcess:
  """One trial in a process of its own: the request file on its stdin, the
  result written to `result_path` (its stdout), its stderr the trial's log."""

  def __init__(self, request_path: str, log_path: str, result_path: str,
               env: Dict[str, str]):
    self.result_path = result_path
    with open(request_path, "rb") as stdin, open(result_path, "wb") as stdout, \
        open(log_path, "wb") as stderr:
      self.process = _start([sys.executable, "-m", "spinesearch.evaluate"], env,
                            stdin=stdin, stdout=stdout, stderr=stderr)

  @property
  def pid(self) -> int:
    return self.process.pid

  def poll(self) -> Optional[Ended]:
    returncode = self.process.poll()
    if returncode is None:
      return None
    return Ended(_read_result(self.result_path), returncode)

  def stop(self) -> None:
    kill_group(self.process)


class WarmWorker:
  """A `spinesearch.worker` process (see its docstring for the protocol);
  `log_path` takes what it writes between trials. `reward_type` is imported
  before the first trial."""

  def __init__(self, log_path: str, env: Dict[str, str], reward_type: Optional[str] = None):
    self.log_path = log_path
    command = [sys.executable, "-m", "spinesearch.worker"]
    if reward_type:
      command.append(f"--reward={reward_type}")
    with open(log_path, "wb") as stderr:
      self.process = _start(command, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr)
    # The driver reads answers whenever it polls, never waiting on a worker.
    os.set_blocking(self.process.stdout.fileno(), False)
    self.trials = 0  # trials it has answered
    self._unread = b""

  @property
  def pid(self) -> int:
    return self.process.pid

  @property
  def answers(self):
    """The pipe its answers arrive on (readable, or at its end, when there is
    news): what a runner waits on."""
    return self.process.stdout

  def alive(self) -> bool:
    return self.process.poll() is None

  def start_trial(self, trial_id: int, request_path: str, log_path: str) -> None:
    order = json.dumps({"trial_id": trial_id, "request": request_path, "log": log_path})
    try:
      # A line of a few hundred bytes: the pipe takes it even while the
      # worker is still importing.
      self.process.stdin.write(order.encode("utf-8") + b"\n")
      self.process.stdin.flush()
    except BrokenPipeError:
      pass  # the worker has died; poll() says how

  def poll(self) -> Optional[Ended]:
    answer = self._read_answer()
    returncode = self.process.poll()
    if answer is None and returncode is not None:
      answer = self._read_answer()  # what it wrote just before it ended
    if answer is None:
      return None if returncode is None else Ended(None, returncode)
    self.trials += 1
    result = answer.get("result") if isinstance(answer, dict) else None
    rss = answer.get("rss_mb") if isinstance(answer, dict) else None
    return Ended(result if isinstance(result, dict) else None, returncode, rss)

  def stop(self) -> None:
    kill_group(self.process)
    for stream in (self.process.stdin, self.process.stdout):
      try:
        stream.close()
      except BrokenPipeError:
        pass

  def _read_answer(self) -> Optional[Any]:
    """The next answer line, parsed (a line that is not JSON reads as {}), or
    None if no whole line has arrived."""
    fd = self.process.stdout.fileno()
    while True:
      try:
        chunk = os.read(fd, _READ_BYTES)
      except BlockingIOError:
        break
      if not chunk:
        break
      self._unread += chunk
    line, newline, rest = self._unread.partition(b"\n")
    if not newline:
      return None
    self._unread = rest
    try:
      return json.loads(line)
    except ValueError:
      return {}


def _read_result(path: str) -> Optional[Dict[str, Any]]:
  """The result object a trial process wrote, or None if there is none."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  if not lines:
    return None
  try:
    result = json.loads(lines[-1])
  except json.JSONDecodeError:
    return None
  return result if isinstance(result, dict) else None
