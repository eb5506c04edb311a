"""One-shot reward benchmark, in one run:

1. Training throughput, side by side: supernet training (a pool of paths on
   shared weights, with a new path built and traced every `path_steps`
   steps, as the trainer runs it) against stand-alone training of SpineNet-49
   with the same proxy settings and data; blocks alternate so machine load
   hits both alike.
2. Seconds per one-shot trial in a warm process (inherit the weights, recompute
   batch-norm statistics, evaluate), over the architectures of part 3.
3. One-shot AP beside stand-alone AP (trained from scratch, --standalone_steps
   of the supernet's batch size) for SpineNet-49, its scale-decreased ordering
   and --num_random random architectures, with Kendall's tau: this part runs
   `python -m spinesearch.proxy_check --reward=oneshot --include_reference`,
   whose results are kept in --output_dir, so a stopped run resumes there.

  python scripts/benchmark_oneshot.py --supernet=quickstart [--json]
      [--num_random=8] [--standalone_steps=2000] [--skip_ap]
"""
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import spinesearch  # noqa: F401  (Keras 2 environment)

FLAGS = flags.FLAGS
flags.DEFINE_string("supernet", "quickstart", "Supernet folder or bundled name.")
flags.DEFINE_integer("num_random", 8, "Random architectures beside the two references.")
flags.DEFINE_integer("standalone_steps", 2000, "Steps of each stand-alone training.")
flags.DEFINE_integer("repeats", 3, "One-shot scores of SpineNet-49 with different seeds "
                     "(coefficient of variation).")
flags.DEFINE_integer("throughput_blocks", 2, "Alternating blocks per throughput side.")
flags.DEFINE_string("output_dir", None, "Where part 3 keeps its results "
                    "(default: benchmarks/oneshot-<supernet name>).")
flags.DEFINE_string("cache_dir", None, "Synthetic data cache (default: the project cache).")
flags.DEFINE_bool("skip_ap", False, "Only parts 1 and 2.")
flags.DEFINE_bool("json", False, "Print the results as JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def throughput(supernet, blocks: int):
  """Images/s of supernet training and of stand-alone SpineNet-49 training."""
  from spinesearch.oneshot.train import SupernetTrainer, TrainerOptions
  from spinesearch.proxy.task import ProxyTask
  from spinesearch.space import known
  config = supernet.config
  block = 2 * config.path_steps  # each block builds two new paths, as training does
  with tempfile.TemporaryDirectory() as folder:
    trainer = SupernetTrainer(folder, config.__class__(**dict(
        config.to_dict(), train_steps=10 ** 6)), TrainerOptions(cache_dir=FLAGS.cache_dir),
        out=sys.stderr)
    trainer.setup()
    for _ in range(config.pool_size):  # fill the pool: built once per run
      trainer.train_one_step()
    task = ProxyTask(trainer.proxy, trainer.dataset)
    arch = trainer.proxy.scaled(known.spinenet49())
    model, mg_task = task.build_model(arch), trainer.mg_task
    step = task.make_train_step(model, mg_task, task.optimizer(10 ** 6))
    data = iter(mg_task.build_inputs(mg_task.task_config.train_data))
    step(*next(data))  # trace
    rates = {"supernet": [], "standalone": []}
    for _ in range(blocks):
      start = time.perf_counter()
      for _ in range(block):
        trainer.train_one_step()
      rates["supernet"].append(block * trainer.proxy.batch_size / (time.perf_counter() - start))
      start = time.perf_counter()
      for _ in range(block):
        float(step(*next(data)))
      rates["standalone"].append(block * trainer.proxy.batch_size / (time.perf_counter() - start))
  result = {k: statistics.mean(v) for k, v in rates.items()}
  result["ratio_supernet_to_standalone"] = result["supernet"] / result["standalone"]
  result["steps_per_block"] = block
  return result


def trial_seconds(supernet, architectures):
  """Seconds of each one-shot score in this (warm) process."""
  from spinesearch.oneshot.evaluation import OneShotSettings
  scorer = supernet.scorer(OneShotSettings(), cache_dir=FLAGS.cache_dir)
  arrays = supernet.arrays()
  times = []
  for architecture in architectures:
    start = time.perf_counter()
    scorer.score(architecture, arrays)
    times.append(time.perf_counter() - start)
  return {"median": statistics.median(times), "min": min(times), "max": max(times),
          "trials": len(times), "trials_per_hour_one_worker": 3600 / statistics.median(times)}


def ap_comparison(supernet, output_dir: str):
  command = [sys.executable, "-m", "spinesearch.proxy_check", "--reward=oneshot",
             f"--supernet={supernet.folder}", f"--search_space={supernet.config.space}",
             f"--space_preset={supernet.config.space_preset}", "--include_reference",
             f"--num_architectures={FLAGS.num_random + 2}", f"--repeats={FLAGS.repeats}",
             f"--long_train_steps={FLAGS.standalone_steps}", f"--output_dir={output_dir}",
             "--runner=local", "--max_parallel_trials=1", "--trial_timeout_s=36000", "--json"]
  if FLAGS.cache_dir:
    command.append(f"--cache_dir={FLAGS.cache_dir}")
  run = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
  if run.returncode:
    raise SystemExit(f"proxy_check failed with status {run.returncode}")
  return json.loads(run.stdout)


def main(argv):
  del argv
  from spinesearch.oneshot.supernet import Supernet
  from spinesearch.space import known
  from spinesearch.space.registry import space_from_config
  supernet = Supernet.open(FLAGS.supernet)
  space = space_from_config(supernet.meta["space"])
  rng = random.Random(0)
  architectures = [known.spinenet49(), known.scale_decreased(known.spinenet49())] + [
      space.decode(space.sample(rng)) for _ in range(FLAGS.num_random)]
  results = {"supernet": supernet.folder, "weights_sha256": supernet.weights_sha256,
             "supernet_progress": supernet.meta["progress"],
             "throughput_images_per_second": throughput(supernet, FLAGS.throughput_blocks),
             "oneshot_trial_seconds": trial_seconds(supernet, architectures)}
  if not FLAGS.skip_ap:
    name = os.path.basename(os.path.normpath(supernet.folder))
    output_dir = FLAGS.output_dir or os.path.join(REPO, "benchmarks", f"oneshot-{name}")
    results["ap"] = ap_comparison(supernet, output_dir)
  if FLAGS.json:
    print(json.dumps(results, indent=2))
    return
  t = results["throughput_images_per_second"]
  s = results["oneshot_trial_seconds"]
  print(f"training images/s: supernet {t['supernet']:.1f}, stand-alone SpineNet-49 "
        f"{t['standalone']:.1f} (ratio {t['ratio_supernet_to_standalone']:.2f})")
  print(f"one-shot trial: median {s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f}), "
        f"{s['trials_per_hour_one_worker']:.0f} per hour per worker")
  if "ap" in results:
    from spinesearch.proxy_check import format_table
    print(format_table(results["ap"]))


if __name__ == "__main__":
  app.run(main)
