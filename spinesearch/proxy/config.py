"""Proxy-task settings and presets.

`quickstart` is SpineNet-49-shaped and sized for a 2-core CPU (about a minute and
a half per trial at 128 px). `paper` is the SpineNet paper's proxy (section 5.1):
512 px, feature dims x0.25, resample alpha 0.25, 64-dim endpoints and heads,
5 epochs.
"""
import dataclasses
import json
import math
from typing import Dict, Iterable, Optional, Tuple

from spinesearch.errors import ConfigError
from spinesearch.space.architecture import Architecture, Scaling


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
  """How one architecture is trained and evaluated."""
  image_size: int = 128
  # Model scaling applied to every architecture the proxy trains.
  filter_size_scale: float = 0.25
  resample_alpha: float = 0.25
  endpoints_num_filters: int = 64
  block_repeats: int = 1
  head_num_convs: int = 2
  head_num_filters: int = 64
  fpn_num_filters: int = 64
  fpn_num_repeats: int = 3
  resnet_model_id: int = 10
  # Training: linear warm-up then cosine decay. Short runs from scratch learn
  # much faster with Adam than with SGD, and need BatchNorm moving averages
  # that keep up with the weights (momentum 0.9, not Model Garden's 0.99).
  train_steps: int = 360
  train_epochs: Optional[float] = None  # when set, overrides train_steps
  batch_size: int = 8
  optimizer: str = "adam"  # or "sgd" (momentum below)
  learning_rate: float = 0.001
  warmup_steps: int = 40
  momentum: float = 0.9
  norm_momentum: float = 0.9
  clip_norm: float = 10.0
  aug_rand_hflip: bool = True
  precision: str = "float32"  # or "bfloat16" (mixed_bfloat16 policy)
  # Anchors. Model Garden's anchor_size 4 suits 512-1024 px images: at P3 the
  # smallest anchor is 4 x 8 = 32 px. At 128 px objects start at 8 px, so the
  # proxy scales anchors with the image: anchor_size = image_size / 128 gives
  # base anchors of 8..128 px over P3..P7 at 128 px.
  num_scales: int = 3
  aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  anchor_size: float = 1.0
  # Evaluation. Model Garden drops detections scoring under 0.05 before NMS; a
  # short proxy run scores low everywhere, so a lower floor keeps its ranking.
  pre_nms_score_threshold: float = 0.05
  eval_batch_size: int = 16
  max_eval_images: Optional[int] = None
  measure_cost: bool = True
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "aspect_ratios", tuple(self.aspect_ratios))
    positive = ("image_size", "filter_size_scale", "resample_alpha", "endpoints_num_filters",
                "block_repeats", "head_num_convs", "head_num_filters", "fpn_num_filters",
                "fpn_num_repeats", "batch_size", "learning_rate", "num_scales",
                "anchor_size", "eval_batch_size", "clip_norm")
    for name in positive:
      if not getattr(self, name) > 0:
        raise ConfigError(f"proxy {name} must be positive, got {getattr(self, name)!r}")
    if self.train_steps < 1 and not self.train_epochs:
      raise ConfigError(f"proxy train_steps must be >= 1, got {self.train_steps}")
    if self.warmup_steps < 0:
      raise ConfigError(f"proxy warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.optimizer not in ("adam", "sgd"):
      raise ConfigError(f"proxy optimizer must be adam or sgd, got {self.optimizer!r}")
    if not 0 < self.norm_momentum < 1:
      raise ConfigError(f"proxy norm_momentum must be in (0, 1), got {self.norm_momentum!r}")
    if self.precision not in ("float32", "bfloat16"):
      raise ConfigError(f"proxy precision must be float32 or bfloat16, got {self.precision!r}")

  @classmethod
  def from_preset(cls, name: str, **overrides) -> "ProxyConfig":
    if name not in PRESETS:
      raise ConfigError(f"unknown proxy preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ConfigError(f"unknown proxy setting(s): {', '.join(unknown)}")
    return dataclasses.replace(PRESETS[name], **overrides)

  def replace(self, **changes) -> "ProxyConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> Dict:
    data = dataclasses.asdict(self)
    data["aspect_ratios"] = list(self.aspect_ratios)
    return data

  @property
  def scaling(self) -> Scaling:
    return Scaling(filter_size_scale=self.filter_size_scale, resample_alpha=self.resample_alpha,
                   endpoints_num_filters=self.endpoints_num_filters,
                   block_repeats=self.block_repeats, head_num_convs=self.head_num_convs,
                   head_num_filters=self.head_num_filters, fpn_num_filters=self.fpn_num_filters,
                   fpn_num_repeats=self.fpn_num_repeats, resnet_model_id=self.resnet_model_id)

  def scaled(self, architecture: Architecture) -> Architecture:
    """The architecture as the proxy trains it."""
    return architecture.replace(scaling=self.scaling)

  def steps_for(self, num_train_images: int) -> int:
    if self.train_epochs:
      return max(1, math.ceil(self.train_epochs * num_train_images / self.batch_size))
    return self.train_steps



def parse_overrides(items: Iterable[str]) -> Dict:
  """`KEY=VALUE` settings (as given to --set) as a dict; a VALUE that parses
  as JSON is that value, anything else a string."""
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
      overrides[key.strip()] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key.strip()] = value
  return overrides

PRESETS: Dict[str, ProxyConfig] = {
    "quickstart": ProxyConfig(),
    "paper": ProxyConfig(image_size=512, filter_size_scale=0.25, resample_alpha=0.25,
                         endpoints_num_filters=64, head_num_convs=4, head_num_filters=64,
                         fpn_num_filters=64, train_epochs=5, batch_size=16, warmup_steps=100,
                         anchor_size=4.0),
    # For tests: a few steps at 64 px.
    "tiny": ProxyConfig(image_size=128, filter_size_scale=0.125, resample_alpha=0.25,
                        endpoints_num_filters=16, head_num_convs=1, head_num_filters=16,
                        fpn_num_filters=16, fpn_num_repeats=1, train_steps=4, batch_size=4,
                        warmup_steps=1, max_eval_images=8, eval_batch_size=8),
}
