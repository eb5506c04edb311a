"""proxy_check: the rank statistics, and the command end to end on three tiny
architectures (a table, its JSON, the plot, and a rerun that evaluates
nothing again)."""
import json
import os
import subprocess
import sys

import pytest

from spinesearch.proxy.config import ProxyConfig
from spinesearch.proxy_check import (coefficient_of_variation, format_table, kendall_tau, plan_jobs,
                                     plot, summarize)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kendall_tau_of_equal_reversed_and_tied_rankings():
  assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
  assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
  # Pairs: (1,2) concordant, (1,3) concordant, (2,3) tied in y -> tau-b
  # = (2 - 0) / sqrt(3 * 2).
  assert kendall_tau([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / 6 ** 0.5)
  assert kendall_tau([1, 1, 1], [1, 2, 3]) is None
  with pytest.raises(ValueError):
    kendall_tau([1, 2], [1])


def test_coefficient_of_variation():
  assert coefficient_of_variation([2.0, 2.0, 2.0]) == 0.0
  # mean 2, sample std 1.
  assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.5)
  assert coefficient_of_variation([1.0]) is None
  assert coefficient_of_variation([0.0, 0.0]) is None


def run_check(*flags):
  return subprocess.run([sys.executable, "-m", "spinesearch.proxy_check", *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=900)


def test_the_plan_has_both_schedules_the_zero_shot_score_and_reseeded_repeats():
  from spinesearch.space.registry import build_space
  space = build_space("spinenet")
  proxy = {"preset": "tiny", "overrides": {"seed": 7}}
  jobs = plan_jobs(space, proxy, {"train_pattern": "x"}, seed=7, num_architectures=3,
                   long_preset=None, long_train_factor=2.5, repeats=3, zero_shot={"repeats": 1})
  assert [j.key for j in jobs] == [
      "proxy/0", "long/0", "zero_shot/0", "repeat1/0", "repeat2/0",
      "proxy/1", "long/1", "zero_shot/1", "proxy/2", "long/2", "zero_shot/2"]
  by_key = {j.key: j.request for j in jobs}
  tiny = ProxyConfig.from_preset("tiny")
  long = by_key["long/1"]["reward"]["proxy"]["overrides"]
  assert long["train_steps"] == round(tiny.train_steps * 2.5) and long["seed"] == 7
  assert [by_key[f"repeat{r}/0"]["reward"]["proxy"]["overrides"]["seed"] for r in (1, 2)] == [8, 9]
  assert by_key["zero_shot/1"]["reward"]["zero_shot"] == {"repeats": 1}
  assert by_key["proxy/0"]["architecture"] == by_key["repeat2/0"]["architecture"]
  assert by_key["proxy/0"]["architecture"] != by_key["proxy/1"]["architecture"]
  # The same seed plans the same architectures.
  again = plan_jobs(space, proxy, {"train_pattern": "x"}, seed=7, num_architectures=3,
                    long_preset=None, long_train_factor=2.5, repeats=3, zero_shot={"repeats": 1})
  assert [j.request for j in again] == [j.request for j in jobs]


def test_a_oneshot_plan_scores_on_the_supernet_and_trains_stand_alone_for_long():
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  space = build_space("spinenet")
  proxy = {"preset": "quickstart", "overrides": {"batch_size": 16}}
  reward = {"type": "oneshot", "oneshot": {"supernet": "/sn", "bn_batches": 8},
            "proxy": proxy, "dataset": {"train_pattern": "x"}, "cost": {"target": 1.0}}
  jobs = plan_jobs(space, proxy, reward["dataset"], seed=3, num_architectures=4,
                   long_preset=None, long_train_factor=4, repeats=3, zero_shot=None,
                   reward=reward, long_train_steps=2000, include_reference=True)
  by_key = {j.key: j.request for j in jobs}
  assert by_key["proxy/0"]["architecture"] == known.spinenet49().to_dict()
  assert by_key["proxy/1"]["architecture"] == known.scale_decreased(known.spinenet49()).to_dict()
  assert by_key["proxy/1"]["decisions"] == []  # not a decision sequence of the space
  assert space.decode(by_key["proxy/2"]["decisions"]).to_dict() == \
      by_key["proxy/2"]["architecture"]
  assert by_key["proxy/3"]["reward"] == dict(reward, cost=None)
  long = by_key["long/3"]["reward"]
  assert long["type"] == "proxy" and long["proxy"]["overrides"]["train_steps"] == 2000
  assert long["proxy"]["overrides"]["batch_size"] == 16
  # Repeats of the one-shot score change the trial's seed, not the proxy's.
  assert [by_key[f"repeat{r}/0"]["seed"] for r in (1, 2)] == [4, 5]
  assert by_key["repeat1/0"]["reward"] == by_key["proxy/0"]["reward"]


def test_summary_table_and_plot_from_results(tmp_path):
  from spinesearch.space.registry import build_space
  jobs = plan_jobs(build_space("spinenet"), {"preset": "tiny", "overrides": {}}, {}, seed=0,
                   num_architectures=3, long_preset=None, long_train_factor=2, repeats=2,
                   zero_shot={})

  def done(reward):
    return {"status": "done", "reward": reward, "error": None,
            "metrics": {"multiply_adds": 2e9, "params": 3e6}}

  results = {"proxy/0": done(0.1), "proxy/1": done(0.2), "proxy/2": done(0.3),
             "long/0": done(0.2), "long/1": done(0.4), "long/2": done(0.3),
             "zero_shot/0": done(5.0), "zero_shot/1": done(4.0), "zero_shot/2": done(3.0),
             "repeat1/0": done(0.3)}
  summary = summarize(jobs, results, repeats=2)
  assert summary["kendall_tau_proxy_vs_long"] == pytest.approx(1 / 3)
  assert summary["kendall_tau_zero_shot_vs_long"] == pytest.approx(-1 / 3)
  assert summary["repeat_aps"] == [0.1, 0.3]
  assert summary["ap_coefficient_of_variation"] == pytest.approx(coefficient_of_variation([0.1, 0.3]))
  table = format_table(summary)
  assert len(table.splitlines()) == 1 + 3 + 3 and "0.3333" not in table and "0.333" in table
  results["long/2"] = {"status": "failed", "reward": None, "error": "NaN loss", "metrics": {}}
  summary = summarize(jobs, results, repeats=2)
  assert summary["rows"][2]["errors"] == ["NaN loss"] and summary["rows"][2]["long_ap"] is None
  assert "failed: NaN loss" in format_table(summary)
  plot(summary, str(tmp_path / "check.png"))
  assert os.path.getsize(tmp_path / "check.png") > 1000


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_proxy_check_on_three_tiny_architectures(tmp_path):
  output_dir = tmp_path / "check"
  flags = ("--reward=proxy", "--proxy_preset=tiny", "--num_architectures=3",
           "--long_train_factor=2", "--repeats=2", "--synthetic_num_train=16",
           "--synthetic_num_val=8", f"--cache_dir={tmp_path / 'cache'}",
           f"--output_dir={output_dir}", "--runner=inline", "--json")
  done = run_check(*flags)
  assert done.returncode == 0, done.stderr
  summary = json.loads(done.stdout)
  assert [row["arch"] for row in summary["rows"]] == [0, 1, 2]
  for row in summary["rows"]:
    assert row["errors"] == []
    assert 0.0 <= row["proxy_ap"] <= 1.0 and 0.0 <= row["long_ap"] <= 1.0
    assert row["multiply_adds_g"] > 0 and row["params_m"] > 0
  for tau in (summary["kendall_tau_proxy_vs_long"], summary["kendall_tau_zero_shot_vs_long"]):
    assert tau is None or -1.0 <= tau <= 1.0
  assert len(summary["repeat_aps"]) == 2
  assert os.path.getsize(output_dir / "proxy_check.png") > 1000
  stored = json.loads((output_dir / "proxy_check.json").read_text())["results"]
  assert {"proxy/0", "long/2", "repeat1/0"} <= set(stored)

  # Run again: everything is already there, so nothing is evaluated and the
  # table is printed.
  again = run_check(*flags[:-1])
  assert again.returncode == 0, again.stderr
  assert "Kendall tau, proxy AP vs long AP" in again.stdout
  assert "[1/" not in again.stderr  # no progress line: nothing ran


def test_a_reward_that_trains_nothing_is_refused(tmp_path):
  done = run_check("--reward=target_similarity", f"--output_dir={tmp_path}")
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1 and "trains nothing" in done.stderr


def test_architectures_near_the_reference_are_distinct_neighbours_of_spinenet49():
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  space = build_space("spinenet")
  base = space.encode(known.spinenet49())
  jobs = plan_jobs(space, {"preset": "tiny", "overrides": {}}, {"train_pattern": "x"}, seed=0,
                   num_architectures=8, long_preset=None, long_train_factor=2, repeats=1,
                   zero_shot=None, include_reference=True, near_reference_mutations=3)
  decisions = [j.request["decisions"] for j in jobs if j.key.startswith("proxy/")]
  assert decisions[0] == base and decisions[1] == []
  sampled = decisions[2:]
  assert len({tuple(d) for d in sampled}) == 6 and base not in sampled
  # 1-3 mutations, each of which may force a few repairs after it.
  assert all(0 < sum(a != b for a, b in zip(base, d)) <= 12 for d in sampled)
