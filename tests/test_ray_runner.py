"""The Ray runner on a local Ray instance, with warm workers in its actors and
with a process per trial: outcomes of good trials and of every kind of
failure (a trial that raises or is killed, a Ray worker killed under a trial,
a stalled task), warm workers kept across an actor's trials, a local instance
that listens on loopback only, and searches with --runner=ray end to end,
including resume after SIGKILL."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from spinesearch import evaluate, rewards
from spinesearch.errors import ConfigError
from spinesearch.runners.registry import build_runner
from spinesearch.space.registry import build_space
from process_helpers import cmdline, descendants, trial_processes
from test_local_runner import SEED, isolation, poll_all, request, reward_metrics  # noqa: F401
from test_resume import (REPO, Driver, check_kill_left_a_resumable_store,
                         check_search_complete, snapshot)

SEARCH = ("--reward=target_similarity", "--algorithm=evolution", "--population_size=4",
          "--sample_size=2", "--runner=ray", "--max_parallel_trials=2")


@pytest.fixture(scope="module")
def ray_instance():
  """One local Ray instance for the in-process tests; runners built while it
  runs use it and leave it running."""
  ray = pytest.importorskip("ray")
  from spinesearch.runners import ray_runner
  ray_runner.start_local_instance(num_cpus=4)
  yield ray
  ray.shutdown()


@pytest.fixture
def space():
  return build_space("spinenet")


def ray_runner(tmp_path, max_parallel, timeout_s, **options):
  return build_runner("ray", max_parallel=max_parallel, timeout_s=timeout_s,
                      search_dir=str(tmp_path), **options)


def wait_for_trial_process(runner, limit_s=30):
  """Pid of the one trial process (a warm worker or a process of its own)
  below this test, polling `runner` (which hands trials to actors as they
  start) meanwhile."""
  deadline = time.monotonic() + limit_s
  while time.monotonic() < deadline:
    pids = trial_processes(os.getpid())
    if pids:
      return pids[0]
    assert runner.poll(0.1) == []
  raise AssertionError(f"no trial process within {limit_s} s")


def parent_of(pid):
  with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
    return int(f.read().rsplit(")", 1)[1].split()[1])


def wait_until_gone(pid, limit_s=15):
  deadline = time.monotonic() + limit_s
  while time.monotonic() < deadline and pid in descendants(os.getpid()):
    time.sleep(0.1)
  assert pid not in descendants(os.getpid()), f"process {pid} still runs"


# ---- in process, on one local instance ---------------------------------------

_LOOPBACK = {"0100007F",  # 127.0.0.1 in /proc/net/tcp
             "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
             "00000000000000000000000001000000"}  # ::1
_LISTEN = "0A"


def test_a_local_instance_listens_on_loopback_only(ray_instance):
  assert [node["NodeManagerAddress"] for node in ray_instance.nodes()] == ["127.0.0.1"]
  sockets = set()
  for pid in [os.getpid(), *descendants(os.getpid())]:  # the driver listens too
    try:
      links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except (FileNotFoundError, PermissionError):
      continue
    sockets.update(link[8:-1] for link in links if link.startswith("socket:["))
  listening = []
  for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
    with open(table, encoding="utf-8") as f:
      for line in f.read().splitlines()[1:]:
        fields = line.split()
        address, state, inode = fields[1].split(":")[0], fields[3], fields[9]
        if inode in sockets and (state == _LISTEN or "udp" in table):
          listening.append((table, address))
  assert len(listening) >= 3  # the GCS, the raylet, the driver's core worker at least
  assert all(address in _LOOPBACK for _, address in listening), listening


def test_good_trials_come_back_done_with_the_reward(ray_instance, tmp_path, space, isolation):
  runner = ray_runner(tmp_path, max_parallel=2, timeout_s=60, trial_isolation=isolation)
  samples = [space.sample(random.Random(i)) for i in range(3)]
  label = runner.submit(1, request(1, space, samples[0]))
  runner.submit(2, request(2, space, samples[1]))
  assert label.startswith("ray:127.0.0.1:") and runner.free_slots() == 0
  with pytest.raises(RuntimeError, match="no free slot"):
    runner.submit(3, request(3, space, samples[2]))
  outcomes = poll_all(runner, 2)
  for trial_id, decisions in ((1, samples[0]), (2, samples[1])):
    expected = rewards.target_similarity(space, decisions, SEED)
    assert outcomes[trial_id].status == "done"
    assert outcomes[trial_id].reward == pytest.approx(expected)
    assert reward_metrics(outcomes[trial_id]) == {"similarity": pytest.approx(expected)}
    assert outcomes[trial_id].worker.startswith("ray:127.0.0.1:pid")
  assert runner.free_slots() == 2 and os.listdir(tmp_path / "logs") == []
  runner.shutdown()
  assert ray_instance.is_initialized()  # not this runner's instance to stop


def test_every_kind_of_failure_is_a_failed_outcome_with_its_reason(ray_instance, tmp_path,
                                                                   space, monkeypatch,
                                                                   isolation):
  # The driver's fault settings travel with each task, as a cluster's
  # workers do not share the driver's environment.
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@1,kill@2,nan@3,sleep@4")
  runner = ray_runner(tmp_path, max_parallel=4, timeout_s=3, trial_isolation=isolation)
  decisions = space.sample(random.Random(0))
  for trial_id in range(1, 5):
    runner.submit(trial_id, request(trial_id, space, decisions))
  outcomes = poll_all(runner, 4)
  assert all(o.status == "failed" and o.reward is None for o in outcomes.values())
  log = tmp_path / "logs" / "trial-000001.log"
  assert "RuntimeError: injected crash in trial 1" in outcomes[1].error
  assert f"(log: {log})" in outcomes[1].error  # the driver keeps the worker's log
  assert "Traceback" in log.read_text()
  assert "killed by SIGKILL (out of memory?)" in outcomes[2].error
  assert "reward is nan" in outcomes[3].error
  assert "timed out after 3 s" in outcomes[4].error
  runner.shutdown()


def test_trials_beyond_the_cluster_s_room_wait_for_an_actor(ray_instance, tmp_path, space,
                                                           monkeypatch, isolation):
  # 4 CPUs for 6 slots: two trials at a time wait, and finished trials'
  # actors must not keep the room they need.
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep:0.3@*")
  runner = ray_runner(tmp_path, max_parallel=6, timeout_s=60, trial_isolation=isolation)
  outcomes, next_id = {}, 1
  deadline = time.monotonic() + 60
  while len(outcomes) < 10 and time.monotonic() < deadline:
    while runner.free_slots() and next_id <= 10:
      runner.submit(next_id, request(next_id, space, space.sample(random.Random(next_id))))
      next_id += 1
    outcomes.update((o.trial_id, o) for o in runner.poll(1.0))
  assert sorted(outcomes) == list(range(1, 11))
  assert all(o.status == "done" for o in outcomes.values())
  assert len({o.worker for o in outcomes.values()}) <= 4  # actors are reused
  runner.shutdown()


def test_a_ray_worker_killed_under_a_trial_fails_it(ray_instance, tmp_path, space,
                                                    monkeypatch, isolation):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep@1")
  runner = ray_runner(tmp_path, max_parallel=1, timeout_s=None, trial_isolation=isolation)
  runner.submit(1, request(1, space, space.sample(random.Random(0))))
  trial_process = wait_for_trial_process(runner)
  ray_worker = parent_of(trial_process)
  assert cmdline(ray_worker).startswith("ray::")
  os.kill(ray_worker, signal.SIGKILL)
  outcome, = poll_all(runner, 1).values()
  assert outcome.status == "failed"
  assert f"ActorDiedError from Ray on ray:127.0.0.1:pid{ray_worker}: The actor died" \
      in outcome.error
  wait_until_gone(trial_process)  # the trial follows its Ray worker
  runner.shutdown()


def test_a_stalled_ray_worker_is_killed_after_the_time_limit(ray_instance, tmp_path, space,
                                                          monkeypatch, isolation):
  from spinesearch.runners import ray_runner as module
  monkeypatch.setattr(module, "STALL_GRACE_S", 0.5)
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep@1")
  runner = ray_runner(tmp_path, max_parallel=1, timeout_s=1, trial_isolation=isolation)
  runner.submit(1, request(1, space, space.sample(random.Random(0))))
  trial_process = wait_for_trial_process(runner)
  # A stopped Ray worker cannot enforce the time limit itself.
  os.kill(parent_of(trial_process), signal.SIGSTOP)
  outcome, = poll_all(runner, 1, limit_s=20).values()
  assert outcome.status == "failed"
  assert "timed out after 1 s (--trial_timeout_s) and did not stop" in outcome.error
  wait_until_gone(trial_process)
  runner.shutdown()


def test_shutdown_stops_running_trials(ray_instance, tmp_path, space, monkeypatch, isolation):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep@1")
  runner = ray_runner(tmp_path, max_parallel=1, timeout_s=None, trial_isolation=isolation)
  runner.submit(1, request(1, space, space.sample(random.Random(0))))
  trial_process = wait_for_trial_process(runner)
  started = time.monotonic()
  assert runner.poll(0.2) == [] and time.monotonic() - started < 2
  runner.shutdown()
  assert runner.num_running() == 0
  wait_until_gone(trial_process)


def test_an_actor_keeps_its_warm_worker_and_replaces_it_after_a_failure(
    ray_instance, tmp_path, space, monkeypatch):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@3")
  runner = ray_runner(tmp_path, max_parallel=1, timeout_s=60, worker_max_trials=4)
  outcomes = []
  for trial_id in range(1, 10):
    runner.submit(trial_id, request(trial_id, space, space.sample(random.Random(trial_id))))
    outcomes.extend(poll_all(runner, 1).values())
  assert [o.status for o in outcomes] == ["done"] * 2 + ["failed"] + ["done"] * 6
  assert "injected crash in trial 3" in outcomes[2].error
  assert len({o.worker for o in outcomes}) == 1  # one actor ran them all
  # ... in three warm workers: the crash ended the first, the second ran its 4.
  assert [o.metrics["worker_trial"] for o in outcomes] == [1, 2, 3, 1, 2, 3, 4, 1, 2]
  runner.shutdown()


def test_the_cluster_s_capacity_is_checked(ray_instance, tmp_path, capsys):
  ray_runner(tmp_path, max_parallel=8, timeout_s=None, trial_cpus=1).shutdown()
  assert "runs at most 4 trials at once" in capsys.readouterr().err
  ray_runner(tmp_path, max_parallel=1, timeout_s=None, trial_gpus=1).shutdown()
  assert "no Ray node has that many (the largest has 4 CPUs, 0 GPUs)" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="--trial_cpus=-1"):
    ray_runner(tmp_path, max_parallel=1, timeout_s=None, trial_cpus=-1)


def test_without_ray_the_runner_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
  monkeypatch.delitem(sys.modules, "spinesearch.runners.ray_runner", raising=False)
  with pytest.raises(ConfigError, match=r"pip install 'spinesearch\[distributed\]'"):
    ray_runner(tmp_path, max_parallel=1, timeout_s=None)


# ---- the search command --------------------------------------------------------

def run_controller(*flags, faults=""):
  env = dict(os.environ, SPINESEARCH_FAULTS=faults)
  return subprocess.run([sys.executable, "-m", "spinesearch.controller", *flags],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.parametrize("flags, message", [
    (("--runner=local", "--ray_address=auto"), "--ray_address applies to --runner=ray"),
    (("--runner=ray", "--ray_address=nowhere"), "--ray_address=nowhere: expected 'auto'"),
])
def test_bad_ray_flags_are_one_line_and_exit_status_2(tmp_path, flags, message):
  pytest.importorskip("ray")
  done = run_controller(f"--search_dir={tmp_path / 's'}", "--reward=target_similarity",
                        "--algorithm=random", *flags)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_a_search_on_ray_completes_its_budget_and_records_a_killed_trial(tmp_path):
  pytest.importorskip("ray")
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", *SEARCH, "--num_trials=8",
                        "--ray_address=", "--trial_cpus=1", faults="kill@3")
  assert done.returncode == 0, done.stderr
  assert "search finished: 8 trials (7 done, 1 failed)" in done.stdout
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    rows = conn.execute("SELECT id, status, worker, error FROM trials ORDER BY id").fetchall()
  assert [r[0] for r in rows] == list(range(1, 9))
  assert [r[1] for r in rows] == ["done"] * 2 + ["failed"] + ["done"] * 5
  assert "worker process killed by SIGKILL" in rows[2][3]
  assert all(r[2].startswith("ray:127.0.0.1:") for r in rows)


def wait_for_an_unfinished_trial(search_dir, timeout_s=60):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if any(t["status"] in ("pending", "running") for t in snapshot(search_dir)[0].values()):
      return
    time.sleep(0.02)
  raise AssertionError(f"no trial pending or running in {timeout_s} s")


def test_sigkill_of_the_driver_then_resume_completes_the_budget_once(tmp_path):
  pytest.importorskip("ray")
  search_dir = str(tmp_path / "search")
  num_trials = 10
  flags = (f"--search_dir={search_dir}", *SEARCH, f"--num_trials={num_trials}")
  with open(tmp_path / "driver.log", "wb") as log:
    # Trials take a moment, so both are running when the kill comes.
    driver = Driver(flags, faults="sleep:0.5@*", log=log)
    driver.wait_for_progress(3)
    # Between a trial's end and the next submission no trial is unfinished:
    # kill while one is (each runs 0.5 s, so the window is wide).
    wait_for_an_unfinished_trial(search_dir)
    driver.kill()
    before, observed = snapshot(search_dir)
    assert any(t["status"] in ("pending", "running") for t in before.values())
    assert len(observed) == len(set(observed))
    resumed = Driver(flags, log=log)
    assert resumed.finish() == 0, resumed.output
  check_kill_left_a_resumable_store(before, snapshot(search_dir)[0])
  check_search_complete(search_dir, num_trials)  # every trial once, observed once
  assert f"search finished: {num_trials} trials ({num_trials} done, 0 failed)".encode() \
      in resumed.output
