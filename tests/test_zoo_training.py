"""Found-architecture entries from a search's store, and
`scripts/train_zoo_model.py` writing weights, hash and metrics into an entry."""
import json
import os
import subprocess
import sys

import pytest

import model_zoo
from model_zoo import found, training
from model_zoo.entry import ZooError
from spinesearch.data.dataset import DatasetPaths
from spinesearch.proxy import ProxyConfig
from spinesearch.space import known
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
