"""COCO AP of a Detector on a dataset's validation split, through the same
serving path users call (`Detector.serve`), scored by Model Garden's
COCOEvaluator (pycocotools) against the split's COCO JSON; and the pieces
other measurements share: the split's decoded records in batches, their
ground truth, and matching detections to objects (right class, IoU >= 0.5)."""
import contextlib
import glob
import io
import math
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

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
# A detection finds an object of its class when their boxes overlap this much.
MATCH_IOU = 0.5


def evaluate(detector, dataset: DatasetPaths, *, batch_size: int = 16,
             max_images: Optional[int] = None) -> Dict[str, float]:
  """AP / AR metrics in [0, 1] (-1 where the split has no object of a size)
  and the number of images evaluated."""
  evaluator = _quiet(lambda: coco_evaluator.COCOEvaluator(
      annotation_file=dataset.val_annotations, include_mask=False,
      need_rescale_bboxes=False, max_num_eval_detections=100))
  count = 0
  for batch in same_size_batches(validation_records(dataset, max_images), batch_size):
    outputs = detector.serve(np.stack([record["image"] for record in batch]))
    predictions = {
        "source_id": np.asarray([record["source_id"] for record in batch], dtype=np.int64),
        "detection_boxes": outputs["detection_boxes"],
        "detection_scores": outputs["detection_scores"],
        "detection_classes": outputs["detection_classes"],
        "num_detections": outputs["num_detections"],
    }
    evaluator.update_state(None, {k: tf.constant(v) for k, v in predictions.items()})
    count += len(batch)
  results = _quiet(evaluator.result)
  metrics = {name: _finite(results[key]) for key, name in METRIC_NAMES.items()}
  metrics["num_images"] = count
  return metrics


def validation_records(dataset: DatasetPaths,
                       max_images: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """The validation split's records, decoded by Model Garden's decoder into
  numpy: `image` (uint8 HxWx3), `source_id` (int), `groundtruth_boxes`
  ([N, 4] ymin, xmin, ymax, xmax as fractions of the image), `groundtruth_classes`,
  `groundtruth_is_crowd`... Raises DatasetError when there are none."""
  files = sorted(glob.glob(dataset.val_pattern))
  if not files:
    raise DatasetError(f"no file matches the val pattern {dataset.val_pattern}")
  decoder = tf_example_decoder.TfExampleDecoder()
  records = tf.data.TFRecordDataset(files).map(decoder.decode)
  if max_images:
    records = records.take(max_images)
  count = 0
  for record in records:
    decoded = {key: value.numpy() for key, value in record.items()}
    decoded["source_id"] = int(decoded["source_id"])
    count += 1
    yield decoded
  if not count:
    raise DatasetError(f"{dataset.val_pattern}: no validation images")


def same_size_batches(records: Iterable[Dict[str, np.ndarray]],
                      batch_size: int) -> Iterator[List[Dict[str, np.ndarray]]]:
  """Consecutive records whose images have one shape, at most `batch_size`
  at a time."""
  batch: List[Dict[str, np.ndarray]] = []
  for record in records:
    if batch and (record["image"].shape != batch[0]["image"].shape or len(batch) == batch_size):
      yield batch
      batch = []
    batch.append(record)
  if batch:
    yield batch


def record_truth(record: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  """(boxes [N, 4] ymin, xmin, ymax, xmax in the image's pixels, classes [N])
  of a decoded record's objects, crowd regions left out."""
  height, width = record["image"].shape[:2]
  keep = ~record["groundtruth_is_crowd"].astype(bool)
  boxes = record["groundtruth_boxes"][keep] * np.array([height, width, height, width])
  return boxes.astype(np.float32), record["groundtruth_classes"][keep].astype(np.int32)


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
  """[N, M] intersection over union of boxes [N, 4] and [M, 4], both
  (ymin, xmin, ymax, xmax)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 1, 4)
  others = np.asarray(others, np.float64).reshape(1, -1, 4)
  height = np.minimum(boxes[..., 2], others[..., 2]) - np.maximum(boxes[..., 0], others[..., 0])
  width = np.minimum(boxes[..., 3], others[..., 3]) - np.maximum(boxes[..., 1], others[..., 1])
  inter = np.maximum(height, 0) * np.maximum(width, 0)
  union = _area(boxes) + _area(others) - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matches(boxes: np.ndarray, classes: np.ndarray, truth_boxes: np.ndarray,
            truth_classes: np.ndarray, iou_threshold: float = MATCH_IOU) -> np.ndarray:
  """[detections, objects] bool: detection i has object j's class and an IoU
  of at least `iou_threshold` with its box. An object is found when any
  detection matches it (`matches(...).any(axis=0)`), so recall here counts
  objects, not one-to-one pairs."""
  same_class = np.asarray(classes).reshape(-1, 1) == np.asarray(truth_classes).reshape(1, -1)
  return same_class & (box_iou(boxes, truth_boxes) >= iou_threshold)


def _area(boxes: np.ndarray) -> np.ndarray:
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _finite(value) -> float:
  value = float(value)
  return value if math.isfinite(value) else -1.0


def _quiet(fn):
  """pycocotools prints its summary table to stdout; keep it out of the
  tools' output."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn()
