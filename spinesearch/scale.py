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
import itertools
import json
import math
import os
import sys
from typing import Any, Dict, List

from absl import app, flags

from spinesearch import controller, logs
from spinesearch.compound import (COSTS_FILE, FAMILY_FILE, CostMeter, Rates, at_target,
                                  walk, write_family)
from spinesearch.errors import ConfigError, parse_absl_flags, run_cli
from spinesearch.jobs import Job, fingerprint, reward_of, run_jobs
from spinesearch.proxy.config import ProxyConfig
from spinesearch.runners.registry import build_runner

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
  manifest = write_family(output_dir, architecture, base, best_key, family, chosen, results,
                          FLAGS.target_flops, FLAGS.reward)
  print(f"best rates {best_key} (reward {best_reward:.4f} at {chosen['multiply_adds_g']:.3f} G, "
        f"phi {chosen['phi']:g}); family of {len(family)}: "
        + ", ".join(f"{m['multiply_adds_g']:.3f}" for m in family) + " G")
  print(f"family: {os.path.join(output_dir, FAMILY_FILE)}")
  return 0 if manifest else 1


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
