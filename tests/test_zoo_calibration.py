"""Score thresholds of zoo entries: the calibration keeps the detection budget,
entries refuse bad thresholds, and predict uses the entry's threshold unless
min_score is given."""
import copy
import json
import os
import shutil

import numpy as np
import pytest

import model_zoo
from model_zoo import calibration, evaluation, registry
from model_zoo.entry import DEFAULT_MIN_SCORE, ScoreThreshold, ZooEntry, ZooError
from zoo_helpers import run_zoo_cli as _run

WEIGHTED = "mobile-spinenet-49xs"
# Two objects, and detections best first: what each threshold keeps is known.
OBJECTS = (np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([1, 2]))
DETECTIONS = [  # score, class, box
    (0.9, 1, (0, 0, 10, 10)),     # finds object 1
    (0.6, 1, (50, 50, 60, 60)),   # nothing there
    (0.5, 2, (21, 21, 40, 40)),   # finds object 2
    (0.4, 1, (20, 20, 40, 40)),   # object 2's box, the wrong class
    (0.2, 2, (60, 0, 70, 10)),
    (0.1, 1, (0, 60, 10, 70)),
]


def _result(detections):
  scores, classes, boxes = zip(*detections)
  return {"scores": np.array(scores, np.float32), "classes": np.array(classes, np.int32),
          "boxes": np.array(boxes, np.float32)}


def _matched(detections=DETECTIONS, objects=OBJECTS) -> calibration.Matched:
  return calibration.combine([calibration.match_image(_result(detections), *objects)])


def test_matching_needs_the_right_class_and_half_the_box():
  boxes, classes = OBJECTS
  found = evaluation.matches(_result(DETECTIONS)["boxes"], _result(DETECTIONS)["classes"],
                             boxes, classes)
  assert found.tolist() == [[True, False], [False, False], [False, True], [False, False],
                            [False, False], [False, False]]
  np.testing.assert_allclose(evaluation.box_iou(boxes, boxes), np.eye(2))
  matched = _matched()
  assert matched.found_scores.tolist() == pytest.approx([0.9, 0.5])
  assert matched.at(0.45) == pytest.approx(
      {"recall": 1.0, "detections_per_object": 1.5, "precision": 2 / 3, "f1": 0.8})
  assert matched.at(0.0)["recall"] == 1.0 and matched.at(0.55)["recall"] == 0.5


def test_the_threshold_is_the_best_recall_within_the_detection_budget():
  # Above 0.5 one object is found; from 0.5 down to 0.4 both, with 3 detections
  # (1.5 per object); 4 from 0.4 to 0.2 (2 per object, same recall); 5 below.
  threshold, method = calibration.choose_threshold(_matched())
  assert threshold == pytest.approx(0.405) and method.startswith("max recall")
  assert _matched().at(threshold)["detections_per_object"] <= 2
  # Within 1 per object one object is found at most; above 0.6 with fewer detections.
  threshold, _ = calibration.choose_threshold(_matched(), max_detections_per_object=1)
  assert threshold == pytest.approx(0.605)
  assert _matched().at(threshold) == pytest.approx(
      {"recall": 0.5, "detections_per_object": 0.5, "precision": 1.0, "f1": 2 / 3})


def test_without_a_threshold_that_finds_within_budget_it_is_max_f1():
  # One object, found only below five false detections.
  misses = [(0.9 - 0.1 * i, 1, (50, 50, 60, 60)) for i in range(5)]
  matched = _matched(misses + [(0.3, 1, (0, 0, 10, 10))], (OBJECTS[0][:1], OBJECTS[1][:1]))
  threshold, method = calibration.choose_threshold(matched)
  assert threshold <= 0.3 and method.startswith("max F1")
  assert matched.at(threshold)["recall"] == 1.0
  with pytest.raises(ZooError, match="finds none of the 1 objects"):
    calibration.choose_threshold(_matched(misses, (OBJECTS[0][:1], OBJECTS[1][:1])))


def _entry_dict(**score_threshold):
  data = copy.deepcopy(model_zoo.get_entry(WEIGHTED).to_dict())
  data["score_threshold"] = score_threshold
  return data


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.2, "0.3", None, True])
def test_an_entry_with_a_bad_threshold_is_refused_in_one_line(threshold, tmp_path, capsys):
  with pytest.raises(ZooError) as error:
    ZooEntry.from_dict(_entry_dict(threshold=threshold), source="bad.json")
  assert str(error.value) == (f"bad.json: score_threshold.threshold: expected a number between "
                              f"0 and 1 (both excluded), got {threshold!r}")
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(_entry_dict(threshold=threshold)))
  status, _, err = _run(["info", str(path)], capsys)
  assert status == 2 and len(err.strip().splitlines()) == 1
  assert "score_threshold.threshold: expected a number between 0 and 1" in err


@pytest.mark.parametrize("record, message", [
    ({"treshold": 0.2}, "missing key"),
    ({"threshold": 0.2, "weights_sha256": "abc"}, "score_threshold.weights_sha256"),
    ({"threshold": 0.2, "calibration": [1]}, "score_threshold.calibration"),
])
def test_a_malformed_threshold_record_is_refused(record, message):
  with pytest.raises(ZooError, match=message):
    ZooEntry.from_dict(_entry_dict(**record), source="bad.json")


def test_the_default_min_score_is_the_threshold_calibrated_for_these_weights():
  entry = model_zoo.get_entry(WEIGHTED)
  assert entry.score_threshold.weights_sha256 == entry.weights.sha256
  assert entry.default_min_score() == entry.score_threshold.threshold
  assert ZooEntry.from_dict(entry.to_dict()) == entry
  assert entry.replace(score_threshold=None).default_min_score() == DEFAULT_MIN_SCORE == 0.3
  stale = ScoreThreshold(threshold=0.2, weights_sha256="0" * 64)
  assert entry.replace(score_threshold=stale).default_min_score() == DEFAULT_MIN_SCORE
  assert entry.replace(score_threshold=ScoreThreshold(threshold=0.2)).default_min_score() == 0.2
  assert "score_threshold" not in entry.replace(score_threshold=None).to_dict()


@pytest.fixture(scope="module")
def detector():
  return model_zoo.load(WEIGHTED)


def test_predict_uses_the_entrys_threshold_unless_min_score_is_given(detector):
  images = [image for image, _ in calibration.unseen_scenes(detector.input_size, 3, seed=5)]
  every = detector.predict(images, min_score=0.0)
  threshold = detector.entry.score_threshold.threshold
  scores = np.concatenate([r["scores"] for r in every])
  assert (scores < threshold).any() and (scores >= threshold).any()

  def kept(results, min_score):
    return [r["scores"][r["scores"] >= min_score].tolist() for r in results]

  assert [r["scores"].tolist() for r in detector.predict(images)] == kept(every, threshold)
  low = threshold / 2
  assert [r["scores"].tolist() for r in detector.predict(images, min_score=low)] == \
      kept(every, low)
  other = copy.copy(detector)
  other.entry = detector.entry.replace(score_threshold=None)
  assert [r["scores"].tolist() for r in other.predict(images)] == kept(every, DEFAULT_MIN_SCORE)


def test_calibrate_writes_the_threshold_into_the_entry(tmp_path, capsys):
  entry = model_zoo.get_entry(WEIGHTED)
  zoo = tmp_path / "zoo"
  os.makedirs(zoo / "weights")
  shutil.copy(os.path.join(registry.weights_dir(), entry.weights.file), zoo / "weights")
  small = dict(entry.training["dataset"], num_train=2, num_val=8, name="synthetic-small")
  entry.replace(training=dict(entry.training, dataset=small), score_threshold=None).save(
      registry.entry_path(WEIGHTED, str(zoo)))
  argv = ["calibrate", WEIGHTED, "--zoo_dir", str(zoo), "--cache_dir", str(tmp_path / "cache")]
  status, out, _ = _run(argv + ["--write", "--unseen", "2"], capsys)
  assert status == 0
  written = model_zoo.get_entry(WEIGHTED, zoo_dir=str(zoo))
  record = written.score_threshold
  assert out.startswith(f"{WEIGHTED}: score threshold {record.threshold:g}: max")
  assert "2 unseen synthetic scenes (seed 987654)" in out and "wrote it into" in out
  assert written.default_min_score() == record.threshold
  assert record.weights_sha256 == entry.weights.sha256
  assert record.calibration["num_images"] == 8 and record.calibration["dataset"] == "synthetic-small"
  assert record.calibration["detections_per_object"] <= calibration.MAX_DETECTIONS_PER_OBJECT
  assert written.replace(score_threshold=None) == entry.replace(training=written.training,
                                                                score_threshold=None)
  assert os.listdir(zoo / "entries") == [f"{WEIGHTED}.json"]
  status, out, _ = _run(["info", WEIGHTED, "--zoo_dir", str(zoo)], capsys)
  assert status == 0
  assert f"score threshold: {record.threshold:g}, max recall" in out
