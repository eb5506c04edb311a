"""Trials on a Ray cluster: `--runner=ray`.

Ray (the optional extra `distributed`) only places trials; the search driver
keeps the controller, and it alone writes the trial store and the trial logs.
Trials run on a pool of Ray actors, one per slot (`--max_parallel_trials`),
each holding a trial's CPUs and GPUs; an actor runs its trials exactly as the
local runner does, through a one-slot LocalRunner it keeps for its lifetime:
by default in a warm worker process that imports TensorFlow and Model Garden
once and is replaced after a failed trial, after `worker_max_trials` trials
or above `worker_max_rss_mb`; with `trial_isolation="process"` a new `python
-m spinesearch.evaluate` per trial. Either way the trial runs in its own
process group with TensorFlow threads matching the trial's CPUs, the same
time limit and the same failure reasons. The actor returns the outcome and
the trial's log, which the driver keeps in `<search_dir>/logs/`.

Actors rather than a Ray task per trial: a call to a live actor goes straight
to its worker, where every new task first waits for Ray to lease one. With 32
trials in flight on a busy 2-core machine that wait was 0.7-0.8 s per trial
(median), against 6 ms for an actor.

A trial process rather than evaluating in the Ray worker itself: a trial
killed by the out-of-memory killer, or stopped at its time limit, takes its
own process group with it and not the Ray worker, and its threads match its
CPU share. A warm worker makes that process cost nothing after its first
trial (the benchmark measures both).

Failures are failed trials with their reason, never retries by Ray (the
search decides what runs next): a trial that raises, returns no finite reward
or is killed; a trial past `--trial_timeout_s`, counted from when it starts
running, not while it waits for an actor; a Ray worker or node that dies
under a trial (its actor is replaced). An actor still busy well past the time
limit (its worker stalled) is killed, and the trial process follows its
parent.

Where trials run: an empty `address` starts a Ray instance on this machine
alone (its cores, dashboard off, every server on 127.0.0.1), stopped with the
runner; `auto` or `HOST:PORT` joins a cluster started with `ray start`. Every
node needs the same spinesearch install, and a dataset at the same path on
every node (a shared file system).
"""
import collections
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple, Union

import ray
from ray._private import ray_constants, services

from spinesearch import evaluate
from spinesearch.errors import ConfigError
from spinesearch.runners.base import Runner, TrialOutcome
from spinesearch.runners.local import (DEFAULT_WORKER_MAX_RSS_MB, DEFAULT_WORKER_MAX_TRIALS,
                                       LocalRunner)
from spinesearch.files import write_text_atomically

# An actor that has not returned this long after the time limit is stalled (its
# own LocalRunner kills a late trial within milliseconds).
STALL_GRACE_S = 30.0
# Trial requests and results are kilobytes; Ray's default would reserve 30% of
# this machine's memory for its object store.
_LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# The end of a trial's log is what explains a failure; bound what an actor sends.
_LOG_LIMIT_BYTES = 1024 * 1024
_TRIAL_POLL_S = 0.5
_CONNECT_TIMEOUT_S = 10.0
# Variables of the driver's environment that trials see wherever they run.
_FORWARDED_ENV = (evaluate.FAULTS_ENV,)


@dataclasses.dataclass(frozen=True)
class _Started:
  """First item a trial yields: where it runs."""
  worker: str


@dataclasses.dataclass(frozen=True)
class _Finished:
  """Last item a trial yields."""
  outcome: TrialOutcome
  log: Optional[str]
  log_path: str  # where the log was on the worker, as the outcome's error names it


@dataclasses.dataclass
class _Trial:
  trial_id: int
  arguments: tuple  # of TrialWorker.run
  worker: str
  actor: Any = None  # the TrialWorker actor running it, once it has one
  generator: Any = None  # ray.ObjectRefGenerator of _Started, then _Finished
  started: Optional[float] = None  # time.monotonic() when the driver learnt it runs


class TrialWorker:
  """A Ray actor that runs one trial at a time (see module docstring), in
  the processes of a one-slot LocalRunner it keeps between trials."""

  def __init__(self):
    self._scratch: Optional[str] = None
    self._runner: Optional[LocalRunner] = None
    self._runner_key: Optional[tuple] = None

  def ready(self) -> None:
    """Returns once the actor runs."""

  def run(self, trial_id: int, request: Dict[str, Any], timeout_s: Optional[float],
          threads: int, environment: Dict[str, Optional[str]], isolation: Dict[str, Any]
          ) -> Iterator[Union[_Started, _Finished]]:
    """Yields where it runs, then the trial's outcome and log; `environment`
    is the driver's value of each forwarded variable, `isolation` the local
    runner's trial_isolation and worker limits."""
    yield _Started(f"ray:{ray.util.get_node_ip_address()}:pid{os.getpid()}")
    runner = self._local_runner(timeout_s, threads, environment, isolation)
    try:
      runner.submit(trial_id, request)
      outcomes: List[TrialOutcome] = []
      while not outcomes:
        outcomes = runner.poll(_TRIAL_POLL_S)
    except BaseException:
      self._stop_runner()
      raise
    log_path = os.path.join(runner.log_dir, f"trial-{trial_id:06d}.log")
    log = None
    if os.path.exists(log_path):
      log = _read_tail(log_path)
      os.unlink(log_path)  # the driver keeps it; the scratch folder lives on
    yield _Finished(outcomes[0], log, log_path)

  def _local_runner(self, timeout_s, threads, environment, isolation) -> LocalRunner:
    """The runner of earlier trials if they ran with the same settings, else
    a new one: a warm worker keeps the environment it was started with."""
    key = (timeout_s, threads, tuple(sorted(environment.items())),
           tuple(sorted(isolation.items())))
    if self._runner is not None and self._runner_key == key:
      return self._runner
    self._stop_runner()
    for name, value in environment.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    if self._scratch is None:
      self._scratch = _scratch_folder()
    self._runner = LocalRunner(max_parallel=1, timeout_s=timeout_s, search_dir=self._scratch,
                               num_cpus=threads, **isolation)
    self._runner_key = key
    return self._runner

  def _stop_runner(self) -> None:
    if self._runner is not None:
      self._runner.shutdown()
    self._runner, self._runner_key = None, None


def _scratch_folder() -> str:
  """A new folder for this actor's trial files, named after its pid. An
  actor ends killed (ray.kill), with no chance to clean up, so the folders of
  actors no longer running are removed here."""
  prefix = "spinesearch-actor-"
  root = tempfile.gettempdir()
  for name in os.listdir(root):
    pid = name[len(prefix):].split("-", 1)[0]
    if name.startswith(prefix) and pid.isdigit() and not _running(int(pid)):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


_TrialActor = ray.remote(max_restarts=0, max_task_retries=0)(TrialWorker)


def start_local_instance(num_cpus: Optional[int] = None) -> None:
  """Starts Ray on this machine alone: `num_cpus` (default: this process's
  cores), no dashboard, a small object store, and every Ray server listening
  on 127.0.0.1 only. Trial output stays in Ray's logs, not the driver's."""
  # Ray advertises this machine's network address and listens on all
  # interfaces. With its cluster mode off, as on macOS and Windows, the node
  # address is the loopback one and its servers bind to it alone; the switch
  # is read when the node starts, so it is restored once Ray runs.
  cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
  ray_constants.ENABLE_RAY_CLUSTER = False
  try:
    _init_keeping_sigterm(address="local",
                          num_cpus=num_cpus or len(os.sched_getaffinity(0)),
                          include_dashboard=False,
                          object_store_memory=_LOCAL_OBJECT_STORE_BYTES)
  finally:
    ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


class RayRunner(Runner):
  """Runs trials on a pool of Ray actors (see module docstring).

  Each actor reserves `trial_cpus` CPUs and `trial_gpus` GPUs of the cluster;
  `num_cpus` is what a local instance declares (default: this machine's
  cores). If this process is already connected to Ray, trials run there and
  the connection is left open at shutdown.

  A submitted trial goes to an idle actor, or waits in this runner for one:
  the pool grows to one actor per trial in flight, and an actor Ray cannot
  place yet (a full cluster) is waited for; an idle actor never holds
  resources while a trial waits.
  """

  name = "ray"

  def __init__(self, max_parallel: int, timeout_s: Optional[float], search_dir: str,
               address: str = "", trial_cpus: float = 1.0, trial_gpus: float = 0.0,
               num_cpus: Optional[int] = None, trial_isolation: str = "worker",
               worker_max_trials: int = DEFAULT_WORKER_MAX_TRIALS,
               worker_max_rss_mb: float = DEFAULT_WORKER_MAX_RSS_MB):
    super().__init__(max_parallel, timeout_s)
    # Checked here, before Ray starts, as the actors' runners will check them.
    LocalRunner.check_isolation(trial_isolation, worker_max_trials, worker_max_rss_mb)
    self.isolation = {"trial_isolation": trial_isolation,
                      "worker_max_trials": worker_max_trials,
                      "worker_max_rss_mb": worker_max_rss_mb}
    for flag, value in (("trial_cpus", trial_cpus), ("trial_gpus", trial_gpus)):
      if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"--{flag}={value}: must be a number >= 0")
    self.trial_cpus, self.trial_gpus = trial_cpus, trial_gpus
    self.log_dir = os.path.join(search_dir, "logs")
    os.makedirs(self.log_dir, exist_ok=True)
    self._owns_connection = not ray.is_initialized()
    if self._owns_connection:
      if address:
        _connect(address)
      else:
        start_local_instance(num_cpus)
    try:
      self._check_cluster_resources(local=self._owns_connection and not address)
    except BaseException:
      self._disconnect()
      raise
    self.cluster = ray.get_runtime_context().gcs_address
    self._waiting: Deque[_Trial] = collections.deque()  # for an actor
    self._running: List[_Trial] = []
    self._idle_actors: List[Any] = []
    self._starting_actors: List[Tuple[Any, Any]] = []  # (actor, ref of its ready())

  def num_running(self) -> int:
    return len(self._waiting) + len(self._running)

  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    if not self.free_slots():
      raise RuntimeError(f"no free slot for trial {trial_id}: {self.max_parallel} running")
    arguments = (trial_id, request, self.timeout_s, max(1, int(self.trial_cpus)),
                 {name: os.environ.get(name) for name in _FORWARDED_ENV}, self.isolation)
    worker = f"ray:{self.cluster}"
    self._waiting.append(_Trial(trial_id, arguments, worker))
    self._dispatch()
    return worker

  def poll(self, wait_s: float) -> List[TrialOutcome]:
    deadline = time.monotonic() + wait_s
    while True:
      outcomes = self._collect_actors() + self._collect_trials() + self._kill_stalled()
      self._dispatch()
      remaining = deadline - time.monotonic()
      if outcomes or remaining <= 0:
        return outcomes
      refs = ([trial.generator for trial in self._running]
              + [ready for _, ready in self._starting_actors])
      if not refs:
        time.sleep(remaining)
        return []
      ray.wait(refs, num_returns=1, timeout=min(remaining, self._time_to_next_stall()))

  def shutdown(self) -> None:
    actors = ([trial.actor for trial in self._running] + self._idle_actors
              + [actor for actor, _ in self._starting_actors])
    for actor in actors:
      ray.kill(actor)
    self._waiting.clear()
    self._running, self._idle_actors, self._starting_actors = [], [], []
    self._disconnect()

  # ---- helpers -------------------------------------------------------------

  def _dispatch(self) -> None:
    """Idle actors take waiting trials, oldest first; new actors are started
    for the trials left waiting."""
    while self._waiting and self._idle_actors:
      trial = self._waiting.popleft()
      trial.actor = self._idle_actors.pop()
      trial.generator = trial.actor.run.remote(*trial.arguments)
      self._running.append(trial)
    while len(self._starting_actors) < len(self._waiting):
      actor = _TrialActor.options(num_cpus=self.trial_cpus, num_gpus=self.trial_gpus).remote()
      self._starting_actors.append((actor, actor.ready.remote()))

  def _collect_actors(self) -> List[TrialOutcome]:
    """Actors that started become idle; one that could not start fails the
    oldest waiting trial with the reason, so a cluster where none can start
    (spinesearch missing on its nodes) ends the search instead of hanging."""
    ready = _ready([ref for _, ref in self._starting_actors])
    outcomes = []
    for actor, ref in [pair for pair in self._starting_actors if pair[1] in ready]:
      self._starting_actors.remove((actor, ref))
      try:
        ray.get(ref)
      except ray.exceptions.RayError as e:
        ray.kill(actor)
        if self._waiting:
          trial = self._waiting.popleft()
          outcomes.append(_failed(trial, f"a Ray actor for the trial could not start: "
                                         f"{type(e).__name__}: {_first_line(e)}"))
        continue
      self._idle_actors.append(actor)
    return outcomes

  def _collect_trials(self) -> List[TrialOutcome]:
    """Outcomes of trials that ended; notes trials that started."""
    ready = _ready([trial.generator for trial in self._running])
    outcomes = []
    for trial in [t for t in self._running if t.generator in ready]:
      outcome = self._next_item(trial)
      if outcome is not None:
        self._running.remove(trial)
        outcomes.append(outcome)
    return outcomes

  def _next_item(self, trial: _Trial) -> Optional[TrialOutcome]:
    """Reads the trial's next item; its outcome if the trial ended. An actor
    that failed is not used again."""
    try:
      item = ray.get(next(trial.generator))
    except StopIteration:
      ray.kill(trial.actor)
      return _failed(trial, "the Ray actor ended the trial without a result")
    except ray.exceptions.RayTaskError as e:
      ray.kill(trial.actor)
      cause = e.cause if e.cause is not None else e
      return _failed(trial, f"the Ray actor on {trial.worker} raised "
                            f"{type(cause).__name__}: {_first_line(cause)}")
    except ray.exceptions.RayError as e:
      ray.kill(trial.actor)
      return _failed(trial, f"{type(e).__name__} from Ray on {trial.worker}: {_first_line(e)}")
    if isinstance(item, _Started):
      trial.worker, trial.started = item.worker, time.monotonic()
      return None
    self._idle_actors.append(trial.actor)
    return self._finished(trial, item)

  def _finished(self, trial: _Trial, finished: _Finished) -> TrialOutcome:
    error = finished.outcome.error
    if finished.log is not None:
      log = os.path.join(self.log_dir, f"trial-{trial.trial_id:06d}.log")
      write_text_atomically(log, finished.log)
      if error is not None:
        error = error.replace(finished.log_path, log)
    return dataclasses.replace(finished.outcome, error=error, worker=trial.worker)

  def _kill_stalled(self) -> List[TrialOutcome]:
    if self.timeout_s is None:
      return []
    now = time.monotonic()
    outcomes = []
    for trial in list(self._running):
      if trial.started is not None and now - trial.started > self.timeout_s + STALL_GRACE_S:
        ray.kill(trial.actor)
        self._running.remove(trial)
        outcomes.append(_failed(
            trial, f"timed out after {self.timeout_s:g} s (--trial_timeout_s) and did not "
                   f"stop; its Ray worker {trial.worker} was killed"))
    return outcomes

  def _time_to_next_stall(self) -> float:
    started = [trial.started for trial in self._running if trial.started is not None]
    if self.timeout_s is None or not started:
      return math.inf
    return max(0.0, min(started) + self.timeout_s + STALL_GRACE_S - time.monotonic())

  def _check_cluster_resources(self, local: bool) -> None:
    """Refuses trials no node of this machine's instance can run, and says
    when a cluster runs fewer trials at once than --max_parallel_trials."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    largest = {kind: max((node.get(kind, 0.0) for node in nodes), default=0.0)
               for kind in ("CPU", "GPU")}
    wanted = {"CPU": self.trial_cpus, "GPU": self.trial_gpus}
    if any(wanted[kind] > largest[kind] for kind in wanted):
      message = (f"--trial_cpus={self.trial_cpus:g} --trial_gpus={self.trial_gpus:g}: no Ray "
                 f"node has that many (the largest has {largest['CPU']:g} CPUs, "
                 f"{largest['GPU']:g} GPUs)")
      if local:
        raise ConfigError(f"{message} on this machine")
      _warn(f"{message}; trials wait until such a node joins the cluster")
      return
    total = ray.cluster_resources()
    at_once = min((math.floor(total.get(kind, 0.0) / wanted[kind] + 1e-9)
                   for kind in wanted if wanted[kind] > 0), default=self.max_parallel)
    if at_once < self.max_parallel:
      _warn(f"the Ray cluster runs at most {at_once} trials at once with --trial_cpus="
            f"{self.trial_cpus:g} --trial_gpus={self.trial_gpus:g}; the others of "
            f"--max_parallel_trials={self.max_parallel} wait in Ray's queue (their time "
            f"limit starts when they run)")

  def _disconnect(self) -> None:
    if self._owns_connection and ray.is_initialized():
      ray.shutdown()


def _connect(address: str) -> None:
  """Joins the cluster at `address`, first checking that something answers
  there: Ray itself retries an address where nothing listens for many
  minutes."""
  try:
    bootstrap = services.canonicalize_bootstrap_address(address)
  except ConnectionError as e:
    raise ConfigError(f"--ray_address={address}: {_first_line(e)}") from None
  except ValueError:
    bootstrap = ""
  host, _, port = bootstrap.rpartition(":")
  if not (host and port.isdigit()):
    raise ConfigError(f"--ray_address={address}: expected 'auto' or HOST:PORT of a Ray "
                      f"cluster's head node")
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise ConfigError(f"--ray_address={address}: no Ray cluster answers at {bootstrap} "
                      f"({e.strerror or e}); start its head node with `ray start --head` "
                      f"or fix the address") from None
  try:
    _init_keeping_sigterm(address=address)
  except (ConnectionError, RuntimeError, ValueError) as e:
    raise ConfigError(f"--ray_address={address}: cannot join the Ray cluster: "
                      f"{_first_line(e)}") from None


def _init_keeping_sigterm(**options) -> None:
  """ray.init, quiet (a user mistake stays one line on stderr), keeping this
  process's SIGTERM handler: Ray's would end the search without the driver's
  orderly stop (requeue, final best/)."""
  main_thread = threading.current_thread() is threading.main_thread()
  handler = signal.getsignal(signal.SIGTERM) if main_thread else None
  ray.init(log_to_driver=False, logging_level=logging.ERROR, **options)
  if main_thread and handler is not None:
    signal.signal(signal.SIGTERM, handler)


def _ready(refs: List[Any]) -> List[Any]:
  """Those of `refs` (object refs, generators) that are ready now."""
  if not refs:
    return []
  return ray.wait(refs, num_returns=len(refs), timeout=0)[0]


def _failed(trial: _Trial, error: str) -> TrialOutcome:
  return TrialOutcome(trial.trial_id, "failed", None, {}, error, trial.worker)


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _read_tail(path: str) -> str:
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - _LOG_LIMIT_BYTES))
    text = f.read().decode("utf-8", errors="replace")
  if size > _LOG_LIMIT_BYTES:
    text = f"[the first {size - _LOG_LIMIT_BYTES} bytes of this log were dropped]\n" + text
  return text


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)
