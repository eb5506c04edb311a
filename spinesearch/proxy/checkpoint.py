"""Resumable stand-alone training: one atomic .npz per run.

A long run (a zoo entry's hour of training, a validation run) saves, every
`every_s` seconds, when stopped by SIGTERM or Ctrl-C, and after its last step:

  w/<i>        the model's i-th weight (model.weights order, batch-norm
               statistics included), float32
  s/<i>@<slot> the optimizer's slots of the i-th trainable variable
  iterations   the optimizer's step count (it drives the learning rate)
  step, seconds, fingerprint

Run again with the same settings, training continues from `step`; the
learning-rate schedule continues exactly, and the training batches are drawn
with the seed `seed + step` (a fresh shuffle, not a replay of the first one).
A checkpoint of other settings (its fingerprint) is refused in one line rather
than loaded into the wrong model.

A trial request may ask for one (`of_request`): {"checkpoint": {"folder": F,
"name": N}} beside its reward settings. Its fingerprint is the request
without its trial id, so the same run asked for again (a resumed validation)
continues where it was killed.
"""
import contextlib
import json
import os
import signal
import time
from typing import Any, Mapping, Optional

import numpy as np

from spinesearch import files
from spinesearch.errors import ConfigError


class StopFlag:
  """SIGTERM and Ctrl-C, while installed, ask a training loop to save and stop."""

  def __init__(self):
    self.requested = False

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  @contextlib.contextmanager
  def installed(self):
    previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)


class TrainingStopped(Exception):
  """SIGTERM or Ctrl-C: the run saved its checkpoint and stopped."""


class TrainingCheckpoint:
  """The checkpoint file of one training run (module docstring)."""

  def __init__(self, path: str, fingerprint: str, every_s: float = 300.0):
    self.path = path
    self.fingerprint = fingerprint
    self.every_s = every_s
    self.seconds_before = 0.0  # training seconds of earlier sessions
    self.loss = float("nan")  # the loss of the last step saved
    self._last_save = time.monotonic()

  def restore(self, model, optimizer) -> int:
    """Loads the checkpoint into `model` and `optimizer` (its slots created)
    and returns the number of steps done; 0 when there is no checkpoint."""
    if not os.path.exists(self.path):
      return 0
    with open(self.path, "rb") as f:
      try:
        arrays = files.read_npz(f.read())
      except ValueError as e:
        raise ConfigError(f"{self.path}: {e}; delete it to start again") from None
    if str(arrays.get("fingerprint")) != self.fingerprint:
      raise ConfigError(f"{self.path} was written by a run with other settings; "
                        f"delete it to start again, or rerun with that run's settings")
    weights = model.weights
    for i, variable in enumerate(weights):
      variable.assign(arrays[f"w/{i}"])
    for i, variable in enumerate(model.trainable_variables):
      for name, slot in optimizer.slots(variable).items():
        slot.assign(arrays[f"s/{i}@{name}"])
    optimizer.iterations.assign(int(arrays["iterations"]))
    self.seconds_before = float(arrays["seconds"])
    self.loss = float(arrays["loss"])
    self._last_save = time.monotonic()
    return int(arrays["step"])

  def due(self) -> bool:
    return time.monotonic() - self._last_save >= self.every_s

  def save(self, step: int, loss: float, seconds: float, model, optimizer) -> None:
    """Writes the state after `step` steps (`loss`: that step's; `seconds`:
    this session's training time) atomically."""
    arrays = {f"w/{i}": v.numpy() for i, v in enumerate(model.weights)}
    for i, variable in enumerate(model.trainable_variables):
      for name, slot in optimizer.slots(variable).items():
        arrays[f"s/{i}@{name}"] = slot.numpy()
    arrays.update(iterations=np.int64(optimizer.iterations.numpy()), step=np.int64(step),
                  loss=np.float64(loss),
                  seconds=np.float64(self.seconds_before + seconds),
                  fingerprint=np.array(self.fingerprint))
    files.write_bytes_atomically(self.path, files.npz_bytes(arrays))
    self._last_save = time.monotonic()

  def remove(self) -> None:
    if os.path.exists(self.path):
      os.unlink(self.path)


def default_path(folder: str, name: str, fingerprint: str) -> str:
  """`<folder>/<name>-<12 hex of the fingerprint's hash>.npz`: a change of
  settings starts a new checkpoint instead of colliding with the old one."""
  return os.path.join(folder, f"{name}-{files.sha256_hex(fingerprint.encode())[:12]}.npz")


REQUEST_KEY = "checkpoint"


def of_request(request: Mapping[str, Any]) -> Optional[TrainingCheckpoint]:
  """The checkpoint a trial request asks for (module docstring), or None."""
  spec = request.get(REQUEST_KEY)
  if not spec:
    return None
  fingerprint = json.dumps({k: v for k, v in request.items() if k not in ("trial_id", REQUEST_KEY)},
                           sort_keys=True)
  os.makedirs(spec["folder"], exist_ok=True)
  return TrainingCheckpoint(default_path(spec["folder"], spec["name"], fingerprint), fingerprint,
                            every_s=float(spec.get("every_s", 300.0)))
