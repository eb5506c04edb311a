"""Does the proxy tell scale permutation from scale decrease?

Trains SpineNet-49's scale-permuted blocks and the same blocks in a
scale-decreased, ResNet-like order (`known.scale_decreased`, similar
multiply-adds) with a proxy preset, over several seeds, and prints each
one's AP, its mean and standard deviation, and the coefficient of variation
over the seeds (seed noise a search's reward differences must exceed).

  python scripts/proxy_ranking.py [--preset quickstart] [--seeds 3] \
      [--num_train 2000 --num_val 200] [--json]
"""
import argparse
import json
import statistics
import sys

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
from spinesearch.data.dataset import default_cache_dir, ensure_synthetic
from spinesearch.errors import run_cli
from spinesearch.proxy import ProxyConfig, ProxyTask
from spinesearch.proxy_check import coefficient_of_variation
from spinesearch.space import known


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="quickstart")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--num_train", type=int, default=2000)
  parser.add_argument("--num_val", type=int, default=200)
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv[1:])
  config = ProxyConfig.from_preset(args.preset)
  dataset = ensure_synthetic(args.cache_dir or default_cache_dir(), num_train=args.num_train,
                             num_val=args.num_val, image_size=config.image_size, seed=0)
  report = {"preset": args.preset, "num_train": args.num_train, "num_val": args.num_val,
            "architectures": []}
  for arch in (known.spinenet49(), known.scale_decreased(known.spinenet49())):
    runs = []
    for seed in range(args.seeds):
      result = ProxyTask(config.replace(seed=seed), dataset).run(arch)
      runs.append(result.to_dict())
      print(f"{arch.name} seed {seed}: AP {result.ap:.4f} AP50 {result.ap50:.4f} "
            f"({result.total_seconds:.0f} s)", file=sys.stderr, flush=True)
    aps = [r["ap"] for r in runs]
    report["architectures"].append({
        "name": arch.name, "aps": aps, "ap50s": [r["ap50"] for r in runs],
        "mean_ap": statistics.mean(aps),
        "std_ap": statistics.stdev(aps) if len(aps) > 1 else None,
        "ap_coefficient_of_variation": coefficient_of_variation(aps),
        "multiply_adds_g": runs[0]["multiply_adds"] / 1e9, "params_m": runs[0]["params"] / 1e6,
        "seconds_per_trial": statistics.mean(r["total_seconds"] for r in runs)})
  if args.json:
    print(json.dumps(report, indent=2))
    return 0
  print(f"{'architecture':<30} {'mean AP':>8} {'std':>7} {'CV':>6} {'G mult-adds':>11} "
        f"{'params M':>8}")
  for a in report["architectures"]:
    cv = a["ap_coefficient_of_variation"]
    print(f"{a['name']:<30} {a['mean_ap']:8.4f} {a['std_ap'] or 0:7.4f} "
          f"{'-' if cv is None else f'{cv * 100:5.1f}%':>6} {a['multiply_adds_g']:11.3f} "
          f"{a['params_m']:8.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv))
