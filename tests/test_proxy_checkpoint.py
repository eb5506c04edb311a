"""Resumable stand-alone training: a stopped run saves, resumes where it
stopped, and refuses a checkpoint of other settings."""
import dataclasses
import os
import random
import signal

import numpy as np
import pytest

from spinesearch.data.dataset import ensure_synthetic
from spinesearch.errors import ConfigError
from spinesearch.proxy import ProxyConfig
from spinesearch.proxy.checkpoint import TrainingCheckpoint, TrainingStopped, default_path
from spinesearch.space.spinenet import ScalePermutedSpace


@pytest.fixture(scope="module")
def dataset_64(tmp_path_factory):
  return ensure_synthetic(str(tmp_path_factory.mktemp("cache")), num_train=16, num_val=8,
                          image_size=64, seed=3)


def _arch():
  space = ScalePermutedSpace(output_levels=(3, 4, 5, 6), intermediate_allocation={2: 1, 3: 2, 4: 2})
  return space.decode(space.sample(random.Random(0)))


def _task(dataset, path, fingerprint="settings-a"):
  from spinesearch.proxy import ProxyTask
  config = ProxyConfig.from_preset("tiny", image_size=64, train_steps=5, measure_cost=False)
  return ProxyTask(config, dataset, TrainingCheckpoint(path, fingerprint, every_s=1e9))


def test_a_stopped_run_resumes_from_its_checkpoint(dataset_64, tmp_path):
  path = str(tmp_path / "run.npz")
  steps = []

  def stop_at_3(step, total, loss):
    steps.append(step)
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(TrainingStopped, match="stopped at step 3 of 5"):
    _task(dataset_64, path).fit(_arch(), stop_at_3)
  assert os.path.exists(path)
  # SIGTERM's handler is restored once the loop is left.
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

  steps.clear()
  model, result = _task(dataset_64, path).fit(_arch(), lambda s, n, l: steps.append(s))
  assert result.ok, result.error
  assert steps == [4, 5]
  assert result.train_steps == 5 and np.isfinite(result.final_loss) and result.ap is not None

  # After the last step the checkpoint holds the finished run: resuming
  # trains nothing and gives back the same weights.
  steps.clear()
  again, rerun = _task(dataset_64, path).fit(_arch(), lambda s, n, l: steps.append(s))
  assert steps == [] and rerun.final_loss == result.final_loss
  for a, b in zip(model.weights, again.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_checkpoint_of_other_settings_is_refused(dataset_64, tmp_path):
  path = str(tmp_path / "run.npz")
  _task(dataset_64, path).fit(_arch())
  with pytest.raises(ConfigError, match="written by a run with other settings"):
    _task(dataset_64, path, fingerprint="settings-b").fit(_arch())
  with open(path, "wb") as f:
    f.write(b"not an archive")
  with pytest.raises(ConfigError, match="not a weights archive"):
    _task(dataset_64, path).fit(_arch())


def test_checkpoint_paths_change_with_the_settings(tmp_path):
  a = default_path(str(tmp_path), "entry", "settings-a")
  assert a == default_path(str(tmp_path), "entry", "settings-a")
  assert a != default_path(str(tmp_path), "entry", "settings-b")
  assert os.path.basename(a).startswith("entry-") and a.endswith(".npz")


def _request(dataset, folder):
  return {"trial_id": 3, "seed": 0, "architecture": _arch().to_dict(),
          "checkpoint": {"folder": folder, "name": "scratch_a_seed0", "every_s": 1e9},
          "reward": {"type": "proxy", "cost": None,
                     "proxy": {"preset": "tiny", "overrides": {
                         "image_size": 64, "train_steps": 5, "measure_cost": False}},
                     "dataset": dataclasses.asdict(dataset)}}


@pytest.mark.slow  # the resume itself is in make test; this is its request form
def test_a_trial_request_that_asks_for_a_checkpoint_resumes_it(dataset_64, tmp_path, monkeypatch,
                                                               capfd):
  """A validation run killed midway: the same request (under another trial
  id) continues from the saved step, logs its steps, and removes the file."""
  from spinesearch import evaluate
  from spinesearch.proxy import ProxyTask
  from spinesearch.proxy import checkpoint as checkpoint_lib
  request = _request(dataset_64, str(tmp_path / "checkpoints"))
  saved = checkpoint_lib.of_request(request)
  assert saved.path == checkpoint_lib.of_request(dict(request, trial_id=9)).path
  assert saved.path != checkpoint_lib.of_request(dict(request, seed=1)).path
  assert checkpoint_lib.of_request({k: v for k, v in request.items() if k != "checkpoint"}) \
      is None

  def stop_at_2(step, total, loss):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
  config = ProxyConfig.from_preset("tiny", image_size=64, train_steps=5, measure_cost=False)
  with pytest.raises(TrainingStopped):
    ProxyTask(config, dataset_64, saved).fit(_arch(), stop_at_2)

  restored = []
  restore = TrainingCheckpoint.restore
  monkeypatch.setattr(TrainingCheckpoint, "restore",
                      lambda self, *a: restored.append(restore(self, *a)) or restored[-1])
  result = evaluate.evaluate_trial(dict(request, trial_id=4))
  assert result["status"] == "done", result
  assert restored == [2] and result["metrics"]["train_steps"] == 5
  assert "training: step 5/5 loss" in capfd.readouterr().err
  assert not os.path.exists(saved.path)
