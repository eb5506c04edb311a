"""Proxy training throughput: SpineSearch's loop vs Model Garden's own
RetinaNetTask.train_step as a Model Garden user runs it (inside a tf.function,
with its loss metrics), on the same model, data and batch, measured side by
side in one run (blocks of steps alternate, so machine load hits both alike).

Also measured in the same run: the CPU's float32 and bfloat16 matmul peak, the
GFLOP/s the training step achieves against it, the input pipeline's own rate,
and mixed_bfloat16 against float32 for our loop.

  python scripts/benchmark_proxy.py [--json] [--steps 40] [--batch_size 8]
"""
import json
import statistics
import sys
import tempfile
import time

from absl import app, flags

import spinesearch  # noqa: F401  (Keras 2 environment)
import tensorflow as tf
import tf_keras

from spinesearch.data.dataset import default_cache_dir, ensure_synthetic
from spinesearch.modeling import cost
from spinesearch.proxy import ProxyConfig
from spinesearch.proxy.task import ProxyTask
from spinesearch.space import known

FLAGS = flags.FLAGS
flags.DEFINE_bool("json", False, "Print machine-readable JSON.")
flags.DEFINE_integer("steps", 40, "Timed steps per loop (in blocks of --block).")
flags.DEFINE_integer("block", 10, "Steps per alternating block.")
flags.DEFINE_integer("batch_size", 8, "Batch size of both loops.")
flags.DEFINE_string("preset", "quickstart", "Proxy preset giving the model scaling and image size.")
flags.DEFINE_bool("bfloat16", True, "Also time our loop under mixed_bfloat16.")
flags.DEFINE_string("cache_dir", None, "Synthetic data cache (default: the project cache).")


def matmul_gflops(dtype, n=2048, repeats=10):
  a = tf.random.uniform([n, n], dtype=tf.float32)
  a = tf.cast(a, dtype)
  f = tf.function(lambda x: tf.matmul(x, x))
  f(a).numpy()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).numpy()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def model_garden_step(model, mg_task, optimizer):
  """Model Garden's train step exactly as its trainer calls it."""
  metrics = mg_task.build_metrics(training=True)

  @tf.function
  def step(images, labels):
    return mg_task.train_step((images, labels), model, optimizer, metrics)[mg_task.loss]
  return step


def time_block(step, data, n):
  t0 = time.perf_counter()
  for _ in range(n):
    images, labels = next(data)
    loss = step(images, labels)
  float(loss)
  return time.perf_counter() - t0


def pipeline_rate(data, n):
  next(data)
  t0 = time.perf_counter()
  for _ in range(n):
    images, _ = next(data)
  images.numpy()
  return n / (time.perf_counter() - t0)


def main(argv):
  del argv
  config = ProxyConfig.from_preset(FLAGS.preset, batch_size=FLAGS.batch_size)
  dataset = ensure_synthetic(FLAGS.cache_dir or default_cache_dir(), num_train=2000, num_val=200,
                             image_size=config.image_size, seed=0)
  proxy = ProxyTask(config, dataset)
  arch = config.scaled(known.spinenet49())
  steps = FLAGS.steps

  ours_model, mg_task = proxy.build(arch)
  theirs_model, _ = proxy.build(arch)
  ours = proxy.make_train_step(ours_model, mg_task, proxy.optimizer(1000))
  # Model Garden's step calls a Keras optimizer's apply_gradients.
  theirs = model_garden_step(theirs_model, mg_task, tf_keras.optimizers.legacy.Adam(
      proxy.learning_rate(1000), global_clipnorm=proxy.config.clip_norm))
  data_ours = iter(mg_task.build_inputs(mg_task.task_config.train_data))
  data_theirs = iter(mg_task.build_inputs(mg_task.task_config.train_data))

  first = {"ours": time_block(ours, data_ours, 1), "model_garden": time_block(theirs, data_theirs, 1)}
  for _ in range(2):  # warm both
    time_block(ours, data_ours, 1)
    time_block(theirs, data_theirs, 1)
  totals = {"ours": 0.0, "model_garden": 0.0}
  done = 0
  while done < steps:
    n = min(FLAGS.block, steps - done)
    totals["ours"] += time_block(ours, data_ours, n)
    totals["model_garden"] += time_block(theirs, data_theirs, n)
    done += n
  rate = {k: steps * FLAGS.batch_size / v for k, v in totals.items()}

  madds = cost.count_multiply_adds(ours_model, config.image_size)
  # Training does a forward pass and a backward pass of about twice its cost.
  train_flops_per_image = 3 * 2 * madds
  peak32 = matmul_gflops(tf.float32)
  peak16 = matmul_gflops(tf.bfloat16)
  achieved = rate["ours"] * train_flops_per_image / 1e9
  input_rate = pipeline_rate(iter(mg_task.build_inputs(mg_task.task_config.train_data)), 20)

  report = {
      "model": "SpineNet-49 (proxy scaling)", "preset": FLAGS.preset,
      "image_size": config.image_size, "batch_size": FLAGS.batch_size, "timed_steps": steps,
      "params": cost.count_params(ours_model), "multiply_adds_per_image": madds,
      "images_per_second": rate,
      "ratio_ours_vs_model_garden": rate["ours"] / rate["model_garden"],
      "first_step_seconds": first,
      "achieved_gflops": achieved,
      "matmul_peak_gflops": {"float32": peak32, "bfloat16": peak16},
      "fraction_of_fp32_peak": achieved / peak32,
      "input_pipeline_images_per_second": input_rate * FLAGS.batch_size,
  }
  if FLAGS.bfloat16:
    bf16 = ProxyTask(config.replace(precision="bfloat16"), dataset)
    bf_model, bf_task = bf16.build(arch)
    bf_step = bf16.make_train_step(bf_model, bf_task, bf16.optimizer(1000))
    bf_data = iter(bf_task.build_inputs(bf_task.task_config.train_data))
    time_block(bf_step, bf_data, 3)
    bf_rate = steps * FLAGS.batch_size / time_block(bf_step, bf_data, steps)
    tf_keras.mixed_precision.set_global_policy("float32")
    report["images_per_second"]["ours_bfloat16"] = bf_rate
    report["ratio_bfloat16_vs_float32"] = bf_rate / rate["ours"]

  if FLAGS.json:
    print(json.dumps(report, indent=2))
    return
  print(f"proxy training, {report['model']}, {config.image_size}px, batch {FLAGS.batch_size}, "
        f"{steps} steps each, alternating blocks of {FLAGS.block}")
  for name, value in report["images_per_second"].items():
    print(f"  {name:>16}: {value:7.1f} images/s")
  print(f"  ratio ours / Model Garden: {report['ratio_ours_vs_model_garden']:.3f}")
  if "ratio_bfloat16_vs_float32" in report:
    print(f"  ratio bfloat16 / float32 (ours): {report['ratio_bfloat16_vs_float32']:.3f}")
  print(f"  first step (tracing): ours {first['ours']:.1f}s, Model Garden {first['model_garden']:.1f}s")
  print(f"  achieved {achieved:.1f} GFLOP/s = {report['fraction_of_fp32_peak']:.0%} of the fp32 "
        f"matmul peak {peak32:.0f} GFLOP/s (bf16 peak {peak16:.0f})")
  print(f"  input pipeline alone: {report['input_pipeline_images_per_second']:.0f} images/s")


if __name__ == "__main__":
  app.run(main)
