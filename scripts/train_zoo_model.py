"""Trains a zoo entry and writes its weights, hash and metrics into the entry.

  # An existing entry, on the synthetic set at the entry's input size:
  python scripts/train_zoo_model.py --entry mobile-spinenet-49xs --steps 1500
  # On your data (Model Garden TFRecords + the validation split's COCO JSON):
  python scripts/train_zoo_model.py --entry mobile-spinenet-49xs --dataset tfrecord \
      --train_pattern 'data/train-*.tfrecord' --val_pattern 'data/val-*.tfrecord' \
      --val_annotations data/val.json --steps 5000
  # A new entry from a search's trial (created, then trained on the search's set):
  python scripts/train_zoo_model.py --from_search searches/cpu_full --trial 494 \
      --name cpu-full-trial494 --steps 4000 --batch_size 16

Training is the proxy task's recipe (`--preset`, `--set KEY=VALUE`) on the
entry's own model. The weights are written to `<zoo>/weights/` as float16
`.npz` named by their hash, and the entry JSON (weights, sha256, size, cost,
pycocotools metrics of the stored weights on the validation split, training
record) is replaced atomically. The entry takes the dataset's classes.

An entry from a one-shot search's trial is at its supernet's scaling and, by
default, trains on the supernet's synthetic set; `--init_from_supernet`
starts it from the supernet's weights (the way `scripts/validate_search.py
--finetune` does) instead of from scratch. The entry's provenance names the
search, the trial, its reward and flags, the supernet (and its sha256) and,
when `validate_search.py` has run on the search, the validation table.

Training is resumable: it checkpoints every `--checkpoint_every_s` seconds and
on SIGTERM or Ctrl-C into `--checkpoint_dir` (a file per entry and settings);
the same command continues from the last checkpoint. Run long trainings in
the background, e.g. `nohup python scripts/train_zoo_model.py ... > log 2>&1 &`.
"""
import argparse
import os
import sys
from typing import Sequence

from spinesearch.errors import ConfigError, run_cli
from spinesearch.proxy.config import parse_overrides


SYNTHETIC_DEFAULTS = {"num_train": 2000, "num_val": 200, "seed": 0}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument("--entry", help="name of the zoo entry to train")
  which.add_argument("--from_search", metavar="SEARCH_DIR",
                     help="create a new entry from a trial of this search (with --trial, --name)")
  parser.add_argument("--trial", type=int, help="trial id in --from_search")
  parser.add_argument("--name", help="name of the new entry (--from_search)")
  parser.add_argument("--scaling", default="proxy", choices=("proxy", "architecture"),
                      help="--from_search: the proxy's scaling (as the search evaluated it) "
                           "or the architecture's own")
  parser.add_argument("--zoo_dir", default=None,
                      help="zoo folder with entries/ and weights/ (default: the package's)")
  parser.add_argument("--dataset", default="synthetic", choices=("synthetic", "tfrecord"))
  parser.add_argument("--cache_dir", default=None, help="synthetic set cache "
                      "(default $SPINESEARCH_CACHE or ~/.cache/spinesearch)")
  parser.add_argument("--synthetic_num_train", type=int, default=None,
                      help="synthetic training images (default: with --from_search, the "
                           "search's set; else %d)" % SYNTHETIC_DEFAULTS["num_train"])
  parser.add_argument("--synthetic_num_val", type=int, default=None,
                      help="synthetic validation images (default: as --synthetic_num_train; "
                           "else %d)" % SYNTHETIC_DEFAULTS["num_val"])
  parser.add_argument("--synthetic_seed", type=int, default=None,
                      help="seed of the synthetic set (default: as --synthetic_num_train; "
                           "else %d)" % SYNTHETIC_DEFAULTS["seed"])
  parser.add_argument("--train_pattern")
  parser.add_argument("--val_pattern")
  parser.add_argument("--val_annotations")
  parser.add_argument("--preset", default="quickstart", help="proxy preset of the recipe")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--learning_rate", type=float, default=None)
  parser.add_argument("--warmup_steps", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--init_from_supernet", action="store_true",
                      help="start from the weights of the supernet the entry's one-shot search "
                           "scored it on (default: from scratch)")
  parser.add_argument("--checkpoint_dir", default=None,
                      help="where the resumable training checkpoint goes "
                           "(default: <cache_dir>/zoo_training)")
  parser.add_argument("--checkpoint_every_s", type=float, default=300.0,
                      help="seconds between checkpoints")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="other proxy recipe settings (JSON values), repeatable")
  args = parser.parse_args(argv)
  if args.from_search and (args.trial is None or not args.name):
    raise ConfigError("--from_search needs --trial ID and --name NAME")
  if args.steps < 1:
    raise ConfigError(f"--steps must be at least 1, got {args.steps}")
  return args


def recipe_overrides(args: argparse.Namespace) -> dict:
  overrides = {"train_steps": args.steps, "seed": args.seed, "measure_cost": False}
  for key in ("batch_size", "learning_rate", "warmup_steps"):
    if getattr(args, key) is not None:
      overrides[key] = getattr(args, key)
  overrides.update(parse_overrides(args.set))
  return overrides


def load_dataset(args: argparse.Namespace, image_size: int, search_set=None):
  """(DatasetPaths, description recorded in the entry). `search_set`: the
  synthetic set of the search an entry comes from, the default for the
  `--synthetic_*` flags not given."""
  from spinesearch.data import dataset
  if args.dataset == "tfrecord":
    if not (args.train_pattern and args.val_pattern and args.val_annotations):
      raise ConfigError("--dataset tfrecord needs --train_pattern, --val_pattern and "
                        "--val_annotations")
    paths = dataset.user_dataset(args.train_pattern, args.val_pattern, args.val_annotations)
    return paths, {"name": f"TFRecords {args.val_pattern}", "kind": "tfrecord",
                   "train_pattern": args.train_pattern, "val_pattern": args.val_pattern,
                   "val_annotations": args.val_annotations, "num_val": paths.num_val}
  defaults = dict(SYNTHETIC_DEFAULTS, **{k: v for k, v in (search_set or {}).items()
                                         if k in SYNTHETIC_DEFAULTS and v is not None})
  given = lambda key: getattr(args, f"synthetic_{key}")  # noqa: E731
  chosen = {key: defaults[key] if given(key) is None else given(key) for key in defaults}
  settings = dict(num_train=chosen["num_train"], num_val=chosen["num_val"],
                  image_size=image_size, seed=chosen["seed"])
  paths = dataset.ensure_synthetic(args.cache_dir or dataset.default_cache_dir(), **settings)
  return paths, dict(name=dataset.synthetic_dir_name(**settings), kind="synthetic", **settings)


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  from model_zoo import found, registry, training
  if args.from_search:
    if args.name in registry.list_models(args.zoo_dir):
      raise ConfigError(f"--name {args.name}: the zoo already has an entry of that name; "
                        f"train it with --entry {args.name}")
    metadata, _ = found.read_trial(args.from_search, args.trial)
    image_size = found.proxy_config_of_search(metadata.get("flags", {})).image_size
    data, description = load_dataset(args, image_size, found.search_dataset(metadata))
    entry = found.entry_from_search(args.from_search, args.trial, args.name, data,
                                    scaling=args.scaling)
  else:
    entry = registry.get_entry(args.entry, args.zoo_dir)
    data, description = load_dataset(args, entry.input_size)
  config = training.training_config(entry, preset=args.preset, **recipe_overrides(args))
  init = training.SupernetInit.of_entry(entry) if args.init_from_supernet else None
  from spinesearch.progress import step_logger
  progress = step_logger(entry.name, every=100)

  from spinesearch.data import dataset
  from spinesearch.proxy import checkpoint as checkpoint_lib
  folder = args.checkpoint_dir or os.path.join(args.cache_dir or dataset.default_cache_dir(),
                                               "zoo_training")
  fingerprint = training.checkpoint_fingerprint(training.adapt_to_dataset(entry, data), config,
                                                description, init)
  checkpoint = checkpoint_lib.TrainingCheckpoint(
      checkpoint_lib.default_path(folder, entry.name, fingerprint), fingerprint,
      every_s=args.checkpoint_every_s)
  try:
    trained = training.train_entry(entry, data, config, zoo_dir=args.zoo_dir,
                                   dataset_description=description, progress=progress,
                                   checkpoint=checkpoint, init=init)
  except checkpoint_lib.TrainingStopped as e:
    print(f"{entry.name}: {e}", file=sys.stderr)
    return 130
  measured = trained.metric_measured_here()
  print(f"{trained.name}: AP {measured['ap']:.4f} AP50 {measured['ap50']:.4f} "
        f"AR@100 {measured['ar100']:.4f} on {measured['num_images']} validation images; "
        f"weights {trained.weights.file} ({trained.weights.bytes / 1e6:.2f} MB); "
        f"training {trained.training['train_seconds']:.0f} s; entry "
        f"{os.path.relpath(registry.entry_path(trained.name, args.zoo_dir))}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv[1:]))
