"""`python -m model_zoo`: listing, info, predict with drawing, Model Garden
config that Model Garden builds, measure, and one-line errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import model_zoo
from model_zoo import registry
from spinesearch.data import synthetic
from spinesearch.space.architecture import Architecture
from zoo_helpers import run_zoo_cli as _run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTED = "mobile-spinenet-49xs"


def test_list_json_summarises_every_entry(capsys):
  status, out, _ = _run(["list", "--json"], capsys)
  rows = json.loads(out)
  assert status == 0
  assert [r["name"] for r in rows] == model_zoo.list_models()
  weighted = next(r for r in rows if r["name"] == WEIGHTED)
  assert weighted["weights_mb"] > 0 and 0 <= weighted["ap_here"] <= 1
  assert weighted["ap_here_dataset"].startswith("synthetic")
  paper = next(r for r in rows if r["name"] == "spinenet-49")
  assert paper["weights_mb"] is None and paper["paper_ap"] == 0.443
  assert paper["params_m"] == pytest.approx(28.54, abs=0.01)
  status, out, _ = _run(["list"], capsys)
  assert status == 0 and all(name in out for name in model_zoo.list_models())


def test_info_shows_weights_metrics_and_provenance(capsys):
  status, out, _ = _run(["info", WEIGHTED], capsys)
  entry = model_zoo.get_entry(WEIGHTED)
  assert status == 0
  assert entry.weights.sha256 in out and "measured here on synthetic" in out
  status, out, _ = _run(["info", WEIGHTED, "--json"], capsys)
  assert json.loads(out) == entry.to_dict()


def test_info_architecture_prints_the_architecture_schema(capsys):
  status, out, _ = _run(["info", WEIGHTED, "--architecture"], capsys)
  architecture = model_zoo.get_entry(WEIGHTED).architecture
  assert status == 0 and out == architecture.to_json() + "\n"
  assert Architecture.from_json(out) == architecture


def test_load_architecture_takes_a_name_an_entry_file_or_an_architecture_file(tmp_path):
  architecture = model_zoo.get_entry(WEIGHTED).architecture
  arch_file = tmp_path / "arch.json"
  architecture.save(str(arch_file))
  for source in (WEIGHTED, registry.entry_path(WEIGHTED), str(arch_file)):
    assert model_zoo.load_architecture(source) == architecture, source
  with pytest.raises(model_zoo.ZooError, match=r"^'mobile-spinenet49xs' is neither a file nor "
                     r"a zoo model name; did you mean mobile-spinenet-49xs, "):
    model_zoo.load_architecture("mobile-spinenet49xs")
  with pytest.raises(model_zoo.ZooError, match="no such file"):
    model_zoo.load_architecture(str(tmp_path / "missing.json"))
  # A file is judged by what it holds: a broken entry is reported as an entry.
  broken_entry = tmp_path / "entry.json"
  broken_entry.write_text(json.dumps(dict(model_zoo.get_entry(WEIGHTED).to_dict(), input_size=0)))
  with pytest.raises(model_zoo.ZooError, match=r"entry\.json: input_size"):
    model_zoo.load_architecture(str(broken_entry))


def test_library_log_lines_only_with_verbosity(tmp_path):
  """`config` imports Model Garden: TensorFlow's C++ INFO lines and Python
  warnings stay off stderr unless -v asks for them."""
  def config(*extra):
    return subprocess.run([sys.executable, "-m", "model_zoo", "config", "--model", WEIGHTED,
                           "--output", str(tmp_path / "experiment.yaml"), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  quiet = config()
  assert quiet.returncode == 0 and quiet.stderr == ""
  verbose = config("-v", "0")
  assert verbose.returncode == 0
  # TensorFlow's C++ logging writes INFO lines at import ("2025-01-01 12:00:00.1: I ...").
  assert re.search(r"^\S+ \S+: I \S+\.cc:\d+\]", verbose.stderr, re.MULTILINE), verbose.stderr


def test_a_wrong_name_is_one_line_with_close_matches():
  proc = subprocess.run([sys.executable, "-m", "model_zoo", "info", "spinenet49"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().splitlines() == [
      "error: no zoo model named 'spinenet49'; did you mean spinenet-49, spinenet-49s, "
      "spinenet-96, spinenet-190? (python -m model_zoo list)"]


@pytest.mark.slow
def test_predict_draws_boxes_and_prints_json(tmp_path, capsys):
  image, objects = synthetic.render_scene(128, np.random.default_rng(99))
  image_path, drawn_path = tmp_path / "scene.png", tmp_path / "out" / "drawn.png"
  Image.fromarray(image).save(image_path)
  status, out, _ = _run(["predict", "--model", WEIGHTED, "--image", str(image_path),
                         "--output", str(drawn_path), "--json", "--min_score", "0.1"], capsys)
  assert status == 0
  result = json.loads(out)
  assert result["model"] == WEIGHTED and result["detections"]
  names = set(model_zoo.get_entry(WEIGHTED).class_names)
  for detection in result["detections"]:
    assert detection["score"] >= 0.1 and detection["class_name"] in names
    ymin, xmin, ymax, xmax = detection["box"]
    assert 0 <= ymin < ymax <= 128 and 0 <= xmin < xmax <= 128
  drawn = np.asarray(Image.open(drawn_path))
  assert drawn.shape == image.shape and not np.array_equal(drawn, image)
  assert not [p for p in os.listdir(drawn_path.parent) if p.startswith(".tmp-")]


def test_predict_refuses_an_unreadable_image(tmp_path, capsys):
  bad = tmp_path / "not_an_image.png"
  bad.write_text("hello")
  status, out, err = _run(["predict", "--model", WEIGHTED, "--image", str(bad)], capsys)
  assert status == 2 and out == ""
  assert err.strip().splitlines() == [err.strip()] and "not an image" in err


def test_config_yaml_is_built_by_model_gardens_task_with_the_same_params(tmp_path, capsys):
  from official.core import exp_factory
  from official.modeling.hyperparams import params_dict
  from official.vision.tasks import retinanet as retinanet_task
  from spinesearch.modeling import builder, garden
  from spinesearch.modeling.cost import count_params
  path = tmp_path / "experiment.yaml"
  status, _, _ = _run(["config", "--model", WEIGHTED, "--output", str(path)], capsys)
  assert status == 0
  config = exp_factory.get_exp_config(garden.EXPERIMENT_NAME)
  params_dict.override_params_dict(config, str(path), is_strict=True)
  assert config.task.model.head.use_separable_conv  # Mobile SpineNet's head
  model = retinanet_task.RetinaNetTask(config.task).build_model()
  builder.complete_build(model)
  assert count_params(model, trainable_only=True) == model_zoo.get_entry(WEIGHTED).cost["params"]


@pytest.mark.slow
def test_measure_writes_the_cost_into_the_entry(tmp_path, capsys):
  from model_zoo import modeling
  from spinesearch.modeling.cost import count_params
  from spinesearch.space import known
  from spinesearch.space.architecture import Scaling
  scaling = Scaling(filter_size_scale=0.125, resample_alpha=0.25, endpoints_num_filters=16,
                    head_num_convs=1, head_num_filters=16)
  entry = model_zoo.ZooEntry(name="tiny", architecture=known.spinenet49(scaling),
                             input_size=128, num_classes=3, provenance={"kind": "paper"})
  entry.save(registry.entry_path("tiny", str(tmp_path)))
  status, out, _ = _run(["measure", "--zoo_dir", str(tmp_path), "--model", "tiny"], capsys)
  assert status == 0 and "multiply-adds at 128 px" in out
  cost = model_zoo.get_entry("tiny", zoo_dir=str(tmp_path)).cost
  model = modeling.build_model(entry)
  assert cost["params"] == count_params(model, trainable_only=True)
  assert cost["params_all"] == count_params(model)
  # Every weight is used at least once per image.
  assert cost["multiply_adds"] > cost["params"] and cost["input_size"] == 128
