"""What one proxy trial produces."""
import dataclasses
import math
from typing import Optional

STATUS_DONE = "done"
STATUS_FAILED = "failed"


@dataclasses.dataclass
class TrialResult:
  """Accuracy (pycocotools AP, in [0, 1]) and cost of one trained architecture.

  `multiply_adds` is the paper's "FLOPs": one multiply-add counts once.
  A failed trial keeps whatever was measured before it failed.
  """
  status: str = STATUS_DONE
  error: Optional[str] = None
  ap: Optional[float] = None
  ap50: Optional[float] = None
  ap75: Optional[float] = None
  aps: Optional[float] = None
  apm: Optional[float] = None
  apl: Optional[float] = None
  final_loss: Optional[float] = None
  params: Optional[int] = None
  multiply_adds: Optional[int] = None
  latency_ms: Optional[float] = None
  train_seconds: Optional[float] = None
  images_per_second: Optional[float] = None
  train_steps: Optional[int] = None
  total_seconds: Optional[float] = None
  # One-shot trials: the share of the path's variables the supernet had.
  inherited_fraction: Optional[float] = None

  @property
  def ok(self) -> bool:
    return self.status == STATUS_DONE

  def failed(self, reason: str) -> "TrialResult":
    self.status, self.error = STATUS_FAILED, reason
    return self

  def to_dict(self) -> dict:
    # JSON has no NaN: a non-finite number is reported as None.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, data: dict) -> "TrialResult":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
