"""The proxy's inputs, read once per process and parsed once per worker.

Every proxy trial of a search reads the same examples through the same Model
Garden RetinaNet decoder, parser and anchor labeler; only their order and
flips depend on the trial's seed. So a process keeps a small data set's
serialized training records in memory, and a process that trains on it a
second time (a warm worker: spinesearch.worker) parses and labels all of it
once and keeps that too. Either way a trial's batches are the same:

- Each epoch is a new permutation of all examples, drawn from the trial's
  seed, and each example is mirrored with probability 1/2 when the parser
  flips (Model Garden's aug_rand_hflip). A mirrored example is the decoded
  image and boxes flipped left to right, then parsed without a flip: the
  parser flips after normalising and before resizing and labelling, steps
  that commute with a mirror, so this is what its own random flip gives.
- Parsed on demand, a trial parses exactly the examples it draws, as Model
  Garden's reader would; kept parsed, it gathers rows of stacked tensors (the
  originals and, for a flipping parser, their mirrors), which takes a few
  milliseconds per batch instead of tens.

Validation batches are Model Garden's own, in its order, kept after their
first use, so an evaluation is exactly what streaming them gives.

Data sets larger than the limits below, and parsers with other random
augmentation (scale jitter, AutoAugment, JPEG quality), stream through Model
Garden's reader each trial. The limits are constants, not settings: whether a
data set is drawn this way never depends on how trials are run, and parsing
it on demand or keeping it parsed gives the same batches.
"""
import json
import math
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import tensorflow as tf
from official.vision.dataloaders import retinanet_input, tf_example_decoder
from official.vision.ops import box_ops, preprocess_ops

# Serialized records held in memory (the quick-start set: 21 MB).
MAX_RECORD_BYTES = 1024 * 2 ** 20
# Parsed examples a worker keeps (the quick-start set, originals and mirrors:
# about 1.1 GB), and validation batches.
MAX_PARSED_BYTES = 1536 * 2 ** 20
_PARSE_BATCH = 64
# The anchors are the same for every example: kept once, not per row.
_SHARED_LABELS = ("anchor_boxes",)


class TrainingExamples:
  """One data set's training records, and once asked for batches a second
  time, its parsed examples (module docstring)."""

  def __init__(self, mg_task, config, records: tf.Tensor):
    self.records = records
    self.count = int(records.shape[0])
    self.mirrored = bool(config.parser.aug_rand_hflip)
    self.rows = self.count * (2 if self.mirrored else 1)
    self._decode = _decoder(config).decode
    self._parse = _parser(mg_task, config).parse_fn(is_training=True)
    self._parsed = None  # the leaves of (images, labels) of every row, without the shared labels
    self._structure = None  # ... and their structure
    self._shared = None  # the shared labels of one example
    self._uses = 0

  def batches(self, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless batches of `batch_size`, drawn by `seed`."""
    self._uses += 1
    if self._uses == 2:
      self._keep_parsed()
    count = self.count
    rows = tf.data.Dataset.range(count).shuffle(count, seed=seed,
                                                reshuffle_each_iteration=True).repeat()
    if self.mirrored:
      flips = tf.data.Dataset.random(seed=seed + 1).map(lambda r: r % 2)
      rows = tf.data.Dataset.zip((rows, flips)).map(lambda i, flip: i + flip * count)
    if self._parsed is None:
      batches = rows.map(self._example, num_parallel_calls=tf.data.AUTOTUNE).batch(
          batch_size, drop_remainder=True)
    else:
      # One gather per batch: a trial's input pipeline is these few ops.
      batches = rows.batch(batch_size, drop_remainder=True).map(
          self._gather, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)

  @property
  def kept_parsed(self) -> bool:
    return self._parsed is not None

  def _example(self, row):
    """The parsed example of a row: record `row mod count`, mirrored when
    `row >= count`."""
    decoded = self._decode(self.records[row % self.count])
    if self.mirrored:
      decoded = tf.cond(row >= self.count, lambda: _mirrored(decoded), lambda: decoded)
    return self._parse(decoded)

  def _gather(self, rows):
    """The parsed examples of a batch of rows, and the shared labels."""
    arrays = self._parsed
    leaves = tf.numpy_function(lambda index: [a[index] for a in arrays], [rows],
                               [tf.as_dtype(a.dtype) for a in arrays], stateful=False)
    for leaf, array in zip(leaves, arrays):
      leaf.set_shape((None, *array.shape[1:]))
    images, labels = tf.nest.pack_sequence_as(self._structure, leaves)
    size = tf.shape(rows)[0]
    shared = tf.nest.map_structure(
        lambda t: tf.tile(t[tf.newaxis], [size] + [1] * len(t.shape)), self._shared)
    return images, dict(labels, **shared)

  def _keep_parsed(self) -> None:
    """Parses every row into stacked arrays, unless they would take more than
    MAX_PARSED_BYTES (then batches stay parsed on demand).

    NumPy arrays filled in place hold them: the parsed set is then in memory
    once, where stacking TensorFlow tensors (or filling variables) leaves the
    process about twice that large (measured: 2.2 GB more for 1.1 GB kept),
    its allocator keeping what the intermediate copies took.
    """
    parsed = tf.data.Dataset.range(self.rows).map(
        self._example, num_parallel_calls=tf.data.AUTOTUNE).batch(_PARSE_BATCH)
    arrays, structure, shared, start = None, None, None, 0
    for images, labels in parsed:
      leaves = tf.nest.flatten((images, _without_shared(labels)))
      if arrays is None:
        structure = (images, _without_shared(labels))
        shared = {k: tf.nest.map_structure(lambda t: t[0], labels[k]) for k in _SHARED_LABELS}
        row_bytes = sum(_nbytes(t) for t in leaves) / int(images.shape[0])
        if row_bytes * self.rows > MAX_PARSED_BYTES:
          return
        arrays = [np.empty((self.rows, *t.shape[1:]), t.dtype.as_numpy_dtype) for t in leaves]
      end = start + int(images.shape[0])
      for array, leaf in zip(arrays, leaves):
        array[start:end] = leaf.numpy()
      start = end
    self._parsed, self._structure, self._shared = arrays, structure, shared


class _KeptOne:
  """The one value of `build()` a process keeps per kind: a worker serves one
  search, so a new key replaces the old value (freed first)."""

  def __init__(self):
    self.key: Optional[str] = None
    self.value: Any = None

  def get(self, key: str, build: Callable[[], Any]) -> Any:
    if key != self.key:
      self.key, self.value = None, None
      self.value, self.key = build(), key
    return self.value


_TRAINING = _KeptOne()
_VALIDATION = _KeptOne()


def training_batches(mg_task) -> Iterator:
  """Training (images, labels) batches of a Model Garden RetinaNet task, of
  its train_data's batch size and seed (module docstring)."""
  config = mg_task.task_config.train_data
  examples = None
  if _drawable(config):
    key = _key(mg_task, config.replace(seed=None, shuffle_buffer_size=1, global_batch_size=0))
    examples = _TRAINING.get(key, lambda: _training_examples(mg_task, config))
  if examples is None:
    return iter(mg_task.build_inputs(config))
  return iter(examples.batches(config.global_batch_size, config.seed))


def validation_batches(mg_task, max_batches: Optional[int] = None) -> List:
  """Model Garden's validation batches of the task (its first `max_batches`),
  kept for later trials when they fit."""
  config = mg_task.task_config.validation_data
  batches = _VALIDATION.get(_key(mg_task, config),
                            lambda: _read_all(mg_task.build_inputs(config), MAX_PARSED_BYTES))
  if batches is None:
    dataset = mg_task.build_inputs(config)
    return list(dataset.take(max_batches) if max_batches else dataset)
  return batches[:max_batches] if max_batches else batches


# ---- reading and parsing ---------------------------------------------------------------

def _key(mg_task, config) -> str:
  """What parsed examples depend on: the model's input size, levels and
  anchors, and the data config."""
  return json.dumps([mg_task.task_config.model.as_dict(), config.as_dict()], sort_keys=True,
                    default=str)


def _drawable(config) -> bool:
  """A parser whose one random step is the horizontal flip."""
  parser = config.parser
  return (not config.tfds_name and config.decoder.type == "simple_decoder"
          and parser.aug_type is None and parser.aug_rand_jpeg is None
          and parser.aug_scale_min == parser.aug_scale_max == 1.0)


def _training_examples(mg_task, config) -> Optional[TrainingExamples]:
  files = _files(config.input_path)
  if not files or sum(tf.io.gfile.stat(f).length for f in files) > MAX_RECORD_BYTES:
    return None
  batches = _read_all(tf.data.TFRecordDataset(files).batch(1024), MAX_RECORD_BYTES)
  if not batches:
    return None
  return TrainingExamples(mg_task, config, tf.concat(batches, axis=0))


def _read_all(dataset: tf.data.Dataset, limit: int) -> Optional[List]:
  """Every element of `dataset`, or None as soon as they exceed `limit` bytes."""
  elements, size = [], 0
  for element in dataset:
    size += sum(_nbytes(t) for t in tf.nest.flatten(element))
    if size > limit:
      return None
    elements.append(element)
  return elements


def _nbytes(tensor) -> int:
  if tensor.dtype == tf.string:
    return int(tf.reduce_sum(tf.strings.length(tensor)))
  return tensor.dtype.size * math.prod(tensor.shape)


def _without_shared(labels: Dict[str, Any]) -> Dict[str, Any]:
  return {k: v for k, v in labels.items() if k not in _SHARED_LABELS}


def _mirrored(example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """A decoded example mirrored left to right (image and normalised boxes)."""
  return dict(example, image=preprocess_ops.horizontal_flip_image(example["image"]),
              groundtruth_boxes=box_ops.horizontal_flip_boxes(example["groundtruth_boxes"]))


def _files(input_path) -> List[str]:
  patterns = input_path.split(",") if isinstance(input_path, str) else list(input_path)
  return sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern.strip()))


def _decoder(config) -> tf_example_decoder.TfExampleDecoder:
  """The decoder RetinaNetTask.build_inputs uses for a 'simple_decoder'."""
  settings = config.decoder.get()
  return tf_example_decoder.TfExampleDecoder(
      regenerate_source_id=settings.regenerate_source_id,
      attribute_names=settings.attribute_names)


def _parser(mg_task, config) -> retinanet_input.Parser:
  """The parser RetinaNetTask.build_inputs builds, without its random flip
  (mirrored examples stand for it)."""
  model, parser = mg_task.task_config.model, config.parser
  return retinanet_input.Parser(
      output_size=model.input_size[:2], min_level=model.min_level,
      max_level=model.max_level, num_scales=model.anchor.num_scales,
      aspect_ratios=model.anchor.aspect_ratios, anchor_size=model.anchor.anchor_size,
      dtype=config.dtype, match_threshold=parser.match_threshold,
      unmatched_threshold=parser.unmatched_threshold,
      box_coder_weights=model.detection_generator.box_coder_weights,
      aug_type=None, aug_rand_hflip=False, aug_rand_jpeg=None,
      aug_scale_min=1.0, aug_scale_max=1.0,
      skip_crowd_during_training=parser.skip_crowd_during_training,
      max_num_instances=parser.max_num_instances, pad=parser.pad,
      keep_aspect_ratio=parser.keep_aspect_ratio)
