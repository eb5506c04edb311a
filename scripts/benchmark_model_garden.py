"""Trains and evaluates a zoo entry for a few steps with Model Garden's own
task and trainer, from the YAML `python -m model_zoo config` writes.

  python scripts/benchmark_model_garden.py --model mobile-spinenet-49xs --steps 100 [--json]

What it does, in order:
  1. writes the entry's experiment YAML (`python -m model_zoo config`) and
     reads it back into Model Garden's 'retinanet_spinesearch' experiment;
  2. points the experiment at the synthetic set at the entry's input size,
     sets a short schedule (Adam, constant learning rate) and, when the entry
     has weights, Model Garden's init_checkpoint to them (fine-tuning);
  3. runs `official.core.train_lib.run_experiment` (Model Garden's
     RetinaNetTask, trainer, Orbit controller, checkpoints, COCO evaluator):
     trains, then evaluates once, on one CPU device;
  4. checks that the model Model Garden built has the entry's parameter count;
  5. converts the checkpoint Model Garden wrote into zoo weights
     (`model_zoo.convert`) and evaluates the converted detector with the
     zoo's evaluator on the same validation images: its AP must be Model
     Garden's (Model Garden evaluates the parser's resized images, the zoo
     the served originals; both resize the same way).

Prints the wall time, training throughput and both APs (pycocotools).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Dict, Sequence

from spinesearch.errors import ConfigError, run_cli


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="mobile-spinenet-49xs", help="zoo entry")
  parser.add_argument("--zoo_dir", default=None)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--learning_rate", type=float, default=0.0003)
  parser.add_argument("--from_scratch", action="store_true",
                      help="random initialisation even when the entry has weights (by default "
                           "Model Garden starts from them, through its init_checkpoint)")
  parser.add_argument("--synthetic_num_train", type=int, default=2000)
  parser.add_argument("--synthetic_num_val", type=int, default=200,
                      help="validation images; both evaluations use all of them")
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--work_dir", default=None,
                      help="where the YAML, checkpoints and converted zoo go (default: a temp dir)")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  for name in ("steps", "batch_size", "synthetic_num_val"):
    if getattr(args, name) < 1:
      raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
  return args


def experiment_from_yaml(yaml_path: str, data, args, eval_batch_size: int,
                         init_checkpoint: str = ""):
  """Model Garden's 'retinanet_spinesearch' experiment overridden by the
  entry's YAML, then by this benchmark's data and schedule."""
  from official.core import exp_factory
  from official.modeling.hyperparams import params_dict
  from spinesearch.modeling import garden
  params = exp_factory.get_exp_config(garden.EXPERIMENT_NAME)
  params_dict.override_params_dict(params, yaml_path, is_strict=True)
  params_dict.override_params_dict(params, {
      "runtime": {"distribution_strategy": "one_device", "num_gpus": 0,
                  "mixed_precision_dtype": "float32"},
      "task": {
          "init_checkpoint": init_checkpoint, "init_checkpoint_modules": "all",
          "annotation_file": data.val_annotations,
          "train_data": {"input_path": data.train_pattern, "global_batch_size": args.batch_size,
                         "dtype": "float32", "shuffle_buffer_size": 1000,
                         "parser": {"aug_rand_hflip": True}},
          "validation_data": {"input_path": data.val_pattern, "dtype": "float32",
                              "global_batch_size": eval_batch_size, "drop_remainder": False}},
      "trainer": {
          "train_steps": args.steps, "validation_interval": args.steps,
          "validation_steps": math.ceil(data.num_val / eval_batch_size),
          "steps_per_loop": args.steps, "summary_interval": args.steps,
          "checkpoint_interval": args.steps,
          "optimizer_config": {
              "optimizer": {"type": "adam"},
              "learning_rate": {"type": "constant",
                                "constant": {"learning_rate": args.learning_rate}}}},
  }, is_strict=True)
  params.validate()
  params.lock()
  return params


def write_init_checkpoint(entry, zoo_dir: str, folder: str) -> str:
  """The entry's weights as the checkpoint Model Garden's RetinaNetTask
  initialises from (`init_checkpoint_modules: all` reads the model's
  checkpoint_items: backbone, decoder, head)."""
  import tensorflow as tf
  from model_zoo import detector
  model = detector.load_entry(entry, zoo_dir).model
  return tf.train.Checkpoint(**model.checkpoint_items).write(os.path.join(folder, "ckpt"))


def run(args: argparse.Namespace, work_dir: str) -> Dict:
  from official.common import distribute_utils
  from official.core import task_factory, train_lib
  from model_zoo import cli, convert, detector, evaluation, registry
  from spinesearch.data import dataset
  from spinesearch.modeling.cost import count_params

  entry, zoo_dir = registry.locate(args.model, args.zoo_dir)
  data = dataset.ensure_synthetic(
      args.cache_dir or dataset.default_cache_dir(), num_train=args.synthetic_num_train,
      num_val=args.synthetic_num_val, image_size=entry.input_size, seed=0)
  if data.num_classes != entry.num_classes:
    raise ConfigError(f"{entry.name} has {entry.num_classes} classes, the synthetic set "
                      f"{data.num_classes}; pick an entry trained on it")
  yaml_path = os.path.join(work_dir, "experiment.yaml")
  cli.main(["config", "--model", args.model, "--output", yaml_path] +
           (["--zoo_dir", args.zoo_dir] if args.zoo_dir else []))
  init_checkpoint = ""
  if entry.weights and not args.from_scratch:
    init_checkpoint = write_init_checkpoint(entry, zoo_dir, os.path.join(work_dir, "zoo_init"))
  eval_batch_size = 8
  params = experiment_from_yaml(yaml_path, data, args, eval_batch_size, init_checkpoint)

  model_dir = os.path.join(work_dir, "model_garden")
  strategy = distribute_utils.get_distribution_strategy(
      params.runtime.distribution_strategy, num_gpus=params.runtime.num_gpus)
  start = time.perf_counter()
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  model, eval_logs = train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode="train", params=params,
      model_dir=model_dir, run_post_eval=True, save_summary=False)
  wall_seconds = time.perf_counter() - start
  garden_params = count_params(model, trainable_only=True)

  converted = convert.convert_checkpoint(entry, model_dir, os.path.join(work_dir, "zoo"))
  zoo_detector = detector.load_entry(converted, os.path.join(work_dir, "zoo"))
  zoo_metrics = evaluation.evaluate(zoo_detector, data)
  return {
      "model": entry.name,
      "input_size": entry.input_size,
      "steps": args.steps,
      "initialised_from": "zoo weights" if init_checkpoint else "random",
      "zoo_entry_ap": (entry.metric_measured_here() or {}).get("ap"),
      "batch_size": args.batch_size,
      "train_and_eval_seconds": round(wall_seconds, 1),
      "images_per_second_incl_eval_and_tracing": round(args.steps * args.batch_size /
                                                      wall_seconds, 1),
      "model_garden_params": garden_params,
      "entry_params": entry.cost.get("params"),
      "params_equal": garden_params == entry.cost.get("params"),
      "model_garden_ap": float(eval_logs["AP"]),
      "model_garden_ap50": float(eval_logs["AP50"]),
      "converted_zoo_ap": zoo_metrics["ap"],
      "converted_zoo_ap50": zoo_metrics["ap50"],
      "eval_images": zoo_metrics["num_images"],
      "work_dir": work_dir,
  }


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  if args.work_dir:
    os.makedirs(args.work_dir, exist_ok=True)
    result = run(args, args.work_dir)
  else:
    with tempfile.TemporaryDirectory(prefix="benchmark_model_garden-") as work_dir:
      result = run(args, work_dir)
      result["work_dir"] = None
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(f"{result['model']} at {result['input_size']} px: Model Garden trained "
          f"{result['steps']} steps x {result['batch_size']} images (from "
          f"{result['initialised_from']}) and evaluated "
          f"{result['eval_images']} in {result['train_and_eval_seconds']} s "
          f"({result['images_per_second_incl_eval_and_tracing']} images/s incl. tracing and eval)")
    print(f"  params: Model Garden {result['model_garden_params']:,}, entry "
          f"{result['entry_params']:,} ({'equal' if result['params_equal'] else 'DIFFERENT'})")
    print(f"  AP: Model Garden's evaluator {result['model_garden_ap']:.4f} "
          f"(AP50 {result['model_garden_ap50']:.4f}); its checkpoint converted to zoo weights "
          f"{result['converted_zoo_ap']:.4f} (AP50 {result['converted_zoo_ap50']:.4f})"
          + (f"; the entry before: {result['zoo_entry_ap']:.4f}"
             if result["zoo_entry_ap"] is not None and result["initialised_from"] != "random"
             else ""))
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv[1:]))
