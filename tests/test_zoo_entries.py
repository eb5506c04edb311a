"""Every zoo entry: its JSON follows the schema, it builds, runs, and has the
parameter count it records; the paper entries agree with the reference table."""
import copy
import json
import os

import numpy as np
import pytest

import model_zoo
from model_zoo import registry
from model_zoo.entry import ZooEntry, ZooError
from spinesearch.space import known
from spinesearch.space.architecture import Architecture

ENTRIES = model_zoo.list_models()
# Building models of this many parameters takes more than a few seconds here.
LARGE_PARAMS = 10e6
# scripts/reference_table.py on this machine (README): trainable params (M) and
# G multiply-adds with ReLU; the zoo's paper entries use swish, whose extra
# multiply the profiler counts (well under 1%).
REFERENCE_TABLE = {"spinenet-49s": ("49S", 11.27, 30.8), "spinenet-49": ("49", 28.54, 85.3),
                   "spinenet-96": ("96", 42.97, 265.2), "spinenet-143": ("143", 66.96, 523.7),
                   "spinenet-190": ("190", 163.64, 1882.2)}


def _by_size(names):
  return [pytest.param(n, marks=pytest.mark.slow)
          if model_zoo.get_entry(n).cost["params"] > LARGE_PARAMS else n for n in names]


def test_the_zoo_has_the_paper_family_mobile_spinenet_and_a_searched_architecture():
  assert set(REFERENCE_TABLE) <= set(ENTRIES)
  assert {"mobile-spinenet-49xs", "mobile-spinenet-49s", "mobile-spinenet-49"} <= set(ENTRIES)
  kinds = [model_zoo.get_entry(n).provenance["kind"] for n in ENTRIES]
  assert "search" in kinds


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_json_follows_the_schema(name):
  path = registry.entry_path(name)
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  entry = ZooEntry.from_dict(data, source=path)
  assert entry.name == name
  assert entry.to_dict() == data  # the file is the canonical form: nothing is dropped
  assert Architecture.from_dict(data["architecture"]) == entry.architecture
  assert set(entry.cost) == {"params", "params_all", "multiply_adds", "input_size"}
  assert entry.cost["input_size"] == entry.input_size
  assert 0 < entry.cost["params"] <= entry.cost["params_all"] < entry.cost["multiply_adds"]
  assert len(entry.class_names) == entry.num_classes
  for record in entry.metrics:
    assert {"dataset", "input_size", "measured_here", "ap"} <= set(record)
  if entry.weights is None:
    assert not any(m["measured_here"] for m in entry.metrics)
  else:
    weights_path = os.path.join(registry.weights_dir(), entry.weights.file)
    assert os.path.getsize(weights_path) == entry.weights.bytes
    assert entry.weights.bytes < 8e6  # stored compactly in the repository
    measured = entry.metric_measured_here()
    assert measured["input_size"] == entry.input_size and measured["split"] == "val"
    assert 0.0 <= measured["ap"] <= 1.0
  provenance = entry.provenance
  assert provenance["kind"] in ("paper", "search")
  if provenance["kind"] == "search":
    assert {"search_dir", "trial_id", "flags", "search_metrics"} <= set(provenance)
    assert entry.weights is not None


@pytest.mark.parametrize("name", _by_size(ENTRIES))
def test_entry_builds_runs_and_has_its_recorded_parameter_count(name):
  import tensorflow as tf
  from model_zoo import modeling
  from spinesearch.modeling.cost import count_params
  entry = model_zoo.get_entry(name)
  # A SpineNet's weights do not depend on its input size: build small.
  size = min(entry.input_size, 128)
  model = modeling.build_model(entry, image_size=size)
  assert count_params(model, trainable_only=True) == entry.cost["params"]
  assert count_params(model) == entry.cost["params_all"]
  images = tf.random.stateless_uniform([1, size, size, 3], seed=[1, 2], minval=-2, maxval=2)
  outputs = model(images, training=False)
  anchors = entry.head.num_scales * len(entry.head.aspect_ratios)
  for level in range(entry.architecture.min_level, entry.architecture.max_level + 1):
    classes = outputs["cls_outputs"][str(level)].numpy()
    boxes = outputs["box_outputs"][str(level)].numpy()
    side = size // 2 ** level
    assert classes.shape == (1, side, side, anchors * entry.num_classes)
    assert boxes.shape == (1, side, side, anchors * 4)
    assert np.isfinite(classes).all() and np.isfinite(boxes).all()


@pytest.mark.parametrize("name", sorted(REFERENCE_TABLE))
def test_paper_entries_have_the_papers_scaling_and_the_reference_tables_cost(name):
  model_id, params_m, gflops = REFERENCE_TABLE[name]
  entry = model_zoo.get_entry(name)
  published = known.SPINENET_FAMILY[model_id]
  assert entry.architecture.scaling == published.scaling
  assert entry.architecture.fingerprint() == known.spinenet49().fingerprint()
  assert (entry.input_size, entry.num_classes) == (published.image_size, 91)
  assert round(entry.cost["params"] / 1e6, 2) == params_m
  assert entry.cost["multiply_adds"] / 1e9 == pytest.approx(gflops, rel=0.005)
  assert entry.weights is None
  assert entry.provenance["paper_params_m"] == published.paper_params_m


@pytest.mark.slow
def test_mobile_spinenet_49_is_model_gardens_mobile_retinanet():
  """At COCO's 91 classes the entry is the model of Model Garden's own
  retinanet_mobile_coco experiment (the paper's 2.32M parameters)."""
  from official.core import exp_factory
  from official.vision.tasks import retinanet as retinanet_task
  from model_zoo import modeling
  from spinesearch.modeling.builder import complete_build
  from spinesearch.modeling.cost import count_params
  config = exp_factory.get_exp_config("retinanet_mobile_coco")
  config.task.model.input_size = [128, 128, 3]
  config.task.model.norm_activation.use_sync_bn = False
  garden = retinanet_task.RetinaNetTask(config.task).build_model()
  complete_build(garden)
  ours = modeling.build_model(model_zoo.get_entry("mobile-spinenet-49"), num_classes=91)
  assert count_params(ours, trainable_only=True) == count_params(garden, trainable_only=True)
  assert count_params(ours, trainable_only=True) / 1e6 == pytest.approx(2.32, abs=0.02)


def _valid_entry_dict():
  return model_zoo.get_entry("spinenet-49s").to_dict()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d.update(zoo_version=2), "zoo_version"),
    (lambda d: d.update(name="SpineNet 49"), "name"),
    (lambda d: d.update(input_size=600), "not a multiple of 128"),
    (lambda d: d.update(num_classes=0), "num_classes"),
    (lambda d: d["norm_activation"].update(activation="gelu"), "activation"),
    (lambda d: d["head"].update(aspect_ratios=[]), "head.aspect_ratios"),
    (lambda d: d["head"].update(use_separable_conv="yes"), "head.use_separable_conv"),
    (lambda d: d["architecture"]["blocks"].pop(), "blocks"),
    (lambda d: d.update(class_names=["x"] * 92), "class_names"),
    (lambda d: d.update(weights={"file": "../x.npz", "sha256": "0" * 64, "bytes": 1}),
     "weights.file"),
    (lambda d: d.update(weights={"file": "x.npz", "sha256": "abc", "bytes": 1}),
     "weights.sha256"),
    (lambda d: d.update(weights={"file": "x.npz", "sha256": "0" * 64, "bytes": 1,
                                 "format": "pickle"}), "weights.format"),
])
def test_malformed_entries_are_refused_naming_the_field(change, message):
  data = copy.deepcopy(_valid_entry_dict())
  change(data)
  with pytest.raises(ZooError, match=message) as error:
    ZooEntry.from_dict(data, source="bad.json")
  assert str(error.value).startswith("bad.json: ")


def test_unreadable_entry_files_are_refused(tmp_path):
  path = tmp_path / "entry.json"
  path.write_text("{not json")
  with pytest.raises(ZooError, match="not a valid JSON file"):
    ZooEntry.load(str(path))
  with pytest.raises(ZooError, match="cannot read"):
    ZooEntry.load(str(tmp_path / "missing.json"))
