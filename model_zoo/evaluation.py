"""COCO AP of a Detector on a dataset's validation split, through the same
serving path users call (`Detector.serve`), scored by Model Garden's
COCOEvaluator (pycocotools) against the split's COCO JSON."""
import contextlib
import glob
import io
import math
from typing import Dict, List, Optional

import numpy as np

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder
from official.vision.evaluation import coco_evaluator

from spinesearch.data.dataset import DatasetPaths
from spinesearch.errors import DatasetError

# COCOEvaluator's metric names -> the names an entry records.
METRIC_NAMES = {"AP": "ap", "AP50": "ap50", "AP75": "ap75", "APs": "aps", "APm": "apm",
                "APl": "apl", "ARmax1": "ar1", "ARmax10": "ar10", "ARmax100": "ar100"}


def evaluate(detector, dataset: DatasetPaths, *, batch_size: int = 16,
             max_images: Optional[int] = None) -> Dict[str, float]:
  """AP / AR metrics in [0, 1] (-1 where the split has no object of a size)
  and the number of images evaluated."""
  files = sorted(glob.glob(dataset.val_pattern))
  if not files:
    raise DatasetError(f"no file matches the val pattern {dataset.val_pattern}")
  evaluator = _quiet(lambda: coco_evaluator.COCOEvaluator(
      annotation_file=dataset.val_annotations, include_mask=False,
      need_rescale_bboxes=False, max_num_eval_detections=100))
  decoder = tf_example_decoder.TfExampleDecoder()
  records = tf.data.TFRecordDataset(files).map(decoder.decode)
  if max_images:
    records = records.take(max_images)
  images: List[np.ndarray] = []
  ids: List[int] = []
  count = 0

  def flush():
    outputs = detector.serve(np.stack(images))
    predictions = {
        "source_id": np.asarray(ids, dtype=np.int64),
        "detection_boxes": outputs["detection_boxes"],
        "detection_scores": outputs["detection_scores"],
        "detection_classes": outputs["detection_classes"],
        "num_detections": outputs["num_detections"],
    }
    evaluator.update_state(None, {k: tf.constant(v) for k, v in predictions.items()})
    images.clear()
    ids.clear()

  for record in records:
    image = record["image"].numpy()
    if images and (image.shape != images[0].shape or len(images) == batch_size):
      flush()
    images.append(image)
    ids.append(int(record["source_id"].numpy()))
    count += 1
  if not count:
    raise DatasetError(f"{dataset.val_pattern}: no validation images")
  flush()
  results = _quiet(evaluator.result)
  metrics = {name: _finite(results[key]) for key, name in METRIC_NAMES.items()}
  metrics["num_images"] = count
  return metrics


def _finite(value) -> float:
  value = float(value)
  return value if math.isfinite(value) else -1.0


def _quiet(fn):
  """pycocotools prints its summary table to stdout; keep it out of the
  tools' output."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn()
