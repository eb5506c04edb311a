"""The score threshold that suits an entry's weights, chosen on the validation
split of the data set it was trained on.

Detections come from `Detector.predict` (with no score floor but the head's
own), and are matched to the objects by `evaluation.matches` (right class,
IoU >= 0.5). At a threshold t an object is found when a detection scoring
>= t matches it; recall is the share of objects found, and the detections
per object the number of detections scoring >= t over the number of objects.
The threshold kept maximizes recall with at most MAX_DETECTIONS_PER_OBJECT
detections per object (the fewest detections among equal recalls); if no
threshold that finds any object keeps within that budget, it maximizes F1
(precision: the share of kept detections that match an object).

  record = calibrate(detector, dataset, dataset_name="synthetic-...")
  record.threshold, record.calibration["recall"]
"""
import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from model_zoo import evaluation
from model_zoo.entry import ScoreThreshold, ZooEntry, ZooError
from spinesearch.data.dataset import DatasetPaths

MAX_DETECTIONS_PER_OBJECT = 2.0
# The thresholds tried: 0.005, 0.010, ..., 0.995.
THRESHOLDS = tuple(round(0.005 * i, 3) for i in range(1, 200))
# Scenes no split of the synthetic generator uses (issue 13's check).
UNSEEN_SEED = 987654
UNSEEN_SCENES = 30
NOT_FOUND = -1.0


@dataclasses.dataclass(frozen=True)
class Matched:
  """Detections matched to the objects of some images: all that any score
  threshold needs.

  Attributes:
    found_scores: [objects] the best score of a detection that finds each
      object, -1 where none does (so no threshold >= 0 counts it found).
    detection_scores: [detections] every detection's score.
    detection_hits: [detections] whether each detection finds an object.
    num_images: images the objects and detections come from.
  """
  found_scores: np.ndarray
  detection_scores: np.ndarray
  detection_hits: np.ndarray
  num_images: int

  @property
  def num_objects(self) -> int:
    return int(self.found_scores.size)

  def at(self, threshold: float) -> Dict[str, float]:
    """recall, detections_per_object, precision and f1 at a threshold."""
    kept = self.detection_scores >= threshold
    recall = float(np.mean(self.found_scores >= threshold)) if self.num_objects else 0.0
    precision = float(np.mean(self.detection_hits[kept])) if kept.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"recall": recall, "detections_per_object": int(kept.sum()) / max(self.num_objects, 1),
            "precision": precision, "f1": f1}


def match_image(result: Dict[str, np.ndarray], truth_boxes: np.ndarray,
                truth_classes: np.ndarray) -> Matched:
  """One image's detections (a `predict` result) against its objects."""
  scores = np.asarray(result["scores"], np.float32)
  found = evaluation.matches(result["boxes"], result["classes"], truth_boxes, truth_classes)
  best = np.max(np.where(found, scores[:, None], NOT_FOUND), axis=0, initial=NOT_FOUND)
  return Matched(found_scores=best,
                 detection_scores=scores, detection_hits=found.any(axis=1), num_images=1)


def combine(parts: Iterable[Matched]) -> Matched:
  parts = list(parts)
  return Matched(
      found_scores=np.concatenate([p.found_scores for p in parts] + [np.zeros(0)]),
      detection_scores=np.concatenate([p.detection_scores for p in parts] + [np.zeros(0)]),
      detection_hits=np.concatenate([p.detection_hits for p in parts] + [np.zeros(0, bool)]),
      num_images=sum(p.num_images for p in parts))


def choose_threshold(matched: Matched, *,
                     max_detections_per_object: float = MAX_DETECTIONS_PER_OBJECT,
                     thresholds: Sequence[float] = THRESHOLDS) -> Tuple[float, str]:
  """(threshold, how it was chosen): the highest recall within the detection
  budget, the fewest detections among equal recalls (the lowest threshold
  among equal outcomes); max F1 when no threshold that finds an object keeps
  within the budget."""
  if not matched.num_objects:
    raise ZooError("calibration: the images have no objects to calibrate a threshold on")
  scored = [(t, matched.at(t)) for t in thresholds]
  if not any(m["recall"] for _, m in scored):
    raise ZooError(f"calibration: the detector finds none of the {matched.num_objects} objects "
                   f"at any threshold; there is no threshold to choose")
  within = [(t, m) for t, m in scored
            if m["recall"] and m["detections_per_object"] <= max_detections_per_object]
  if within:
    best, _ = max(within, key=lambda item: (item[1]["recall"], -item[1]["detections_per_object"]))
    return best, (f"max recall (right class, IoU >= {evaluation.MATCH_IOU}) with at most "
                  f"{max_detections_per_object:g} detections per object")
  best, _ = max(scored, key=lambda item: (item[1]["f1"], -item[1]["detections_per_object"]))
  return best, (f"max F1: no threshold finding any object kept within "
                f"{max_detections_per_object:g} detections per object")


def match_validation(detector, dataset: DatasetPaths, *, batch_size: int = 16,
                     max_images: Optional[int] = None) -> Matched:
  """Every detection of the validation split matched to its objects."""
  parts = []
  for batch in evaluation.same_size_batches(
      evaluation.validation_records(dataset, max_images), batch_size):
    results = detector.predict([record["image"] for record in batch], min_score=0.0)
    parts += [match_image(result, *evaluation.record_truth(record))
              for result, record in zip(results, batch)]
  return combine(parts)


def calibrate(detector, dataset: DatasetPaths, dataset_name: str, *,
              max_images: Optional[int] = None,
              max_detections_per_object: float = MAX_DETECTIONS_PER_OBJECT) -> ScoreThreshold:
  """The detector's score threshold on the dataset's validation split, with
  its calibration record (for `ZooEntry.score_threshold`)."""
  matched = match_validation(detector, dataset, max_images=max_images)
  # Below the head's own score floor every threshold keeps the same detections.
  floor = detector.entry.head.pre_nms_score_threshold
  threshold, method = choose_threshold(
      matched, max_detections_per_object=max_detections_per_object,
      thresholds=[t for t in THRESHOLDS if t >= floor] or THRESHOLDS)
  weights = detector.entry.weights
  return ScoreThreshold(
      threshold=threshold, method=method, weights_sha256=weights.sha256 if weights else "",
      calibration=dict(dataset=dataset_name, split="val", num_images=matched.num_images,
                       num_objects=matched.num_objects, iou_threshold=evaluation.MATCH_IOU,
                       max_detections_per_object=max_detections_per_object,
                       **_rounded(matched.at(threshold))))


def entry_dataset(entry: ZooEntry, cache_dir: Optional[str] = None) -> Tuple[DatasetPaths, str]:
  """(paths, name) of the data set an entry was trained on, as its training
  record describes it (a synthetic set is generated on first use)."""
  from spinesearch.data import dataset
  described = (entry.training or {}).get("dataset")
  if not described or described.get("kind") not in ("synthetic", "tfrecord"):
    raise ZooError(f"{entry.name}: its training record names no data set to calibrate on "
                   f"(train it with scripts/train_zoo_model.py first)")
  paths = dataset.from_spec(dict(described, type=described["kind"]), cache_dir)
  return paths, described.get("name", described["kind"])


def unseen_scenes(image_size: int, count: int = UNSEEN_SCENES,
                  seed: int = UNSEEN_SEED) -> List[Tuple[np.ndarray, List[Any]]]:
  """Synthetic scenes from a generator seed no split uses: (image, objects)."""
  from spinesearch.data import synthetic
  rng = np.random.default_rng(seed)
  return [synthetic.render_scene(image_size, rng) for _ in range(count)]


def scene_truth(objects) -> Tuple[np.ndarray, np.ndarray]:
  """(boxes [N, 4] ymin, xmin, ymax, xmax in pixels, classes [N]) of a
  synthetic scene's objects (COCO x, y, w, h boxes)."""
  boxes = [(y, x, y + h, x + w) for x, y, w, h in (obj.bbox for obj in objects)]
  return (np.asarray(boxes, np.float32).reshape(-1, 4),
          np.asarray([obj.category_id for obj in objects], np.int32))


def match_scenes(detector, scenes) -> Matched:
  """Every detection of some (image, objects) scenes matched to their objects."""
  results = detector.predict([image for image, _ in scenes], min_score=0.0)
  return combine(match_image(result, *scene_truth(objects))
                 for result, (_, objects) in zip(results, scenes))


def _rounded(values: Dict[str, float]) -> Dict[str, float]:
  return {key: round(value, 4) for key, value in values.items()}
