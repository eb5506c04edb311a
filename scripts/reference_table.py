"""Parameters and multiply-adds of the published SpineNet RetinaNets, measured
on the models SpineSearch builds, beside the SpineNet paper's figures.

Every model is SpineNet-49's block graph at the family's scaling and input size
(`spinesearch.space.known.SPINENET_FAMILY`) with a RetinaNet head for 91
classes and 3 scales x 3 aspect ratios. Conventions, as in the paper:
"params" are trainable weights (batch-norm moving statistics left out; the
JSON adds the full count as `params_all`), "GFLOPs" are billions of
multiply-adds of backbone + head on one image (TensorFlow profiler FLOPs / 2,
NMS excluded; see `spinesearch.modeling.cost`).

The paper's SpineNet-49S figures (11.9M, 33.8 G) are those of 49S with
256-dim endpoints, while the released configs (tensorflow/tpu, Model Garden)
use 128; the row `49S-e256` measures that variant. It is not in the default
set of rows.

  python scripts/reference_table.py                 # 49S, 49, 96, 143, 190
  python scripts/reference_table.py --models 49S,49S-e256 --json

Building and profiling SpineNet-190 at 1280 px takes minutes and about 9 GB.
"""
import argparse
import gc
import json
import sys
from typing import Dict, List, Sequence

from spinesearch.errors import ConfigError, run_cli
from spinesearch.space import known

NUM_CLASSES = 91
PARAMS_TOLERANCE_PCT = 3.0
GFLOPS_TOLERANCE_PCT = 5.0

# Extra rows: name -> (family member whose paper figures apply, scaling changes).
VARIANTS = {
    "49S-e256": ("49S", {"endpoints_num_filters": 256}),
}


def parse_models(text: str) -> List[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  valid = list(known.SPINENET_FAMILY) + list(VARIANTS)
  unknown = [n for n in names if n not in valid]
  if unknown or not names:
    raise ConfigError(
        f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
        f"choose from {','.join(valid)}")
  return names


def measure(name: str) -> Dict:
  """Builds one row's model and measures it."""
  # TensorFlow is imported here so that `--help` and bad flags answer at once.
  import tf_keras
  from spinesearch.modeling import build_retinanet, count_multiply_adds, count_params

  member, changes = VARIANTS.get(name, (name, {}))
  published = known.SPINENET_FAMILY[member]
  model = build_retinanet(known.spinenet49(published.scaling.replace(**changes)),
                          num_classes=NUM_CLASSES, image_size=published.image_size)
  params = count_params(model, trainable_only=True)
  params_all = count_params(model)
  multiply_adds = count_multiply_adds(model, published.image_size)
  del model
  tf_keras.backend.clear_session()
  gc.collect()
  return {
      "model": name,
      "image_size": published.image_size,
      "params_m": round(params / 1e6, 2),
      "gflops": round(multiply_adds / 1e9, 1),
      "paper_params_m": published.paper_params_m,
      "paper_gflops": published.paper_gflops,
      "params_deviation_pct": round(_deviation(params / 1e6, published.paper_params_m), 1),
      "gflops_deviation_pct": round(_deviation(multiply_adds / 1e9, published.paper_gflops), 1),
      "params": params,
      "params_all": params_all,
      "multiply_adds": multiply_adds,
  }


def format_table(rows: Sequence[Dict]) -> str:
  header = (f"{'model':<9} {'input':>5} {'params M':>9} {'paper':>7} {'dev %':>6} "
            f"{'GFLOPs':>8} {'paper':>7} {'dev %':>6}  within {PARAMS_TOLERANCE_PCT:g}% / "
            f"{GFLOPS_TOLERANCE_PCT:g}%")
  lines = [header, "-" * len(header)]
  for r in rows:
    ok = (abs(r["params_deviation_pct"]) <= PARAMS_TOLERANCE_PCT and
          abs(r["gflops_deviation_pct"]) <= GFLOPS_TOLERANCE_PCT)
    lines.append(
        f"{r['model']:<9} {r['image_size']:>5} {r['params_m']:>9.2f} "
        f"{r['paper_params_m']:>7.1f} {r['params_deviation_pct']:>+6.1f} {r['gflops']:>8.1f} "
        f"{r['paper_gflops']:>7.1f} {r['gflops_deviation_pct']:>+6.1f}  {'yes' if ok else 'NO'}")
  lines.append("params: trainable weights; GFLOPs: 10^9 multiply-adds (profiler FLOPs / 2) "
               "of backbone + head, NMS excluded.")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(known.SPINENET_FAMILY),
                      help="comma-separated rows (default: the published family)")
  parser.add_argument("--json", action="store_true",
                      help="print a JSON list instead of a table")
  args = parser.parse_args(argv)
  names = parse_models(args.models)
  rows = []
  for name in names:
    rows.append(measure(name))
    print(f"measured {name}", file=sys.stderr, flush=True)
  print(json.dumps(rows, indent=2) if args.json else format_table(rows))
  return 0


def _deviation(measured: float, paper: float) -> float:
  return 100.0 * (measured - paper) / paper


if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv[1:]))
