"""The local runner and the trial entry points, with warm workers and with a
process per trial: outcomes of good trials and of every kind of failure,
parallel slots, timeouts, orphaned workers; warm workers reused, replaced
after a failure, recycled after N trials or above a memory ceiling; and the
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
from spinesearch.errors import ConfigError
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


@pytest.fixture(params=["worker", "process"])
def isolation(request):
  """Every runner test holds with warm workers and with a process per trial."""
  return request.param


def reward_metrics(outcome):
  """The trial's own metrics, without what a warm worker adds about itself."""
  return {k: v for k, v in outcome.metrics.items() if not k.startswith("worker_")}


def poll_all(runner, n, limit_s=60):
  outcomes = {}
  deadline = time.monotonic() + limit_s
  while len(outcomes) < n and time.monotonic() < deadline:
    for outcome in runner.poll(1.0):
      outcomes[outcome.trial_id] = outcome
  assert len(outcomes) == n, f"only {len(outcomes)} of {n} trials ended in {limit_s} s"
  return outcomes


def test_good_trials_come_back_done_with_the_reward(tmp_path, space, isolation):
  runner = build_runner("local", max_parallel=2, timeout_s=60, search_dir=str(tmp_path),
                        trial_isolation=isolation)
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
    assert reward_metrics(outcomes[trial_id]) == {"similarity": pytest.approx(expected)}
  assert runner.free_slots() == 2
  assert os.listdir(tmp_path / "logs") == []  # good trials wrote no log
  runner.shutdown()
  assert os.listdir(tmp_path / "workers") == []  # nothing left behind


def test_every_kind_of_failure_is_a_failed_outcome_with_its_reason(tmp_path, space,
                                                                   monkeypatch, isolation):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@1,kill@2,nan@3,sleep@4")
  runner = LocalRunner(max_parallel=4, timeout_s=3, search_dir=str(tmp_path),
                       trial_isolation=isolation)
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
  runner.shutdown()


def test_poll_does_not_block_and_shutdown_kills_running_trials(tmp_path, space, monkeypatch,
                                                               isolation):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "sleep@1")
  runner = LocalRunner(max_parallel=1, timeout_s=None, search_dir=str(tmp_path),
                       trial_isolation=isolation)
  runner.submit(1, request(1, space, space.sample(random.Random(0))))
  process = runner._running[0].process.process
  started = time.monotonic()
  assert runner.poll(0.2) == []
  assert time.monotonic() - started < 2
  runner.shutdown()
  assert process.poll() == -signal.SIGKILL
  assert runner.num_running() == 0 and os.listdir(tmp_path / "workers") == []


def run_one_at_a_time(runner, space, trial_ids):
  """Outcomes of `trial_ids` run one after another on a one-slot runner."""
  outcomes = []
  for trial_id in trial_ids:
    runner.submit(trial_id, request(trial_id, space, space.sample(random.Random(trial_id))))
    outcomes.extend(poll_all(runner, 1).values())
  return outcomes


def test_a_warm_worker_runs_trials_one_after_another(tmp_path, space):
  runner = LocalRunner(max_parallel=1, timeout_s=60, search_dir=str(tmp_path))
  outcomes = run_one_at_a_time(runner, space, [1, 2, 3, 4])
  assert all(o.status == "done" for o in outcomes)
  assert len({o.worker for o in outcomes}) == 1  # one process ran them all
  assert [o.metrics["worker_trial"] for o in outcomes] == [1, 2, 3, 4]
  assert all(o.metrics["worker_rss_mb"] > 0 for o in outcomes)
  runner.shutdown()
  assert os.listdir(tmp_path / "workers") == []


def test_a_worker_whose_trial_failed_is_replaced(tmp_path, space, monkeypatch):
  monkeypatch.setenv(evaluate.FAULTS_ENV, "crash@2,nan@4,kill@6,sleep@8")
  runner = LocalRunner(max_parallel=1, timeout_s=2, search_dir=str(tmp_path))
  outcomes = run_one_at_a_time(runner, space, range(1, 10))
  statuses = [o.status for o in outcomes]
  assert statuses == ["done", "failed"] * 4 + ["done"]
  assert "injected crash in trial 2" in outcomes[1].error
  assert "reward is nan" in outcomes[3].error
  assert "killed by SIGKILL (out of memory?)" in outcomes[5].error
  assert "timed out after 2 s" in outcomes[7].error
  # Each failure ends its worker; the next trial gets a new one.
  workers = [o.worker for o in outcomes]
  assert [workers[i] == workers[i + 1] for i in range(8)] == [True, False] * 4
  assert len(set(workers)) == 5
  runner.shutdown()


@pytest.mark.parametrize("limits, expected_workers", [
    ({"worker_max_trials": 2}, [0, 0, 1, 1, 2]),
    ({"worker_max_rss_mb": 1}, [0, 1, 2, 3, 4]),  # every worker is over 1 MB
])
def test_a_worker_is_recycled_after_n_trials_or_above_the_memory_ceiling(
    tmp_path, space, limits, expected_workers):
  runner = LocalRunner(max_parallel=1, timeout_s=60, search_dir=str(tmp_path), **limits)
  outcomes = run_one_at_a_time(runner, space, range(1, 6))
  assert all(o.status == "done" for o in outcomes)
  first_seen = list(dict.fromkeys(o.worker for o in outcomes))
  assert [first_seen.index(o.worker) for o in outcomes] == expected_workers
  runner.shutdown()


def test_a_worker_that_died_while_idle_gets_no_trial(tmp_path, space):
  runner = LocalRunner(max_parallel=1, timeout_s=60, search_dir=str(tmp_path))
  first, = run_one_at_a_time(runner, space, [1])
  idle, = runner._idle
  os.kill(idle.pid, signal.SIGKILL)
  idle.process.wait()
  second, = run_one_at_a_time(runner, space, [2])
  assert second.status == "done" and second.worker != first.worker
  runner.shutdown()


@pytest.mark.slow  # ten model-building trials in one worker: 1-2 min
def test_a_warm_worker_s_memory_does_not_creep_across_model_building_trials(tmp_path, space):
  """Each zero-shot trial builds a Keras model, and Keras' state is cleared
  between trials, so a worker's resident memory levels off (over 100
  quick-start-sized trials here: 793 MB after the first, 799 MB after the
  last; scripts/benchmark_trial_costs.py measures it)."""
  runner = LocalRunner(max_parallel=1, timeout_s=600, search_dir=str(tmp_path))
  reward = {"type": "zero_shot", "proxy": {"preset": "tiny", "overrides": {}},
            "zero_shot": {"part": "backbone", "batch_size": 2, "repeats": 1}, "cost": None}
  rss = []
  for trial_id in range(1, 7):
    runner.submit(trial_id, request(trial_id, space, space.sample(random.Random(trial_id)),
                                    reward))
    outcome, = poll_all(runner, 1, limit_s=600).values()
    assert outcome.status == "done", outcome.error
    assert outcome.metrics["seconds_build"] > 0 and outcome.metrics["worker_trial"] == trial_id
    rss.append(outcome.metrics["worker_rss_mb"])
  runner.shutdown()
  assert max(rss[2:]) - rss[1] < 30, rss


@pytest.mark.parametrize("options, message", [
    ({"trial_isolation": "thread"}, "--trial_isolation=thread: choose one of worker, process"),
    ({"worker_max_trials": 0}, "--worker_max_trials=0: must be a number >= 1"),
])
def test_bad_isolation_settings_are_refused(tmp_path, options, message):
  with pytest.raises(ConfigError, match=message):
    LocalRunner(max_parallel=1, timeout_s=None, search_dir=str(tmp_path), **options)


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
    runner = LocalRunner(max_parallel=1, timeout_s=None, search_dir=sys.argv[1],
                         trial_isolation=sys.argv[3])
    runner.submit(1, json.loads(sys.argv[2]))
    print(runner._running[0].process.pid, flush=True)
    time.sleep(600)
""")


def test_a_killed_driver_leaves_no_worker_behind(tmp_path, space, isolation):
  env = dict(os.environ, **{evaluate.FAULTS_ENV: "sleep@1"})
  driver = subprocess.Popen(
      [sys.executable, "-c", _DRIVER, str(tmp_path),
       json.dumps(request(1, space, space.sample(random.Random(0)))), isolation],
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


_NOISY = textwrap.dedent("""
    import sys
    from spinesearch import evaluate, worker
    scored = evaluate.evaluate_trial
    def noisy(request, *args):
      print("noise")
      return scored(request, *args)
    evaluate.evaluate_trial = noisy
    sys.exit(evaluate.main() if sys.argv[1] == "process" else worker.main([]))
""")


def test_trial_processes_keep_stdout_for_the_result(tmp_path, space):
  """Whatever a trial prints goes to its log, so the result line stays
  parseable: a process of its own, and a warm worker's answers."""
  trial = json.dumps(request(1, space, space.sample(random.Random(1))))
  done = subprocess.run([sys.executable, "-c", _NOISY, "process"], capture_output=True,
                        text=True, input=trial, timeout=60)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)["status"] == "done"
  assert "noise" in done.stderr

  (tmp_path / "request.json").write_text(trial)
  orders = "".join(json.dumps({"trial_id": i, "request": str(tmp_path / "request.json"),
                               "log": str(tmp_path / f"trial{i}.log")}) + "\n"
                   for i in (1, 2))
  done = subprocess.run([sys.executable, "-c", _NOISY, "worker"], capture_output=True,
                        text=True, input=orders, timeout=60)
  assert done.returncode == 0, done.stderr
  answers = [json.loads(line) for line in done.stdout.splitlines()]
  assert [a["trial_id"] for a in answers] == [1, 2]
  assert [a["result"]["status"] for a in answers] == ["done", "done"]
  assert [a["result"]["metrics"]["worker_trial"] for a in answers] == [1, 2]
  assert all(a["rss_mb"] > 0 for a in answers)
  assert (tmp_path / "trial1.log").read_text() == (tmp_path / "trial2.log").read_text() \
      == "noise\n"
  assert "noise" not in done.stderr


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

  def __init__(self, config, dataset, checkpoint=None):
    assert checkpoint is None  # a search trial asks for none
    self.config, self.dataset = config, dataset

  def run(self, architecture, progress=None, measure_latency=True):
    from spinesearch.proxy import TrialResult
    _FakeProxyTask.calls.append((self.config, self.dataset, architecture, measure_latency))
    return TrialResult(ap=0.4, ap50=0.6, params=1000, multiply_adds=4_000_000_000,
                       latency_ms=20.0 if measure_latency else None, final_loss=0.7)


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
  (config, dataset, architecture, measure_latency), = _FakeProxyTask.calls
  # Latency is timed only for a latency target; multiply-adds always come along.
  assert measure_latency == (cost is not None and cost["metric"] == "latency_ms")
  assert (config.train_steps, config.seed, config.image_size) == (3, 5, 128)
  assert isinstance(dataset, DatasetPaths) and dataset.class_names[1] == "a"
  assert architecture.space == "spinenet" and architecture.blocks


def test_a_failed_proxy_trial_keeps_its_reason(space, monkeypatch):
  from spinesearch.proxy import TrialResult

  class DivergingTask(_FakeProxyTask):
    def run(self, architecture, progress=None, measure_latency=True):
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


@pytest.mark.slow  # three tiny proxy trials: 1-3 min on a shared 2-core machine
def test_a_proxy_trial_gives_the_same_result_in_a_warm_worker_and_in_its_own_process(tmp_path,
                                                                                     space):
  """A warm worker's second trial (Keras state cleared, data kept parsed)
  trains on the same batches from the same weights as a fresh process."""
  from spinesearch.data.dataset import ensure_synthetic
  import dataclasses
  dataset = ensure_synthetic(str(tmp_path / "cache"), num_train=16, num_val=8, image_size=128,
                             seed=3)
  trial = request(1, space, space.sample(random.Random(0)), {
      "type": "proxy", "proxy": {"preset": "tiny", "overrides": {"seed": 2}},
      "dataset": dataclasses.asdict(dataset), "cost": None})
  results = {}
  for isolation, trial_ids in (("worker", [1, 2]), ("process", [3])):
    runner = LocalRunner(max_parallel=1, timeout_s=900, search_dir=str(tmp_path / isolation),
                         trial_isolation=isolation)
    for trial_id in trial_ids:
      runner.submit(trial_id, dict(trial, trial_id=trial_id))
      outcome, = poll_all(runner, 1, limit_s=900).values()
      assert outcome.status == "done", outcome.error
      results[trial_id] = outcome.metrics
    runner.shutdown()
  assert results[2]["worker_trial"] == 2 and results[2]["seconds_startup"] == 0.0
  assert results[1]["seconds_startup"] > 0 and results[3]["seconds_startup"] > 0
  for key in ("final_loss", "ap", "params", "multiply_adds"):
    assert results[1][key] == pytest.approx(results[2][key], rel=1e-5), key
    assert results[3][key] == pytest.approx(results[2][key], rel=1e-5), key
  assert results[2]["latency_ms"] is None  # no latency target, no latency timing
