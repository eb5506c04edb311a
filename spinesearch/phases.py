"""Where a trial's time goes: named phases of its work, timed exclusively.

Code that does one phase of a trial marks it, `with phases.phase("build"):`
or `@phases.timed("cost")`; `phases.record()` collects, for one trial, the wall
seconds spent in each phase. Time inside a nested phase counts for the
innermost phase only, so a trial's phases add up to at most its wall time,
and a phase that calls another (the cost of a model builds a forward graph)
is not counted twice. Outside `record()` a mark costs one global read.

The phases (`PHASES`): start-up (process start and imports, reported by the
runner's worker), build (Keras models and Model Garden tasks), trace (a
training step's first call: Python tracing, graph optimisation and its
kernels), train (the other training steps), evaluate (AP, or the Zen-score's
forward passes) and cost (parameters, multiply-adds, latency). What no phase
covers (input pipelines, batch-norm recalibration) is the rest of the wall
time.

Trials run one at a time in a process, so one recorder at a time is active.
"""
import contextlib
import functools
import time
from typing import Callable, Dict, Iterator, List, Optional

PHASES = ("startup", "build", "trace", "train", "evaluate", "cost")


class _Recorder:
  def __init__(self):
    self.seconds: Dict[str, float] = {}
    self.stack: List[str] = []
    self.mark = time.perf_counter()

  def switch(self, push: Optional[str]) -> None:
    """Charges the time since the last switch to the innermost open phase,
    then opens `push` (or closes the innermost phase when None)."""
    now = time.perf_counter()
    if self.stack:
      name = self.stack[-1]
      self.seconds[name] = self.seconds.get(name, 0.0) + now - self.mark
    if push is None:
      self.stack.pop()
    else:
      self.stack.append(push)
    self.mark = now


_ACTIVE: Optional[_Recorder] = None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
  """Counts the time inside for phase `name` (one of PHASES)."""
  recorder = _ACTIVE
  if recorder is None:
    yield
    return
  recorder.switch(name)
  try:
    yield
  finally:
    recorder.switch(None)


def timed(name: str) -> Callable:
  """Decorator: every call of the function is phase `name`."""
  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      with phase(name):
        return fn(*args, **kwargs)
    return wrapper
  return decorate


@contextlib.contextmanager
def record() -> Iterator[Dict[str, float]]:
  """Collects the phases of the work inside: the dict yielded fills with
  {phase: seconds} (only phases that ran) when the block ends."""
  global _ACTIVE
  previous, recorder = _ACTIVE, _Recorder()
  _ACTIVE = recorder
  seconds: Dict[str, float] = {}
  try:
    yield seconds
  finally:
    _ACTIVE = previous
    seconds.update(recorder.seconds)


def first_call_is_trace(fn: Callable) -> Callable:
  """`fn` (a tf.function training step) with its first call timed as phase
  "trace" and every later call as "train"."""
  calls = 0

  @functools.wraps(fn)
  def step(*args, **kwargs):
    nonlocal calls
    calls += 1
    with phase("trace" if calls == 1 else "train"):
      return fn(*args, **kwargs)
  return step
