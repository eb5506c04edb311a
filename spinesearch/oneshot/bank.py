"""The shared weights: variables by structural key, and their files.

`SharedVariables` is the supernet while it trains: every model built through
`building()` gets, for each structural key (`keys.variable_key`), the one live
`tf.Variable` of that key, so paths share tensors and a training step of one
path trains them for all. Keys not seen yet start from `initial` (a
checkpoint's values) or, without one, from the layer's own initializer.

`InheritedVariables` is what a one-shot trial builds with: fresh variables,
initialized from the supernet's arrays where the key is known, so the trial
never writes the supernet.

Files are `.npz` archives of plain arrays (read with `allow_pickle=False`,
never unpickled), one array per key (`spinesearch.files`).
"""
import contextlib
import os
from typing import Dict, Iterator, List, Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras

from spinesearch import files
from spinesearch.errors import UserError
from spinesearch.modeling import structure
from spinesearch.oneshot import keys as keys_lib


class ShapeMismatch(UserError):
  """A key met with a shape other than the one it has: the weights belong to
  another scaling, input size or number of classes."""


class BuiltModel:
  """The keys of the variables one model was built with."""

  def __init__(self):
    self.variables: Dict[str, tf.Variable] = {}
    self.inherited: List[str] = []  # keys that came from existing values
    self.new: List[str] = []        # keys that started from their initializer
    self.dropped: List[str] = []    # keys of variables the model does not use

  def restrict_to(self, model: tf_keras.Model) -> None:
    """Forgets the variables `model` does not hold: Model Garden builds a
    block that feeds nothing (and its edges), then leaves it out of the
    model, so it is not part of the path."""
    used = {id(v) for v in model.weights}
    self.dropped = [k for k, v in self.variables.items() if id(v) not in used]
    for key in self.dropped:
      del self.variables[key]
    dropped = set(self.dropped)
    self.inherited = [k for k in self.inherited if k not in dropped]
    self.new = [k for k in self.new if k not in dropped]

  def arrays(self) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self.variables.items()}


class _KeyedCreator:
  """A variable creator that keys every float variable of a model build."""

  def __init__(self, initial: Mapping[str, np.ndarray],
               shared: Optional[Dict[str, tf.Variable]]):
    self.initial = initial
    self.shared = shared
    self.built = BuiltModel()
    self.mismatch: Optional[ShapeMismatch] = None

  @contextlib.contextmanager
  def scope(self):
    """Creates variables through this creator. Keras wraps an error raised
    while a layer builds in pages of context; a shape mismatch comes out as
    its own one-line error instead."""
    with tf.variable_creator_scope(self):
      try:
        yield self.built
      except Exception:
        if self.mismatch is not None:
          raise self.mismatch from None
        raise

  def __call__(self, next_creator, **kwargs):
    dtype = tf.as_dtype(kwargs.get("dtype") or tf.float32)
    if not dtype.is_floating:
      # Keras' step counters of each Model: not weights.
      return next_creator(**kwargs)
    marked = structure.current_part()
    if marked is None:
      raise ValueError(f"variable {kwargs.get('name')!r} was created outside any "
                       f"structural part; it would have no key")
    part, ordinal = marked
    trainable = kwargs.get("trainable")
    trainable = True if trainable is None else bool(trainable)
    layer = tf.get_current_name_scope().rstrip("/").rsplit("/", 1)[-1]
    name = str(kwargs.get("name") or "").rsplit("/", 1)[-1].split(":")[0]
    shape = tuple(tf.TensorShape(kwargs.get("shape") or ()).as_list())
    key = keys_lib.variable_key(part, ordinal, trainable, (layer, name, shape))
    try:
      return self._create(next_creator, key, kwargs, dtype)
    except ShapeMismatch as error:
      self.mismatch = error
      raise

  def _create(self, next_creator, key, kwargs, dtype):
    shape = kwargs.get("shape")
    built = self.built
    if key in built.variables:
      # A path that uses one shared part twice (two edges joining the same
      # levels and types): the same tensor serves both.
      variable = built.variables[key]
      _check_shape(key, variable.shape, shape)
      return variable
    if self.shared is not None and key in self.shared:
      variable = self.shared[key]
      _check_shape(key, variable.shape, shape)
      built.inherited.append(key)
    elif key in self.initial:
      value = self.initial[key]
      _check_shape(key, value.shape, shape)
      variable = next_creator(**dict(kwargs, initial_value=tf.constant(value, dtype=dtype)))
      built.inherited.append(key)
    else:
      variable = next_creator(**kwargs)
      built.new.append(key)
    if self.shared is not None:
      self.shared[key] = variable
    built.variables[key] = variable
    return variable


def _check_shape(key: str, have, want) -> None:
  if want is None:
    return
  if tuple(have) != tuple(tf.TensorShape(want).as_list()):
    raise ShapeMismatch(f"weight {key}: shape {list(have)} in the supernet, "
                        f"{tf.TensorShape(want).as_list()} in this model")


class SharedVariables:
  """The live variables of a training supernet, by key (module docstring)."""

  def __init__(self, initial: Optional[Mapping[str, np.ndarray]] = None):
    self.variables: Dict[str, tf.Variable] = {}
    self._initial = dict(initial or {})

  @contextlib.contextmanager
  def building(self) -> Iterator[BuiltModel]:
    """Builds a model on the shared variables; call `restrict_to(model)` on
    what it yields before leaving, so keys the model leaves out that were
    created for it are not kept."""
    known = set(self.variables)
    creator = _KeyedCreator(self._initial, self.variables)
    with creator.scope() as built:
      yield built
    for key in creator.built.dropped:
      if key not in known:
        self.variables.pop(key, None)
    for key in creator.built.variables:
      self._initial.pop(key, None)

  def arrays(self) -> Dict[str, np.ndarray]:
    """Every key's value: the live ones, and the initial values of keys no
    model has used since."""
    values = dict(self._initial)
    values.update({k: v.numpy() for k, v in self.variables.items()})
    return values


@contextlib.contextmanager
def inherited_variables(arrays: Mapping[str, np.ndarray]) -> Iterator[BuiltModel]:
  """Builds a model whose variables start from `arrays` where their key
  (`keys.variable_key`) is there (module docstring); the model owns its
  variables."""
  with _KeyedCreator(arrays, None).scope() as built:
    yield built


# ---- files ------------------------------------------------------------------------

def write_arrays(path: str, arrays: Mapping[str, np.ndarray], *, float16: bool) -> Dict:
  """Writes `arrays` (sorted by key; float16 where finite, when `float16`) to
  an .npz at `path`, atomically; returns its record: file name, sha256,
  bytes, number of keys."""
  cast = files.to_float16_storage if float16 else (lambda a: np.asarray(a, np.float32))
  store = lambda a: cast(a) if a.dtype.kind == "f" else a  # noqa: E731
  data = files.npz_bytes({k: store(arrays[k]) for k in sorted(arrays)})
  files.write_bytes_atomically(path, data)
  return {"file": os.path.basename(path), "sha256": files.sha256_hex(data),
          "bytes": len(data), "keys": len(arrays)}


def read_arrays(path: str, record: Optional[Mapping] = None) -> Dict[str, np.ndarray]:
  """The arrays of an .npz written by `write_arrays`, after checking its size
  and sha256 against `record` when given; a missing, damaged or foreign file
  is a UserError."""
  record = record or {}
  try:
    return files.read_checked_npz(path, record.get("sha256"), record.get("bytes"))
  except ValueError as e:
    raise UserError(f"{path}: {e}") from None
