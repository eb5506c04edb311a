"""Weights files: one `.npz` per model, no pickle, checked by size and sha256.

Each variable is stored under its object path in the model, the path a
`tf.train.Checkpoint(model=model)` gives it (for example
`_backbone/layer_with_weights-0/kernel`). Unlike Keras variable names, which
depend on what else was built in the process, object paths depend only on the
model's structure.

Arrays are stored as float16 when that keeps them finite (batch-norm moving
variances can exceed float16's range and then stay float32), which halves the
file. The archive is written deterministically (fixed member order and
timestamps, no compression), so the same weights always hash the same.
"""
import collections
import os
from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from model_zoo.entry import WEIGHTS_FORMAT, WeightsRecord, ZooError
from spinesearch import files


def variables_by_path(model: tf.Module) -> Dict[str, tf.Variable]:
  """The model's variables keyed by object path, the shortest path from the
  model found breadth-first, as `tf.train.Checkpoint` names them."""
  paths: Dict[int, str] = {id(model): ""}
  found: Dict[str, tf.Variable] = {}
  queue = collections.deque([model])
  while queue:
    parent = queue.popleft()
    for name, child in tf.train.TrackableView.children(parent).items():
      if id(child) in paths:
        continue
      path = f"{paths[id(parent)]}/{name}" if paths[id(parent)] else name
      paths[id(child)] = path
      if isinstance(child, tf.Variable):
        found[path] = child
      else:
        queue.append(child)
  return found


def save_weights(model: tf.Module, folder: str, stem: str, source: str = "",
                 float16: bool = True) -> WeightsRecord:
  """Writes the model's weights to `folder/<stem>-<sha256[:10]>.npz` and
  returns the record an entry stores (file name, sha256, size, format,
  source). The hash in the name means new weights never overwrite the file
  an entry still points to; the file appears whole or not at all. Without
  `float16` every array is stored float32 (exact)."""
  store = files.to_float16_storage if float16 else (lambda a: np.asarray(a, dtype=np.float32))
  arrays = {key: store(var.numpy()) for key, var in sorted(variables_by_path(model).items())}
  data = files.npz_bytes(arrays)
  digest = files.sha256_hex(data)
  path = os.path.join(folder, f"{stem}-{digest[:10]}.npz")
  files.write_bytes_atomically(path, data)
  return WeightsRecord(file=os.path.basename(path), sha256=digest, bytes=len(data),
                       format=WEIGHTS_FORMAT, source=source)


def read_verified(path: str, record: WeightsRecord) -> Dict[str, np.ndarray]:
  """The arrays of a weights file whose size and sha256 match `record`;
  anything else is refused with a ZooError before the file is parsed."""
  try:
    return files.read_checked_npz(path, record.sha256, record.bytes)
  except ValueError as e:
    raise ZooError(f"{path}: {e}") from None


def assign(model: tf.Module, arrays: Mapping[str, np.ndarray], source: str) -> None:
  """Sets every variable of `model` from `arrays` (keyed by object path);
  missing, extra or mis-shaped arrays are refused, naming the first few."""
  variables = variables_by_path(model)
  missing = sorted(set(variables) - set(arrays))
  extra = sorted(set(arrays) - set(variables))
  if missing or extra:
    raise ZooError(f"{source}: the weights do not fit this model ({_few(missing)} missing, "
                   f"{_few(extra)} not in the model)")
  for key, var in variables.items():
    if tuple(arrays[key].shape) != tuple(var.shape):
      raise ZooError(f"{source}: {key} has shape {list(arrays[key].shape)}, "
                     f"the model needs {var.shape.as_list()}")
  for key, var in variables.items():
    var.assign(arrays[key].astype(var.dtype.as_numpy_dtype))


def _few(keys) -> str:
  if not keys:
    return "none"
  shown = ", ".join(keys[:3])
  return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"
