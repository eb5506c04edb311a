"""Training a zoo entry and recording its weights, hash and metrics.

Training is the proxy task's (`spinesearch.proxy.ProxyTask.fit`: Model
Garden's input pipeline and losses, the project's training loop), run on the
entry's own model: the proxy config takes the entry's scaling, input size and
anchors, and the model is built from the entry (so a Mobile SpineNet keeps its
separable head and swish). The weights are then stored as float16, loaded
back through their hash check and evaluated with pycocotools through the
serving path, so the AP an entry records is the AP of the file it ships.

An entry found by a one-shot search can start from its supernet's weights
(`SupernetInit`, `--init_from_supernet`): the model is then built the way
the supernet's paths are (the proxy's builder, blocks named by the space), so
each variable whose key the supernet holds starts from its value, and the
rest from their initializers. The weights file is the same either way: its
variables are stored by object path, which the zoo's build shares.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Optional

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tf_keras

from model_zoo import detector as detector_lib
from model_zoo import evaluation, modeling, registry
from model_zoo import weights as weights_lib
from model_zoo.entry import ZooEntry, ZooError
from spinesearch.data.dataset import DatasetPaths
from spinesearch.errors import UserError
from spinesearch.proxy import ProxyConfig
from spinesearch.proxy.checkpoint import TrainingCheckpoint
from spinesearch.proxy.task import ProxyTask
from spinesearch.space.architecture import Architecture

Progress = Callable[[int, int, float], None]


def training_config(entry: ZooEntry, *, preset: str = "quickstart",
                    **overrides) -> ProxyConfig:
  """The proxy preset with the entry's model settings (scaling, input size,
  anchors, score floor) and `overrides` (steps, batch size, learning rate...)."""
  scaling, head = entry.architecture.scaling, entry.head
  model_fields = dict(
      image_size=entry.input_size,
      filter_size_scale=scaling.filter_size_scale, resample_alpha=scaling.resample_alpha,
      endpoints_num_filters=scaling.endpoints_num_filters, block_repeats=scaling.block_repeats,
      head_num_convs=scaling.head_num_convs, head_num_filters=scaling.head_num_filters,
      fpn_num_filters=scaling.fpn_num_filters, fpn_num_repeats=scaling.fpn_num_repeats,
      resnet_model_id=scaling.resnet_model_id,
      num_scales=head.num_scales, aspect_ratios=head.aspect_ratios,
      anchor_size=head.anchor_size, pre_nms_score_threshold=head.pre_nms_score_threshold)
  fixed = sorted(set(overrides) & set(model_fields))
  if fixed:
    raise ZooError(f"{', '.join(fixed)}: set by the entry {entry.name}; edit the entry instead")
  return ProxyConfig.from_preset(preset, **model_fields, **overrides)


@dataclasses.dataclass
class SupernetInit:
  """Start an entry's training from a supernet's weights (module docstring);
  after the build, `inherited_fraction` says how many of the model's
  variables came from it."""
  location: str
  space: Dict[str, Any]
  inherited_fraction: Optional[float] = None

  @classmethod
  def of_entry(cls, entry: ZooEntry) -> "SupernetInit":
    """The supernet an entry's one-shot search scored it on."""
    supernet = entry.provenance.get("supernet") or {}
    if not supernet.get("location"):
      raise ZooError(f"{entry.name}: --init_from_supernet needs an entry found by a one-shot "
                     f"search (its provenance names no supernet)")
    return cls(supernet["location"], entry.provenance.get("space") or {})

  def record(self) -> Dict[str, Any]:
    from spinesearch.oneshot.supernet import Supernet
    return {"supernet": self.location, "weights_sha256": Supernet.open(self.location).weights_sha256,
            "inherited_fraction": self.inherited_fraction}


class EntryTrainingTask(ProxyTask):
  """The proxy task on an entry's model instead of the proxy's own build."""

  def __init__(self, config: ProxyConfig, dataset: DatasetPaths, entry: ZooEntry,
               checkpoint: Optional[TrainingCheckpoint] = None,
               init: Optional[SupernetInit] = None):
    super().__init__(config, dataset, checkpoint)
    self.entry = entry
    self.init = init

  def build_model(self, arch: Architecture, block_names=None):
    if self.init is not None:
      return self._build_from_supernet(arch)
    # Batch-norm momentum is a training setting: the proxy's suits short runs.
    return modeling.build_model(self.entry, norm_momentum=self.config.norm_momentum)

  def _build_from_supernet(self, arch: Architecture):
    from spinesearch.oneshot import bank, keys
    from spinesearch.oneshot.supernet import Supernet
    supernet = Supernet.open(self.init.location)
    try:
      supernet.check_compatible(self.init.space, self.dataset.num_classes)
    except UserError as e:
      raise ZooError(f"{self.entry.name}: cannot start from its supernet: {e}") from None
    with bank.inherited_variables(supernet.arrays()) as built:
      model = super().build_model(arch, keys.block_names(supernet.space(), arch))
      built.restrict_to(model)
    self.init.inherited_fraction = round(len(built.inherited) / max(1, len(built.variables)), 4)
    return model


def adapt_to_dataset(entry: ZooEntry, dataset: DatasetPaths) -> ZooEntry:
  """The entry with the dataset's classes (a head for its labels)."""
  return entry.replace(num_classes=dataset.num_classes, class_names=dataset.class_names)


def checkpoint_fingerprint(entry: ZooEntry, config: ProxyConfig,
                           dataset_description: Dict, init: Optional[SupernetInit] = None) -> str:
  """What a training checkpoint must match to be resumed: the entry's
  architecture and head, the recipe, the data and the initialisation."""
  return json.dumps(dict(entry=entry.name, architecture=entry.architecture.fingerprint(),
                         head=dataclasses.asdict(entry.head), recipe=config.to_dict(),
                         dataset=dataset_description,
                         init=init.record()["weights_sha256"] if init else None), sort_keys=True)


def train_entry(entry: ZooEntry, dataset: DatasetPaths, config: ProxyConfig, *,
                zoo_dir: Optional[str] = None, dataset_description: Dict = None,
                progress: Optional[Progress] = None,
                checkpoint: Optional[TrainingCheckpoint] = None,
                init: Optional[SupernetInit] = None) -> ZooEntry:
  """Trains `entry` on `dataset`, writes its weights into the zoo's weights
  folder and the updated entry (weights, cost, metrics, training record)
  into its entries folder; returns the updated entry. With `checkpoint`,
  training resumes from it and saves to it (TrainingStopped on SIGTERM or
  Ctrl-C); it is removed once the entry is written. With `init`, training
  starts from a supernet's weights."""
  entry = adapt_to_dataset(entry, dataset)
  start = time.perf_counter()
  task = EntryTrainingTask(config, dataset, entry, checkpoint, init)
  model, result = task.fit(entry.architecture, progress)
  if not result.ok:
    raise ZooError(f"training {entry.name} failed: {result.error}")
  folder = registry.weights_dir(zoo_dir)
  previous = entry.weights
  record = weights_lib.save_weights(
      model, folder, entry.name,
      source=f"trained here on {(dataset_description or {}).get('name', 'a user dataset')}")
  try:
    trained = _measured(entry.replace(weights=record), dataset, config, result, zoo_dir,
                        dataset_description or {}, start, init)
  except BaseException:
    # No entry points to a new file yet: leave no orphan behind.
    if not previous or previous.file != record.file:
      os.unlink(os.path.join(folder, record.file))
    raise
  trained.save(registry.entry_path(entry.name, zoo_dir))
  if checkpoint:
    checkpoint.remove()
  if previous and previous.file != record.file and previous.file.startswith(f"{entry.name}-"):
    old = os.path.join(folder, previous.file)
    if os.path.exists(old):
      os.unlink(old)
  return trained


def _measured(trained: ZooEntry, dataset: DatasetPaths, config: ProxyConfig, result,
              zoo_dir: Optional[str], dataset_description: Dict, start: float,
              init: Optional[SupernetInit] = None) -> ZooEntry:
  """The trained entry with its cost, metrics and training record, measured
  on the stored (float16) weights read back through load's hash check."""
  tf_keras.backend.clear_session()
  tf_keras.mixed_precision.set_global_policy("float32")
  detector = detector_lib.load_entry(trained, registry.zoo_dir_or_default(zoo_dir))
  metrics = evaluation.evaluate(detector, dataset)
  measured = dict(
      dataset=dataset_description.get("name", "a user dataset"), split="val",
      input_size=trained.input_size, measured_here=True,
      weights_sha256=trained.weights.sha256, **metrics,
      evaluator="pycocotools COCOeval via Model Garden COCOEvaluator, through Detector.serve")
  # A threshold calibrated for the old weights does not suit these: calibrate again.
  return trained.replace(
      cost=modeling.measure_cost(trained, detector.model), score_threshold=None,
      metrics=(measured,) + tuple(m for m in trained.metrics if not m.get("measured_here")),
      training=dict(
          recipe=config.to_dict(), dataset=dataset_description,
          initialised_from=init.record() if init else None,
          train_steps=result.train_steps, train_seconds=round(result.train_seconds, 1),
          total_seconds=round(time.perf_counter() - start, 1),
          final_loss=result.final_loss,
          float32_ap_before_storage=result.ap))
