"""The search command end to end (subprocesses, reward=target_similarity):
flags, outputs, failed trials, the failure limit, refused resumes, and a PPO
search that learns."""
import json
import os
import sqlite3
import struct
import subprocess
import sys

import pytest

from spinesearch.space.architecture import Architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ("--reward=target_similarity", "--algorithm=evolution", "--population_size=4",
        "--sample_size=2")


def run_controller(*flags, faults="", timeout=300):
  env = dict(os.environ, SPINESEARCH_FAULTS=faults)
  return subprocess.run([sys.executable, "-m", "spinesearch.controller", *flags],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def trials(search_dir):
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    return conn.execute("SELECT id, status, reward, error FROM trials ORDER BY id").fetchall()


def read_scalars(logdir):
  """{tag: [(step, value)]} from the TFRecord-framed event files, parsed here
  so the test needs no TensorFlow."""
  from tensorboard.compat.proto import event_pb2
  scalars = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length, = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


@pytest.mark.parametrize("flags, message", [
    (("--num_trials=0",), "--num_trials=0"),
    (("--algorithm=annealing",), "--algorithm=annealing"),
    (("--no_such_flag=1",), "no_such_flag"),
    (("--reward=target_similarity",), "--search_dir is required"),
    (("--search_dir={d}", "--reward=target_similarity", "--population_size=4"),
     "--population_size applies to --algorithm=evolution"),
    (("--search_dir={d}", "--reward=target_similarity", "--target_flops=3"),
     "measures no cost"),
    (("--search_dir={d}", "--reward=target_similarity", "--target_flops=3",
      "--target_latency_ms=9"), "not both"),
    (("--search_dir={d}", "--search_space=nasfpn", "--parent_window=3"),
     "--parent_window applies to --search_space=spinenet"),
    (("--search_dir={d}", "--search_space=nasfpn", "--space_preset=mobile"),
     "--space_preset=mobile is not a preset of the nasfpn space (its presets: default, vertex)"),
    (("--search_dir={d}", "--reward=target_similarity", "stray"), "unexpected argument"),
    (("--search_dir={d}", "--reward=target_similarity", "--runner=inline",
      "--trial_isolation=process"), "--trial_isolation applies to --runner=local/ray"),
    (("--search_dir={d}", "--reward=target_similarity", "--trial_isolation=process",
      "--worker_max_trials=3"), "--worker_max_trials applies to --trial_isolation=worker"),
    (("--search_dir={d}", "--reward=target_similarity", "--trial_isolation=thread"),
     "--trial_isolation"),
    (("--flagfile=/no/such.flags",), "/no/such.flags"),
])
def test_a_bad_flag_is_one_line_and_exit_status_2(tmp_path, flags, message):
  done = run_controller(*(f.format(d=tmp_path / "s") for f in flags))
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
  assert message in done.stderr


def test_helpfull_documents_every_flag():
  done = run_controller("--helpfull")
  for flag in ("search_space", "space_preset", "parent_window", "algorithm",
               "controller_batch_size", "controller_learning_rate", "entropy_weight",
               "population_size", "sample_size", "reward", "num_trials",
               "max_parallel_trials", "max_failed_trials", "trial_timeout_s", "runner",
               "search_dir", "seed", "target_flops", "target_latency_ms", "cost_weight",
               "hard_constraint", "proxy_preset", "proxy_image_size", "proxy_train_steps",
               "proxy_batch_size", "dataset", "cache_dir", "synthetic_num_train",
               "zero_shot_prefilter", "zero_shot_part", "zero_shot_image_size",
               "zero_shot_batch_size", "zero_shot_repeats", "ray_address", "trial_cpus",
               "trial_gpus", "trial_isolation", "worker_max_trials", "worker_max_rss_mb",
               "synthetic_num_val", "synthetic_image_size", "train_pattern", "val_pattern",
               "val_annotations", "top_k"):
    assert f"--{flag}:" in done.stdout or f"--[no]{flag}:" in done.stdout, flag
  assert "target_similarity" in done.stdout
  assert "'mobile' searches Mobile SpineNet" in " ".join(done.stdout.split())


def test_a_search_writes_progress_best_architectures_and_tensorboard(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=8",
                        "--max_parallel_trials=2", "--top_k=3")
  assert done.returncode == 0, done.stderr
  progress = [line for line in done.stdout.splitlines() if line.startswith("[")]
  assert [line.split("]")[0] for line in progress] == [f"[{n}/8" for n in range(1, 9)]
  assert all(" reward " in line and " best " in line and " eta " in line for line in progress)
  assert "search finished: 8 trials (8 done, 0 failed)" in done.stdout
  assert os.path.join(search_dir, "best") in done.stdout

  rows = trials(search_dir)
  assert [r[1] for r in rows] == ["done"] * 8
  ranked = sorted(rows, key=lambda r: (-r[2], r[0]))[:3]
  files = sorted(os.listdir(os.path.join(search_dir, "best")))
  assert files == sorted([f"rank{i:02d}-trial{r[0]:04d}{suffix}"
                          for i, r in enumerate(ranked, 1)
                          for suffix in (".json", ".metrics.json")])
  top = Architecture.load(os.path.join(search_dir, "best", f"rank01-trial{ranked[0][0]:04d}.json"))
  assert top.name == f"trial{ranked[0][0]:04d}" and top.space == "spinenet"
  with open(os.path.join(search_dir, "best", f"rank01-trial{ranked[0][0]:04d}.metrics.json"),
            encoding="utf-8") as f:
    assert json.load(f)["reward"] == ranked[0][2]

  scalars = read_scalars(os.path.join(search_dir, "tensorboard"))
  assert [step for step, _ in scalars["search/best_reward"]] == list(range(1, 9))
  assert scalars["search/best_reward"][-1][1] == pytest.approx(ranked[0][2])
  assert len(scalars["search/reward"]) == 8 and "trial/similarity" in scalars


def test_crashed_and_timed_out_trials_fail_with_reasons_and_the_search_goes_on(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=6",
                        "--max_parallel_trials=2", "--trial_timeout_s=2",
                        faults="crash@2,sleep@3")
  assert done.returncode == 0, done.stderr
  rows = {r[0]: r for r in trials(search_dir)}
  assert len(rows) == 6
  assert rows[2][1] == "failed" and "injected crash in trial 2" in rows[2][3]
  assert rows[3][1] == "failed" and "timed out after 2 s" in rows[3][3]
  assert all(rows[i][1] == "done" for i in (1, 4, 5, 6))
  assert "trial 3 FAILED (timed out" in done.stdout
  assert "(4 done, 2 failed)" in done.stdout


def test_too_many_failures_stop_the_search_and_it_resumes_afterwards(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=10",
                        "--max_failed_trials=2", faults="crash@*")
  assert done.returncode == 1
  assert done.stderr.startswith(
      "error: stopping the search: 3 trials failed, more than --max_failed_trials=2")
  assert "injected crash" in done.stderr
  assert [r[1] for r in trials(search_dir)] == ["failed"] * 3
  # The limit is operational: raising it resumes the search to its budget.
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=10",
                        "--max_failed_trials=5")
  assert done.returncode == 0, done.stderr
  statuses = [r[1] for r in trials(search_dir)]
  assert statuses == ["failed"] * 3 + ["done"] * 7


def test_a_resume_with_other_search_flags_is_refused_with_the_differences(tmp_path):
  search_dir = str(tmp_path / "search")
  assert run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=3").returncode == 0
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=3", "--seed=4",
                        "--sample_size=3")
  assert done.returncode == 2 and done.stderr.count("\n") == 1
  assert "--sample_size=2 then, 3 now" in done.stderr
  assert "--seed=0 then, 4 now" in done.stderr
  assert len(trials(search_dir)) == 3
  # Operational flags may change: a larger budget, more parallel trials.
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=5",
                        "--max_parallel_trials=2", "--trial_timeout_s=30")
  assert done.returncode == 0, done.stderr
  assert "3/5 trials finished" in done.stdout
  assert [r[0] for r in trials(search_dir)] == [1, 2, 3, 4, 5]
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=4")
  assert done.returncode == 2 and "below the 5 trials" in done.stderr


def test_a_search_made_before_a_flag_existed_resumes_at_its_default(tmp_path):
  """A flag added since a search was created stood at its default then:
  resuming without it works; giving it another value is refused."""
  import json
  search_dir = str(tmp_path / "search")
  assert run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=2").returncode == 0
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    flags = json.loads(conn.execute("SELECT value FROM search WHERE key='flags'").fetchone()[0])
    del flags["search_fusion"], flags["search_head"]
    conn.execute("UPDATE search SET value=? WHERE key='flags'", (json.dumps(flags),))
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=3")
  assert done.returncode == 0, done.stderr
  assert len(trials(search_dir)) == 3
  done = run_controller(f"--search_dir={search_dir}", *FAST, "--num_trials=4", "--search_fusion")
  assert done.returncode == 2 and "--search_fusion=false then, true now" in done.stderr


def test_ppo_improves_over_its_first_trials(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", "--reward=target_similarity",
                        "--algorithm=ppo", "--runner=inline", "--num_trials=80",
                        "--controller_batch_size=5", "--controller_learning_rate=0.03",
                        "--seed=1")
  assert done.returncode == 0, done.stderr
  rewards = [r[2] for r in trials(search_dir)]
  first, last = sum(rewards[:20]) / 20, sum(rewards[-20:]) / 20
  assert last > first + 0.04, (first, last)
  scalars = read_scalars(os.path.join(search_dir, "tensorboard"))
  assert "algorithm/baseline" in scalars and "algorithm/entropy" in scalars


@pytest.mark.slow
def test_a_proxy_search_trains_and_records_cost_metrics(tmp_path):
  """One real trial of the tiny proxy on a small synthetic set, with a cost target."""
  from spinesearch import rewards
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", "--reward=proxy", "--proxy_preset=tiny",
                        "--algorithm=random", "--num_trials=1", "--synthetic_num_train=16",
                        "--synthetic_num_val=8", f"--cache_dir={tmp_path / 'cache'}",
                        "--target_flops=0.5", "--trial_timeout_s=600", timeout=900)
  assert done.returncode == 0, done.stderr
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    status, reward, metrics = conn.execute("SELECT status, reward, metrics FROM trials").fetchone()
  metrics = json.loads(metrics)
  assert status == "done", metrics
  assert metrics["params"] > 0 and metrics["cost"] == metrics["multiply_adds"] / 1e9
  assert reward == pytest.approx(
      rewards.reward_with_cost_target(metrics["ap"], metrics["cost"], 0.5))
