"""A runner that evaluates trials in the driver process itself, one at a time.

For rewards computed from the architecture alone (target_similarity), where
starting a process per trial would cost more than the trial: thousands of
trials run in seconds. It gives no isolation: no timeout, and a trial that
kills its process kills the search. Use the local runner for anything that
trains.
"""
import collections
import traceback
from typing import Any, Deque, Dict, List, Optional, Tuple

from spinesearch import evaluate
from spinesearch.runners.base import Runner, TrialOutcome

WORKER = "inline"


class InlineRunner(Runner):
  """Evaluates each submitted trial when `poll()` is called."""

  name = "inline"

  def __init__(self, max_parallel: int, timeout_s: Optional[float], search_dir: str):
    del search_dir  # nothing to keep: no processes, no logs
    super().__init__(max_parallel, timeout_s)
    self._queue: Deque[Tuple[int, Dict[str, Any]]] = collections.deque()

  def num_running(self) -> int:
    return len(self._queue)

  def submit(self, trial_id: int, request: Dict[str, Any]) -> str:
    self._queue.append((trial_id, request))
    return WORKER

  def poll(self, wait_s: float) -> List[TrialOutcome]:
    del wait_s  # evaluating is the waiting
    if not self._queue:
      return []
    trial_id, request = self._queue.popleft()
    try:
      result = evaluate.evaluate_trial(request)
    except Exception as e:  # the trial's failure, not the driver's
      traceback.print_exc()
      result = evaluate.failed(f"{type(e).__name__}: {e}")
    return [TrialOutcome(trial_id, result["status"], result["reward"],
                         result.get("metrics") or {}, result["error"], WORKER)]

  def shutdown(self) -> None:
    self._queue.clear()
