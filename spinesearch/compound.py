"""Compound scaling's family of sizes (EfficientDet): the members at each
compound coefficient phi, their costs, and the family files. The command
that searches the rates is `spinesearch.scale`."""
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spinesearch.files import read_json, write_text_atomically
from spinesearch.jobs import reward_of
from spinesearch.proxy.config import ProxyConfig
from spinesearch.space.architecture import MAX_HEAD_CONVS, Architecture

COSTS_FILE = "scale.costs.json"
FAMILY_FILE = "family.json"


@dataclasses.dataclass(frozen=True)
class Rates:
  """Growth per unit of phi: width, depth and resolution factors (beta,
  alpha, gamma), and head convolutions added."""
  width: float
  depth: float
  resolution: float
  head: float

  def key(self) -> str:
    return f"w{self.width:g}-d{self.depth:g}-r{self.resolution:g}"


def member_settings(base: ProxyConfig, rates: Rates, phi: float, stride: int) -> Dict[str, Any]:
  """The proxy overrides of the family member at `phi` (module docstring)."""
  width, depth = rates.width ** phi, rates.depth ** phi

  def filters(n: int) -> int:
    return max(8, int(round(n * width / 8)) * 8)

  size = max(stride, int(round(base.image_size * rates.resolution ** phi / stride)) * stride)
  return {
      "filter_size_scale": round(base.filter_size_scale * width, 6),
      "endpoints_num_filters": filters(base.endpoints_num_filters),
      "head_num_filters": filters(base.head_num_filters),
      "fpn_num_filters": filters(base.fpn_num_filters),
      "block_repeats": max(1, int(round(base.block_repeats * depth))),
      "fpn_num_repeats": max(1, int(round(base.fpn_num_repeats * depth))),
      "head_num_convs": min(MAX_HEAD_CONVS, max(1, base.head_num_convs +
                                                math.floor(rates.head * phi + 1e-9))),
      "image_size": size,
      "anchor_size": base.anchor_size * size / base.image_size,
  }


class CostMeter:
  """G multiply-adds and parameters of the architecture at a proxy's sizes,
  each size measured once, and kept in `path` (JSON) for the next run."""

  def __init__(self, architecture: Architecture, num_classes: int,
               path: Optional[str] = None):
    self.architecture = architecture
    self.num_classes = num_classes
    self.path = path
    self._owner = f"{architecture.fingerprint()}/{num_classes}"
    self._seen: Dict[str, Tuple[float, int]] = {}
    if path and os.path.exists(path):
      try:  # a cache that cannot be read is measured again, and rewritten
        stored = read_json(path)
        if stored.get("owner") == self._owner:
          self._seen = {k: tuple(v) for k, v in stored["costs"].items()}
      except (ValueError, AttributeError, KeyError, TypeError):
        self._seen = {}

  def __call__(self, config: ProxyConfig) -> Tuple[float, int]:
    key = json.dumps(config.scaling.to_dict(), sort_keys=True) + f"@{config.image_size}"
    if key not in self._seen:
      import tf_keras
      from spinesearch.modeling import builder, cost
      tf_keras.backend.clear_session()
      model = builder.build_dense_detector(
          config.scaled(self.architecture), num_classes=self.num_classes,
          image_size=config.image_size, num_scales=config.num_scales,
          aspect_ratios=config.aspect_ratios)
      self._seen[key] = (cost.count_multiply_adds(model, config.image_size) / 1e9,
                         cost.count_params(model, trainable_only=True))
      if self.path:
        write_text_atomically(self.path, json.dumps(
            {"owner": self._owner, "costs": self._seen}, indent=0) + "\n")
    return self._seen[key]


def walk(base: ProxyConfig, rates: Rates, target: float, meter: CostMeter, stride: int,
         phi_step: float, max_steps: int) -> List[Dict[str, Any]]:
  """The family of `rates`, smallest first: from the largest member under a
  tenth of the target (or phi's lowest step) to the first member above the
  target (or phi's highest step)."""
  def member(step: int) -> Dict[str, Any]:
    phi = round(step * phi_step, 6)
    overrides = member_settings(base, rates, phi, stride)
    flops, params = meter(base.replace(**overrides))
    return {"phi": phi, "overrides": overrides, "multiply_adds_g": flops, "params": params}

  members = [member(0)]
  step = 0
  while members[-1]["multiply_adds_g"] <= target and step < max_steps:
    step += 1
    members.append(member(step))
  step = 0
  while members[0]["multiply_adds_g"] > target / 10 and step > -max_steps:
    step -= 1
    narrowest = member_settings(base, rates, round(step * phi_step, 6), stride)
    # Model Garden's narrowest convolutions (a level-2 resampling) keep >= 2 filters.
    if int(64 * narrowest["filter_size_scale"] * base.resample_alpha) < 2:
      break
    smaller = member(step)
    if smaller["overrides"] == members[0]["overrides"]:
      break  # at the smallest sizes the rounding no longer moves
    members.insert(0, smaller)
  # Members whose rounded sizes are equal are one member.
  distinct = []
  for m in members:
    if not distinct or m["overrides"] != distinct[-1]["overrides"]:
      distinct.append(m)
  return distinct


def at_target(family: Sequence[Dict[str, Any]], target: float) -> Optional[Dict[str, Any]]:
  """The largest member within the target, or None."""
  within = [m for m in family if m["multiply_adds_g"] <= target]
  return within[-1] if within else None


def write_family(output_dir: str, architecture: Architecture, base: ProxyConfig, key: str,
                 family: Sequence[Dict[str, Any]], chosen: Dict[str, Any],
                 results: Dict[str, Any], target: float, reward: str) -> Dict[str, Any]:
  """Writes each member as architecture JSON and the family as family.json."""
  base_name = architecture.name or "architecture"
  members = []
  for m in family:
    config = base.replace(**m["overrides"])
    name = f"{base_name}-phi{m['phi']:+g}"
    path = os.path.join(output_dir, f"{name}.json")
    architecture.replace(name=name, scaling=config.scaling).save(path)
    entry = {"name": name, "file": os.path.basename(path), "phi": m["phi"],
             "image_size": m["overrides"]["image_size"],
             "anchor_size": m["overrides"]["anchor_size"],
             "multiply_adds_g": round(m["multiply_adds_g"], 6), "params": m["params"],
             "at_target": m is chosen}
    if m is chosen:
      entry["reward"] = reward_of(results.get(key))
    members.append(entry)
  manifest = {"architecture": architecture.to_dict(), "target_flops": target,
              "rates": key, "reward": reward,
              "scored": {k: reward_of(v) for k, v in sorted(results.items())},
              "members": members}
  write_text_atomically(os.path.join(output_dir, FAMILY_FILE),
                        json.dumps(manifest, indent=1) + "\n")
  return manifest
