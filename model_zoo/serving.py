"""Serving a zoo model: Model Garden's detection export module, boxes in pixels.

Model Garden's `DetectionModule` does the inference preprocessing (normalise
with its mean/std, resize the longer side to the model's input size keeping
the aspect ratio, pad), builds the anchors and runs the model with its NMS.
The one thing added here is the box convention of the zoo: Model Garden
returns boxes in the resized image's pixels; the zoo returns them in the
pixels of the image that was passed in, clipped to it.

`Detector.predict` and an exported SavedModel run the same traced function,
so they give the same detections.
"""
import os
import shutil
import tempfile

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tensorflow as tf
from official.core import config_definitions as cfg
from official.vision.serving import detection

SIGNATURE_KEY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
# Written beside the SavedModel so that a served model keeps its class names.
ENTRY_FILE = os.path.join("assets.extra", "zoo_entry.json")
IMAGE_SPEC = tf.TensorSpec(shape=[None, None, None, 3], dtype=tf.uint8, name="images")


class ZooDetectionModule(detection.DetectionModule):
  """Model Garden's DetectionModule with boxes in input-image pixels
  (ymin, xmin, ymax, xmax)."""

  def serve(self, images: tf.Tensor):
    outputs = super().serve(images)
    # image_info rows: original size, resized size, scale (y, x), offset.
    image_info = outputs["image_info"]
    scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
    original_size = tf.tile(image_info[:, 0:1, :], [1, 1, 2])
    boxes = outputs["detection_boxes"] / scale
    outputs["detection_boxes"] = tf.minimum(tf.maximum(boxes, 0.0), original_size)
    return outputs


def serving_module(model, config: cfg.ExperimentConfig) -> ZooDetectionModule:
  """A serving module around an already built (and loaded) model."""
  size = config.task.model.input_size[:2]
  return ZooDetectionModule(params=config, batch_size=None, input_image_size=list(size),
                            model=model)


def serving_function(module: ZooDetectionModule):
  """The module's uint8 [batch, height, width, 3] -> detections function, the
  one its SavedModel signature exports."""
  return module.inference_from_image_tensors.get_concrete_function(IMAGE_SPEC)


def export(module: ZooDetectionModule, directory: str, entry_json: str) -> str:
  """Writes the SavedModel (signature 'serving_default' on uint8 images) and
  the entry JSON into `directory`. The export is built beside it and renamed
  into place, so an existing export is replaced whole or not at all."""
  target = os.path.abspath(directory)
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  build_dir = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(target)}-")
  try:
    # The SavedModel keeps the serving function and the variables it reads,
    # not the Keras layers: serialising every layer's call traces the whole
    # model again and triples the export time, and serving needs none of it.
    root = tf.Module()
    root.model_variables = list(module.model.variables)
    tf.saved_model.save(root, build_dir, signatures={SIGNATURE_KEY: serving_function(module)})
    os.makedirs(os.path.join(build_dir, os.path.dirname(ENTRY_FILE)), exist_ok=True)
    with open(os.path.join(build_dir, ENTRY_FILE), "w", encoding="utf-8") as f:
      f.write(entry_json)
    os.chmod(build_dir, 0o755)
    _replace_dir(build_dir, target)
  except BaseException:
    shutil.rmtree(build_dir, ignore_errors=True)
    raise
  return target


def _replace_dir(new: str, target: str) -> None:
  if not os.path.exists(target):
    os.rename(new, target)
    return
  old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".old-{os.path.basename(target)}-")
  os.rmdir(old)
  os.rename(target, old)
  os.rename(new, target)
  shutil.rmtree(old, ignore_errors=True)
