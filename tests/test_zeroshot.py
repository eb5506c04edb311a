"""Zero-shot scoring (spinesearch.zeroshot): the Zen-score is deterministic for
a seed, ranks a wider and deeper network above a degenerate one, checks its
settings, and serves as the zero_shot reward of a search."""
import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys

import pytest

from spinesearch import evaluate, zeroshot
from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, BlockSpec, Scaling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Scaling(filter_size_scale=0.125, resample_alpha=0.25, endpoints_num_filters=16,
               head_num_convs=1, head_num_filters=16, fpn_num_filters=16, fpn_num_repeats=1,
               resnet_model_id=10)
FAST = dict(image_size=128, batch_size=2, repeats=1, part="backbone")

# Five output blocks that all read the stem: no intermediate block at all.
DEGENERATE = Architecture(space="spinenet", scaling=TINY, blocks=tuple(
    BlockSpec(level, "residual", (0, 1), True) for level in (3, 4, 5, 6, 7)))


def test_the_same_seed_gives_the_same_score():
  settings = zeroshot.ZenSettings(**dict(FAST, repeats=2), seed=3)
  first = zeroshot.measure_zen_score(DEGENERATE, settings)
  again = zeroshot.measure_zen_score(DEGENERATE, settings)  # a new model, new Keras weights
  assert again == dataclasses.replace(first, build_seconds=again.build_seconds,
                                      score_seconds=again.score_seconds)
  assert first.repeat_scores[0] != first.repeat_scores[1]  # each repeat draws anew
  assert first.score == pytest.approx(first.log_difference + first.log_bn_scale)
  assert first.num_bn_layers > 10 and math.isfinite(first.score)


def test_a_wider_deeper_network_scores_above_a_degenerate_one():
  wide = known.spinenet49(TINY.replace(filter_size_scale=0.25))
  wide_score = zeroshot.zen_score(wide, **FAST)
  degenerate_score = zeroshot.zen_score(DEGENERATE, **FAST)
  # Each BN layer adds about log sqrt(its fan-in): the gap is large, not noise.
  assert wide_score > degenerate_score + 50, (wide_score, degenerate_score)


def test_the_zero_shot_reward_scores_a_detector_and_remembers_architectures():
  # The NAS-FPN space searches merging cells on a fixed backbone: only the
  # detector part (backbone, cells, head) tells its architectures apart.
  request = {"trial_id": 1, "seed": 0, "architecture": known.nasfpn().to_dict(),
             "reward": {"type": "zero_shot", "cost": None,
                        "proxy": {"preset": "tiny", "overrides": {}},
                        "zero_shot": {"batch_size": 2, "repeats": 1}}}
  result = evaluate.evaluate_trial(request)
  assert result["status"] == "done", result["error"]
  metrics = result["metrics"]
  assert result["reward"] == metrics["zen_score"]
  assert metrics["zen_score"] == pytest.approx(
      metrics["zen_log_difference"] + metrics["zen_log_bn_scale"])
  assert metrics["params"] > 0 and not metrics["zen_cached"]
  again = evaluate.evaluate_trial(request)
  assert again["reward"] == result["reward"] and again["metrics"]["zen_cached"]


@pytest.mark.slow  # TensorFlow's profiler counts the multiply-adds: 5-15 s more
def test_a_cost_target_trades_the_score_against_multiply_adds():
  from spinesearch import rewards
  cost = {"metric": "multiply_adds", "target": 0.01, "cost_weight": 0.07,
          "hard_constraint": False}
  request = {"trial_id": 1, "seed": 0, "architecture": known.spinenet49().to_dict(),
             "reward": {"type": "zero_shot", "cost": cost,
                        "proxy": {"preset": "tiny", "overrides": {}},
                        "zero_shot": {"batch_size": 2, "repeats": 1, "part": "backbone"}}}
  result = evaluate.evaluate_trial(request)
  assert result["status"] == "done", result["error"]
  metrics = result["metrics"]
  assert metrics["cost"] == metrics["multiply_adds"] / 1e9 > 0
  assert result["reward"] == pytest.approx(rewards.reward_with_cost_target(
      metrics["zen_score"], metrics["cost"], 0.01))


@pytest.mark.parametrize("settings, message", [
    ({"part": "head"}, "zero-shot part"),
    ({"batch_size": 1}, "at least 2 images"),
    ({"repeats": 0}, "zero-shot repeats"),
    ({"alpha": -0.01}, "zero-shot alpha"),
    ({"resolution": 128}, "unknown key(s) resolution"),
])
def test_bad_settings_are_config_errors(settings, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    zeroshot.zen_score(known.spinenet49(TINY), **settings)


def test_an_image_size_the_architecture_cannot_take_is_refused_before_building():
  with pytest.raises(ArchitectureError, match="not a multiple of 128"):
    zeroshot.zen_score(known.spinenet49(TINY), image_size=100)


def run_controller(*flags, timeout=600):
  return subprocess.run([sys.executable, "-m", "spinesearch.controller", *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("flags, message", [
    (("--reward=target_similarity", "--zero_shot_repeats=3"),
     "--zero_shot_repeats applies to --reward=zero_shot or --zero_shot_prefilter"),
    (("--reward=zero_shot", "--zero_shot_prefilter=3"), "with --reward=zero_shot"),
    (("--reward=zero_shot", "--zero_shot_image_size=100"), "--zero_shot_image_size: image size"),
    (("--reward=zero_shot", "--zero_shot_batch_size=1"), "zero_shot_batch_size"),
    (("--reward=zero_shot", "--zero_shot_part=head"), "zero_shot_part"),
])
def test_bad_zero_shot_flags_are_one_line_and_exit_status_2(tmp_path, flags, message):
  done = run_controller(f"--search_dir={tmp_path / 's'}", *flags)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
  assert message in done.stderr


@pytest.mark.slow  # TensorFlow start-up and three models built in the driver: 20-60 s
def test_a_zero_shot_search_scores_every_trial_and_writes_its_report(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run_controller(f"--search_dir={search_dir}", "--reward=zero_shot", "--runner=inline",
                        "--algorithm=random", "--num_trials=3", "--proxy_preset=tiny",
                        "--zero_shot_part=backbone", "--zero_shot_batch_size=2",
                        "--zero_shot_repeats=1")
  assert done.returncode == 0, done.stderr
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    rows = conn.execute("SELECT status, reward, metrics FROM trials").fetchall()
  assert [r[0] for r in rows] == ["done"] * 3
  assert all(r[1] == json.loads(r[2])["zen_score"] for r in rows)
  assert os.path.exists(os.path.join(search_dir, "report", "report.md"))
