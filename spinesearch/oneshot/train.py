"""Supernet training: sample paths, train them on shared weights, checkpoint.

A training step traces once per architecture (about 5 s here with the proxy's
lean optimizer and graph settings, plus about 3.5 s to build the Keras model),
so a new path every step, as DetNAS samples in PyTorch, would be almost all
set-up. Instead a pool of `pool_size` paths trains round-robin, one step
each in turn; all of them are built on the same live variables
(`bank.SharedVariables`), so every step trains the shared weights directly and
nothing is copied. A path leaves the pool after `path_steps` of its own steps
and a newly sampled one takes its place; the pool's ages are staggered, so a
new path arrives every `path_steps` steps. One Adam optimizer and one
warm-up + cosine schedule cover the whole run.

The trainer checkpoints (float32 weights, Adam's slots, the pool, the sampler's
random state) atomically every `checkpoint_every_s` and when stopped by
SIGTERM or Ctrl-C, and writes `weights.npz` for trials with it. Run again, it
resumes from the checkpoint; a kill -9 loses only the steps since it. The
data order after a resume differs from an uninterrupted run's (the input
pipeline is reseeded with the step), the rest is restored exactly.
"""
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO

import numpy as np
import tf_keras

from spinesearch.errors import ConfigError, UserError
from spinesearch.oneshot import bank, keys
from spinesearch.oneshot.config import (CHECKPOINT_FILE, FORMAT_VERSION, WEIGHTS_FILE,
                                        SupernetConfig, read_meta, write_meta)
from spinesearch.progress import ScalarEvents, format_duration
from spinesearch.proxy.checkpoint import StopFlag
from spinesearch.space.architecture import Architecture

_STATE_KEY = "__state__"
_LOSS_EMA = 0.98


@dataclasses.dataclass
class TrainerOptions:
  """How a training run behaves; none of it changes the supernet."""
  checkpoint_every_s: float = 300.0
  progress_every_s: float = 30.0
  reference_every_steps: int = 2000
  reference_eval_images: int = 500
  cache_dir: Optional[str] = None
  float16_weights: bool = True


@dataclasses.dataclass
class _PoolPath:
  architecture: Architecture
  steps_left: int
  train_step: Optional[Callable] = None


class Interrupted(Exception):
  """SIGTERM or Ctrl-C: the trainer checkpointed and stopped."""


class SupernetTrainer:
  """Trains (or resumes) the supernet in `folder` (module docstring)."""

  def __init__(self, folder: str, config: SupernetConfig, options: TrainerOptions = None,
               out: TextIO = sys.stdout):
    self.folder = folder
    self.config = config
    self.options = options or TrainerOptions()
    self.out = out
    meta = read_meta(folder)
    if meta is not None:
      stored = SupernetConfig.from_dict(meta["config"])
      changed = stored.differences(config)
      if changed:
        raise ConfigError(f"{folder} holds a supernet trained with other settings "
                          f"({'; '.join(changed)}); use the same flags to resume it, "
                          f"or another folder")
    self._meta = meta

  # ---- set-up ---------------------------------------------------------------------

  def _setup(self) -> None:
    from spinesearch.data import dataset as dataset_lib
    from spinesearch.proxy.task import ProxyTask
    c = self.config
    self.space = c.build_space()
    self.proxy = c.proxy_config()
    self.dataset = dataset_lib.from_spec(c.dataset, self.options.cache_dir)
    self.task = ProxyTask(self.proxy, self.dataset)
    self.task.new_session()
    self.reference = reference_architecture(self.space)
    self.mg_task = self.task.model_garden_task(self.proxy.scaled(self.reference))
    self.optimizer = self.task.optimizer(c.train_steps)
    self._cost_cache: Dict[str, float] = {}

  def _restore(self) -> None:
    c = self.config
    checkpoint = os.path.join(self.folder, CHECKPOINT_FILE)
    arrays = bank.read_arrays(checkpoint) if os.path.exists(checkpoint) else {}
    state = json.loads(str(arrays.pop(_STATE_KEY))) if arrays else None
    self._slots = {k: v for k, v in arrays.items() if "@" in k}
    self._restored = {k: v for k, v in arrays.items() if "@" not in k}
    self.shared = bank.SharedVariables(self._restored)
    if state is None:
      self.step = 0
      self.rng = random.Random(c.seed)
      self.paths_started = 0
      self.images_seen = 0
      self.train_seconds = 0.0
      self.wall_seconds = 0.0
      self.history: List[Dict[str, Any]] = []
      self.pool = []
      for i in range(c.pool_size):
        # Staggered ages: path i leaves after (i + 1) / pool_size of a life.
        life = max(1, math.ceil(c.path_steps * (i + 1) / c.pool_size))
        self.pool.append(_PoolPath(self._sample(), life))
    else:
      self.step = state["step"]
      self.rng = random.Random()
      self.rng.setstate(_rng_state(state["rng"]))
      self.paths_started = state["paths_started"]
      self.images_seen = state["images_seen"]
      self.train_seconds = state["train_seconds"]
      self.wall_seconds = state.get("wall_seconds", 0.0)
      self.history = state["history"]
      self.pool = [_PoolPath(Architecture.from_dict(p["architecture"]), p["steps_left"])
                   for p in state["pool"]]
    self.optimizer.iterations.assign(self.step)

  # ---- sampling --------------------------------------------------------------------

  def _sample(self) -> Architecture:
    """A path from the space: uniform per decision, under the FLOPs cap, or
    a mutation of the space's published point (SupernetConfig.sampling)."""
    c = self.config
    self.paths_started += 1
    if c.sampling == "around_reference":
      return near_reference(self.space, self.rng, c.max_mutations)
    for _ in range(1000):
      architecture = self.space.decode(self.space.sample(self.rng))
      if c.sampling == "uniform" or self._multiply_adds(architecture) <= c.max_multiply_adds:
        return architecture
    raise UserError(f"no path of 1,000 sampled has at most {c.max_multiply_adds} G "
                    f"multiply-adds at the proxy's scaling; raise --max_multiply_adds")

  def _multiply_adds(self, architecture: Architecture) -> float:
    from spinesearch.modeling import cost
    key = architecture.fingerprint()
    if key not in self._cost_cache:
      tf_keras.backend.clear_session()
      model = self.task.build_model(self.proxy.scaled(architecture))
      self._cost_cache[key] = cost.count_multiply_adds(model, self.proxy.image_size) / 1e9
    return self._cost_cache[key]

  # ---- training --------------------------------------------------------------------

  def setup(self) -> None:
    """Builds everything a step needs and restores the checkpoint, if any."""
    self._setup()
    self._restore()
    self._write_meta()
    self._data = iter(self.mg_task.build_inputs(
        self.mg_task.task_config.train_data.replace(seed=self.config.seed + self.step)))

  def train_one_step(self) -> float:
    """One training step of the next path of the pool (built and traced
    first if it is new); returns its loss."""
    c = self.config
    slot = self.step % c.pool_size
    path = self.pool[slot]
    if path.train_step is None:
      path.train_step = self._prepare(path)
    images, labels = next(self._data)
    t0 = time.perf_counter()
    loss = float(path.train_step(images, labels))
    self.train_seconds += time.perf_counter() - t0
    if not math.isfinite(loss):
      self._checkpoint()
      raise UserError(f"supernet training loss became {loss} at step {self.step + 1} "
                      f"(path {path.architecture.fingerprint()[:80]}...); the last "
                      f"checkpoint is kept")
    self.step += 1
    self.images_seen += self.proxy.batch_size
    path.steps_left -= 1
    if path.steps_left <= 0:
      self.pool[slot] = _PoolPath(self._sample(), c.path_steps)
    return loss

  def run(self) -> int:
    """Trains to `train_steps`; returns 0, or raises Interrupted after a
    checkpoint when stopped."""
    self.setup()
    c, o = self.config, self.options
    total = c.train_steps
    events = ScalarEvents(os.path.join(self.folder, "tensorboard"))
    stop = StopFlag()
    self._print(f"supernet {self.folder}: {c.space} space, {len(self._restored)} "
                f"weights restored, step {self.step}/{total}, pool of {c.pool_size} paths, "
                f"a new path every {c.path_steps} steps, {self.dataset.num_train} training "
                f"images")
    last_checkpoint = last_progress = time.monotonic()
    run_start, run_start_step = time.monotonic(), self.step
    loss_ema = None
    try:
      with stop.installed():
        while self.step < total:
          t0 = time.monotonic()
          loss = self.train_one_step()
          self.wall_seconds += time.monotonic() - t0
          loss_ema = loss if loss_ema is None else _LOSS_EMA * loss_ema + (1 - _LOSS_EMA) * loss
          now = time.monotonic()
          if now - last_progress >= o.progress_every_s or self.step == total:
            rate = (self.step - run_start_step) / max(now - run_start, 1e-9)
            lr = self.optimizer.current_learning_rate()
            events.scalars(self.step, {"loss": loss_ema, "learning_rate": lr,
                                       "images_per_second": rate * self.proxy.batch_size,
                                       "paths": self.paths_started})
            eta = (total - self.step) / max(rate, 1e-9)
            self._print(f"step {self.step}/{total} ({100 * self.step / total:.1f}%) loss "
                        f"{loss_ema:.4f} lr {lr:.2e} {rate * self.proxy.batch_size:.1f} img/s "
                        f"paths {self.paths_started} elapsed {format_duration(now - run_start)} "
                        f"eta {format_duration(eta)}")
            last_progress = now
          if o.reference_every_steps and self.step % o.reference_every_steps == 0:
            self._evaluate_reference(events)
          if now - last_checkpoint >= o.checkpoint_every_s or stop.requested:
            self._checkpoint()
            last_checkpoint = time.monotonic()
            if stop.requested:
              raise Interrupted(f"stopped at step {self.step}/{total}; checkpoint written, "
                                f"run the same command to resume")
      if not self.history or self.history[-1]["step"] != self.step:
        self._evaluate_reference(events)
      self._checkpoint()
    finally:
      events.close()
    self._print(f"supernet trained: {self.step} steps, {self.images_seen} images, "
                f"{self.paths_started} paths, {format_duration(self.wall_seconds)} of "
                f"training; weights: {os.path.join(self.folder, WEIGHTS_FILE)}")
    return 0

  def _prepare(self, path: _PoolPath) -> Callable:
    """Builds a path on the shared variables and traces its training step;
    Adam's slots of weights restored from a checkpoint come back with them."""
    arch = self.proxy.scaled(path.architecture)
    # Keras keeps state of every model built in a session (about 25 MB per
    # model measured here); the pool's traced steps do not need it.
    tf_keras.backend.clear_session()
    with self.shared.building() as built:
      model = self.task.build_model(arch, keys.block_names(self.space, arch))
      built.restrict_to(model)
    train_step = self.task.make_train_step(model, self.mg_task, self.optimizer)
    for key, variable in built.variables.items():
      if not variable.trainable:
        continue
      for name, slot in self.optimizer.slots(variable).items():
        saved = self._slots.pop(f"{key}@{name}", None)
        if saved is not None:
          slot.assign(saved)
    return train_step

  # ---- outputs ---------------------------------------------------------------------

  def _checkpoint(self) -> None:
    """checkpoint.npz (everything a resume needs), then weights.npz and
    supernet.json; each file is written atomically."""
    weights = self.shared.arrays()
    slots = dict(self._slots)
    for key, variable in self.shared.variables.items():
      if not variable.trainable:
        continue
      try:
        variable_slots = self.optimizer.slots(variable)
      except KeyError:
        continue  # a weight created but not trained yet
      for name, slot in variable_slots.items():
        slots[f"{key}@{name}"] = slot.numpy()
    state = {"step": self.step, "rng": self.rng.getstate(), "paths_started": self.paths_started,
             "images_seen": self.images_seen, "train_seconds": self.train_seconds,
             "wall_seconds": self.wall_seconds, "history": self.history,
             "pool": [{"architecture": p.architecture.to_dict(), "steps_left": p.steps_left}
                      for p in self.pool]}
    checkpoint = dict(weights, **slots)
    checkpoint[_STATE_KEY] = np.array(json.dumps(state))
    bank.write_arrays(os.path.join(self.folder, CHECKPOINT_FILE), checkpoint, float16=False)
    self.weights_record = bank.write_arrays(os.path.join(self.folder, WEIGHTS_FILE), weights,
                                            float16=self.options.float16_weights)
    self._write_meta()

  def _write_meta(self) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "config": self.config.to_dict(),
        "space": self.space.config(),
        "proxy": self.proxy.to_dict(),
        "dataset": self.config.dataset,
        "num_classes": self.task.num_classes,
        "reference": {"name": self.reference.name, "architecture": self.reference.to_dict()},
        "progress": {"step": self.step, "train_steps": self.config.train_steps,
                     "images_seen": self.images_seen, "paths_started": self.paths_started,
                     "train_seconds": round(self.train_seconds, 1),
                     "wall_seconds": round(self.wall_seconds, 1)},
        "reference_ap": self.history,
        "weights": getattr(self, "weights_record", (self._meta or {}).get("weights")),
    }
    os.makedirs(self.folder, exist_ok=True)
    write_meta(self.folder, meta)

  def _evaluate_reference(self, events) -> None:
    """The reference path's one-shot AP on the weights as they are now."""
    from spinesearch.oneshot.evaluation import OneShotScorer, OneShotSettings
    settings = OneShotSettings(eval_images=self.options.reference_eval_images, seed=self.step)
    scorer = OneShotScorer(self.task, self.space, settings)
    start = time.perf_counter()
    result = scorer.score(self.reference, self.shared.arrays(), new_session=False)
    entry = {"step": self.step, "images_seen": self.images_seen,
             "train_seconds": round(self.train_seconds, 1),
             "wall_seconds": round(self.wall_seconds, 1), "ap": result.ap,
             "ap50": result.ap50, "eval_seconds": round(time.perf_counter() - start, 1)}
    self.history.append(entry)
    events.scalars(self.step, {"reference/ap": result.ap, "reference/ap50": result.ap50})
    self._print(f"  {self.reference.name or 'reference'} path at step {self.step}: "
                f"AP {result.ap:.4f} AP50 {result.ap50:.4f} ({entry['eval_seconds']} s)")

  def _print(self, line: str) -> None:
    print(line, file=self.out, flush=True)


def reference_architecture(space) -> Architecture:
  """The published point of `space` (SpineNet-49, NAS-FPN, or both): the
  supernet's reference path."""
  from spinesearch.space import known
  reference = known.published_point(space)
  if reference is None:
    raise ConfigError(f"supernet: the {space.name} space with these settings holds no "
                      f"published architecture to use as the reference path")
  return reference


def near_reference(space, rng, max_mutations: int) -> Architecture:
  """The space's published point with 0 to `max_mutations` decisions
  re-sampled, the count uniform (as regularized evolution mutates)."""
  from spinesearch.algorithms.evolution import near
  base = space.encode(reference_architecture(space))
  return space.decode(near(space, base, rng, max_mutations))


def _rng_state(state) -> tuple:
  # JSON turns the state's tuples into lists.
  version, internal, gauss = state
  return version, tuple(internal), gauss
