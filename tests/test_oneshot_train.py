"""Supernet training and the one-shot reward, at tiny sizes: a supernet trains,
survives kill -9 and SIGTERM without losing its last checkpoint, refuses changed
settings; a one-shot trial returns a complete result; batch-norm recalibration
changes only the moving statistics; a supernet of another space or scaling is
refused with one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spinesearch.oneshot.config import META_FILE, read_meta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ("--proxy_preset=tiny", "--synthetic_num_train=48", "--synthetic_num_val=16",
              "--pool_size=2", "--path_steps=2", "--reference_eval_images=16",
              "--progress_every_s=0")


def oneshot(*args, cache, timeout=600, wait=True):
  command = [sys.executable, "-m", "spinesearch.oneshot", *args, f"--cache_dir={cache}"]
  if not wait:
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def wait_for_checkpoint(folder, process, min_step, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, process.communicate()[1][-2000:]
    meta = read_meta(folder) if os.path.exists(os.path.join(folder, META_FILE)) else None
    if meta and meta.get("weights") and meta["progress"]["step"] >= min_step:
      return meta["progress"]["step"]
    time.sleep(0.2)
  raise AssertionError("no checkpoint in time")


TRAIN_STEPS = 6


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, cache):
  """The tiny supernet the other tests score on, trained the hard way: killed
  with -9 after its first checkpoints, then finished by the same command
  (one training run serves both, to keep `make test` short)."""
  folder = str(tmp_path_factory.mktemp("supernet") / "tiny")
  flags = ("train", f"--supernet_dir={folder}", f"--train_steps={TRAIN_STEPS}",
           "--checkpoint_every_s=1", "--reference_every_steps=0", *TINY_FLAGS)
  process = oneshot(*flags, cache=cache, wait=False)
  step = wait_for_checkpoint(folder, process, min_step=2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  checkpointed = read_meta(folder)["progress"]["step"]
  resumed = oneshot(*flags, cache=cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return {"folder": folder, "flags": flags, "seen_before_kill": step,
          "checkpointed": checkpointed, "resumed": resumed}


@pytest.fixture(scope="module")
def tiny_supernet(killed_and_resumed):
  return killed_and_resumed["folder"]


def test_a_trained_supernet_describes_itself(tiny_supernet):
  meta = read_meta(tiny_supernet)
  assert meta["progress"]["step"] == TRAIN_STEPS
  assert meta["progress"]["images_seen"] == TRAIN_STEPS * 4
  assert meta["progress"]["paths_started"] >= 3
  assert meta["space"]["name"] == "spinenet" and meta["num_classes"] == 11
  assert meta["weights"]["keys"] > 300
  # The reference path (SpineNet-49) is scored at the end of every finished run.
  assert [h["step"] for h in meta["reference_ap"]] == [TRAIN_STEPS]
  assert 0.0 <= meta["reference_ap"][0]["ap"] <= 1.0
  for name in ("weights.npz", "checkpoint.npz", "tensorboard"):
    assert os.path.exists(os.path.join(tiny_supernet, name))


def test_kill_9_loses_no_checkpointed_step_and_the_same_command_resumes(killed_and_resumed,
                                                                         cache):
  run = killed_and_resumed
  # Every step checkpointed before the kill survives it, and the resumed run
  # starts from the last one (and then ends where an unbroken run would).
  assert run["checkpointed"] >= run["seen_before_kill"] >= 2
  assert f"step {run['checkpointed']}/{TRAIN_STEPS}" in run["resumed"].stdout.splitlines()[0]
  flags = run["flags"]
  changed = oneshot(*flags[:2], f"--train_steps={TRAIN_STEPS + 1}", *flags[3:], cache=cache)
  assert changed.returncode == 2
  assert changed.stderr.count("\n") == 1
  assert f"train_steps: {TRAIN_STEPS} -> {TRAIN_STEPS + 1}" in changed.stderr


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops(tmp_path, cache):
  folder = str(tmp_path / "sn")
  process = oneshot("train", f"--supernet_dir={folder}", "--train_steps=1000",
                    "--checkpoint_every_s=1", "--reference_every_steps=0", *TINY_FLAGS,
                    cache=cache, wait=False)
  wait_for_checkpoint(folder, process, min_step=2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-2000:]
  stopped_at = read_meta(folder)["progress"]["step"]
  assert f"stopped at step {stopped_at}/1000" in stderr


def trial_request(supernet, space_config, architecture, cost=None):
  from spinesearch.data.dataset import DatasetPaths
  meta = read_meta(supernet)
  from spinesearch.data import dataset as dataset_lib
  paths = dataset_lib.from_spec(meta["dataset"], os.environ["TEST_CACHE"])
  import dataclasses
  return {"trial_id": 1, "seed": 0, "architecture": architecture.to_dict(), "decisions": [],
          "space": space_config,
          "reward": {"type": "oneshot", "cost": cost,
                     "oneshot": {"supernet": supernet, "bn_batches": 2, "finetune_steps": 0,
                                 "eval_images": 16},
                     "dataset": json.loads(json.dumps(dataclasses.asdict(paths)))}}


def test_a_oneshot_trial_returns_a_complete_result(tiny_supernet, cache, monkeypatch):
  from spinesearch import evaluate
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  monkeypatch.setenv("TEST_CACHE", cache)
  cost = {"metric": "multiply_adds", "target": 0.01, "cost_weight": 0.07,
          "hard_constraint": False}
  request = trial_request(tiny_supernet, build_space("spinenet").config(), known.spinenet49(),
                          cost)
  result = evaluate.evaluate_trial(request)
  assert result["status"] == "done", result["error"]
  metrics = result["metrics"]
  for name in ("ap", "ap50", "ap75", "params", "multiply_adds", "total_seconds", "cost",
               "accuracy", "inherited_fraction", "supernet_sha256"):
    assert name in metrics, name
  # Stem, head and the parts of SpineNet-49 the sampled paths had come from the supernet.
  assert 0.3 < metrics["inherited_fraction"] <= 1.0
  assert 0.0 <= metrics["ap"] <= 1.0 and result["reward"] >= 0.0
  assert metrics["supernet_sha256"] == read_meta(tiny_supernet)["weights"]["sha256"]
  # The same trial again scores the same.
  assert evaluate.evaluate_trial(request)["reward"] == result["reward"]


@pytest.mark.slow  # a second fine-tuning; kill -9 of a training is in make test
def test_a_fine_tuning_killed_midway_resumes_from_its_checkpoint(tiny_supernet, cache, tmp_path,
                                                                 monkeypatch):
  """A validation's fine-tuning run asks for a checkpoint: killed after two
  of four steps, the same request goes on from step 2."""
  from spinesearch import evaluate
  from spinesearch.proxy.checkpoint import TrainingCheckpoint
  from spinesearch.proxy.task import ProxyTask
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  monkeypatch.setenv("TEST_CACHE", cache)
  request = trial_request(tiny_supernet, build_space("spinenet").config(), known.spinenet49())
  request["reward"]["oneshot"]["finetune_steps"] = 4
  request["checkpoint"] = {"folder": str(tmp_path / "ck"), "name": "finetune", "every_s": 0}
  make_step = ProxyTask.make_train_step

  def dies_at_step_3(model, mg_task, optimizer):
    step, calls = make_step(model, mg_task, optimizer), []

    def counted(images, labels):
      calls.append(1)
      if len(calls) == 3:
        raise RuntimeError("killed")
      return step(images, labels)
    return counted
  monkeypatch.setattr(ProxyTask, "make_train_step", staticmethod(dies_at_step_3))
  with pytest.raises(RuntimeError, match="killed"):
    evaluate.evaluate_trial(request)
  assert len(os.listdir(tmp_path / "ck")) == 1

  monkeypatch.setattr(ProxyTask, "make_train_step", staticmethod(make_step))
  restored = []
  restore = TrainingCheckpoint.restore
  monkeypatch.setattr(TrainingCheckpoint, "restore",
                      lambda self, *a: restored.append(restore(self, *a)) or restored[-1])
  result = evaluate.evaluate_trial(dict(request, trial_id=2))
  assert result["status"] == "done", result["error"]
  assert restored == [2] and result["metrics"]["train_steps"] == 4
  assert os.listdir(tmp_path / "ck") == []


@pytest.mark.slow  # a supernet of its own (2-3 min); its keys are checked in make test
def test_an_mbconv_supernet_trains_and_scores_mobile_spinenet_49(tmp_path, cache, monkeypatch):
  """The mobile preset's supernet (Model Garden's SpineNetMobile, marked by
  part): it trains, its reference path is Mobile SpineNet-49, and a trial of
  that architecture inherits most of its weights from it."""
  from spinesearch import evaluate
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  folder = str(tmp_path / "mobile")
  run = oneshot("train", f"--supernet_dir={folder}", "--space_preset=mobile", "--train_steps=2",
                "--reference_every_steps=0", *TINY_FLAGS, cache=cache)
  assert run.returncode == 0, run.stderr[-3000:]
  meta = read_meta(folder)
  assert meta["space"]["block_fns"] == ["mbconv"]
  assert meta["reference"]["name"] == known.mobile_spinenet49().name
  assert meta["weights"]["keys"] > 300
  monkeypatch.setenv("TEST_CACHE", cache)
  request = trial_request(folder, build_space("spinenet", "mobile").config(),
                          known.mobile_spinenet49())
  result = evaluate.evaluate_trial(request)
  assert result["status"] == "done", result["error"]
  assert 0.3 < result["metrics"]["inherited_fraction"] <= 1.0
  assert 0.0 <= result["metrics"]["ap"] <= 1.0


@pytest.mark.slow  # a supernet of its own (2-3 min); fusion weights train in make test
def test_a_fusion_supernet_trains_the_fusion_weights_a_trial_inherits(tmp_path, cache,
                                                                     monkeypatch):
  """--search_fusion: the supernet's paths sum or weigh their inputs; the
  fusion weights of the weighted paths are trained and stored by key, and a
  weighted SpineNet-49 trial inherits them."""
  from spinesearch import evaluate
  from spinesearch.oneshot import bank
  from spinesearch.space import known
  from spinesearch.space.registry import build_space
  folder = str(tmp_path / "fusion")
  run = oneshot("train", f"--supernet_dir={folder}", "--search_fusion", "--train_steps=4",
                "--seed=3",
                "--reference_every_steps=0", *TINY_FLAGS, cache=cache)
  assert run.returncode == 0, run.stderr[-3000:]
  meta = read_meta(folder)
  assert meta["config"]["search_fusion"] is True and meta["space"]["fusion"]
  stored = bank.read_arrays(os.path.join(folder, meta["weights"]["file"]))
  fusion = {k: v for k, v in stored.items() if k.startswith("fusion/")}
  assert fusion and all(v.shape == () for v in fusion.values())
  assert any(float(v) != 1.0 for v in fusion.values())  # trained away from their start
  monkeypatch.setenv("TEST_CACHE", cache)
  weighted = known.spinenet49().replace(fusion="weighted")
  request = trial_request(folder, build_space("spinenet", search_fusion=True).config(), weighted)
  result = evaluate.evaluate_trial(request)
  assert result["status"] == "done", result["error"]
  assert 0.5 < result["metrics"]["inherited_fraction"] <= 1.0


def test_a_supernet_of_another_space_is_refused_in_one_line(tiny_supernet, cache, tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "spinesearch.controller", "--search_space=nasfpn",
       "--reward=oneshot", f"--supernet={tiny_supernet}", f"--search_dir={tmp_path / 's'}",
       "--num_trials=1", f"--cache_dir={cache}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2
  assert run.stderr.count("\n") == 1 and "was trained for the space" in run.stderr


def test_a_supernet_of_another_scaling_is_refused_in_one_line(tiny_supernet, cache, tmp_path):
  other = str(tmp_path / "other")
  shutil.copytree(tiny_supernet, other)
  meta = read_meta(other)
  meta["proxy"]["filter_size_scale"] = 0.25
  with open(os.path.join(other, META_FILE), "w") as f:
    json.dump(meta, f)
  arch = tmp_path / "a.json"
  from spinesearch.space import known
  known.spinenet49().save(str(arch))
  run = oneshot("score", f"--supernet={other}", f"--architecture={arch}", "--eval_images=8",
                "--bn_batches=1", cache=cache)
  assert run.returncode == 2
  assert run.stderr.count("\n") == 1 and "shape" in run.stderr and "in this model" in run.stderr


def test_proxy_flags_do_not_apply_to_a_oneshot_search(tiny_supernet, cache, tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "spinesearch.controller", "--reward=oneshot",
       f"--supernet={tiny_supernet}", "--proxy_train_steps=5", f"--search_dir={tmp_path}/s",
       "--num_trials=1", f"--cache_dir={cache}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and "the supernet fixes the proxy settings" in run.stderr


def test_batch_norm_recalibration_changes_moving_statistics_only():
  import tensorflow as tf
  from spinesearch.modeling import builder
  from spinesearch.oneshot.evaluation import batch_norm_layers, recalibrate_batch_norm
  from spinesearch.proxy import ProxyConfig
  from spinesearch.space import known
  tiny = ProxyConfig.from_preset("tiny")
  model = builder.build_retinanet(tiny.scaled(known.spinenet49()), num_classes=3,
                                  image_size=tiny.image_size)
  layers = batch_norm_layers(model)
  moving = {id(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)}
  before = {id(v): v.numpy().copy() for v in model.weights}
  images = [tf.random.stateless_uniform([2, 128, 128, 3], seed=[i, 0], maxval=255.0)
            for i in range(3)]
  assert recalibrate_batch_norm(model, images) == 3
  changed = [id(v) for v in model.weights if not np.array_equal(v.numpy(), before[id(v)])]
  assert changed and set(changed) <= moving
  assert len(changed) > 0.9 * len(moving)
  assert all(layer.momentum == tiny.norm_momentum or layer.momentum == 0.99 for layer in layers)
  # Pooled statistics: the mean of the batch means.
  stem_bn = layers[0]
  assert np.all(stem_bn.moving_variance.numpy() > 0)
