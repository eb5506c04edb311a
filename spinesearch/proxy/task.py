"""The proxy task: train a scaled-down RetinaNet for one architecture, then
evaluate it with pycocotools.

Model Garden supplies every detection part: the model (through
`spinesearch.modeling`), the input pipeline (tf.Example decoder, RetinaNet
parser with its anchor labeler), the focal and Huber losses (its RetinaNet
task's `build_losses`) and the COCO evaluator. What is ours is a lean training
loop: one `tf.function` step with no metric objects, a NaN check on every step,
and a warm-up + cosine learning rate.
"""
import contextlib
import io
import math
import time
from typing import Callable, Optional, Sequence, Tuple

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tensorflow as tf
import tf_keras

from official.vision.configs import retinanet as retinanet_config
from official.vision.evaluation import coco_evaluator
from official.vision.tasks import retinanet as retinanet_task

from spinesearch import phases
from spinesearch.data.dataset import DatasetPaths
from spinesearch.errors import UserError
from spinesearch.modeling import builder, cost
from spinesearch.proxy import inputs
from spinesearch.proxy.checkpoint import StopFlag, TrainingCheckpoint, TrainingStopped
from spinesearch.proxy.config import ProxyConfig
from spinesearch.proxy.optimizer import FusedOptimizer
from spinesearch.proxy.result import TrialResult
from spinesearch.space.architecture import Architecture

Progress = Callable[[int, int, float], None]


class NonFiniteLoss(Exception):
  pass


class ProxyTask:
  """Trains and evaluates architectures on one dataset with one config."""

  def __init__(self, config: ProxyConfig, dataset: DatasetPaths,
               checkpoint: Optional[TrainingCheckpoint] = None):
    self.config = config
    self.dataset = dataset
    # For long runs that must survive a stop (spinesearch.proxy.checkpoint).
    self.checkpoint = checkpoint
    lean_graph_optimization()

  # ---- public ----------------------------------------------------------------

  def run(self, architecture: Architecture, progress: Optional[Progress] = None,
          measure_latency: bool = True) -> TrialResult:
    """Trains, evaluates and measures one architecture (its latency too,
    unless `measure_latency` is False: timing it takes seconds). User mistakes
    (an architecture that cannot be built at this size) raise UserError; a
    diverging training run returns a failed result with its reason."""
    return self.fit(architecture, progress, measure_latency)[1]

  def fit(self, architecture: Architecture, progress: Optional[Progress] = None,
          measure_latency: bool = True) -> Tuple[tf_keras.Model, TrialResult]:
    """As `run`, and also returns the trained model (proxy-scaled). The one
    model built serves training, evaluation and the cost measurements."""
    start = time.perf_counter()
    result = TrialResult()
    arch = self.config.scaled(architecture)
    arch.validate()
    arch.check_image_size(self.config.image_size)
    model, mg_task = self.build(arch)
    result.params = cost.count_params(model)
    try:
      self._train(model, mg_task, result, progress)
    except NonFiniteLoss as e:
      result.failed(str(e))
    if result.ok:
      self.evaluate(model, mg_task, result)
      if self.config.measure_cost:
        result.multiply_adds = cost.count_multiply_adds(model, self.config.image_size)
        if measure_latency:
          result.latency_ms = cost.measure_latency_ms(model, self.config.image_size)
    result.total_seconds = time.perf_counter() - start
    return model, result

  @property
  def num_classes(self) -> int:
    # Model Garden's convention: class ids are the dataset's category ids and
    # index 0 is background, so the head needs max id + 1 outputs.
    return self.dataset.num_classes

  def build(self, arch: Architecture):
    """A fresh, seeded model for a proxy-scaled architecture, and the Model
    Garden task that supplies its inputs and losses."""
    self.new_session()
    return self.build_model(arch), self.model_garden_task(arch)

  def new_session(self) -> None:
    """Clears Keras' state and seeds it; sets the precision policy."""
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(self.config.seed)
    tf_keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if self.config.precision == "bfloat16" else "float32")

  @phases.timed("build")
  def build_model(self, arch: Architecture, block_names: Optional[Sequence[str]] = None):
    """The proxy's RetinaNet for a proxy-scaled architecture (`block_names`:
    see `builder.build_retinanet`)."""
    return builder.build_retinanet(
        arch, num_classes=self.num_classes, image_size=self.config.image_size,
        num_scales=self.config.num_scales, aspect_ratios=self.config.aspect_ratios,
        anchor_size=self.config.anchor_size, norm_momentum=self.config.norm_momentum,
        pre_nms_score_threshold=self.config.pre_nms_score_threshold,
        block_names=block_names)

  def optimizer(self, total_steps: int) -> FusedOptimizer:
    """Adam (or SGD with momentum) on the warm-up + cosine schedule.

    Fused kernels (one op per variable) make tracing a training step about 5x
    cheaper than Keras' new optimizers' dozen ops per variable, with steps as
    fast; see `spinesearch.proxy.optimizer` for why not Keras' optimizers.
    """
    c = self.config
    return FusedOptimizer(c.optimizer, self.learning_rate(total_steps), clip_norm=c.clip_norm,
                          momentum=c.momentum)

  @staticmethod
  def make_train_step(model, mg_task, optimizer):
    """One forward + backward + update, as a `tf.function` (no XLA: it is never
    faster on this CPU and cannot compile the NMS). Its first call is timed as
    phase "trace", the others as "train" (spinesearch.phases).

    The optimizer's slots for the model's variables are created first, so the
    step is traced once: creating variables inside a `tf.function` makes
    TensorFlow trace it twice.
    """
    variables = model.trainable_variables
    optimizer.create_slots(variables)

    @tf.function
    def train_step(images, labels):
      with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
        loss = mg_task.build_losses(outputs, labels, aux_losses=model.losses)[0]
      optimizer.apply(tape.gradient(loss, variables), variables)
      return loss

    return phases.first_call_is_trace(train_step)

  # ---- pieces -----------------------------------------------------------------

  @phases.timed("build")
  def model_garden_task(self, arch: Architecture) -> retinanet_task.RetinaNetTask:
    """A Model Garden RetinaNet task carrying our data and anchor settings; we
    use its input pipeline and its losses, not its model."""
    c = self.config
    dtype = "bfloat16" if c.precision == "bfloat16" else "float32"
    task_config = retinanet_config.RetinaNetTask(
        model=retinanet_config.RetinaNet(
            num_classes=self.num_classes,
            input_size=[c.image_size, c.image_size, 3],
            min_level=arch.min_level, max_level=arch.max_level,
            anchor=retinanet_config.Anchor(num_scales=c.num_scales,
                                           aspect_ratios=list(c.aspect_ratios),
                                           anchor_size=c.anchor_size)),
        losses=retinanet_config.Losses(l2_weight_decay=0.0),
        annotation_file=self.dataset.val_annotations,
        train_data=retinanet_config.DataConfig(
            input_path=self.dataset.train_pattern, is_training=True,
            global_batch_size=c.batch_size, dtype=dtype, seed=c.seed,
            shuffle_buffer_size=1000,
            parser=retinanet_config.Parser(aug_rand_hflip=c.aug_rand_hflip)),
        validation_data=retinanet_config.DataConfig(
            input_path=self.dataset.val_pattern, is_training=False,
            global_batch_size=c.eval_batch_size, dtype=dtype, drop_remainder=False))
    return retinanet_task.RetinaNetTask(task_config)

  def learning_rate(self, total_steps: int) -> tf_keras.optimizers.schedules.LearningRateSchedule:
    c = self.config
    warmup = min(c.warmup_steps, max(total_steps - 1, 0))
    return tf_keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=c.learning_rate * 0.1 if warmup else c.learning_rate,
        decay_steps=max(total_steps - warmup, 1), alpha=0.01,
        warmup_target=c.learning_rate if warmup else None, warmup_steps=warmup)

  def _train(self, model, mg_task, result: TrialResult, progress: Optional[Progress]) -> None:
    c = self.config
    steps = c.steps_for(self.dataset.num_train or _count_records(self.dataset.train_pattern))
    optimizer = self.optimizer(steps)
    train_step = self.make_train_step(model, mg_task, optimizer)
    checkpoint = self.checkpoint
    done = checkpoint.restore(model, optimizer) if checkpoint else 0
    if done:
      # A fresh shuffle for the steps left (module docstring of checkpoint).
      mg_task.task_config.train_data.seed = c.seed + done
    data = inputs.training_batches(mg_task)

    first_step_end = None
    loss = checkpoint.loss if done else float("nan")
    stop = StopFlag()
    t0 = time.perf_counter()
    with stop.installed() if checkpoint else contextlib.nullcontext():
      for step in range(done + 1, steps + 1):
        images, labels = next(data)
        loss = float(train_step(images, labels))
        if not math.isfinite(loss):
          result.final_loss = loss
          raise NonFiniteLoss(f"training loss became {loss} at step {step} of {steps}")
        if step == done + 1:
          first_step_end = time.perf_counter()
        if progress:
          progress(step, steps, loss)
        if checkpoint and (stop.requested or step == steps or checkpoint.due()):
          checkpoint.save(step, loss, time.perf_counter() - t0, model, optimizer)
          if stop.requested and step < steps:
            raise TrainingStopped(f"stopped at step {step} of {steps}; saved {checkpoint.path}; "
                                  f"run the same command again to resume")
    end = time.perf_counter()
    result.final_loss = loss
    result.train_steps = steps
    result.train_seconds = end - t0 + (checkpoint.seconds_before if checkpoint else 0.0)
    # Throughput of the warm loop: the first step includes tracing.
    if first_step_end is not None and steps - done > 1:
      result.images_per_second = (steps - done - 1) * c.batch_size / (end - first_step_end)

  @phases.timed("evaluate")
  def evaluate(self, model, mg_task, result: TrialResult,
               max_images: Optional[int] = None) -> None:
    """AP, AP50, AP75, APs/m/l of `model` on the validation split (its first
    `max_images`, default the config's `max_eval_images`, else all) into
    `result`, by pycocotools through Model Garden's COCO evaluator."""
    c = self.config
    limit = max_images or c.max_eval_images
    evaluator = _quiet(lambda: coco_evaluator.COCOEvaluator(
        annotation_file=self.dataset.val_annotations, include_mask=False,
        need_rescale_bboxes=True))
    dataset = inputs.validation_batches(
        mg_task, math.ceil(limit / c.eval_batch_size) if limit else None)

    @tf.function
    def predict(images, labels):
      outputs = model(images, anchor_boxes=labels["anchor_boxes"],
                      image_shape=labels["image_info"][:, 1, :], training=False)
      return {
          "detection_boxes": outputs["detection_boxes"],
          "detection_scores": outputs["detection_scores"],
          "detection_classes": outputs["detection_classes"],
          "num_detections": outputs["num_detections"],
          "source_id": labels["groundtruths"]["source_id"],
          "image_info": labels["image_info"],
      }

    for images, labels in dataset:
      evaluator.update_state(labels["groundtruths"], predict(images, labels))
    metrics = _quiet(evaluator.result)
    result.ap, result.ap50, result.ap75 = (float(metrics[k]) for k in ("AP", "AP50", "AP75"))
    result.aps, result.apm, result.apl = (float(metrics[k]) for k in ("APs", "APm", "APl"))


def lean_graph_optimization() -> None:
  """Turns off Grappler's graph rewrites for this process's functions.

  Measured here on a proxy training step: they add 7-20 s to its first call
  and do not make its steps faster on this CPU (0.24-0.36 s either way, batch
  16), and a trial or a supernet path runs each traced step only a few
  hundred times.
  """
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def _count_records(pattern: str) -> int:
  files = tf.io.gfile.glob(pattern)
  if not files:
    raise UserError(f"no training files match {pattern}")
  return int(tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1))


def _quiet(fn):
  """pycocotools prints its whole summary table to stdout; a search prints one
  line per trial, so the table is kept out of it."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn()
