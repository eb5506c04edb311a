"""Scoring one architecture on shared weights (the one-shot reward).

The path's model is built with the supernet's weights (`bank.inherited_variables`),
its batch-norm statistics are recomputed on training batches (DetNAS: shared
moving averages describe no single path), it is optionally fine-tuned for a few
steps, and its AP is measured by the proxy task's own evaluation (pycocotools
through Model Garden's COCO evaluator).
"""
import dataclasses
import time
from typing import List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from spinesearch.modeling import cost
from spinesearch.oneshot import bank, keys
from spinesearch.progress import step_logger
from spinesearch.proxy.checkpoint import TrainingCheckpoint
from spinesearch.proxy.optimizer import FusedOptimizer
from spinesearch.proxy.result import TrialResult
from spinesearch.proxy.task import NonFiniteLoss, ProxyTask
from spinesearch.space.architecture import Architecture
from spinesearch.space.base import SearchSpace


@dataclasses.dataclass(frozen=True)
class OneShotSettings:
  """How a path is scored.

  bn_batches: training batches (of the proxy's batch size) its batch-norm
    statistics are recomputed on.
  finetune_steps: training steps from the inherited weights before scoring.
  eval_images: validation images AP is measured on.
  seed: which training batches recalibrate (and fine-tune) it.
  """
  bn_batches: int = 8
  finetune_steps: int = 0
  finetune_learning_rate: float = 3e-4
  eval_images: int = 500
  seed: int = 0

  def __post_init__(self):
    for name in ("bn_batches", "eval_images"):
      if getattr(self, name) < 1:
        raise ValueError(f"one-shot {name} must be at least 1, got {getattr(self, name)}")
    if self.finetune_steps < 0:
      raise ValueError(f"one-shot finetune_steps must be >= 0, got {self.finetune_steps}")


def batch_norm_layers(model: tf_keras.Model) -> List[tf_keras.layers.BatchNormalization]:
  return [layer for layer in model.submodules
          if isinstance(layer, tf_keras.layers.BatchNormalization)]


def recalibrate_batch_norm(model: tf_keras.Model, batches) -> int:
  """Replaces every batch-norm layer's moving mean and variance with the
  statistics of its inputs over `batches` (images), as a path sees them; the
  weights are left alone. Returns the number of batches used.

  Each batch runs forward in training mode with momentum 0, so the moving
  statistics hold that batch's; the result is their pooled mean and variance
  (mean of the batch variances plus the variance of the batch means).
  """
  layers = batch_norm_layers(model)
  momenta = [layer.momentum for layer in layers]
  for layer in layers:
    layer.momentum = 0.0
  try:
    forward = tf.function(lambda images: model(images, training=True))
    means, variances = [], []
    for images in batches:
      forward(images)
      means.append([layer.moving_mean.numpy() for layer in layers])
      variances.append([layer.moving_variance.numpy() for layer in layers])
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  if not means:
    raise ValueError("batch-norm recalibration needs at least one batch")
  for i, layer in enumerate(layers):
    batch_means = np.stack([m[i] for m in means])
    batch_vars = np.stack([v[i] for v in variances])
    layer.moving_mean.assign(batch_means.mean(axis=0))
    layer.moving_variance.assign(batch_vars.mean(axis=0) + batch_means.var(axis=0))
  return len(means)


class OneShotScorer:
  """Scores architectures of `space` on a supernet's arrays with one proxy
  task (its scaling, data and evaluation)."""

  def __init__(self, task: ProxyTask, space: SearchSpace, settings: OneShotSettings):
    self.task = task
    self.space = space
    self.settings = settings

  def build(self, architecture: Architecture, arrays: Mapping[str, np.ndarray],
            new_session: bool = True) -> Tuple[tf_keras.Model, bank.BuiltModel]:
    """The path's model with the supernet's weights where it has them."""
    arch = self.task.config.scaled(architecture)
    arch.validate()
    arch.check_image_size(self.task.config.image_size)
    if new_session:
      self.task.new_session()
    with bank.inherited_variables(arrays) as built:
      model = self.task.build_model(arch, keys.block_names(self.space, arch))
      built.restrict_to(model)
    return model, built

  def score(self, architecture: Architecture, arrays: Mapping[str, np.ndarray],
            new_session: bool = True, measure_multiply_adds: bool = False,
            measure_latency: bool = False,
            checkpoint: Optional[TrainingCheckpoint] = None) -> TrialResult:
    """AP (and AP50, AP75, APs/m/l) of the path on `arrays`; params always,
    multiply-adds and latency when asked (each takes seconds). With
    `checkpoint`, a long fine-tuning saves its state as it goes and resumes
    from it (`spinesearch.proxy.checkpoint`), logging its steps."""
    s = self.settings
    start = time.perf_counter()
    result = TrialResult()
    model, built = self.build(architecture, arrays, new_session)
    mg_task = self.task.model_garden_task(self.task.config.scaled(architecture))
    result.params = cost.count_params(model)
    train = self.train_batches(mg_task)
    if s.finetune_steps:
      try:
        train = self._finetune(model, mg_task, train, result, checkpoint)
      except NonFiniteLoss as e:
        result.failed(str(e))
        result.total_seconds = time.perf_counter() - start
        return result
    recalibrate_batch_norm(model, (images for images, _ in
                                   (next(train) for _ in range(s.bn_batches))))
    self.task.evaluate(model, mg_task, result, max_images=s.eval_images)
    if measure_multiply_adds:
      result.multiply_adds = cost.count_multiply_adds(model, self.task.config.image_size)
    if measure_latency:
      result.latency_ms = cost.measure_latency_ms(model, self.task.config.image_size)
    result.total_seconds = time.perf_counter() - start
    result.inherited_fraction = len(built.inherited) / max(1, len(built.variables))
    return result

  def train_batches(self, mg_task, seed_offset: int = 0):
    """An iterator of (images, labels) training batches, shuffled by the
    settings' seed (plus `seed_offset`: a resumed fine-tuning's fresh shuffle)."""
    # A small shuffle buffer: filling Model Garden's 1,000-example buffer would
    # parse 1,000 images for the few batches a trial reads.
    needed = (self.settings.bn_batches + self.settings.finetune_steps) * self.task.config.batch_size
    config = mg_task.task_config.train_data.replace(
        seed=self.settings.seed + seed_offset, shuffle_buffer_size=min(1000, max(64, 2 * needed)))
    return iter(mg_task.build_inputs(config))

  def _finetune(self, model, mg_task, train, result: TrialResult,
                checkpoint: Optional[TrainingCheckpoint] = None):
    """Fine-tunes `model` on `train`; returns the iterator to go on with."""
    s = self.settings
    optimizer = FusedOptimizer(
        "adam", tf_keras.optimizers.schedules.CosineDecay(s.finetune_learning_rate,
                                                          s.finetune_steps),
        clip_norm=self.task.config.clip_norm)
    step = self.task.make_train_step(model, mg_task, optimizer)
    done = checkpoint.restore(model, optimizer) if checkpoint else 0
    if done:
      train = self.train_batches(mg_task, seed_offset=done)
    log = step_logger("fine-tuning", every=max(100, s.finetune_steps // 10)) if checkpoint else None
    t0 = time.perf_counter()
    loss = checkpoint.loss if done else float("nan")
    for i in range(done + 1, s.finetune_steps + 1):
      loss = float(step(*next(train)))
      if not np.isfinite(loss):
        raise NonFiniteLoss(f"fine-tuning loss became {loss} at step {i}")
      if log:
        log(i, s.finetune_steps, loss)
      if checkpoint and (i == s.finetune_steps or checkpoint.due()):
        checkpoint.save(i, loss, time.perf_counter() - t0, model, optimizer)
    result.final_loss = loss
    result.train_steps = s.finetune_steps
    result.train_seconds = time.perf_counter() - t0 + (checkpoint.seconds_before if checkpoint
                                                       else 0.0)
    return train
