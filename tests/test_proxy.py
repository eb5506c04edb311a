"""The proxy task: one scaled-down trial end to end, failure on NaN, bad input."""
import json
import re
import math
import os
import random
import subprocess
import sys

import pytest

from spinesearch.data.dataset import ensure_synthetic
from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.proxy import ProxyConfig, TrialResult
from spinesearch.space import known
from spinesearch.space.spinenet import ScalePermutedSpace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset_64(tmp_path_factory):
  return ensure_synthetic(str(tmp_path_factory.mktemp("cache")), num_train=16, num_val=8,
                          image_size=64, seed=3)


def arch_p3_p6(seed=0):
  """An architecture of a space whose pyramid stops at P6, so 64 px is valid."""
  space = ScalePermutedSpace(output_levels=(3, 4, 5, 6), intermediate_allocation={2: 1, 3: 2, 4: 2})
  return space.decode(space.sample(random.Random(seed)))


def tiny(**changes):
  return ProxyConfig.from_preset("tiny", image_size=64, **changes)


def test_scaled_down_trial_returns_complete_result(dataset_64):
  from spinesearch.proxy import ProxyTask
  steps = []
  result = ProxyTask(tiny(), dataset_64).run(arch_p3_p6(), progress=lambda s, n, l: steps.append(s))
  assert result.ok, result.error
  assert steps == [1, 2, 3, 4]
  for field in ("ap", "ap50", "ap75", "aps", "apm", "apl"):
    value = getattr(result, field)
    assert value is not None and (value == -1.0 or 0.0 <= value <= 1.0), (field, value)
  assert math.isfinite(result.final_loss) and result.final_loss > 0
  assert result.params > 10_000
  assert result.multiply_adds > result.params  # every weight is used at least once per pixel
  assert result.latency_ms > 0 and result.train_seconds > 0 and result.images_per_second > 0
  assert result.train_steps == 4
  round_trip = TrialResult.from_dict(json.loads(json.dumps(result.to_dict())))
  assert round_trip == result


def test_diverging_training_is_a_failed_trial_not_a_crash(dataset_64):
  from spinesearch.proxy import ProxyTask
  config = tiny(learning_rate=1e30, warmup_steps=0, clip_norm=1e30, train_steps=6,
                measure_cost=False)
  result = ProxyTask(config, dataset_64).run(arch_p3_p6())
  assert result.status == "failed"
  assert "loss became" in result.error
  assert result.ap is None


def test_image_size_must_divide_by_coarsest_stride(dataset_64):
  from spinesearch.proxy import ProxyTask
  with pytest.raises(ArchitectureError, match="not a multiple of 128"):
    ProxyTask(tiny(), dataset_64).run(known.spinenet49())


def test_presets_and_overrides():
  paper = ProxyConfig.from_preset("paper")
  assert (paper.image_size, paper.filter_size_scale, paper.resample_alpha) == (512, 0.25, 0.25)
  assert (paper.endpoints_num_filters, paper.head_num_filters, paper.train_epochs) == (64, 64, 5)
  assert paper.steps_for(7392) == math.ceil(5 * 7392 / paper.batch_size)
  assert ProxyConfig.from_preset("quickstart", train_steps=7).train_steps == 7
  with pytest.raises(ConfigError, match="unknown proxy preset"):
    ProxyConfig.from_preset("fast")
  with pytest.raises(ConfigError, match="unknown proxy setting"):
    ProxyConfig.from_preset("quickstart", trian_steps=3)
  with pytest.raises(ConfigError, match="batch_size must be positive"):
    ProxyConfig.from_preset("quickstart", batch_size=0)


def test_cli_refuses_bad_architecture_file_with_one_line(tmp_path):
  bad = tmp_path / "arch.json"
  bad.write_text('{"version": 1, "space": "spinenet", "blocks": []}')
  proc = subprocess.run([sys.executable, "-m", "spinesearch.proxy", f"--architecture={bad}"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "needs backbone blocks" in lines[-1]
  assert "Traceback" not in proc.stderr


def _run_proxy_cli(args, timeout=600):
  return subprocess.run([sys.executable, "-m", "spinesearch.proxy", *args],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _tfrecord_flags(data):
  return ["--dataset=tfrecord", f"--train_pattern={data.train_pattern}",
          f"--val_pattern={data.val_pattern}", f"--val_annotations={data.val_annotations}"]


TINY_TRIAL = ["--preset=tiny", "--set=image_size=64", "--set=train_steps=1", "--json"]


def test_cli_takes_a_zoo_entry_file_and_keeps_stderr_quiet(dataset_64, tmp_path):
  """No library INFO / WARNING lines (absl, TensorFlow's C++ logging,
  grappler's Abseil logging, Python warnings) on user TFRecords."""
  from model_zoo import ZooEntry
  entry_file = tmp_path / "tiny-p6.json"
  ZooEntry(name="tiny-p6", architecture=arch_p3_p6(), input_size=64,
           num_classes=dataset_64.num_classes).save(str(entry_file))
  proc = _run_proxy_cli([f"--architecture={entry_file}", *TINY_TRIAL, *_tfrecord_flags(dataset_64)])
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["status"] == "done"
  assert proc.stderr == ""


@pytest.mark.slow  # a second CLI trial; the quiet one runs in make test
def test_cli_verbosity_brings_library_log_lines_back(dataset_64, tmp_path):
  arch_file = tmp_path / "arch.json"
  arch_p3_p6().save(str(arch_file))
  proc = _run_proxy_cli([f"--architecture={arch_file}", *TINY_TRIAL, *_tfrecord_flags(dataset_64),
                         "--verbosity=0"])
  assert proc.returncode == 0, proc.stderr
  # Model Garden's COCO evaluator (absl, Python) and TensorFlow's C++ INFO
  # lines ("2026-12-02 03:29:53.072042: I external/...").
  assert "coco_evaluator.py" in proc.stderr and "Using annotation file" in proc.stderr
  assert re.search(r"^\S+ \S+: I \S+\.cc:\d+\]", proc.stderr, re.M)


def test_cli_refuses_an_unknown_zoo_name_with_close_matches():
  proc = _run_proxy_cli(["--architecture=mobile-spinenet49s"], timeout=120)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().splitlines() == [
      "error: 'mobile-spinenet49s' is neither a file nor a zoo model name; did you mean "
      "mobile-spinenet-49s, mobile-spinenet-49xs, mobile-spinenet-49, spinenet-49s? "
      "(python -m model_zoo list)"]
