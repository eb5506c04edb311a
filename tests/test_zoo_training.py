"""Found-architecture entries from a search's store, and
`scripts/train_zoo_model.py` writing weights, hash and metrics into an entry."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import model_zoo
from model_zoo import found, training
from model_zoo.entry import ZooError
from spinesearch.data.dataset import DatasetPaths
from spinesearch.proxy import ProxyConfig
from spinesearch.space import known
from spinesearch.space.registry import space_from_config
from spinesearch.store import TrialStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {"reward": "proxy", "proxy_preset": "tiny", "proxy_head_num_filters": 24,
         "proxy_learning_rate": None, "search_space": "spinenet", "algorithm": "ppo",
         "dataset": "synthetic"}
DATASET = DatasetPaths(train_pattern="t", val_pattern="v", val_annotations="a.json",
                       num_classes=4, image_size=128,
                       class_names=("background", "circle", "", "square"))


@pytest.fixture()
def search_dir(tmp_path):
  """A search store with one done and one failed trial."""
  folder = str(tmp_path / "search")
  store = TrialStore(folder)
  try:
    store.create_search({"flags": FLAGS, "space": {"name": "spinenet"}, "seed": 3,
                         "version": "0.1.0"})
    for status in ("done", "failed"):
      trial = store.add_trial(known.spinenet49().to_dict(), [0, 1])
      store.mark_running(trial.id, "test")
      store.finish_trial(trial.id, status, 0.25 if status == "done" else None,
                         {"ap": 0.25} if status == "done" else {},
                         None if status == "done" else "loss became nan")
  finally:
    store.close()
  return folder


def test_an_entry_from_a_search_keeps_the_proxy_scaling_and_the_provenance(search_dir):
  entry = found.entry_from_search(search_dir, 1, "found-one", DATASET)
  proxy = ProxyConfig.from_preset("tiny", head_num_filters=24)
  assert entry.architecture.scaling == proxy.scaling
  assert entry.architecture.fingerprint() == known.spinenet49().fingerprint()
  assert entry.architecture.name == "found-one"
  assert (entry.input_size, entry.head.anchor_size) == (proxy.image_size, proxy.anchor_size)
  assert (entry.num_classes, entry.class_names) == (4, DATASET.class_names)
  assert entry.weights is None
  provenance = entry.provenance
  assert (provenance["kind"], provenance["trial_id"], provenance["search_dir"]) == \
      ("search", 1, search_dir)
  assert provenance["flags"] == FLAGS and provenance["search_metrics"] == {"ap": 0.25}
  full = found.entry_from_search(search_dir, 1, "found-full", DATASET, scaling="architecture")
  assert full.architecture.scaling == known.spinenet49().scaling


def _oneshot_search(folder: str, scored_on: str, supernet: str = "quickstart") -> None:
  store = TrialStore(folder)
  try:
    store.create_search({"flags": dict(FLAGS, reward="oneshot", supernet=supernet,
                                       algorithm="evolution"),
                         "space": space_from_config({"name": "spinenet"}).config(), "seed": 1,
                         "version": "0.1.0"})
    trial = store.add_trial(known.spinenet49().to_dict(), [0, 1])
    store.mark_running(trial.id, "test")
    store.finish_trial(trial.id, "done", 0.1, {"ap": 0.1, "supernet_sha256": scored_on}, None)
  finally:
    store.close()


def test_an_entry_from_a_oneshot_search_takes_the_supernets_scaling_and_names_it(tmp_path):
  from spinesearch.oneshot.supernet import Supernet
  supernet = Supernet.open("quickstart")
  folder = str(tmp_path / "oneshot")
  _oneshot_search(folder, supernet.weights_sha256)
  entry = found.entry_from_search(folder, 1, "found-oneshot", DATASET)
  assert entry.architecture.scaling == supernet.proxy.scaling
  assert (entry.input_size, entry.head.anchor_size) == (128, supernet.proxy.anchor_size)
  recorded = entry.provenance["supernet"]
  assert recorded["location"] == "quickstart" and recorded["same_weights_as_the_trial"]
  assert recorded["weights_sha256"] == supernet.weights_sha256
  assert recorded["config"] == supernet.meta["config"]
  assert "validation" not in entry.provenance
  metadata, _ = found.read_trial(folder, 1)
  assert found.search_dataset(metadata) == {"num_train": 10000, "num_val": 1000,
                                            "image_size": 128, "seed": 0}

  # Once validate_search has run on the search, its table goes with the entry.
  os.makedirs(os.path.join(folder, "validate_search"))
  row = {"architecture": "trial 1", "trial_id": 1, "search_reward": 0.1,
         "multiply_adds_g": 0.17, "params_m": 1.3, "trained_architecture": {},
         "scratch": {"aps": [0.2, 0.3], "mean": 0.25, "std": 0.07, "errors": []}}
  with open(os.path.join(folder, found.VALIDATION_FILE), "w") as f:
    json.dump({"recipe": {"train_steps": 4000}, "dataset": {}, "ways": ["scratch"],
               "rows": [row, dict(row, architecture="spinenet-49", trial_id=None)]}, f)
  validation = found.entry_from_search(folder, 1, "found-oneshot", DATASET).provenance["validation"]
  assert validation["recipe"] == {"train_steps": 4000}
  assert [r["architecture"] for r in validation["rows"]] == ["trial 1", "spinenet-49"]
  assert validation["rows"][0]["scratch"] == {"aps": [0.2, 0.3], "mean": 0.25, "std": 0.07}

  with open(os.path.join(folder, found.VALIDATION_FILE), "w") as f:
    f.write("{not json")
  with pytest.raises(ZooError, match="not a validate_search report"):
    found.entry_from_search(folder, 1, "found-oneshot", DATASET)


def test_a_oneshot_search_on_a_missing_supernet_is_refused(tmp_path):
  folder = str(tmp_path / "oneshot")
  _oneshot_search(folder, "0" * 64, supernet=str(tmp_path / "gone"))
  with pytest.raises(ZooError, match="the search's supernet: supernet .*gone.*: no such folder"):
    found.entry_from_search(folder, 1, "x", DATASET)


def test_only_done_trials_of_searches_become_entries(search_dir, tmp_path):
  with pytest.raises(ZooError, match="trial 2 is failed: loss became nan; pick a done trial"):
    found.entry_from_search(search_dir, 2, "x", DATASET)
  with pytest.raises(ZooError, match="no trial 7; best done trials: 1"):
    found.entry_from_search(search_dir, 7, "x", DATASET)
  with pytest.raises(ZooError, match="not a search directory"):
    found.entry_from_search(str(tmp_path), 1, "x", DATASET)


def test_the_recipe_takes_the_entrys_model_settings():
  entry = model_zoo.get_entry("mobile-spinenet-49xs")
  config = training.training_config(entry, train_steps=7, learning_rate=0.002)
  scaling = entry.architecture.scaling
  assert config.scaled(entry.architecture).scaling == scaling
  assert (config.image_size, config.anchor_size, config.train_steps) == (128, 1.0, 7)
  with pytest.raises(ZooError, match="image_size: set by the entry"):
    training.training_config(entry, image_size=256)


@pytest.mark.slow
def test_the_script_creates_trains_and_records_an_entry_from_a_search(search_dir, tmp_path):
  zoo = tmp_path / "zoo"
  os.makedirs(zoo / "entries")
  command = [sys.executable, "scripts/train_zoo_model.py", "--from_search", search_dir,
             "--trial", "1", "--name", "found-one", "--zoo_dir", str(zoo), "--steps", "3",
             "--batch_size", "4", "--cache_dir", str(tmp_path / "cache"),
             "--synthetic_num_train", "16", "--synthetic_num_val", "8"]
  proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  entry = model_zoo.get_entry("found-one", zoo_dir=str(zoo))
  measured = entry.metric_measured_here()
  assert measured["num_images"] == 8 and measured["measured_here"]
  assert measured["dataset"] == "synthetic-v2-128px-16-8-seed0"
  assert entry.training["train_steps"] == 3 and entry.cost["params"] > 0
  assert os.listdir(zoo / "weights") == [entry.weights.file]
  assert model_zoo.load("found-one", zoo_dir=str(zoo)).entry == entry

  # Trained again: the new weights replace the old file, and a second entry
  # of the same name from the search is refused.
  proc = subprocess.run(command[:2] + ["--entry", "found-one"] + command[8:] + ["--seed", "1"],
                        capture_output=True, text=True, cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  retrained = model_zoo.get_entry("found-one", zoo_dir=str(zoo))
  assert retrained.weights.sha256 != entry.weights.sha256
  assert os.listdir(zoo / "weights") == [retrained.weights.file]
  assert json.loads((zoo / "entries" / "found-one.json").read_text())["provenance"] == \
      entry.provenance
  proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 2 and "already has an entry" in proc.stderr


@pytest.mark.slow  # trains a supernet, then a zoo entry from it: 1-2 min
def test_an_entry_found_on_a_supernet_trains_from_its_weights(tmp_path):
  """Built the way the supernet's paths are, the model starts from the
  supernet's values; trained, its weights load into the zoo's own build."""
  from spinesearch.data import dataset
  from spinesearch.oneshot.supernet import Supernet
  supernet = Supernet.open("quickstart")
  folder = str(tmp_path / "oneshot")
  _oneshot_search(folder, supernet.weights_sha256)
  data = dataset.ensure_synthetic(str(tmp_path / "cache"), num_train=8, num_val=4,
                                  image_size=128, seed=0)
  entry = found.entry_from_search(folder, 1, "found-init", data)
  init = training.SupernetInit.of_entry(entry)
  config = training.training_config(entry, train_steps=1, batch_size=2, measure_cost=False,
                                    warmup_steps=0)
  task = training.EntryTrainingTask(config, data, training.adapt_to_dataset(entry, data),
                                    init=init)
  task.new_session()
  model = task.build_model(config.scaled(entry.architecture))
  assert init.inherited_fraction > 0.9
  by_shape = {}
  for array in supernet.arrays().values():
    by_shape.setdefault(array.shape, []).append(array)
  from_supernet = [any(np.array_equal(v.numpy(), a) for a in by_shape.get(tuple(v.shape), []))
                   for v in model.weights if v.shape.num_elements() > 16]
  assert sum(from_supernet) / len(from_supernet) > 0.85

  zoo = tmp_path / "zoo"
  os.makedirs(zoo / "entries")
  trained = training.train_entry(entry, data, config, zoo_dir=str(zoo), init=init,
                                 dataset_description={"name": "tiny"})
  record = trained.training["initialised_from"]
  assert record["supernet"] == "quickstart" and record["weights_sha256"] == supernet.weights_sha256
  assert record["inherited_fraction"] == init.inherited_fraction
  assert model_zoo.load("found-init", zoo_dir=str(zoo)).entry.weights == trained.weights
  with pytest.raises(ZooError, match="provenance names no supernet"):
    training.SupernetInit.of_entry(model_zoo.get_entry("mobile-spinenet-49xs"))
