"""Runs one proxy trial: `python -m spinesearch.proxy --architecture ARCH
--preset quickstart [--json] [-v 0]`.

ARCH is an architecture JSON file, a zoo entry JSON file or a zoo model name.
TensorFlow's and absl's INFO and WARNING lines are left out unless
`--verbosity` (`-v`) asks for them: -1 warnings, 0 info.
"""
import json
import sys

from absl import app, flags

from model_zoo.registry import load_architecture
from spinesearch import logs
from spinesearch.errors import ConfigError, run_cli
from spinesearch.proxy.config import ProxyConfig, parse_overrides

FLAGS = flags.FLAGS
flags.DEFINE_string("architecture", None, "An architecture JSON file (SpineSearch schema), a zoo "
                    "entry JSON file or a zoo model name (python -m model_zoo list).")
flags.DEFINE_string("preset", "quickstart", "Proxy preset: quickstart, paper or tiny.")
flags.DEFINE_multi_string("set", [], "Override a proxy setting, e.g. --set train_steps=100 "
                          "(repeatable; values are JSON: numbers, true/false, lists).")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "tfrecord"],
                  "synthetic: the bundled generator's set (made on first use in --cache_dir); "
                  "tfrecord: your Model Garden-format TFRecords + COCO JSON.")
flags.DEFINE_string("cache_dir", None, "Where the synthetic set is cached "
                    "(default $SPINESEARCH_CACHE or ~/.cache/spinesearch).")
flags.DEFINE_integer("synthetic_num_train", 2000, "Synthetic training images.")
flags.DEFINE_integer("synthetic_num_val", 200, "Synthetic validation images.")
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic set.")
flags.DEFINE_string("train_pattern", None, "Training TFRecord glob (--dataset=tfrecord).")
flags.DEFINE_string("val_pattern", None, "Validation TFRecord glob (--dataset=tfrecord).")
flags.DEFINE_string("val_annotations", None, "Validation COCO JSON (--dataset=tfrecord).")
flags.DEFINE_bool("json", False, "Print the TrialResult as JSON.")


def dataset_from_flags(image_size: int):
  from spinesearch.data import dataset
  if FLAGS.dataset == "tfrecord":
    return dataset.user_dataset(FLAGS.train_pattern, FLAGS.val_pattern, FLAGS.val_annotations)
  return dataset.ensure_synthetic(
      FLAGS.cache_dir or dataset.default_cache_dir(), num_train=FLAGS.synthetic_num_train,
      num_val=FLAGS.synthetic_num_val, image_size=image_size, seed=FLAGS.synthetic_seed)


def main(argv):
  del argv
  # Before TensorFlow is imported: an explicit --verbosity reaches its C++ logging only then.
  logs.configure()
  if not FLAGS.architecture:
    raise ConfigError("--architecture is required (an architecture JSON file, a zoo entry "
                      "JSON file or a zoo model name)")
  architecture = load_architecture(FLAGS.architecture)
  config = ProxyConfig.from_preset(FLAGS.preset, **parse_overrides(FLAGS.set))
  data = dataset_from_flags(config.image_size)
  from spinesearch.proxy import ProxyTask  # TensorFlow: only once the flags are known to be good

  def progress(step, steps, loss):
    if not FLAGS.json and (step == 1 or step % 50 == 0 or step == steps):
      print(f"step {step}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

  result = ProxyTask(config, data).run(architecture, progress=progress)
  if FLAGS.json:
    print(json.dumps(result.to_dict(), indent=2))
  else:
    for key, value in result.to_dict().items():
      print(f"{key:>18}: {value}")
  return 0 if result.ok else 1


def run():
  app.run(lambda argv: run_cli(main, argv))


if __name__ == "__main__":
  run()
