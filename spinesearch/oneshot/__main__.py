"""The supernet command.

  python -m spinesearch.oneshot train --flagfile=configs/oneshot/quickstart.flags
      trains the supernet in --supernet_dir (or resumes it there: the same command
      after a stop or kill -9 continues from the last checkpoint; changed settings
      are refused with the differences)
  python -m spinesearch.oneshot score --supernet=DIR --architecture=A.json [--json]
      the one-shot AP of one architecture on the supernet's weights
"""
import json
import sys
from typing import List

from absl import app, flags

from spinesearch import logs
from spinesearch.errors import ConfigError, parse_absl_flags, run_cli
from spinesearch.space import registry as space_registry

FLAGS = flags.FLAGS
COMMANDS = ("train", "score")

# ---- what defines a supernet ----------------------------------------------------------
flags.DEFINE_enum("search_space", "spinenet", list(space_registry.SPACES),
                  "The space whose architectures share the supernet's weights.")
flags.DEFINE_enum("space_preset", "default", list(space_registry.preset_names()),
                  "The space's preset (as the search driver's --space_preset).")
flags.DEFINE_boolean("search_head", False,
                     "The paths' heads are searched too (as the search driver's --search_head).")
flags.DEFINE_boolean("search_fusion", False,
                     "The paths' input fusion is searched too (as the search driver's "
                     "--search_fusion).")
flags.DEFINE_string("proxy_preset", "quickstart",
                    "Proxy settings every path is built and trained with (scaling, input "
                    "size, anchors, optimizer, batch size): quickstart, paper or tiny.")
flags.DEFINE_multi_string("proxy_set", [],
                          "Override a proxy setting, e.g. --proxy_set=batch_size=16 "
                          "(repeatable; values are JSON).")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "tfrecord"],
                  "Training data: the synthetic set (generated on first use into "
                  "--cache_dir) or your TFRecords.")
flags.DEFINE_integer("synthetic_num_train", 10000, "Synthetic training images.", lower_bound=1)
flags.DEFINE_integer("synthetic_num_val", 1000, "Synthetic validation images.", lower_bound=1)
flags.DEFINE_integer("synthetic_image_size", None,
                     "Synthetic image side (default: the proxy's image size).", lower_bound=1)
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic set.", lower_bound=0)
flags.DEFINE_string("train_pattern", None, "--dataset=tfrecord: training TFRecord glob.")
flags.DEFINE_string("val_pattern", None, "--dataset=tfrecord: validation TFRecord glob.")
flags.DEFINE_string("val_annotations", None, "--dataset=tfrecord: validation COCO JSON.")
flags.DEFINE_integer("train_steps", 12000,
                     "Training steps in all; one warm-up + cosine schedule covers them.",
                     lower_bound=1)
flags.DEFINE_integer("pool_size", 8, "Paths trained at once, one step each in turn.",
                     lower_bound=1)
flags.DEFINE_integer("path_steps", 100,
                     "Steps a path trains before a newly sampled path replaces it.",
                     lower_bound=1)
flags.DEFINE_enum("sampling", "uniform", ["uniform", "flops_cap", "around_reference"],
                  "uniform: every decision uniform among its valid choices; flops_cap: "
                  "redraw until the path has at most --max_multiply_adds (DetNAS).")
flags.DEFINE_float("max_multiply_adds", None,
                   "--sampling=flops_cap: the cap, in G multiply-adds at the proxy scaling.")
flags.DEFINE_integer("max_mutations", None,
                     "--sampling=around_reference: each path is the space's published point "
                     "(SpineNet-49, NAS-FPN) with 0 to this many decisions re-sampled.")
flags.DEFINE_integer("seed", 0, "Seed of path sampling, initialization and data order.",
                     lower_bound=0)
# ---- how a run behaves ---------------------------------------------------------------
flags.DEFINE_string("supernet_dir", None, "train: the supernet's folder (created or resumed).")
flags.DEFINE_float("checkpoint_every_s", 300.0, "Seconds between checkpoints.",
                   lower_bound=1.0)
flags.DEFINE_float("progress_every_s", 30.0, "Seconds between progress lines.",
                   lower_bound=0.0)
flags.DEFINE_integer("reference_every_steps", 2000,
                     "Every this many steps, the one-shot AP of the space's published "
                     "architecture (SpineNet-49's path) goes to the log and TensorBoard; "
                     "0: only at the end.", lower_bound=0)
flags.DEFINE_integer("reference_eval_images", 500,
                     "Validation images of that AP.", lower_bound=1)
flags.DEFINE_string("cache_dir", None, "Cache of generated data sets "
                    "(default: $SPINESEARCH_CACHE or ~/.cache/spinesearch).")
# ---- score ---------------------------------------------------------------------------
flags.DEFINE_string("supernet", None, "score: a supernet folder, or the name of a bundled one.")
flags.DEFINE_string("architecture", None, "score: an architecture JSON file.")
flags.DEFINE_integer("bn_batches", 8, "score: training batches that recompute batch-norm "
                     "statistics.", lower_bound=1)
flags.DEFINE_integer("finetune_steps", 0, "score: fine-tuning steps before scoring.",
                     lower_bound=0)
flags.DEFINE_integer("eval_images", 500, "score: validation images.", lower_bound=1)
flags.DEFINE_bool("json", False, "score: print the result as JSON.")


def supernet_config():
  """The SupernetConfig the flags describe."""
  from spinesearch.oneshot.config import SupernetConfig
  from spinesearch.proxy.config import parse_overrides
  overrides = parse_overrides(FLAGS.proxy_set)
  if FLAGS.dataset == "tfrecord":
    missing = [f"--{n}" for n in ("train_pattern", "val_pattern", "val_annotations")
               if not FLAGS[n].value]
    if missing:
      raise ConfigError(f"--dataset=tfrecord needs {', '.join(missing)}")
    dataset = {"type": "tfrecord", "train_pattern": FLAGS.train_pattern,
               "val_pattern": FLAGS.val_pattern, "val_annotations": FLAGS.val_annotations}
  else:
    from spinesearch.proxy.config import ProxyConfig
    image_size = (FLAGS.synthetic_image_size or
                  ProxyConfig.from_preset(FLAGS.proxy_preset, **overrides).image_size)
    dataset = {"type": "synthetic", "num_train": FLAGS.synthetic_num_train,
               "num_val": FLAGS.synthetic_num_val, "image_size": image_size,
               "seed": FLAGS.synthetic_seed}
  return SupernetConfig(
      space=FLAGS.search_space, space_preset=FLAGS.space_preset, search_head=FLAGS.search_head,
      search_fusion=FLAGS.search_fusion,
      proxy_preset=FLAGS.proxy_preset, proxy_overrides=overrides, dataset=dataset,
      train_steps=FLAGS.train_steps, pool_size=FLAGS.pool_size, path_steps=FLAGS.path_steps,
      sampling=FLAGS.sampling, max_multiply_adds=FLAGS.max_multiply_adds,
      max_mutations=FLAGS.max_mutations, seed=FLAGS.seed)


def _train() -> int:
  from spinesearch.oneshot.train import Interrupted, SupernetTrainer, TrainerOptions
  if not FLAGS.supernet_dir:
    raise ConfigError("--supernet_dir is required: the folder that holds the supernet")
  options = TrainerOptions(
      checkpoint_every_s=FLAGS.checkpoint_every_s, progress_every_s=FLAGS.progress_every_s,
      reference_every_steps=FLAGS.reference_every_steps,
      reference_eval_images=FLAGS.reference_eval_images, cache_dir=FLAGS.cache_dir)
  trainer = SupernetTrainer(FLAGS.supernet_dir, supernet_config(), options)
  try:
    return trainer.run()
  except Interrupted as e:
    print(str(e), file=sys.stderr)
    return 130


def _score() -> int:
  from spinesearch.oneshot.supernet import Supernet
  from spinesearch.oneshot.evaluation import OneShotSettings
  from spinesearch.space.architecture import Architecture
  if not FLAGS.supernet or not FLAGS.architecture:
    raise ConfigError("score needs --supernet (a folder or a bundled name) and --architecture")
  supernet = Supernet.open(FLAGS.supernet)
  settings = OneShotSettings(bn_batches=FLAGS.bn_batches, finetune_steps=FLAGS.finetune_steps,
                             eval_images=FLAGS.eval_images, seed=FLAGS.seed)
  result = supernet.score(Architecture.load(FLAGS.architecture), settings,
                          cache_dir=FLAGS.cache_dir)
  if FLAGS.json:
    print(json.dumps(result.to_dict(), indent=2))
  else:
    for key, value in result.to_dict().items():
      if value is not None:
        print(f"{key:>20}: {value}")
  return 0 if result.ok else 1


def _main(argv: List[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"usage: python -m spinesearch.oneshot {{{'|'.join(COMMANDS)}}} "
                      f"--flag... (see --helpfull)")
  return _train() if argv[1] == "train" else _score()


def main(argv: List[str]) -> int:
  logs.configure()
  return run_cli(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)
