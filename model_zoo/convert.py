"""Model Garden TF2 RetinaNet checkpoints -> zoo weights.

Model Garden's trainer saves `tf.train.Checkpoint(global_step=..., model=...,
optimizer=..., **model.checkpoint_items)`: the model, and its backbone,
decoder and head again at the root. A zoo entry and the Model Garden model it
corresponds to are built by the same Model Garden classes (SpineNet,
SpineNetMobile, RetinaNetHead) in the same order, so the checkpoint restores
into the entry's model by TensorFlow's own object-graph matching, given the
same root. Every variable of the entry's model must be restored (a
checkpoint of another model is refused); the optimizer and step are left
behind. The restored model is then stored as zoo weights.

  python -m model_zoo convert --model_garden_checkpoint ckpt-dir/ \
      --model spinenet-49 --output my_zoo/
  python -m model_zoo predict --zoo_dir my_zoo --model spinenet-49 --image img.jpg
"""
import os
from typing import Optional

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tensorflow as tf

from model_zoo import modeling, registry
from model_zoo import weights as weights_lib
from model_zoo.entry import ZooEntry, ZooError


def checkpoint_prefix(path: str) -> str:
  """The checkpoint a path names: a prefix (`ckpt-100`) or a directory's latest."""
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ZooError(f"{path}: no TensorFlow checkpoint in this folder")
    return latest
  if not tf.io.gfile.exists(f"{path}.index"):
    raise ZooError(f"{path}: not a TensorFlow checkpoint (no {os.path.basename(path)}.index)")
  return path


def restore_model_garden_checkpoint(model, path: str) -> str:
  """Restores a Model Garden trainer checkpoint into `model` (a Model Garden
  RetinaNetModel); returns the checkpoint prefix read."""
  prefix = checkpoint_prefix(path)
  checkpoint = tf.train.Checkpoint(model=model, **model.checkpoint_items)
  try:
    status = checkpoint.read(prefix)
    status.assert_existing_objects_matched()
  except AssertionError:
    raise ZooError(f"{prefix}: the checkpoint is not of this model (parts of the model are "
                   f"missing in it)") from None
  except (ValueError, tf.errors.OpError) as e:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ZooError(f"{prefix}: the checkpoint does not fit this model ({detail})") from None
  status.expect_partial()
  return prefix


def convert_checkpoint(entry: ZooEntry, checkpoint: str, output_dir: str, *,
                       float16: bool = False, num_classes: Optional[int] = None,
                       input_size: Optional[int] = None) -> ZooEntry:
  """Writes `output_dir/weights/<name>-<hash>.npz` and the entry pointing to
  it, `output_dir/entries/<name>.json`; returns that entry.

  `num_classes` / `input_size` adapt the entry to the checkpoint's model (a
  COCO checkpoint has 91 classes); class names are kept only while the
  number of classes is unchanged. Weights are stored float32 unless
  `float16`, so a converted model computes what the Model Garden one does.
  """
  changes = {}
  if num_classes and num_classes != entry.num_classes:
    changes.update(num_classes=num_classes, class_names=())
  if input_size:
    changes["input_size"] = input_size
  converted = ZooEntry.from_dict(entry.replace(**changes).to_dict(),
                                 source=f"{entry.name} adapted to the checkpoint")
  model = modeling.build_model(converted)
  prefix = restore_model_garden_checkpoint(model, checkpoint)
  record = weights_lib.save_weights(
      model, registry.weights_dir(output_dir), converted.name, float16=float16,
      source=f"converted from the Model Garden checkpoint {prefix}")
  converted = converted.replace(
      weights=record, training=None, score_threshold=None,
      metrics=tuple(m for m in converted.metrics if not m.get("measured_here")),
      cost=dict(converted.cost) if not changes else {},
      provenance=dict(converted.provenance,
                      converted_from=os.path.abspath(prefix)))
  converted.save(registry.entry_path(converted.name, output_dir))
  return converted
