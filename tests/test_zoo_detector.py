"""Loading zoo models with weights: they find objects, export faithfully,
report boxes in image pixels, and refuse weights that do not match."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
from model_zoo import calibration, evaluation, registry
from model_zoo.entry import ZooError
from spinesearch.data import synthetic


def _weighted_entries():
  return [n for n in model_zoo.list_models() if model_zoo.get_entry(n).weights]


def _smallest_weighted_entry() -> str:
  return min(_weighted_entries(), key=lambda n: model_zoo.get_entry(n).cost["params"])


@pytest.fixture(scope="module")
def detector():
  return model_zoo.load(_smallest_weighted_entry())


@pytest.fixture(scope="module")
def scenes(detector):
  """Synthetic scenes the model was not trained on (a seed no split uses)."""
  rng = np.random.default_rng(20240611)
  return [synthetic.render_scene(detector.input_size, rng) for _ in range(16)]


def _recall(results, scenes) -> float:
  """Share of objects with a detection of their class at IoU >= 0.5."""
  return calibration.combine(
      calibration.match_image(result, *calibration.scene_truth(objects))
      for result, (_, objects) in zip(results, scenes)).at(0.0)["recall"]


def test_the_weighted_entries_are_the_small_ones():
  assert "mobile-spinenet-49xs" in _weighted_entries()
  assert all(model_zoo.get_entry(n).cost["params"] < 5e6 for n in _weighted_entries())


def test_a_trained_entry_finds_the_objects_of_new_synthetic_images(detector, scenes):
  # Every detection: the threshold's effect is tests/test_zoo_calibration.py's.
  results = detector.predict(np.stack([image for image, _ in scenes]), min_score=0.0)
  assert len(results) == len(scenes)
  recall = _recall(results, scenes)
  # Chance: the same detections scored against the objects of other images.
  chance = _recall(results[1:] + results[:1], scenes)
  assert recall >= 0.5 and recall >= 3 * chance, (recall, chance)
  for result in results:
    assert np.all(np.diff(result["scores"]) <= 0)
    assert np.all((result["classes"] >= 1) & (result["classes"] < detector.entry.num_classes))
    assert result["class_names"] == [detector.entry.class_names[c] for c in result["classes"]]


def test_boxes_are_in_the_pixels_of_the_image_given(detector, scenes):
  # Twice as large and cut to 256 x 192: resized back to the input size, the
  # left three quarters are the original image, so what is found there is
  # found again at twice the coordinates.
  images = [image for image, _ in scenes[:4]]
  cut = [np.kron(image, np.ones((2, 2, 1), dtype=np.uint8))[:, :192] for image in images]
  results = detector.predict(images + cut, min_score=0.1)
  compared = 0
  for small, big, image in zip(results[:4], results[4:], cut):
    assert np.all(big["boxes"][:, [0, 2]] <= image.shape[0])
    assert np.all(big["boxes"][:, [1, 3]] <= image.shape[1])
    for box, label in list(zip(small["boxes"], small["classes"]))[:5]:
      if box[3] < 88:
        compared += 1
        assert evaluation.matches(big["boxes"], big["classes"], [2 * box], [label],
                                  iou_threshold=0.7).any()
  assert compared > 0


def test_export_then_reload_gives_the_same_detections(detector, scenes, tmp_path):
  images = np.stack([image for image, _ in scenes[:2]])
  expected = detector.serve(images)
  path = detector.export_saved_model(str(tmp_path / "exported"))
  assert os.path.exists(os.path.join(path, "assets.extra", "zoo_entry.json"))
  serving = tf.saved_model.load(path).signatures["serving_default"]
  outputs = serving(tf.constant(images))
  for key in ("num_detections", "detection_classes"):
    np.testing.assert_array_equal(outputs[key].numpy(), expected[key])
  for key in ("detection_boxes", "detection_scores"):
    np.testing.assert_allclose(outputs[key].numpy(), expected[key], atol=1e-4)
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
    serving(tf.constant(images.astype(np.float32)))


def _copy_zoo_with(name: str, folder) -> str:
  entry = model_zoo.get_entry(name)
  os.makedirs(folder / "entries")
  os.makedirs(folder / "weights")
  shutil.copy(registry.entry_path(name), folder / "entries")
  shutil.copy(os.path.join(registry.weights_dir(), entry.weights.file), folder / "weights")
  return str(folder / "weights" / entry.weights.file)


def test_a_tampered_weights_file_is_refused(tmp_path):
  name = _smallest_weighted_entry()
  weights_file = _copy_zoo_with(name, tmp_path)
  with open(weights_file, "r+b") as f:
    f.seek(os.path.getsize(weights_file) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ZooError, match="refused, the file does not match its record"):
    model_zoo.load(name, zoo_dir=str(tmp_path))


def test_pretrained_without_weights_is_refused_with_what_to_do():
  name = next(n for n in model_zoo.list_models() if not model_zoo.get_entry(n).weights)
  with pytest.raises(ZooError, match="has no weights.*pretrained=False.*model_zoo convert"):
    model_zoo.load(name)


def test_a_wrong_model_name_lists_the_close_matches():
  with pytest.raises(ZooError, match="no zoo model named 'mobile-spinenet49xs'; did you mean "
                                     "mobile-spinenet-49xs"):
    model_zoo.load("mobile-spinenet49xs")
  with pytest.raises(ZooError, match="the zoo has .*spinenet-49"):
    model_zoo.get_entry("resnet")


@pytest.mark.parametrize("images", [
    np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8),
    np.zeros((32, 32, 3), np.float32), [], "image.png"])
def test_predict_refuses_what_is_not_an_rgb_uint8_image(detector, images):
  with pytest.raises(ZooError, match="image"):
    detector.predict(images)
