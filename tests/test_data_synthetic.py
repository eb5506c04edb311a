"""The synthetic detection set: determinism, Model Garden schema, content."""
import collections
import glob
import itertools
import json
import math
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import retinanet_input, tf_example_decoder

from spinesearch.data import dataset, shapes, synthetic
from spinesearch.errors import ConfigError, DatasetError

IMAGE_SIZE = 128
SMALL_SET = dict(num_train=24, num_val=40, image_size=IMAGE_SIZE, seed=3,
                 num_shards=2)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(folder, **SMALL_SET)
  return folder


def _read_files(folder):
  return {os.path.basename(p): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(folder, "*")))}


def _all_annotations(folder):
  annotations = []
  for split in synthetic.SPLITS:
    with open(os.path.join(folder, f"{split}_annotations.json")) as f:
      annotations.extend(json.load(f)["annotations"])
  return annotations


def test_same_seed_gives_identical_files(small_set, tmp_path):
  synthetic.generate(str(tmp_path / "again"), **SMALL_SET)
  synthetic.generate(str(tmp_path / "other"), **{**SMALL_SET, "seed": 4})
  first, again = _read_files(small_set), _read_files(str(tmp_path / "again"))
  other = _read_files(str(tmp_path / "other"))
  assert sorted(first) == sorted(again) == sorted(other)
  assert first == again
  for name in first:
    if name != "dataset.json":
      assert first[name] != other[name], name


def test_files_are_sharded_and_described(small_set):
  paths = dataset.DatasetPaths.from_dir(small_set)
  assert len(glob.glob(paths.train_pattern)) == 2
  assert len(glob.glob(paths.val_pattern)) == 2
  assert paths.num_classes == len(shapes.SHAPE_NAMES) + 1
  assert paths.class_names == ("background",) + shapes.SHAPE_NAMES
  assert (paths.num_train, paths.num_val, paths.image_size) == (24, 40, 128)
  with open(paths.val_annotations) as f:
    coco = json.load(f)
  assert len(coco["images"]) == 40
  assert [c["id"] for c in coco["categories"]] == list(
      range(1, len(shapes.SHAPE_NAMES) + 1))


def _decoded_records(pattern):
  decoder = tf_example_decoder.TfExampleDecoder()
  files = sorted(glob.glob(pattern))
  return list(tf.data.TFRecordDataset(files).map(decoder.decode))


def test_model_garden_decoder_reads_records_matching_coco_json(small_set):
  paths = dataset.DatasetPaths.from_dir(small_set)
  with open(paths.val_annotations) as f:
    coco = json.load(f)
  expected = collections.defaultdict(list)
  for a in coco["annotations"]:
    expected[a["image_id"]].append(a)

  records = _decoded_records(paths.val_pattern)
  assert len(records) == 40
  for record in records:
    image_id = int(record["source_id"].numpy())
    assert record["image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    want = expected[image_id]
    assert 1 <= len(want) <= synthetic.MAX_OBJECTS
    x, y, w, h = np.array([a["bbox"] for a in want], dtype=np.float64).T
    want_boxes = np.stack([y, x, y + h, x + w], axis=1) / IMAGE_SIZE
    np.testing.assert_allclose(record["groundtruth_boxes"].numpy(), want_boxes,
                               atol=1e-6)
    np.testing.assert_array_equal(record["groundtruth_classes"].numpy(),
                                  [a["category_id"] for a in want])
    np.testing.assert_allclose(record["groundtruth_area"].numpy(),
                               [a["area"] for a in want])
    assert not record["groundtruth_is_crowd"].numpy().any()


def test_retinanet_parser_builds_training_targets(small_set):
  parser = retinanet_input.Parser(
      output_size=[IMAGE_SIZE, IMAGE_SIZE], min_level=3, max_level=7,
      num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0,
      dtype="float32")
  decoder = tf_example_decoder.TfExampleDecoder()
  files = sorted(glob.glob(dataset.DatasetPaths.from_dir(small_set)
                           .train_pattern))
  batch = next(iter(tf.data.TFRecordDataset(files)
                    .map(decoder.decode)
                    .map(parser.parse_fn(is_training=True))
                    .batch(8)))
  images, labels = batch
  assert images.shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
  positives = 0
  for level in range(3, 8):
    stride = 2 ** level
    cls_targets = labels["cls_targets"][str(level)]
    assert cls_targets.shape == (8, IMAGE_SIZE // stride, IMAGE_SIZE // stride,
                                 9)
    positives += int(tf.reduce_sum(tf.cast(cls_targets > 0, tf.int32)))
    assert np.isfinite(labels["box_targets"][str(level)].numpy()).all()
  assert positives > 0


def test_object_sizes_span_the_pyramid(small_set):
  sides = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) / IMAGE_SIZE
                    for a in _all_annotations(small_set)])
  assert sides.min() < 1 / 10 and sides.max() > 1 / 2
  assert sides.max() <= synthetic.MAX_SIZE_FRACTION + 1 / IMAGE_SIZE
  # Log-uniform sizes: each third of the log range holds a fair share.
  edges = np.exp(np.linspace(math.log(1 / 16), math.log(3 / 4), 4))
  counts, _ = np.histogram(sides, bins=edges)
  assert (counts >= 0.12 * len(sides)).all(), counts


def test_boxes_lie_inside_images_and_cover_visible_pixels(small_set):
  for a in _all_annotations(small_set):
    x, y, w, h = a["bbox"]
    assert x >= 0 and y >= 0 and w > 0 and h > 0
    assert x + w <= IMAGE_SIZE and y + h <= IMAGE_SIZE
    # Visible area: mostly visible, never more than the box.
    assert 0 < a["area"] <= w * h


def test_at_least_eight_classes_appear(small_set):
  present = {a["category_id"] for a in _all_annotations(small_set)}
  assert len(present) >= 8


def _turns(mask):
  return [np.rot90(mask, k) for k in range(4)]


def test_classes_differ_in_outline():
  rng = np.random.default_rng(0)
  masks = {name: shapes.render_mask(name, 48, 48, rng)
           for name in shapes.SHAPE_NAMES}
  for a, b in itertools.combinations(shapes.SHAPE_NAMES, 2):
    for turned in _turns(masks[b]):
      union = np.logical_or(masks[a], turned).sum()
      iou = np.logical_and(masks[a], turned).sum() / union
      assert iou < 0.85, (a, b, iou)


def test_mask_has_the_requested_box_for_every_turn():
  for name in shapes.SHAPE_NAMES:
    for seed in range(4):
      mask = shapes.render_mask(name, 30, 18, np.random.default_rng(seed))
      assert mask.shape == (18, 30), name
      assert mask.mean() > 0.25, name


def test_occluded_objects_stay_mostly_visible():
  rng = np.random.default_rng(11)
  visible_fractions = []
  for _ in range(60):
    image, objects = synthetic.render_scene(IMAGE_SIZE, rng)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert image.dtype == np.uint8
    assert 1 <= len(objects) <= synthetic.MAX_OBJECTS
    visible_fractions += [o.visible_fraction for o in objects]
  assert min(visible_fractions) >= synthetic.MIN_VISIBLE_FRACTION
  # Occlusion does happen: a fair share of objects is partly hidden.
  hidden = np.mean(np.array(visible_fractions) < 1.0)
  assert 0.05 < hidden < 0.8, hidden


def test_generate_rejects_bad_parameters(tmp_path):
  with pytest.raises(ConfigError, match="image_size"):
    synthetic.generate(str(tmp_path), num_train=2, num_val=2, image_size=16,
                       seed=0)
  with pytest.raises(ConfigError, match="num_val"):
    synthetic.generate(str(tmp_path), num_train=2, num_val=0, image_size=64,
                       seed=0)


def test_ensure_synthetic_generates_once_and_reuses(tmp_path, monkeypatch):
  calls = []
  real_generate = synthetic.generate

  def counting_generate(*args, **kwargs):
    calls.append(args)
    return real_generate(*args, **kwargs)

  monkeypatch.setattr(synthetic, "generate", counting_generate)
  params = dict(num_train=3, num_val=2, image_size=64, seed=5)
  results = []
  threads = [threading.Thread(target=lambda: results.append(
      dataset.ensure_synthetic(str(tmp_path), **params))) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(calls) == 1
  assert results[0] == results[1]
  assert os.path.basename(os.path.dirname(results[0].val_annotations)) == (
      f"synthetic-v{synthetic.GENERATOR_VERSION}-64px-3-2-seed5")
  assert dataset.ensure_synthetic(str(tmp_path), **params) == results[0]
  assert len(calls) == 1


def test_ensure_synthetic_leaves_nothing_after_a_failure(tmp_path,
                                                         monkeypatch):
  def failing_generate(output_dir, **kwargs):
    with open(os.path.join(output_dir, "train-00000-of-00001.tfrecord"),
              "wb") as f:
      f.write(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic, "generate", failing_generate)
  params = dict(num_train=3, num_val=2, image_size=64, seed=6)
  with pytest.raises(KeyboardInterrupt):
    dataset.ensure_synthetic(str(tmp_path), **params)
  left = [p for p in os.listdir(tmp_path) if not p.endswith(".lock")]
  assert left == []
  # An abandoned build folder from a killed run is cleared on the next call.
  os.mkdir(tmp_path / f".tmp-synthetic-v{synthetic.GENERATOR_VERSION}-64px-3-2-seed6-killed")
  monkeypatch.setattr(synthetic, "generate", failing_generate)
  with pytest.raises(KeyboardInterrupt):
    dataset.ensure_synthetic(str(tmp_path), **params)
  assert not (tmp_path / f".tmp-synthetic-v{synthetic.GENERATOR_VERSION}-64px-3-2-seed6-killed").exists()


def test_from_dir_without_description_is_a_dataset_error(tmp_path):
  with pytest.raises(DatasetError, match="no dataset.json"):
    dataset.DatasetPaths.from_dir(str(tmp_path))


def test_main_writes_a_set_that_from_dir_reads(tmp_path, capsys):
  synthetic.main(["--output_dir", str(tmp_path), "--num_train", "3",
                  "--num_val", "2", "--image_size", "64", "--seed", "1",
                  "--num_shards", "4"])
  assert "wrote 5 images" in capsys.readouterr().out
  paths = dataset.DatasetPaths.from_dir(str(tmp_path))
  assert len(glob.glob(paths.train_pattern)) == 3
  assert len(glob.glob(paths.val_pattern)) == 2
