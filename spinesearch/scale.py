r"""Compound scaling (EfficientDet): one architecture, a family of sizes.

  python -m spinesearch.scale --architecture=A.json --target_flops=G \
      [--reward=proxy|zero_shot] [--proxy_preset=quickstart] [--output_dir=DIR] \
      [--width_rates=1.1,1.2,1.35] [--depth_rates=1.0,1.2] [--resolution_rates=1.0,1.15] \
      [--head_rate=0.34] [--phi_step=0.5] [--runner=local --max_parallel_trials=2]

The architecture's blocks and cells stay as they are; its size follows one
compound coefficient phi (EfficientNet / EfficientDet). At phi, from the
proxy preset's scaling at its input size (phi = 0):

  width       filter_size_scale, endpoint, head and pyramid filters x beta^phi
              (filter counts rounded to multiples of 8)
  depth       block_repeats and NAS-FPN repeats x alpha^phi, rounded, >= 1
  resolution  image size x gamma^phi, rounded to a multiple of 2^max_level
              (anchors scale with it)
  head        head convolutions + floor(head_rate * phi), 1..8 (EfficientDet:
              3 + floor(phi / 3))

For every (beta, alpha, gamma) of the rate grids, phi walks up (and down) in
steps of `--phi_step` until the multiply-adds pass `--target_flops`; the
largest member within the target is scored with the reward (`--reward`, as
the search driver's flags set it). The best-scoring rates give the family:
every member from the smallest walked to the first above the target, written
as architecture JSON with `family.json` (phi, image size, G multiply-adds,
parameters, reward of the scored members). The search driver's flags define
the reward and proxy (its --target_flops is the family's target here; the
scored members are ranked by the reward without a cost term). A one-shot supernet holds one
scaling, so --reward=oneshot cannot score other sizes and is refused. Scores
and costs are kept in `<output_dir>/scale.results.json` and
`scale.costs.json`; the same command resumes.
"""
import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from spinesearch import controller, logs
from spinesearch.errors import ConfigError, parse_absl_flags, run_cli
from spinesearch.files import write_text_atomically
from spinesearch.jobs import Job, fingerprint, reward_of, run_jobs
from spinesearch.proxy.config import ProxyConfig
from spinesearch.runners.registry import build_runner
from spinesearch.space.architecture import Architecture

FLAGS = flags.FLAGS

flags.DEFINE_string("architecture", None,
                    "The architecture to scale: an architecture JSON file, a zoo entry file "
                    "or a zoo model name.")
flags.DEFINE_string("output_dir", None, "Where the family goes (default: scaled/<name>).")
flags.DEFINE_list("width_rates", ["1.1", "1.2", "1.35"], "Width rates beta to try.")
flags.DEFINE_list("depth_rates", ["1.0", "1.2"], "Depth rates alpha to try.")
flags.DEFINE_list("resolution_rates", ["1.0", "1.15"], "Resolution rates gamma to try.")
flags.DEFINE_float("head_rate", 1 / 3, "Head convolutions added per unit of phi.",
                   lower_bound=0.0)
flags.DEFINE_float("phi_step", 0.5, "Step of the compound coefficient.", lower_bound=0.05)
flags.DEFINE_integer("max_steps", 24, "Most steps of phi walked from 0 in each direction.",
                     lower_bound=1)

RESULTS_FILE = "scale.results.json"
COSTS_FILE = "scale.costs.json"
FAMILY_FILE = "family.json"
MAX_HEAD_CONVS = 8


@dataclasses.dataclass(frozen=True)
class Rates:
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
      with open(path) as f:
        stored = json.load(f)
      if stored.get("owner") == self._owner:
        self._seen = {k: tuple(v) for k, v in stored["costs"].items()}

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


def rate_grid() -> List[Rates]:
  def floats(name: str) -> List[float]:
    try:
      values = [float(v) for v in FLAGS[name].value]
    except ValueError:
      raise ConfigError(f"--{name}: expected numbers, got {','.join(FLAGS[name].value)}")
    if not values or any(not math.isfinite(v) or v < 1.0 for v in values):
      raise ConfigError(f"--{name}: rates must be numbers >= 1, got {FLAGS[name].value}")
    return values
  grid = [Rates(w, d, r, FLAGS.head_rate) for w, d, r in itertools.product(
      floats("width_rates"), floats("depth_rates"), floats("resolution_rates"))]
  if all(r.width == r.depth == r.resolution == 1.0 for r in grid):
    raise ConfigError("every rate is 1: phi would change nothing")
  return grid


def _main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}: every setting is a --flag")
  from model_zoo.registry import load_architecture
  from spinesearch.space.registry import space_for
  if not FLAGS.architecture:
    raise ConfigError("--architecture is required (a JSON file or a zoo model name)")
  if FLAGS.target_flops is None or FLAGS.target_flops <= 0:
    raise ConfigError("--target_flops is required: the family's multiply-add target in G")
  if FLAGS.reward == "oneshot":
    raise ConfigError("--reward=oneshot: a supernet holds one scaling, so it cannot score "
                      "other sizes; use --reward=proxy or --reward=zero_shot")
  architecture = load_architecture(FLAGS.architecture)
  grid = rate_grid()
  space = space_for(architecture)
  with contextlib.redirect_stdout(sys.stderr):
    settings = controller.reward_settings(space)
  proxy = settings.get("proxy") or {"preset": FLAGS.proxy_preset, "overrides": {}}
  base = ProxyConfig.from_preset(proxy["preset"], **proxy["overrides"])
  stride = 2 ** architecture.max_level
  architecture.check_image_size(base.image_size)
  num_classes = _num_classes(settings)
  output_dir = FLAGS.output_dir or os.path.join("scaled", architecture.name or "architecture")
  os.makedirs(output_dir, exist_ok=True)
  meter = CostMeter(architecture, num_classes, os.path.join(output_dir, COSTS_FILE))

  families = {}
  for rates in grid:
    families[rates.key()] = walk(base, rates, FLAGS.target_flops, meter, stride,
                                 FLAGS.phi_step, FLAGS.max_steps)
    chosen = at_target(families[rates.key()], FLAGS.target_flops)
    note = (f"phi {chosen['phi']:g}: {chosen['multiply_adds_g']:.3f} G" if chosen else
            "no member within the target")
    print(f"rates {rates.key()}: {len(families[rates.key()])} members, {note}",
          file=sys.stderr, flush=True)

  jobs = []
  for rates in grid:
    chosen = at_target(families[rates.key()], FLAGS.target_flops)
    if chosen is None:
      continue
    member_proxy = {"preset": proxy["preset"], "overrides": {**proxy["overrides"],
                                                            **chosen["overrides"]}}
    reward = dict(settings, proxy=member_proxy, cost=None)
    jobs.append(Job(rates.key(), len(jobs), {
        "seed": FLAGS.seed, "decisions": [], "space": space.config(),
        "architecture": architecture.to_dict(), "reward": reward}))
  if not jobs:
    smallest = min(f[0]["multiply_adds_g"] for f in families.values())
    raise ConfigError(f"--target_flops={FLAGS.target_flops:g}: even the smallest member "
                      f"costs {smallest:.3f} G")
  runner = build_runner(FLAGS.runner, max_parallel=FLAGS.max_parallel_trials,
                        timeout_s=FLAGS.trial_timeout_s, search_dir=output_dir)
  results = run_jobs(jobs, runner, os.path.join(output_dir, RESULTS_FILE),
                     fingerprint({"architecture": architecture.fingerprint(),
                                  "reward": settings, "target": FLAGS.target_flops}))
  scored = [(reward_of(results.get(j.key)), j.key) for j in jobs]
  scored = [(r, k) for r, k in scored if r is not None]
  if not scored:
    raise ConfigError("every scored member failed; see " +
                      os.path.join(output_dir, RESULTS_FILE))
  best_reward, best_key = max(scored)
  family = families[best_key]
  chosen = at_target(family, FLAGS.target_flops)
  manifest = _write_family(output_dir, architecture, base, best_key, family, chosen, results)
  print(f"best rates {best_key} (reward {best_reward:.4f} at {chosen['multiply_adds_g']:.3f} G, "
        f"phi {chosen['phi']:g}); family of {len(family)}: "
        + ", ".join(f"{m['multiply_adds_g']:.3f}" for m in family) + " G")
  print(f"family: {os.path.join(output_dir, FAMILY_FILE)}")
  return 0 if manifest else 1


def _write_family(output_dir: str, architecture: Architecture, base: ProxyConfig, key: str,
                  family: Sequence[Dict[str, Any]], chosen: Dict[str, Any],
                  results: Dict[str, Any]) -> Dict[str, Any]:
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
  manifest = {"architecture": architecture.to_dict(), "target_flops": FLAGS.target_flops,
              "rates": key, "reward": FLAGS.reward,
              "scored": {k: reward_of(v) for k, v in sorted(results.items())},
              "members": members}
  write_text_atomically(os.path.join(output_dir, FAMILY_FILE),
                        json.dumps(manifest, indent=1) + "\n")
  return manifest


def _num_classes(settings: Dict[str, Any]) -> int:
  """The head's class count: the data set's, or COCO's 91 without data."""
  dataset = settings.get("dataset")
  if dataset:
    from spinesearch.data.dataset import DatasetPaths
    return DatasetPaths(**dataset).num_classes
  return 91


def main(argv: List[str]) -> int:
  logs.configure()
  return run_cli(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)
