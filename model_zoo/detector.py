"""`Detector`: a zoo model with its weights, ready to run, export and train.

  import model_zoo
  detector = model_zoo.load("mobile-spinenet-49xs")
  [result] = detector.predict(image)        # uint8 HxWx3; min_score: the entry's threshold
  result["boxes"]        # [N, 4] float32, (ymin, xmin, ymax, xmax) in the image's pixels
  result["scores"]       # [N] float32, best first
  result["classes"]      # [N] int32 class ids (0 is the background, never returned)
  result["class_names"]  # [N] names from the entry
"""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tensorflow as tf
from official.core import config_definitions as cfg

from model_zoo import modeling, registry, serving
from model_zoo import weights as weights_lib
from model_zoo.entry import ZooEntry, ZooError

Images = Union[np.ndarray, Sequence[np.ndarray]]


class Detector:
  """A zoo entry's RetinaNet (Model Garden `RetinaNetModel`) and its serving
  function. Build one with `model_zoo.load`."""

  def __init__(self, entry: ZooEntry, model):
    self.entry = entry
    self.model = model
    self._config = modeling.model_garden_config(entry)
    self._module = serving.serving_module(model, self._config)
    self._serve = None

  @property
  def name(self) -> str:
    return self.entry.name

  @property
  def input_size(self) -> int:
    return self.entry.input_size

  def model_garden_config(self) -> cfg.ExperimentConfig:
    """A Model Garden RetinaNet ExperimentConfig that builds this model
    (experiment 'retinanet_spinesearch'; import `spinesearch.modeling.garden`
    before Model Garden resolves it). Data and schedule are left to fill in."""
    return modeling.model_garden_config(self.entry)

  def serve(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Raw serving outputs for a uint8 [batch, height, width, 3] array: Model
    Garden's detection outputs with boxes in input-image pixels."""
    if self._serve is None:
      self._serve = serving.serving_function(self._module)
    outputs = self._serve(tf.convert_to_tensor(images, dtype=tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}

  def predict(self, images: Images,
              min_score: Optional[float] = None) -> List[Dict[str, np.ndarray]]:
    """Detections per image, for one uint8 HxWx3 image, a [batch, H, W, 3]
    array, or a list of images of any sizes. Each image is resized (longer
    side to the input size, aspect ratio kept) and padded as Model Garden's
    inference does; boxes come back in the pixels of the image given.
    Detections scoring below `min_score` are dropped; by default it is the
    entry's calibrated score threshold, or 0.3 for an entry without one
    (`entry.default_min_score()`).
    Returns one dict per image (see the module docstring)."""
    if min_score is None:
      min_score = self.entry.default_min_score()
    batches = _as_batches(images)
    results = []
    for batch in batches:
      outputs = self.serve(batch)
      for i in range(batch.shape[0]):
        count = int(outputs["num_detections"][i])
        scores = outputs["detection_scores"][i, :count].astype(np.float32)
        keep = scores >= min_score
        classes = outputs["detection_classes"][i, :count][keep].astype(np.int32)
        results.append({
            "boxes": outputs["detection_boxes"][i, :count][keep].astype(np.float32),
            "scores": scores[keep],
            "classes": classes,
            "class_names": [self.entry.class_name(int(c)) for c in classes],
        })
    return results

  def export_saved_model(self, directory: str) -> str:
    """Exports a SavedModel whose 'serving_default' signature takes uint8
    images [batch, height, width, 3] and returns detection_boxes (input-image
    pixels), detection_scores, detection_classes, num_detections and
    image_info. The entry JSON is kept in `assets.extra/zoo_entry.json`."""
    return serving.export(self._module, directory, self.entry.to_json())


def load(name: str, pretrained: bool = True, zoo_dir: Optional[str] = None) -> Detector:
  """The zoo model `name` (or a path to an entry JSON file) as a Detector.

  With `pretrained`, its weights are read, checked against the entry's size
  and sha256, and loaded; an entry without weights, or a weights file that
  does not match, is refused with a ZooError. Without it the model is
  randomly initialised.
  """
  entry, entry_zoo = registry.locate(name, zoo_dir)
  return load_entry(entry, entry_zoo, pretrained)


def load_entry(entry: ZooEntry, zoo_dir: str, pretrained: bool = True) -> Detector:
  """As `load`, for an entry whose weights are in `zoo_dir/weights/`."""
  arrays = None
  if pretrained:
    if entry.weights is None:
      raise ZooError(
          f"{entry.name} has no weights in this zoo (nothing can be downloaded here); use "
          f"pretrained=False for a randomly initialised model, train it with "
          f"scripts/train_zoo_model.py --entry {entry.name}, or convert a Model Garden "
          f"checkpoint: python -m model_zoo convert --model_garden_checkpoint CKPT "
          f"--model {entry.name} --output DIR")
    path = os.path.join(registry.weights_dir(zoo_dir), entry.weights.file)
    arrays = weights_lib.read_verified(path, entry.weights)
  model = modeling.build_model(entry)
  if arrays is not None:
    weights_lib.assign(model, arrays, source=entry.weights.file)
  return Detector(entry, model)


def _as_batches(images: Images) -> List[np.ndarray]:
  """Consecutive images of one size go together into one batch."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    return [_check_image(images, "images")]
  if isinstance(images, np.ndarray) and images.ndim == 3:
    return [_check_image(images, "image")[np.newaxis]]
  if (isinstance(images, (np.ndarray, str, bytes)) or not isinstance(images, Sequence) or
      not len(images)):
    raise ZooError("images: expected a uint8 HxWx3 array, a [batch, H, W, 3] array, "
                   "or a non-empty list of HxWx3 arrays")
  batches: List[List[np.ndarray]] = []
  for i, image in enumerate(images):
    image = _check_image(np.asarray(image), f"images[{i}]")
    if batches and batches[-1][0].shape == image.shape:
      batches[-1].append(image)
    else:
      batches.append([image])
  return [np.stack(batch) for batch in batches]


def _check_image(array: np.ndarray, where: str) -> np.ndarray:
  if array.shape[-1:] != (3,) or array.ndim not in (3, 4) or 0 in array.shape:
    raise ZooError(f"{where}: expected RGB images shaped HxWx3, got shape {list(array.shape)}")
  if array.dtype != np.uint8:
    raise ZooError(f"{where}: expected uint8 pixels (0..255), got {array.dtype}")
  return array
