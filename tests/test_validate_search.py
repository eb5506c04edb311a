"""scripts/validate_search.py: the plan (references, the search's best distinct
architectures, seeds, the stand-alone recipe, fine-tuning from the supernet),
the table, resuming, refusals in one line, and the command end to end on a
tiny search."""
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

from spinesearch.jobs import Job, run_jobs
from spinesearch.proxy.config import ProxyConfig
from spinesearch.runners.base import TrialOutcome
from spinesearch.space import known
from spinesearch.space.registry import build_space
from spinesearch.store import Trial, TrialStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "validate_search.py")
TINY_VALIDATION = ("--train_steps=2", "--batch_size=2", "--runner=inline")
TINY_SEARCH = ("--proxy_preset=tiny", "--synthetic_num_train=16", "--synthetic_num_val=8")


@pytest.fixture(scope="module")
def vs():
  """The script as a module (importing it defines no flags of its own)."""
  if "validate_search" not in sys.modules:
    spec = importlib.util.spec_from_file_location("validate_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["validate_search"] = module
  return sys.modules["validate_search"]


def trial(trial_id, reward, architecture, status="done"):
  return Trial(id=trial_id, architecture=architecture.to_dict(), decisions=[], log_probs=None,
               status=status, reward=reward if status == "done" else None, metrics={},
               error=None, created=0.0, started=0.0, finished=0.0, worker=None,
               finish_order=trial_id)


def sampled(space, seed):
  import random
  return space.sample_architecture(random.Random(seed))


def oneshot_settings():
  return {"type": "oneshot", "oneshot": {"supernet": "/sn", "bn_batches": 8,
                                         "finetune_steps": 0, "eval_images": 500},
          "proxy": {"preset": "tiny", "overrides": {"seed": 7}},
          "dataset": {"train_pattern": "x", "num_val": 8}, "cost": {"target": 1.0}}


def test_the_search_best_distinct_architectures_follow_the_two_references(vs):
  space = build_space("spinenet")
  a, b = sampled(space, 1), sampled(space, 2)
  trials = [trial(1, 0.3, b), trial(2, 0.5, a), trial(3, 0.5, a.replace(name="again")),
            trial(4, None, b, status="failed"), trial(5, 0.1, sampled(space, 3))]
  rows = vs.candidates(space, trials, 2, "search")
  assert [r.label for r in rows] == ["spinenet49", "spinenet49-scale-decreased",
                                     "trial 2", "trial 1"]
  assert rows[0].architecture == known.spinenet49()
  assert rows[1].architecture == known.scale_decreased(known.spinenet49())
  assert rows[0].decisions == space.encode(known.spinenet49()) and rows[1].decisions == []


def test_the_plan_trains_every_row_with_one_recipe_per_seed_and_fine_tunes_it(vs, monkeypatch):
  space = build_space("spinenet")
  rows = vs.candidates(space, [trial(1, 0.5, sampled(space, 1))], 1, "search")
  settings = oneshot_settings()
  # The supernet trained 1,000 steps with 200 of warm-up: 10 steps warm up for 2.
  settings["proxy"]["overrides"]["warmup_steps"] = 200
  monkeypatch.setattr(vs, "_supernet_steps", lambda s: 1000 if "oneshot" in s else None)
  jobs = vs.plan(rows, space, settings, seed=7, seeds=2, train_steps=10, batch_size=3,
                 finetune=True)
  assert len(jobs) == len({j.key for j in jobs}) == 3 * 2 * 2
  by_key = {j.key: j.request for j in jobs}
  tiny = ProxyConfig.from_preset("tiny")
  for s in (7, 8):
    scratch = by_key[vs.run_key("scratch", rows[2], s)]
    assert scratch["seed"] == s and scratch["reward"]["type"] == "proxy"
    assert scratch["reward"]["proxy"]["overrides"] == {
        "seed": s, "train_steps": 10, "train_epochs": None, "batch_size": 3,
        "warmup_steps": 2}
    assert scratch["reward"]["dataset"] == settings["dataset"]
    tuned = by_key[vs.run_key("finetune", rows[2], s)]
    assert tuned["seed"] == s and tuned["reward"]["type"] == "oneshot"
    assert tuned["reward"]["oneshot"] == dict(settings["oneshot"], finetune_steps=10,
                                              eval_images=tiny.max_eval_images)
    assert tuned["reward"]["cost"] is None
  assert by_key[vs.run_key("scratch", rows[1], 7)]["architecture"] == rows[1].architecture.to_dict()
  # Seed by seed, the found architecture first: a stopped run leaves whole rows.
  assert [j.key for j in jobs[:6]] == [vs.run_key(w, rows[i], 7) for i in (2, 0, 1)
                                       for w in ("scratch", "finetune")]
  # Without --finetune only the stand-alone runs; a found architecture equal to
  # a reference shares the reference's runs.
  rows = vs.candidates(space, [trial(1, 0.5, known.spinenet49())], 1, "search")
  jobs = vs.plan(rows, space, settings, seed=0, seeds=3, train_steps=10, batch_size=3,
                 finetune=False)
  assert len(jobs) == 2 * 3 and all(j.key.startswith("scratch/") for j in jobs)


def test_the_table_shows_cost_and_ap_mean_and_std_for_each_way(vs):
  space = build_space("spinenet")
  rows = vs.candidates(space, [trial(4, 0.5, sampled(space, 1))], 1, "search")
  results = {}
  for index, row in enumerate(rows):
    for s, ap in ((0, 0.1), (1, 0.3)):
      results[vs.run_key("scratch", row, s)] = {
          "status": "done", "reward": ap + index, "error": None,
          "metrics": {"multiply_adds": 2e9, "params": 3e6}}
    results[vs.run_key("finetune", row, 0)] = {"status": "done", "reward": 0.2,
                                              "error": None, "metrics": {"params": 3e6}}
  results[vs.run_key("finetune", rows[2], 1)] = {"status": "failed", "reward": None,
                                                "error": "NaN loss", "metrics": {}}
  proxy = {"preset": "tiny", "overrides": {}}
  summary = vs.summarize(rows, results, ["scratch", "finetune"], seed=0, seeds=2, proxy=proxy)
  assert [r["trial_id"] for r in summary] == [None, None, 4]
  assert summary[2]["search_reward"] == 0.5
  assert summary[1]["scratch"]["aps"] == [1.1, 1.3]
  assert summary[1]["scratch"]["mean"] == pytest.approx(1.2)
  assert summary[1]["scratch"]["std"] == pytest.approx(0.02 ** 0.5)
  assert summary[0]["multiply_adds_g"] == 2.0 and summary[0]["params_m"] == 3.0
  assert summary[0]["finetune"]["std"] is None  # one seed missing
  assert summary[2]["finetune"]["errors"] == ["NaN loss"]
  assert summary[0]["trained_architecture"]["scaling"] == \
      ProxyConfig.from_preset("tiny").scaling.to_dict()
  table = vs.format_table(summary, ["scratch", "finetune"], 2).splitlines()
  assert len(table) == 1 + 3 + 1
  assert "AP from scratch (2 seeds)" in table[0] and "AP fine-tuned (2 seeds)" in table[0]
  assert "1.2000 ± 0.1414" in table[2] and "0.2000 ± - (1/2)" in table[2]
  assert table[-1].strip() == "finetune failed: NaN loss"


class CannedRunner:
  """Outcomes at once: the reward is the request's seed."""

  def __init__(self):
    self.submitted, self.queue = [], []

  def free_slots(self):
    return 2 - len(self.queue)

  def submit(self, trial_id, request):
    self.submitted.append(request)
    self.queue.append(TrialOutcome(trial_id, "done", float(request["seed"]), {}, None, "canned"))
    return "canned"

  def poll(self, wait_s):
    outcomes, self.queue = self.queue, []
    return outcomes

  def shutdown(self):
    pass


def test_results_follow_a_supernet_moved_with_its_checkout(vs, tmp_path):
  import shutil
  from spinesearch.oneshot.supernet import BUNDLED_DIR
  space = build_space("spinenet")
  moved = str(tmp_path / "elsewhere")
  shutil.copytree(os.path.join(BUNDLED_DIR, "quickstart"), moved)
  settings = {"dataset": {"num_train": 16}, "proxy": {"preset": "tiny", "overrides": {}},
              "oneshot": {"supernet": os.path.join(BUNDLED_DIR, "quickstart"), "bn_batches": 2}}
  here = vs.results_fingerprint(settings, space, 40, 2)
  assert vs.results_fingerprint(dict(settings, oneshot=dict(settings["oneshot"], supernet=moved)),
                                space, 40, 2) == here
  assert vs.results_fingerprint(dict(settings, oneshot=dict(settings["oneshot"], bn_batches=4)),
                                space, 40, 2) != here


def test_running_again_evaluates_only_what_is_missing(tmp_path):
  path = str(tmp_path / "results.json")
  jobs = [Job(f"way/{s}", 0, {"seed": s}) for s in range(3)]
  runner = CannedRunner()
  assert {k: r["reward"] for k, r in run_jobs(jobs, runner, path, "f").items()} == {
      "way/0": 0.0, "way/1": 1.0, "way/2": 2.0}
  again = CannedRunner()
  run_jobs(jobs, again, path, "f")
  assert again.submitted == []
  more = CannedRunner()
  results = run_jobs(jobs + [Job("way/3", 0, {"seed": 3})], more, path, "f")
  assert [r["seed"] for r in more.submitted] == [3] and len(results) == 4


def test_failed_runs_run_again_and_every_run_may_ask_for_a_checkpoint(tmp_path):
  path = str(tmp_path / "results.json")
  jobs = [Job(f"way/arch/seed{s}", 0, {"seed": s}) for s in range(2)]
  runner = CannedRunner()
  runner.submit = lambda trial_id, request: (
      runner.submitted.append(request),
      runner.queue.append(TrialOutcome(trial_id, "failed" if request["seed"] else "done",
                                       None if request["seed"] else 0.5, {}, "killed", "canned")))
  run_jobs(jobs, runner, path, "f", checkpoint_dir="ck")
  assert [r["checkpoint"] for r in runner.submitted] == [
      {"folder": "ck", "name": "way_arch_seed0"}, {"folder": "ck", "name": "way_arch_seed1"}]
  again = CannedRunner()
  out = io.StringIO()
  results = run_jobs(jobs, again, path, "f", out=out)
  assert [r["seed"] for r in again.submitted] == [1] and "checkpoint" not in again.submitted[0]
  assert "running again 1 run(s) that failed before" in out.getvalue()
  assert results["way/arch/seed1"]["status"] == "done"
  assert len({r["trial_id"] for r in runner.submitted + again.submitted}) == 3


def test_a_running_search_is_read_without_its_lock(tmp_path):
  from spinesearch.store import read_search
  with TrialStore(str(tmp_path)) as store:  # the driver holds the lock
    store.create_search({"flags": {"seed": 3}, "space": {"name": "spinenet"}})
    added = store.add_trial(known.spinenet49().to_dict(), [1, 2])
    store.finish_trial(added.id, "done", 0.25, {"ap": 0.25}, None)
    metadata, trials = read_search(str(tmp_path))
  assert metadata["flags"] == {"seed": 3}
  assert [(t.id, t.status, t.reward, t.decisions) for t in trials] == [(1, "done", 0.25, [1, 2])]


def validate(*flags, env=None):
  return subprocess.run([sys.executable, SCRIPT, *flags], capture_output=True, text=True,
                        cwd=REPO, timeout=900, env=env)


def make_search(search_dir, *flags):
  done = subprocess.run(
      [sys.executable, "-m", "spinesearch.controller", f"--search_dir={search_dir}",
       "--reward=target_similarity", "--algorithm=random", "--num_trials=4", "--runner=inline",
       *flags], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr
  return str(search_dir)


def assert_one_line_error(done, text):
  assert done.returncode == 2, done.stderr
  assert done.stderr.count("\n") == 1 and text in done.stderr, done.stderr


def test_a_missing_search_dir_is_one_line(tmp_path):
  assert_one_line_error(validate(f"--search_dir={tmp_path / 'nothing'}"), "no search here")


def test_a_search_without_done_trials_is_one_line(tmp_path):
  with TrialStore(str(tmp_path)) as store:
    store.create_search({"flags": {}, "space": build_space("spinenet").config(), "seed": 0})
    store.add_trial(known.spinenet49().to_dict(), [])
  assert_one_line_error(validate(f"--search_dir={tmp_path}"), "no trial is done yet")


def test_a_search_of_another_space_is_one_line(tmp_path):
  search = make_search(tmp_path / "nasfpn", "--search_space=nasfpn")
  assert_one_line_error(validate(f"--search_dir={search}"), "holds SpineNet-49 (or Mobile SpineNet-49), not nasfpn")
  search = make_search(tmp_path / "spinenet")
  assert_one_line_error(validate(f"--search_dir={search}", "--search_space=joint"),
                        "--search_space=joint here, spinenet in the search")


def test_the_command_reads_the_search_plans_every_row_and_seed_and_resumes(tmp_path):
  # Every run fails at once (an injected NaN reward): the command end to end
  # without training.
  search = make_search(tmp_path / "search", *TINY_SEARCH)
  flags = (f"--search_dir={search}", "--top_k=2", "--seeds=2", *TINY_VALIDATION,
           f"--cache_dir={tmp_path / 'cache'}")
  env = dict(os.environ, SPINESEARCH_FAULTS="nan@*")
  done = validate(*flags, env=env)
  assert done.returncode == 0, done.stderr
  assert done.stderr.count("scratch/") == 4 * 2  # a progress line per run
  table = done.stdout.splitlines()
  assert "AP from scratch (2 seeds)" in table[0]
  rows = [line.split()[0] for line in table if not line.startswith(" ")][1:-1]
  assert rows == ["spinenet49", "spinenet49-scale-decreased", "trial", "trial"]
  assert sum("scratch failed: reward is nan" in line for line in table) == 8
  report = json.loads(open(os.path.join(search, "validate_search",
                                        "validate_search.json")).read())
  assert report["recipe"]["proxy"]["preset"] == "tiny"  # the search's proxy
  assert report["recipe"]["proxy"]["overrides"]["train_steps"] == 2
  assert report["recipe"]["proxy"]["overrides"]["batch_size"] == 2
  assert report["dataset"]["num_train"] == 16  # the search's synthetic set
  assert [r["trial_id"] is None for r in report["rows"]] == [True, True, False, False]
  # The same command again runs the failed runs again (failing again here),
  # with the same trial requests, and prints the same table.
  again = validate(*flags, env=env)
  assert again.returncode == 0, again.stderr
  assert "running again 8 run(s) that failed before" in again.stderr
  assert again.stderr.count("scratch/") == 4 * 2
  assert again.stdout == done.stdout
  # --report_only runs nothing and prints the table of what is done.
  only = validate(*flags, "--report_only", env=env)
  assert only.returncode == 0, only.stderr
  assert "scratch/" not in only.stderr and only.stdout == done.stdout
  # The user's own TFRecords instead of the search's data: not mixed with the
  # runs on the search's data, and trained on.
  data = report["dataset"]
  own = ("--dataset=tfrecord", f"--train_pattern={data['train_pattern']}",
         f"--val_pattern={data['val_pattern']}", f"--val_annotations={data['val_annotations']}")
  assert_one_line_error(validate(*flags, *own, env=env), "use another --output_dir")
  mine = validate(*flags, *own, f"--output_dir={tmp_path / 'mine'}", env=env)
  assert mine.returncode == 0, mine.stderr
  report = json.loads((tmp_path / "mine" / "validate_search.json").read_text())
  assert report["dataset"]["train_pattern"] == data["train_pattern"]
  assert report["dataset"]["num_train"] is None  # read as user data


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_validate_a_tiny_search_trains_every_row(tmp_path):
  search = make_search(tmp_path / "search", *TINY_SEARCH)
  flags = (f"--search_dir={search}", "--seeds=1", *TINY_VALIDATION,
           f"--cache_dir={tmp_path / 'cache'}")
  done = validate(*flags)
  assert done.returncode == 0, done.stderr
  report = json.loads(open(os.path.join(search, "validate_search",
                                        "validate_search.json")).read())
  assert len(report["rows"]) == 3  # --top_k is 1 by default
  for row in report["rows"]:
    assert len(row["scratch"]["aps"]) == 1 and row["scratch"]["errors"] == []
    assert 0.0 <= row["scratch"]["mean"] <= 1.0
    assert row["multiply_adds_g"] > 0 and row["params_m"] > 0
  again = validate(*flags)
  assert again.returncode == 0 and "scratch/" not in again.stderr
  assert again.stdout == done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_validate_a_tiny_oneshot_search_from_scratch_and_fine_tuned(tmp_path):
  cache = str(tmp_path / "cache")
  supernet = str(tmp_path / "supernet")
  trained = subprocess.run(
      [sys.executable, "-m", "spinesearch.oneshot", "train", f"--supernet_dir={supernet}",
       "--train_steps=4", "--reference_every_steps=0", "--proxy_preset=tiny",
       "--synthetic_num_train=48", "--synthetic_num_val=16", "--pool_size=2",
       "--path_steps=2", "--reference_eval_images=16", "--progress_every_s=0",
       f"--cache_dir={cache}"], capture_output=True, text=True, cwd=REPO, timeout=900)
  assert trained.returncode == 0, trained.stderr[-3000:]
  search = str(tmp_path / "search")
  searched = subprocess.run(
      [sys.executable, "-m", "spinesearch.controller", f"--search_dir={search}",
       "--reward=oneshot", f"--supernet={supernet}", "--oneshot_bn_batches=1",
       "--oneshot_eval_images=4", "--algorithm=random", "--num_trials=2", "--runner=inline",
       f"--cache_dir={cache}"], capture_output=True, text=True, cwd=REPO, timeout=900)
  assert searched.returncode == 0, searched.stderr[-3000:]
  done = validate(f"--search_dir={search}", "--seeds=1", "--finetune", *TINY_VALIDATION,
                  f"--cache_dir={cache}")
  assert done.returncode == 0, done.stderr
  assert "AP fine-tuned (1 seeds)" in done.stdout.splitlines()[0]
  report = json.loads(open(os.path.join(search, "validate_search",
                                        "validate_search.json")).read())
  assert report["ways"] == ["scratch", "finetune"] and len(report["rows"]) == 3
  for row in report["rows"]:
    for way in ("scratch", "finetune"):
      assert len(row[way]["aps"]) == 1 and row[way]["errors"] == [], row
