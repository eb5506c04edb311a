"""The proxy's inputs kept in a process: batches parsed on demand and kept
parsed are the same, a mirrored example is what Model Garden's random flip
gives when it fires, seeds draw different batches, and validation batches are
Model Garden's own."""
import numpy as np
import pytest

from spinesearch.data.dataset import ensure_synthetic
from spinesearch.proxy import ProxyConfig

from test_proxy import arch_p3_p6


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  from spinesearch.proxy.task import ProxyTask
  dataset = ensure_synthetic(str(tmp_path_factory.mktemp("cache")), num_train=12, num_val=6,
                             image_size=64, seed=4)
  config = ProxyConfig.from_preset("tiny", image_size=64, batch_size=4, eval_batch_size=4)
  proxy = ProxyTask(config, dataset)
  return proxy.model_garden_task(config.scaled(arch_p3_p6()))


def leaves(batches):
  import tensorflow as tf
  return [np.asarray(leaf) for leaf in tf.nest.flatten(batches)]


def same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def draw(task, seed, batches=6):
  from spinesearch.proxy import inputs
  train = task.task_config.train_data
  task.task_config.train_data = train.replace(seed=seed)
  try:
    data = inputs.training_batches(task)
    return leaves([next(data) for _ in range(batches)])
  finally:
    task.task_config.train_data = train


def test_batches_parsed_on_demand_and_kept_parsed_are_the_same(task):
  from spinesearch.proxy import inputs
  on_demand = draw(task, seed=1)
  assert not inputs._TRAINING.value.kept_parsed
  kept = draw(task, seed=1)  # the second use keeps the parsed examples
  assert inputs._TRAINING.value.kept_parsed
  assert same(on_demand, kept)
  assert not same(kept, draw(task, seed=2))


def test_batches_match_model_garden_s_shapes_and_types(task):
  import tensorflow as tf
  from spinesearch.proxy import inputs
  ours = next(inputs.training_batches(task))
  theirs = next(iter(task.build_inputs(task.task_config.train_data)))
  assert tf.nest.map_structure(lambda t: (t.shape, t.dtype), ours) == \
      tf.nest.map_structure(lambda t: (t.shape, t.dtype), theirs)


def test_a_mirrored_example_is_the_parser_s_own_flip(task, monkeypatch):
  import tensorflow as tf
  from official.vision.ops import preprocess_ops
  from spinesearch.proxy import inputs
  config = task.task_config.train_data
  records = tf.data.TFRecordDataset(inputs._files(config.input_path))
  decoded = inputs._decoder(config).decode(next(iter(records)))
  ours = inputs._parser(task, config).parse_fn(True)(inputs._mirrored(decoded))
  flip = preprocess_ops.random_horizontal_flip
  monkeypatch.setattr(preprocess_ops, "random_horizontal_flip",
                      lambda *args, **kwargs: flip(*args, **dict(kwargs, prob=1.0)))
  flipping = inputs._parser(task, config.replace(parser=config.parser.replace(
      aug_rand_hflip=True)))
  flipping._aug_rand_hflip = True  # ours is built without the flip
  theirs = flipping.parse_fn(True)(decoded)
  assert same(leaves(ours), leaves(theirs))
  unflipped = inputs._parser(task, config).parse_fn(True)(decoded)
  assert not same(leaves(unflipped), leaves(theirs))


def test_validation_batches_are_model_garden_s(task):
  from spinesearch.proxy import inputs
  theirs = leaves(list(task.build_inputs(task.task_config.validation_data)))
  assert same(leaves(inputs.validation_batches(task)), theirs)
  assert same(leaves(inputs.validation_batches(task)), theirs)  # kept
  assert same(leaves(inputs.validation_batches(task, 1)), leaves(
      list(task.build_inputs(task.task_config.validation_data).take(1))))
