"""The local runner and the worker entry point: outcomes of good trials and of
every kind of failure, parallel slots, timeouts, orphaned workers, and the
proxy reward's call into ProxyTask (with a stand-in task)."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from spinesearch import evaluate, rewards
from spinesearch.runners.local import LocalRunner
from spinesearch.runners.registry import build_runner
from spinesearch.space.registry import build_space

SEED = 3


def request(trial_id, space, decisions, reward=None):
  return {"trial_id": trial_id, "seed": SEED,
          "architecture": space.decode(decisions).to_dict(), "decisions": decisions,
          "space": space.config(), "reward": reward or {"type": "target_similarity"}}


@pytest.fixture
def space():
  return build_space("spinenet")


def poll_all(runner, n, limit_s=60):
  outcomes = {}
  deadline = time.monotonic() + limit_s
  while len(outcomes) < n and time.monotonic() < deadline:
    for outcome in runner.poll(1.0):
      outcomes[outcome.trial_id] = outcome
  assert len(outcomes) == n, f"only {len(outcomes)} of {n} trials ended in {limit_s} s"
  return outcomes


def test_good_trials_come_back_done_with_the_reward(tmp_path, space):
  runner = build_runner("local", max_parallel=2, timeout_s=60, search_dir=str(tmp_path))
  samples = [space.sample(random.Random(i)) for i in range(3)]
  assert runner.free_slots() == 2
  worker = runner.submit(1, request(1, space, samples[0]))
  runner.submit(2, request(2, space, samples[1]))
  assert worker.startswith("local:pid") and runner.free_slots() == 0
  with pytest.raises(RuntimeError, match="no free slot"):
    runner.submit(3, request(3, space, samples[2]))
  outcomes = poll_all(runner, 2)
  for trial_id, decisions in ((1, samples[0]), (2, samples[1])):
    expected = rewards.target_similarity(space, decisions, SEED)
    assert outcomes[trial_id].status == "done"
    assert outcomes[trial_id].reward == pytest.approx(expected)
    assert outcomes[trial_id].metrics == {"similarity": pytest.approx(expected)}
  assert runner.free_slots() == 2
  assert os.listdir(tmp_path / "workers") == []  # nothing left behind
  assert os.listdir(tmp_path / "logs") == []  # good trials wrote no log


def test_every_kind_of_failure_is_a_failed_outcome_with_its_reason(tmp_path, space,
                                                                   monkeypatch):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@1,kill@2,nan@3,sleep@4")
  runner = LocalRunner(max_parallel=4, timeout_s=3, search_dir=str(tmp_path))
  decisions = space.sample(random.Random(0))
  for trial_id in range(1, 5):
    runner.submit(trial_id, request(trial_id, space, decisions))
  started = time.monotonic()
  outcomes = poll_all(runner, 4)
  assert time.monotonic() - started < 30
  assert all(o.status == "failed" and o.reward is None for o in outcomes.values())
  assert "RuntimeError: injected crash in trial 1" in outcomes[1].error
  assert "trial-000001.log" in outcomes[1].error  # the traceback is kept
  assert "Traceback" in (tmp_path / "logs" / "trial-000001.log").read_text()
  assert "killed by SIGKILL (out of memory?)" in outcomes[2].error
  assert "reward is nan" in outcomes[3].error
  assert "timed out after 3 s" in outcomes[4].error


def test_poll_does_not_block_and_shutdown_kills_running_trials(tmp_path, space, monkeypatch):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep@1")
  runner = LocalRunner(max_parallel=1, timeout_s=None, search_dir=str(tmp_path))
  runner.submit(1, request(1, space, space.sample(random.Random(0))))
  process = runner._workers[0].process
  started = time.monotonic()
  assert runner.poll(0.2) == []
  assert time.monotonic() - started < 2
  runner.shutdown()
  assert process.poll() == -signal.SIGKILL
  assert runner.num_running() == 0 and os.listdir(tmp_path / "workers") == []


def test_threads_are_split_between_parallel_trials(tmp_path):
  runner = LocalRunner(max_parallel=2, timeout_s=None, search_dir=str(tmp_path), num_cpus=8)
  env = runner._worker_environment()
  assert (env["TF_NUM_INTRAOP_THREADS"], env["TF_NUM_INTEROP_THREADS"],
          env["OMP_NUM_THREADS"]) == ("4", "2", "4")
  single = LocalRunner(max_parallel=4, timeout_s=None, search_dir=str(tmp_path), num_cpus=2)
  assert single._worker_environment()["TF_NUM_INTRAOP_THREADS"] == "1"


_DRIVER = textwrap.dedent("""
    import json, sys, time
    from spinesearch.runners.local import LocalRunner
    runner = LocalRunner(max_parallel=1, timeout_s=None, search_dir=sys.argv[1])
    runner.submit(1, json.loads(sys.argv[2]))
    print(runner._workers[0].process.pid, flush=True)
    time.sleep(600)
""")


def test_a_killed_driver_leaves_no_worker_behind(tmp_path, space):
  env = dict(os.environ, **{evaluate.FAULTS_ENV: "sleep@1"})
  driver = subprocess.Popen(
      [sys.executable, "-c", _DRIVER, str(tmp_path),
       json.dumps(request(1, space, space.sample(random.Random(0))))],
      stdout=subprocess.PIPE, text=True, env=env)
  worker_pid = int(driver.stdout.readline())
  os.kill(driver.pid, signal.SIGKILL)
  driver.wait()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and _alive(worker_pid):
    time.sleep(0.1)
  assert not _alive(worker_pid)


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_worker_keeps_stdout_for_the_result(space):
  """Whatever a trial prints goes to the log, so the result line stays parseable."""
  code = textwrap.dedent("""
      import sys
      from spinesearch import evaluate
      scored = evaluate.evaluate_trial
      def noisy(request):
        print("noise")
        return scored(request)
      evaluate.evaluate_trial = noisy
      sys.exit(evaluate.main())
  """)
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        input=json.dumps(request(1, space, space.sample(random.Random(1)))),
                        timeout=60)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)["status"] == "done"
  assert "noise" in done.stderr


def test_target_similarity_imports_no_tensorflow(space):
  code = ("import json, sys; from spinesearch import evaluate; "
          "result = evaluate.evaluate_trial(json.loads(sys.stdin.read())); "
          "print(result['status'], 'tensorflow' in sys.modules)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        input=json.dumps(request(1, space, space.sample(random.Random(2)))),
                        timeout=60)
  assert done.stdout.split() == ["done", "False"], done.stderr


class _FakeProxyTask:
  """Stands in for spinesearch.proxy.ProxyTask: records how it was called."""
  calls = []

  def __init__(self, config, dataset):
    self.config, self.dataset = config, dataset

  def run(self, architecture):
    from spinesearch.proxy import TrialResult
    _FakeProxyTask.calls.append((self.config, self.dataset, architecture))
    return TrialResult(ap=0.4, ap50=0.6, params=1000, multiply_adds=4_000_000_000,
                       latency_ms=20.0, final_loss=0.7)


def _stand_in_for_proxy_task(monkeypatch, task_class):
  # Through the module's dict: getattr would load the real ProxyTask (and
  # TensorFlow) through the module's lazy __getattr__.
  import spinesearch.proxy
  monkeypatch.setitem(vars(spinesearch.proxy), "ProxyTask", task_class)


def _proxy_request(space, cost):
  dataset = {"train_pattern": "t*", "val_pattern": "v*", "val_annotations": "v.json",
             "num_classes": 4, "image_size": 128, "class_names": ["background", "a", "b", "c"],
             "num_train": 8, "num_val": 4}
  return request(7, space, space.sample(random.Random(0)), {
      "type": "proxy", "proxy": {"preset": "tiny", "overrides": {"train_steps": 3, "seed": 5}},
      "dataset": dataset, "cost": cost})


@pytest.mark.parametrize("cost, expected", [
    (None, 0.4),
    ({"metric": "multiply_adds", "target": 2.0, "cost_weight": 0.07, "hard_constraint": False},
     0.4 * 2.0 ** -0.07),
    ({"metric": "latency_ms", "target": 10.0, "cost_weight": 0.07, "hard_constraint": True},
     0.4 * 10.0 / 20.0),
    ({"metric": "latency_ms", "target": 40.0, "cost_weight": 0.07, "hard_constraint": True},
     0.4),
])
def test_proxy_reward_calls_proxy_task_and_applies_the_cost_target(space, monkeypatch,
                                                                   cost, expected):
  from spinesearch.data.dataset import DatasetPaths
  _stand_in_for_proxy_task(monkeypatch, _FakeProxyTask)
  _FakeProxyTask.calls.clear()
  result = evaluate.evaluate_trial(_proxy_request(space, cost))
  assert result["status"] == "done"
  assert result["reward"] == pytest.approx(expected)
  assert result["metrics"]["accuracy"] == 0.4 and result["metrics"]["ap50"] == 0.6
  (config, dataset, architecture), = _FakeProxyTask.calls
  assert (config.train_steps, config.seed, config.image_size) == (3, 5, 128)
  assert isinstance(dataset, DatasetPaths) and dataset.class_names[1] == "a"
  assert architecture.space == "spinenet" and architecture.blocks


def test_a_failed_proxy_trial_keeps_its_reason(space, monkeypatch):
  from spinesearch.proxy import TrialResult

  class DivergingTask(_FakeProxyTask):
    def run(self, architecture):
      return TrialResult(final_loss=float("nan")).failed("loss became NaN at step 2")

  _stand_in_for_proxy_task(monkeypatch, DivergingTask)
  result = evaluate.evaluate_trial(_proxy_request(space, None))
  assert result["status"] == "failed" and result["reward"] is None
  assert result["error"] == "loss became NaN at step 2"
  assert result["metrics"]["final_loss"] is None


def test_inline_runner_scores_in_process_and_reports_crashes(tmp_path, space, monkeypatch):
  runner = build_runner("inline", max_parallel=1, timeout_s=None, search_dir=str(tmp_path))
  decisions = space.sample(random.Random(4))
  assert runner.submit(1, request(1, space, decisions)) == "inline"
  assert runner.free_slots() == 0
  outcome, = runner.poll(0)
  assert outcome.status == "done"
  assert outcome.reward == pytest.approx(rewards.target_similarity(space, decisions, SEED))
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@2")
  runner.submit(2, request(2, space, decisions))
  outcome, = runner.poll(0)
  assert outcome.status == "failed" and "injected crash in trial 2" in outcome.error
  assert runner.poll(0) == [] and runner.free_slots() == 1
