"""COCO JSON -> TFRecord conversion and the checks on user datasets."""
import copy
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder
from PIL import Image

from spinesearch.data import coco_to_tfrecord, dataset
from spinesearch.errors import DatasetError, EXIT_USER_ERROR

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three images of different sizes and encodings; category ids with gaps (as in
# COCO) stay the class labels.
IMAGES = [
    {"id": 3, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 8, "file_name": "sub/b.jpg", "width": 40, "height": 40},
    {"id": 9, "file_name": "empty.png", "width": 32, "height": 64},
]
ANNOTATIONS = [
    {"id": 17, "image_id": 3, "category_id": 7, "bbox": [10, 5, 20, 30],
     "area": 450.0, "iscrowd": 0},
    {"id": 18, "image_id": 3, "category_id": 1, "bbox": [0, 0, 64, 48],
     "area": 3072.0, "iscrowd": 1},
    {"id": 19, "image_id": 8, "category_id": 3, "bbox": [2.5, 4.25, 30, 35.5],
     "area": 900.5, "iscrowd": 0},
]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"},
              {"id": 7, "name": "fox"}]


def _document():
  return {"images": copy.deepcopy(IMAGES),
          "annotations": copy.deepcopy(ANNOTATIONS),
          "categories": copy.deepcopy(CATEGORIES)}


@pytest.fixture
def coco_files(tmp_path):
  """Writes the images and the JSON; returns (json path, images dir, pixels)."""
  images_dir = tmp_path / "images"
  (images_dir / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  pixels = {}
  for image in IMAGES:
    array = rng.integers(0, 256, (image["height"], image["width"], 3),
                         dtype=np.uint8)
    path = images_dir / image["file_name"]
    Image.fromarray(array).save(path)
    pixels[image["id"]] = np.asarray(Image.open(path).convert("RGB"))
  annotations = tmp_path / "instances.json"
  annotations.write_text(json.dumps(_document()))
  return str(annotations), str(images_dir), pixels


def _output_files(folder):
  return sorted(p for p in os.listdir(folder) if p != "images"
                and p != "instances.json")


def test_round_trip_matches_the_json(coco_files, tmp_path):
  annotations, images_dir, pixels = coco_files
  prefix = str(tmp_path / "out" / "train")
  summary = coco_to_tfrecord.convert(annotations, images_dir, prefix,
                                     num_shards=2)
  assert sorted(os.listdir(tmp_path / "out")) == [
      "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
  assert (summary.num_images, summary.num_objects, summary.num_classes) == (
      3, 3, 8)

  decoder = tf_example_decoder.TfExampleDecoder()
  records = list(tf.data.TFRecordDataset(sorted(glob.glob(summary.pattern)))
                 .map(decoder.decode))
  assert sorted(int(r["source_id"].numpy()) for r in records) == [3, 8, 9]
  for record in records:
    image_id = int(record["source_id"].numpy())
    image = next(i for i in IMAGES if i["id"] == image_id)
    want = [a for a in ANNOTATIONS if a["image_id"] == image_id]
    decoded = record["image"].numpy()
    assert decoded.shape == (image["height"], image["width"], 3)
    if image["file_name"].endswith(".png"):
      np.testing.assert_array_equal(decoded, pixels[image_id])
    boxes = record["groundtruth_boxes"].numpy().reshape(-1, 4)
    assert len(boxes) == len(want)
    scale = np.array([image["height"], image["width"]] * 2)
    for box, a in zip(boxes, want):
      x, y, w, h = a["bbox"]
      np.testing.assert_allclose(box * scale, [y, x, y + h, x + w], atol=1e-4)
    np.testing.assert_array_equal(record["groundtruth_classes"].numpy(),
                                  [a["category_id"] for a in want])
    np.testing.assert_array_equal(record["groundtruth_is_crowd"].numpy(),
                                  [bool(a["iscrowd"]) for a in want])
    np.testing.assert_allclose(record["groundtruth_area"].numpy(),
                               [a["area"] for a in want])


def test_sub_pixel_overshoot_is_clipped(coco_files, tmp_path):
  annotations, images_dir, _ = coco_files
  document = _document()
  document["annotations"][0]["bbox"] = [44.2, 5, 20, 30]  # right edge 64.2
  with open(annotations, "w") as f:
    json.dump(document, f)
  summary = coco_to_tfrecord.convert(annotations, images_dir,
                                     str(tmp_path / "out" / "x"))
  decoder = tf_example_decoder.TfExampleDecoder()
  record = next(r for r in tf.data.TFRecordDataset(
      glob.glob(summary.pattern)).map(decoder.decode)
                if int(r["source_id"].numpy()) == 3)
  assert float(record["groundtruth_boxes"][0][3]) == pytest.approx(1.0)


def _break_missing_image(document, images_dir):
  os.remove(os.path.join(images_dir, "sub/b.jpg"))
  return ["image id 8", "sub/b.jpg", "not found"]


def _break_unreadable_image(document, images_dir):
  with open(os.path.join(images_dir, "empty.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not really a png")
  return ["image id 9", "empty.png", "cannot read"]


def _break_wrong_size_image(document, images_dir):
  Image.new("RGB", (10, 10)).save(os.path.join(images_dir, "a.png"))
  return ["image id 3", "10x10", "64x48"]


def _break_box_outside(document, images_dir):
  document["annotations"][0]["bbox"] = [10, 5, 200, 40]
  return ["annotation id 17 (image 3)", "[10, 5, 200, 40]",
          "outside the 64x48 image"]


def _break_unknown_category(document, images_dir):
  document["annotations"][2]["category_id"] = 5
  return ["annotation id 19 (image 8)", "unknown category id 5"]


def _break_missing_key(document, images_dir):
  del document["annotations"][1]["bbox"]
  return ["annotation id 18 (image 3)", "missing key 'bbox'"]


def _break_missing_section(document, images_dir):
  del document["categories"]
  return ["missing top-level key 'categories'"]


def _break_unknown_image(document, images_dir):
  document["annotations"][0]["image_id"] = 99
  return ["annotation id 17 (image 99)", "no image has id 99"]


BAD_INPUTS = [_break_missing_image, _break_unreadable_image,
              _break_wrong_size_image, _break_box_outside,
              _break_unknown_category, _break_missing_key,
              _break_missing_section, _break_unknown_image]


@pytest.mark.parametrize("break_input", BAD_INPUTS,
                         ids=[f.__name__[len("_break_"):] for f in BAD_INPUTS])
def test_bad_input_stops_with_one_line_and_no_output(coco_files, tmp_path,
                                                     break_input):
  annotations, images_dir, _ = coco_files
  document = _document()
  expected = break_input(document, images_dir)
  with open(annotations, "w") as f:
    json.dump(document, f)
  with pytest.raises(DatasetError) as raised:
    coco_to_tfrecord.convert(annotations, images_dir,
                             str(tmp_path / "train"), num_shards=2)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(annotations + ": ")
  for part in expected:
    assert part in message
  assert _output_files(tmp_path) == []


def test_malformed_json_syntax(coco_files, tmp_path):
  annotations, images_dir, _ = coco_files
  with open(annotations, "w") as f:
    f.write('{"images": [}')
  with pytest.raises(DatasetError, match="not valid JSON") as raised:
    coco_to_tfrecord.convert(annotations, images_dir, str(tmp_path / "train"))
  assert str(raised.value).startswith(annotations + ": ")
  assert _output_files(tmp_path) == []


def _run_cli(*args):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  return subprocess.run(
      [sys.executable, "-m", "spinesearch.data.coco_to_tfrecord", *args],
      capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
      check=False)


def test_cli_reports_a_bad_record_in_one_line_with_exit_code_2(coco_files,
                                                              tmp_path):
  annotations, images_dir, _ = coco_files
  document = _document()
  document["annotations"][0]["category_id"] = 12
  with open(annotations, "w") as f:
    json.dump(document, f)
  result = _run_cli("--annotations", annotations, "--images", images_dir,
                    "--output", str(tmp_path / "train"), "--num_shards", "2")
  assert result.returncode == EXIT_USER_ERROR
  assert result.stderr.strip().splitlines() == [
      f"error: {annotations}: annotation id 17 (image 3): unknown category "
      f"id 12 (categories: 1, 3, 7)"]
  assert "Traceback" not in result.stderr
  assert _output_files(tmp_path) == []


def test_user_dataset_checks_files_and_reads_classes(coco_files, tmp_path):
  annotations, images_dir, _ = coco_files
  summary = coco_to_tfrecord.convert(annotations, images_dir,
                                     str(tmp_path / "val"))
  paths = dataset.user_dataset(summary.pattern, summary.pattern, annotations)
  assert paths.num_classes == 8
  assert paths.class_names == ("background", "cat", "", "dog", "", "", "",
                               "fox")
  assert paths.image_size is None
  assert paths.num_val == 3

  with pytest.raises(DatasetError, match="no file matches the train pattern"):
    dataset.user_dataset(str(tmp_path / "nothing-*"), summary.pattern,
                         annotations)
  with open(annotations, "w") as f:
    f.write("[]")
  with pytest.raises(DatasetError, match="expected a JSON object"):
    dataset.user_dataset(summary.pattern, summary.pattern, annotations)


def test_main_converts_and_reports_num_classes(coco_files, tmp_path, capsys):
  annotations, images_dir, _ = coco_files
  coco_to_tfrecord.main(["--annotations", annotations, "--images", images_dir,
                         "--output", str(tmp_path / "out" / "train")])
  assert os.listdir(tmp_path / "out") == ["train-00000-of-00001.tfrecord"]
  assert "num_classes = 8" in capsys.readouterr().out
