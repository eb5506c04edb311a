"""What defines a supernet, and its folder's files.

A supernet folder holds:

  supernet.json      what defines it (`SupernetConfig`), the space's
                     configuration, the proxy settings every path is built
                     with, the data set, its progress, its weights' record
                     and the AP of its reference path over training
  weights.npz        the shared weights by structural key (float16 where
                     finite): what one-shot trials read
  checkpoint.npz     float32 weights, Adam's slots and the trainer's state:
                     what a stopped training resumes from (not needed by trials)
  tensorboard/       loss, learning rate, throughput, reference-path AP
"""
import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional

from spinesearch.errors import ConfigError, UserError
from spinesearch.files import read_json, write_text_atomically
from spinesearch.proxy.config import ProxyConfig

META_FILE = "supernet.json"
WEIGHTS_FILE = "weights.npz"
CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 1
SAMPLING = ("uniform", "flops_cap", "around_reference")


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """Everything that defines a supernet's training; a resumed training must
  have the same.

  space, space_preset, search_head, search_fusion: the search space whose
    architectures share weights (with search_head, its head decisions too;
    with search_fusion, its fusion decision).
  proxy_preset, proxy_overrides: the proxy settings paths are built and
    trained with (scaling, input size, anchors, optimizer, batch size).
  dataset: {"type": "synthetic", "num_train", "num_val", "image_size", "seed"}
    or {"type": "tfrecord", "train_pattern", "val_pattern", "val_annotations"}.
  train_steps: training steps in all, one learning-rate schedule over them.
  pool_size: paths in training at once; consecutive steps train different
    paths, one after another.
  path_steps: steps each path trains before a newly sampled one replaces it.
  sampling: 'uniform' (each decision uniform among its valid choices) or
    'flops_cap' (DetNAS: redraw until the path's multiply-adds at the proxy
    scaling are at most max_multiply_adds G) or 'around_reference': the
    space's published point (SpineNet-49, NAS-FPN) with 0 to max_mutations
    of its decisions re-sampled (as regularized evolution mutates), so the
    shared weights learn the contexts near that point well instead of every
    context a little.
  """
  space: str = "spinenet"
  space_preset: str = "default"
  search_head: bool = False
  search_fusion: bool = False
  proxy_preset: str = "quickstart"
  proxy_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dataset: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
      "type": "synthetic", "num_train": 10000, "num_val": 1000, "image_size": 128, "seed": 0})
  train_steps: int = 12000
  pool_size: int = 8
  path_steps: int = 100
  sampling: str = "uniform"
  max_multiply_adds: Optional[float] = None
  max_mutations: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    for name in ("train_steps", "pool_size", "path_steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"supernet {name} must be a positive integer, got {value!r}")
    if self.sampling not in SAMPLING:
      raise ConfigError(f"supernet sampling must be one of {', '.join(SAMPLING)}, "
                        f"got {self.sampling!r}")
    if self.sampling == "flops_cap":
      if self.max_multiply_adds is None or not self.max_multiply_adds > 0:
        raise ConfigError("supernet sampling=flops_cap needs a positive max_multiply_adds (G)")
    elif self.max_multiply_adds is not None:
      raise ConfigError("supernet max_multiply_adds applies only with sampling=flops_cap")
    if self.sampling == "around_reference":
      value = self.max_mutations
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"supernet sampling=around_reference needs max_mutations >= 1, "
                          f"got {value!r}")
    elif self.max_mutations is not None:
      raise ConfigError("supernet max_mutations applies only with sampling=around_reference")
    if self.dataset.get("type") not in ("synthetic", "tfrecord"):
      raise ConfigError(f"supernet dataset type must be synthetic or tfrecord, "
                        f"got {self.dataset.get('type')!r}")
    self.proxy_config()  # refuses unknown or bad proxy settings now
    self.build_space()  # refuses a space or preset that does not exist

  def build_space(self):
    """The search space whose architectures share the supernet's weights."""
    from spinesearch.space import registry
    space = registry.build_space(self.space, preset=self.space_preset,
                                 search_head=self.search_head,
                                 search_fusion=self.search_fusion)
    return space

  def proxy_config(self) -> ProxyConfig:
    """The proxy settings, with the whole run's step count."""
    return ProxyConfig.from_preset(self.proxy_preset, **dict(
        self.proxy_overrides, train_steps=self.train_steps, train_epochs=None))

  def to_dict(self) -> Dict[str, Any]:
    data = json.loads(json.dumps(dataclasses.asdict(self)))
    if not self.search_fusion:  # as supernets made before the option describe themselves
      del data["search_fusion"]
    return data

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "SupernetConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
      raise ConfigError(f"supernet config: unknown setting(s) {', '.join(unknown)}")
    return cls(**data)

  def differences(self, other: "SupernetConfig") -> List[str]:
    """'name: then -> now' for each setting that differs."""
    mine, theirs = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (self, other))
    return [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def read_meta(folder: str) -> Optional[Dict[str, Any]]:
  """The folder's supernet.json, or None when there is none."""
  path = os.path.join(folder, META_FILE)
  if not os.path.exists(path):
    return None
  try:
    meta = read_json(path)
  except ValueError as e:
    raise UserError(f"{path}: not a readable supernet description ({e})") from None
  if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
    raise UserError(f"{path}: not a supernet description of format {FORMAT_VERSION}")
  return meta


def write_meta(folder: str, meta: Mapping[str, Any]) -> None:
  write_text_atomically(os.path.join(folder, META_FILE), json.dumps(meta, indent=2) + "\n")
