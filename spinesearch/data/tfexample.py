"""Detection tf.Examples in Model Garden's schema, and all-or-nothing sharded
TFRecord writing.

The keys are those `official.vision.dataloaders.tf_example_decoder.
TfExampleDecoder` reads. Boxes come in as COCO pixel boxes [x, y, w, h] and are
stored normalized to [0, 1], so a record and the COCO JSON written beside it
agree by construction. `image/source_id` is the COCO image id as text: Model
Garden's COCO evaluator turns it back into the id to match the JSON.
"""
import os
import shutil
import tempfile
from typing import List, Sequence

import numpy as np
import tensorflow as tf
from official.vision.data import tfrecord_lib


def encode_detection_example(*, image_bytes: bytes, image_format: str,
                             width: int, height: int, image_id: int,
                             filename: str,
                             coco_boxes: Sequence[Sequence[float]],
                             labels: Sequence[int],
                             areas: Sequence[float],
                             is_crowd: Sequence[int]) -> tf.train.Example:
  """Builds one detection tf.Example.

  Args:
    image_bytes: the encoded image (PNG or JPEG).
    image_format: "png" or "jpeg".
    width: image width in pixels.
    height: image height in pixels.
    image_id: the COCO image id (written as `image/source_id`).
    filename: the image's file name, for people reading the records.
    coco_boxes: per object [x, y, w, h] in pixels.
    labels: per object class label (the COCO category id).
    areas: per object area in pixels.
    is_crowd: per object 0 or 1.

  Returns:
    The tf.train.Example.
  """
  boxes = np.asarray(coco_boxes, dtype=np.float64).reshape(-1, 4)
  features = tfrecord_lib.image_info_to_feature_dict(
      height, width, filename, image_id, image_bytes, image_format)
  convert = tfrecord_lib.convert_to_feature
  # Types are given explicitly because an image without objects has empty
  # lists, from which no type can be inferred.
  features.update({
      "image/object/bbox/xmin": convert(
          list(boxes[:, 0] / width), "float_list"),
      "image/object/bbox/xmax": convert(
          list((boxes[:, 0] + boxes[:, 2]) / width), "float_list"),
      "image/object/bbox/ymin": convert(
          list(boxes[:, 1] / height), "float_list"),
      "image/object/bbox/ymax": convert(
          list((boxes[:, 1] + boxes[:, 3]) / height), "float_list"),
      "image/object/class/label": convert(list(labels), "int64_list"),
      "image/object/area": convert(list(areas), "float_list"),
      "image/object/is_crowd": convert(list(is_crowd), "int64_list"),
  })
  return tf.train.Example(features=tf.train.Features(feature=features))


def shard_paths(prefix: str, num_shards: int) -> List[str]:
  return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"
          for i in range(num_shards)]


def shard_pattern(prefix: str, num_shards: int) -> str:
  """A glob matching exactly the shards of one write of `num_shards`."""
  return f"{prefix}-?????-of-{num_shards:05d}.tfrecord"


def count_records(pattern: str) -> int:
  """Number of records in the TFRecord files matching `pattern`."""
  files = tf.io.gfile.glob(pattern)
  return sum(1 for _ in tf.data.TFRecordDataset(files))


class ShardedRecordWriter:
  """Writes records round-robin into PREFIX-SSSSS-of-NNNNN.tfrecord.

  Shards are written in a hidden temporary folder beside the prefix and moved
  into place only when the `with` block ends without an exception; on an
  exception the temporary folder is removed, so a failed or killed run never
  leaves files under the final names.
  """

  def __init__(self, prefix: str, num_shards: int):
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    self.prefix = prefix
    self.num_shards = num_shards
    self.num_records = 0
    self._temp_dir = None
    self._writers = []

  def __enter__(self) -> "ShardedRecordWriter":
    folder = os.path.dirname(os.path.abspath(self.prefix))
    os.makedirs(folder, exist_ok=True)
    self._temp_dir = tempfile.mkdtemp(
        dir=folder, prefix=f".tmp-{os.path.basename(self.prefix)}-")
    temp_prefix = os.path.join(self._temp_dir, "shard")
    self._writers = [tf.io.TFRecordWriter(path)
                     for path in shard_paths(temp_prefix, self.num_shards)]
    return self

  def write(self, serialized: bytes) -> None:
    self._writers[self.num_records % self.num_shards].write(serialized)
    self.num_records += 1

  def __exit__(self, exc_type, exc, tb) -> None:
    for writer in self._writers:
      writer.close()
    try:
      if exc_type is None:
        temp_prefix = os.path.join(self._temp_dir, "shard")
        for temp_path, final_path in zip(
            shard_paths(temp_prefix, self.num_shards),
            shard_paths(self.prefix, self.num_shards)):
          os.replace(temp_path, final_path)
    finally:
      shutil.rmtree(self._temp_dir, ignore_errors=True)

  @property
  def paths(self) -> List[str]:
    return shard_paths(self.prefix, self.num_shards)

  @property
  def pattern(self) -> str:
    return shard_pattern(self.prefix, self.num_shards)
