"""What every trial runner offers the search driver.

A runner evaluates trials somewhere else (local subprocesses, a Ray cluster),
a bounded number at a time. The driver never blocks on one trial: it
`submit()`s while `free_slots()` is positive and `poll()`s for outcomes, so a
worker that frees up gets a new trial at once. A trial that fails in any way
(exception, process killed, timeout, NaN) comes back as a failed
`TrialOutcome` with the reason in `error`; it never raises in the driver.
"""
import abc
import dataclasses
from typing import Any, ClassVar, Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
  """How a trial ended. `reward` is set only when status is "done"."""
  trial_id: int
  status: str
  reward: Optional[float]
  metrics: Dict[str, Any]
  error: Optional[str]
  worker: str


class Runner(abc.ABC):
  """Runs up to `max_parallel` trials at once, each within `timeout_s`."""

  name: ClassVar[str]

  def __init__(self, max_parallel: int, timeout_s: Optional[float]):
    if max_parallel < 1:
      raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
    self.max_parallel = max_parallel
    self.timeout_s = timeout_s

  def free_slots(self) -> int:
    return self.max_parallel - self.num_running()

  @abc.abstractmethod
  def num_running(self) -> int:
    """Trials submitted whose outcome poll() has not yet returned."""

  @abc.abstractmethod
  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    """Starts evaluating `request` (see spinesearch.evaluate) without waiting;
    returns a label for the worker that runs it."""

  @abc.abstractmethod
  def poll(self, wait_s: float) -> List[TrialOutcome]:
    """Outcomes of trials that ended, waiting up to `wait_s` seconds for the
    first one; empty if none ended in that time."""

  @abc.abstractmethod
  def shutdown(self) -> None:
    """Stops every running trial (their outcomes are dropped)."""
