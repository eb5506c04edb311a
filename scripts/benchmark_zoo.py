"""Batch-1 latency of zoo models: our exported SavedModel vs the same model
built by Model Garden from the entry's config and exported by Model Garden.

  python scripts/benchmark_zoo.py                       # every entry, its size and 256 px
  python scripts/benchmark_zoo.py --models mobile-spinenet-49xs,spinenet-49s --json

For each entry and input size, both sides hold the same weights (the entry's,
or one random initialisation copied across) and serve the same uint8
synthetic scene:
  ours   `Detector.export_saved_model` (Model Garden's DetectionModule
         preprocessing + boxes in image pixels), reloaded with tf.saved_model.load;
  garden `RetinaNetTask(config.task).build_model()` from `model_garden_config()`,
         exported with Model Garden's `export_base.export` and its DetectionModule,
         reloaded the same way.
Timing alternates between the two in rounds (median of the calls of each
round, then the median over rounds), so machine load hits both alike; the
ratio is ours / garden. Entry sizes above --max_size are skipped (SpineNet-190
at 1280 px takes seconds per image on a CPU); every entry also runs at 256 px.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence

from spinesearch.errors import ConfigError, run_cli


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=None, help="comma-separated entries (default: all)")
  parser.add_argument("--zoo_dir", default=None)
  parser.add_argument("--sizes", default="entry,256",
                      help="comma-separated input sizes; 'entry' is the entry's own")
  parser.add_argument("--max_size", type=int, default=640,
                      help="skip input sizes above this (default 640)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=5, help="timed calls per side per round")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.calls < 1:
    raise ConfigError("--rounds and --calls must be at least 1")
  return args


def sizes_for(entry, spec: str, max_size: int) -> List[int]:
  sizes = []
  for item in spec.split(","):
    item = item.strip()
    try:
      size = entry.input_size if item == "entry" else int(item)
    except ValueError:
      raise ConfigError(f"--sizes: {item!r} is neither 'entry' nor a number") from None
    if size <= max_size and size not in sizes:
      sizes.append(size)
  return sizes


def exported_pair(entry, zoo_dir: str, size: int, work_dir: str):
  """(ours, garden) serving signatures of one model at one size."""
  import tf_keras
  from official.core import export_base
  from official.vision.serving import detection
  from official.vision.tasks import retinanet as retinanet_task
  from model_zoo import detector, modeling
  from model_zoo import weights as weights_lib
  from spinesearch.modeling import builder
  import tensorflow as tf

  sized = entry.replace(input_size=size)
  tf_keras.backend.clear_session()
  tf_keras.utils.set_random_seed(0)
  ours = detector.load_entry(sized, zoo_dir, pretrained=entry.weights is not None)
  ours_dir = ours.export_saved_model(os.path.join(work_dir, f"{entry.name}-{size}-ours"))

  config = modeling.model_garden_config(sized)
  garden_model = retinanet_task.RetinaNetTask(config.task).build_model()
  builder.complete_build(garden_model)
  weights_lib.assign(garden_model, {k: v.numpy() for k, v in
                                    weights_lib.variables_by_path(ours.model).items()},
                     source="the zoo model")
  module = detection.DetectionModule(config, batch_size=None, input_image_size=[size, size],
                                     model=garden_model)
  garden_dir = export_base.export(module, ["image_tensor"],
                                  os.path.join(work_dir, f"{entry.name}-{size}-garden"),
                                  timestamped=False)
  load = lambda path: tf.saved_model.load(path).signatures["serving_default"]
  return load(ours_dir), load(garden_dir)


def time_pair(ours, garden, image, rounds: int, calls: int) -> Dict[str, float]:
  import numpy as np
  import tensorflow as tf
  images = tf.constant(image[np.newaxis])
  outputs = {}
  for name, fn in (("ours", ours), ("garden", garden)):
    for _ in range(2):
      outputs[name] = fn(images)
  medians = {"ours": [], "garden": []}
  for _ in range(rounds):
    for name, fn in (("ours", ours), ("garden", garden)):
      times = []
      for _ in range(calls):
        start = time.perf_counter()
        fn(images)["num_detections"].numpy()
        times.append(time.perf_counter() - start)
      medians[name].append(statistics.median(times))
  ours_ms = 1000 * statistics.median(medians["ours"])
  garden_ms = 1000 * statistics.median(medians["garden"])
  same = (np.array_equal(outputs["ours"]["num_detections"], outputs["garden"]["num_detections"])
          and np.allclose(outputs["ours"]["detection_scores"],
                          outputs["garden"]["detection_scores"], atol=1e-4))
  return {"ours_ms": round(ours_ms, 2), "garden_ms": round(garden_ms, 2),
          "ratio": round(ours_ms / garden_ms, 3), "same_detections": bool(same)}


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  import numpy as np
  from model_zoo import registry
  from spinesearch.data import synthetic
  names = ([n.strip() for n in args.models.split(",") if n.strip()] if args.models
           else registry.list_models(args.zoo_dir))
  rows = []
  with tempfile.TemporaryDirectory(prefix="benchmark_zoo-") as work_dir:
    for name in names:
      entry, zoo_dir = registry.locate(name, args.zoo_dir)
      for size in sizes_for(entry, args.sizes, args.max_size):
        ours, garden = exported_pair(entry, zoo_dir, size, work_dir)
        image, _ = synthetic.render_scene(size, np.random.default_rng(size))
        row = dict(model=name, size=size, weights=entry.weights is not None,
                   **time_pair(ours, garden, image, args.rounds, args.calls))
        rows.append(row)
        print(f"measured {name} at {size} px: ratio {row['ratio']}", file=sys.stderr, flush=True)
  if args.json:
    print(json.dumps(rows, indent=2))
    return 0
  header = (f"{'model':<24} {'size':>5} {'ours ms':>9} {'garden ms':>10} {'ratio':>6}  "
            f"same detections")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['model']:<24} {r['size']:>5} {r['ours_ms']:>9.2f} {r['garden_ms']:>10.2f} "
          f"{r['ratio']:>6.3f}  {'yes' if r['same_detections'] else 'NO'}")
  print("batch 1, uint8 image in, detections out (preprocessing, model, NMS); "
        "ratio = ours / garden, alternating rounds")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv[1:]))
