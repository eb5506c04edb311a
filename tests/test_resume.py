"""Resume after real SIGKILLs of the search driver: after k finished trials
(with warm workers and with a process per trial), and at random moments while
it is writing. Whatever the kill point, the resumed search reaches its budget
with every trial finished exactly once, finished trials untouched,
interrupted trials run again under the same id with the same decisions, and
the algorithm having observed each trial once. A SIGKILL of a warm worker
fails the one trial it was running and nothing else."""
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from process_helpers import trial_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Driver:
  """A controller subprocess whose progress lines can be awaited."""

  def __init__(self, flags, faults="", log=None):
    env = dict(os.environ, SPINESEARCH_FAULTS=faults)
    self.process = subprocess.Popen(
        [sys.executable, "-m", "spinesearch.controller", *flags], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=log, bufsize=0)
    self.output = b""

  def progress_lines(self):
    return [line for line in self.output.split(b"\n") if line.startswith(b"[")]

  def wait_for_progress(self, count, timeout_s=240):
    """Reads output until `count` progress lines have appeared."""
    deadline = time.monotonic() + timeout_s
    fd = self.process.stdout.fileno()
    while len(self.progress_lines()) < count:
      remaining = deadline - time.monotonic()
      assert remaining > 0, f"no {count} progress lines in {timeout_s} s: {self.output!r}"
      if select.select([fd], [], [], remaining)[0]:
        data = os.read(fd, 65536)
        assert data, f"the driver ended early: {self.output!r}"
        self.output += data

  def kill(self):
    os.kill(self.process.pid, signal.SIGKILL)
    self.process.wait()
    self.process.stdout.close()

  def finish(self, timeout_s=300):
    out, _ = self.process.communicate(timeout=timeout_s)
    self.output += out
    return self.process.returncode


def snapshot(search_dir):
  """{id: row} of the trials table and the checkpoint's observed ids."""
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, decisions, status, reward, finished, finish_order "
                        "FROM trials").fetchall()
    checkpoint = conn.execute("SELECT observed_ids FROM checkpoint").fetchone()
  trials = {r[0]: dict(decisions=r[1], status=r[2], reward=r[3], finished=r[4],
                       finish_order=r[5]) for r in rows}
  return trials, (json.loads(checkpoint[0]) if checkpoint else [])


def check_kill_left_a_resumable_store(before, after):
  """Trials finished before a resume are untouched by it; trials that were
  pending or running finish under the same id with the same decisions."""
  for trial_id, old in before.items():
    new = after[trial_id]
    assert new["decisions"] == old["decisions"]
    if old["status"] in ("done", "failed"):
      assert new == old
    else:
      assert new["status"] in ("done", "failed")


def check_search_complete(search_dir, num_trials):
  trials, observed = snapshot(search_dir)
  assert sorted(trials) == list(range(1, num_trials + 1))
  assert all(t["status"] == "done" for t in trials.values())
  assert sorted(t["finish_order"] for t in trials.values()) == list(range(1, num_trials + 1))
  assert sorted(observed) == list(range(1, num_trials + 1))  # each observed exactly once


def resume_to_budget(flags, search_dir, num_trials, log):
  before, _ = snapshot(search_dir)
  driver = Driver(flags, log=log)
  assert driver.finish() == 0, driver.output
  check_kill_left_a_resumable_store(before, snapshot(search_dir)[0])
  check_search_complete(search_dir, num_trials)
  assert f"search finished: {num_trials} trials ({num_trials} done, 0 failed)".encode() \
      in driver.output


@pytest.mark.parametrize("isolation", ["worker", "process"])
def test_sigkill_after_k_finished_trials_then_resume(tmp_path, isolation):
  search_dir = str(tmp_path / "search")
  num_trials = 12
  flags = (f"--search_dir={search_dir}", "--reward=target_similarity",
           "--algorithm=evolution", "--population_size=4", "--sample_size=2",
           f"--num_trials={num_trials}", "--max_parallel_trials=2",
           f"--trial_isolation={isolation}")
  requeued = 0
  with open(tmp_path / "driver.log", "wb") as log:
    previous = {}
    for finished_in_run in (2, 3, 4):
      # Trials take a moment, so both workers are busy when the kill comes.
      driver = Driver(flags, faults="sleep:0.3@*", log=log)
      driver.wait_for_progress(finished_in_run)
      driver.kill()
      trials, observed = snapshot(search_dir)
      check_kill_left_a_resumable_store(previous, trials)
      requeued += sum(t["status"] in ("pending", "running") for t in trials.values())
      assert len(observed) == len(set(observed))
      previous = trials
    assert requeued >= 1  # some kill interrupted running trials
    resume_to_budget(flags, search_dir, num_trials, log)
  assert os.listdir(os.path.join(search_dir, "workers")) == []


def test_sigkill_of_a_warm_worker_fails_only_its_trial(tmp_path):
  search_dir = str(tmp_path / "search")
  num_trials = 10
  flags = (f"--search_dir={search_dir}", "--reward=target_similarity",
           "--algorithm=evolution", "--population_size=4", "--sample_size=2",
           f"--num_trials={num_trials}", "--max_parallel_trials=2")
  with open(tmp_path / "driver.log", "wb") as log:
    # Trial 4 starts once two trials have finished and runs until killed.
    driver = Driver(flags, faults="sleep:0.5@*,sleep:600@4", log=log)
    driver.wait_for_progress(3)
    before, _ = snapshot(search_dir)
    assert before[4]["status"] == "running"
    with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
      worker, = conn.execute("SELECT worker FROM trials WHERE id = 4").fetchone()
    pid = int(worker.rpartition("pid")[2])
    assert pid in trial_processes(driver.process.pid)
    os.kill(pid, signal.SIGKILL)
    assert driver.finish() == 0, driver.output
  after, observed = snapshot(search_dir)
  for trial_id, old in before.items():  # what had finished stays as it was
    if old["status"] in ("done", "failed"):
      assert after[trial_id] == old
  assert sorted(after) == list(range(1, num_trials + 1)) and sorted(observed) == sorted(after)
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    failed = conn.execute("SELECT id, error FROM trials WHERE status = 'failed'").fetchall()
  (failed_id, error), = failed  # only the trial the worker was running
  assert failed_id == 4 and "worker process killed by SIGKILL" in error
  assert f"({num_trials - 1} done, 1 failed)".encode() in driver.output


def test_sigkill_at_random_moments_then_resume(tmp_path):
  # In-process trials keep the driver writing nearly all the time, so kills at
  # random moments after a random number of trials land inside store writes,
  # checkpoints and best/ updates.
  search_dir = str(tmp_path / "search")
  num_trials = 300
  flags = (f"--search_dir={search_dir}", "--reward=target_similarity",
           "--algorithm=evolution", "--runner=inline", f"--num_trials={num_trials}")
  rng = random.Random(0)
  with open(tmp_path / "driver.log", "wb") as log:
    previous = {}
    for _ in range(8):
      driver = Driver(flags, log=log)
      driver.wait_for_progress(rng.randint(3, 40))
      time.sleep(rng.uniform(0.0, 0.005))
      driver.kill()
      trials, observed = snapshot(search_dir)
      check_kill_left_a_resumable_store(previous, trials)
      assert set(observed) <= {i for i, t in trials.items() if t["status"] == "done"}
      previous = trials
    assert len(previous) < num_trials  # the kills came before the end
    resume_to_budget(flags, search_dir, num_trials, log)


@pytest.mark.slow  # two TensorFlow start-ups: 25-50 s on a shared 2-core machine
def test_ppo_resumes_its_policy_after_sigkill(tmp_path):
  search_dir = str(tmp_path / "search")
  num_trials = 20
  flags = (f"--search_dir={search_dir}", "--reward=target_similarity", "--algorithm=ppo",
           "--controller_batch_size=4", "--runner=inline", f"--num_trials={num_trials}")
  with open(tmp_path / "driver.log", "wb") as log:
    driver = Driver(flags, log=log)
    driver.wait_for_progress(10)
    driver.kill()
    with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
      state = json.loads(conn.execute("SELECT state FROM checkpoint").fetchone()[0])
    assert state["num_updates"] >= 2
    resume_to_budget(flags, search_dir, num_trials, log)
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    final = json.loads(conn.execute("SELECT state FROM checkpoint").fetchone()[0])
  # The resumed policy went on from the saved one: num_trials / batch updates in all.
  assert final["num_updates"] == num_trials // 4


def test_finished_trials_the_checkpoint_missed_are_observed_once_on_resume(tmp_path):
  """The state a kill between 'store the outcome' and 'store the algorithm
  state' leaves, made deterministic: a checkpoint older than the last
  finished trials. The resumed driver feeds exactly those to the algorithm."""
  search_dir = str(tmp_path / "search")
  flags = (f"--search_dir={search_dir}", "--reward=target_similarity",
           "--algorithm=evolution", "--population_size=4", "--sample_size=2")
  db = os.path.join(search_dir, "trials.db")
  with open(tmp_path / "driver.log", "wb") as log:
    assert Driver((*flags, "--num_trials=3"), log=log).finish() == 0
    with sqlite3.connect(db) as conn:
      old_checkpoint = conn.execute("SELECT state, observed_ids FROM checkpoint").fetchone()
    assert Driver((*flags, "--num_trials=6"), log=log).finish() == 0
    with sqlite3.connect(db) as conn:
      conn.execute("UPDATE checkpoint SET state = ?, observed_ids = ?", old_checkpoint)
    assert sorted(snapshot(search_dir)[1]) == [1, 2, 3]
    resume_to_budget((*flags, "--num_trials=9"), search_dir, 9, log)
  with sqlite3.connect(db) as conn:
    state = json.loads(conn.execute("SELECT state FROM checkpoint").fetchone()[0])
  assert state["observed_ids"][:6] == [1, 2, 3, 4, 5, 6]  # re-fed in finish order
  assert len(state["observed_ids"]) == len(set(state["observed_ids"])) == 9
