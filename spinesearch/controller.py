"""The search driver: `python -m spinesearch.controller --flagfile=FILE`.

Builds the search space, the search algorithm, the trial runner and the trial
store from flags, then keeps every worker busy until `--num_trials` trials
have finished: a freed worker gets a new proposal at once, and each finished
trial is recorded, fed to the algorithm and checkpointed.

The same command on an existing `--search_dir` resumes the search. Flags that
define the search (space, algorithm, reward, proxy, dataset, seed) must be
the same as when it was created; operational flags (budget, parallelism,
timeout, runner, cache) may change.

Outputs in `--search_dir`: trials.db (see spinesearch.store), tensorboard/
(reward, best reward, the algorithm's scalars, per-trial metrics), best/ (the
top architectures as JSON in the shared schema, each with a `.metrics.json`
sibling), logs/ (stderr of trials that wrote any), report/ (plots and
report.md, written when the search reaches its budget; spinesearch.report).
"""
import dataclasses
import os
import random
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

from absl import app
from absl import flags

from spinesearch import evaluate, logs
from spinesearch.driver import EXIT_INTERRUPTED, SearchDriver, SearchSettings
from spinesearch.errors import ArchitectureError, ConfigError, parse_absl_flags, run_cli
from spinesearch.proxy import PRESETS as PROXY_PRESETS, ProxyConfig
from spinesearch.runners import registry as runner_registry
from spinesearch.space import registry as space_registry

FLAGS = flags.FLAGS

# ---- flags that define a search (stored; must match on resume) ----------------------

flags.DEFINE_enum("search_space", "spinenet", list(space_registry.SPACES),
                  "Search space: the SpineNet scale-permuted backbone, NAS-FPN merging "
                  "cells, both as one decision sequence, or a scale-decreased (ResNet-like) "
                  "backbone whose level allocation and block types are searched (CR-NAS).")
flags.DEFINE_enum("space_preset", "default", list(space_registry.preset_names()),
                  "Space settings: 'default' follows the SpineNet / NAS-FPN papers; "
                  "'vertex' follows Vertex AI NAS (SpineNet level allocation, parent "
                  "window 4, NAS-FPN levels 4..7); 'mobile' searches Mobile SpineNet "
                  "(MBConv blocks, 11 intermediate blocks; spinenet and joint spaces); "
                  "'realloc' (spinenet, joint) also searches how many blocks each level "
                  "gets at no more block cost, and a dilation rate 1-3 per block "
                  "(CR-NAS); 'mobile_dilated' (spinenet, joint) is 'mobile' with a "
                  "dilation rate 1-3 per block; 'dilated' (scale_decreased) adds the "
                  "dilation rates.")
flags.DEFINE_boolean("search_head", False,
                     "Also search the detection head (NAS-FCOS, Hit-Detector): convolutions "
                     "per head 1-4, width x0.5/x1/x2 of the scaling's, separable or not, "
                     "and with merging cells the NAS-FPN repeats 1/3/5/7. Any space.")
flags.DEFINE_boolean("search_fusion", False,
                     "Also search how the backbone's blocks merge their inputs: Model "
                     "Garden's sum, or EfficientDet's weighted fusion (a learned weight per "
                     "input). Spaces with searched blocks (spinenet, joint, scale_decreased).")
flags.DEFINE_integer("parent_window", None,
                     "Intermediate SpineNet blocks pick parents among the last K blocks "
                     "built (default: the preset's, 5 in the paper).", lower_bound=2)
flags.DEFINE_enum("algorithm", "ppo", ["ppo", "reinforce", "random", "evolution"],
                  "Search algorithm: the RNN controller trained by PPO or REINFORCE, "
                  "random search, or regularized evolution.")
flags.DEFINE_integer("controller_batch_size", None,
                     "ppo/reinforce: finished trials per policy update (default 20 for PPO, "
                     "10 for REINFORCE).",
                     lower_bound=1)
flags.DEFINE_float("controller_learning_rate", None,
                   "ppo/reinforce: Adam learning rate (default "
                   "3e-3 for PPO, 2e-2 for REINFORCE, tuned with scripts/benchmark_controller.py; the "
                   "published 3.5e-4 (NASNet PPO) and 6e-4 (Zoph & Le) learn far slower "
                   "at budgets of a few thousand trials).", lower_bound=0.0)
flags.DEFINE_float("entropy_weight", None,
                   "ppo/reinforce: weight of the entropy bonus (default 1e-3; published 1e-5).",
                   lower_bound=0.0)
flags.DEFINE_float("baseline_decay", None,
                   "ppo/reinforce: decay of the reward moving-average baseline "
                   "(default 0.95).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("ppo_epochs", None, "ppo: optimisation epochs per batch (default 8).",
                     lower_bound=1)
flags.DEFINE_float("clip_epsilon", None, "ppo: ratio clipping range (default 0.2).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("population_size", None,
                     "evolution: population size P (default 20).", lower_bound=1)
flags.DEFINE_integer("sample_size", None,
                     "evolution: tournament sample size S (default 5).", lower_bound=1)
flags.DEFINE_integer("num_mutations", None,
                     "evolution: decisions changed per mutation (default 1).", lower_bound=1)
flags.DEFINE_integer("initial_mutations", None,
                     "Start near the space's published architecture (SpineNet-49, "
                     "NAS-FPN) instead of uniformly: evolution draws its first population "
                     "with 0 to K decisions of it mutated; ppo / reinforce first fit the "
                     "policy to such samples. For a one-shot search on a supernet trained "
                     "with --sampling=around_reference (default: uniform).",
                     lower_bound=0)
flags.DEFINE_enum("reward", "proxy", sorted(evaluate.REWARD_TYPES),
                  "How a trial is scored: " + "; ".join(
                      f"{name}: {t.description}"
                      for name, t in sorted(evaluate.REWARD_TYPES.items())) + ".")
flags.DEFINE_float("target_flops", None,
                   "Cost target in G multiply-adds (the papers' GFLOPs): the reward becomes "
                   "AP * (cost/target)^w (MnasNet).", lower_bound=0.0)
flags.DEFINE_float("target_latency_ms", None,
                   "Cost target in ms of measured CPU latency, as --target_flops.",
                   lower_bound=0.0)
flags.DEFINE_float("cost_weight", 0.07,
                   "Soft constraint exponent: w = -cost_weight on both sides of the "
                   "target (MnasNet: 0.07).", lower_bound=0.0)
flags.DEFINE_boolean("hard_constraint", False,
                     "Hard constraint: no penalty within the target, AP * target/cost above "
                     "it (alpha=0, beta=-1).")
flags.DEFINE_string("supernet", None,
                    "--reward=oneshot: a trained supernet's folder (python -m "
                    "spinesearch.oneshot train) or the name of one bundled with SpineSearch "
                    "('quickstart'). It fixes the proxy scaling and, unless "
                    "--dataset=tfrecord, the data set.")
flags.DEFINE_integer("oneshot_bn_batches", 8,
                     "--reward=oneshot: training batches each trial recomputes its batch-norm "
                     "statistics on.", lower_bound=1)
flags.DEFINE_integer("oneshot_finetune_steps", 0,
                     "--reward=oneshot: training steps from the shared weights before "
                     "scoring.", lower_bound=0)
flags.DEFINE_integer("oneshot_eval_images", 500,
                     "--reward=oneshot: validation images each trial's AP is measured on.",
                     lower_bound=1)
flags.DEFINE_enum("proxy_preset", "quickstart", sorted(PROXY_PRESETS),
                  "Proxy task of --reward=proxy: 'quickstart' (128 px, about 1.5 min per "
                  "trial on 2 cores), 'paper' (the SpineNet paper's: 512 px, 5 epochs), "
                  "'tiny' (a few steps, for tests).")
_PROXY_OVERRIDES = (
    ("image_size", flags.DEFINE_integer, "training and evaluation image side (multiple of 128)"),
    ("train_steps", flags.DEFINE_integer, "training steps"),
    ("batch_size", flags.DEFINE_integer, "training batch size"),
    ("learning_rate", flags.DEFINE_float, "peak learning rate (Adam)"),
    ("warmup_steps", flags.DEFINE_integer, "linear warm-up steps"),
    ("filter_size_scale", flags.DEFINE_float, "backbone width multiplier"),
    ("resample_alpha", flags.DEFINE_float, "SpineNet resampling alpha"),
    ("endpoints_num_filters", flags.DEFINE_integer, "filters of the P3..P7 endpoints"),
    ("head_num_convs", flags.DEFINE_integer, "convolutions per RetinaNet head"),
    ("head_num_filters", flags.DEFINE_integer, "filters of the RetinaNet head"),
    ("max_eval_images", flags.DEFINE_integer, "validation images evaluated (default: all)"),
)
for _name, _define, _help in _PROXY_OVERRIDES:
  _define(f"proxy_{_name}", None, f"Proxy task: {_help} (default: the preset's).")
flags.DEFINE_enum("proxy_precision", None, ["float32", "bfloat16"],
                  "Proxy task: compute precision (default: the preset's).")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "tfrecord"],
                  "Training data for rewards that train: 'synthetic' is generated "
                  "deterministically on first use into --cache_dir; 'tfrecord' is yours "
                  "(--train_pattern, --val_pattern, --val_annotations).")
flags.DEFINE_integer("synthetic_num_train", 2000, "Synthetic training images.", lower_bound=1)
flags.DEFINE_integer("synthetic_num_val", 200, "Synthetic validation images.", lower_bound=1)
flags.DEFINE_integer("synthetic_image_size", None,
                     "Synthetic image side (default: the proxy's image size).", lower_bound=1)
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic data set.", lower_bound=0)
flags.DEFINE_string("train_pattern", None,
                    "--dataset=tfrecord: glob of training TFRecords (Model Garden's detection "
                    "tf.Example schema).")
flags.DEFINE_string("val_pattern", None, "--dataset=tfrecord: glob of validation TFRecords.")
flags.DEFINE_string("val_annotations", None,
                    "--dataset=tfrecord: COCO JSON of the validation images.")
flags.DEFINE_integer("seed", 0, "Seed of the search algorithm, the proxy training and the "
                     "target_similarity target.", lower_bound=0)
flags.DEFINE_integer("zero_shot_prefilter", None,
                     "K: for each free worker the algorithm proposes K architectures, the "
                     "driver scores each by Zen-score without training (seconds each) and "
                     "runs only the best; the other K-1 are discarded before the algorithm "
                     "observes anything (PPO keeps each trial's own sampling log-probs). "
                     "K=1 records the Zen-score of every trial without choosing. For "
                     "rewards other than zero_shot.", lower_bound=1)
flags.DEFINE_enum("zero_shot_part", None, ["backbone", "detector"],
                  "Zero-shot score (--reward=zero_shot, --zero_shot_prefilter) of the "
                  "backbone's endpoints, or of the dense detector: backbone, merging cells "
                  "and RetinaNet head (default detector; backbone builds faster).")
flags.DEFINE_integer("zero_shot_image_size", None,
                     "Zero-shot score: Gaussian image side, a multiple of 128 (default 128).",
                     lower_bound=1)
flags.DEFINE_integer("zero_shot_batch_size", None,
                     "Zero-shot score: images per forward pass (default 8).", lower_bound=2)
flags.DEFINE_integer("zero_shot_repeats", None,
                     "Zero-shot score: draws of weights and images averaged (default 2).",
                     lower_bound=1)

# ---- operational flags (may change when a search resumes) ---------------------------

flags.DEFINE_string("search_dir", None,
                    "Folder of the search: trials.db, tensorboard/, best/, logs/. Running "
                    "the same command again resumes the search in it.")
flags.DEFINE_integer("num_trials", 100,
                     "Trial budget: the search ends when this many trials have finished "
                     "(done or failed).", lower_bound=1)
flags.DEFINE_integer("max_parallel_trials", 1, "Trials evaluated at once.", lower_bound=1)
flags.DEFINE_integer("max_failed_trials", 10,
                     "The search stops with an error once more trials than this have failed.",
                     lower_bound=0)
flags.DEFINE_float("trial_timeout_s", 3600.0,
                   "A trial running longer than this many seconds is killed and recorded "
                   "as failed.", lower_bound=0.001)
flags.DEFINE_enum("runner", "local", list(runner_registry.runner_names()),
                  "Where trials run: 'local' runs trials in processes of this machine "
                  "(isolated, with --trial_timeout_s; see --trial_isolation); 'inline' "
                  "evaluates trials in the driver process one at a time, for rewards that "
                  "train nothing (target_similarity, zero_shot); 'ray' runs each trial as "
                  "the local runner does, on Ray workers of this machine or a cluster "
                  "(--ray_address; needs the extra 'distributed').")
flags.DEFINE_enum("trial_isolation", None, ["worker", "process"],
                  "--runner=local/ray: 'worker' (the default) runs trials one after another "
                  "in warm worker processes, one per slot, that import TensorFlow and Model "
                  "Garden once; a worker whose trial failed in any way is replaced. "
                  "'process' starts a new process for every trial.")
flags.DEFINE_integer("worker_max_trials", None,
                     "--trial_isolation=worker: a worker is replaced by a new process after "
                     "this many trials (default 100).", lower_bound=1)
flags.DEFINE_integer("worker_max_rss_mb", None,
                     "--trial_isolation=worker: a worker whose resident memory after a trial "
                     "exceeds this many MB is replaced by a new process (default 4096).",
                     lower_bound=1)
flags.DEFINE_string("ray_address", None,
                    "--runner=ray: unset or empty starts a local Ray instance with this "
                    "machine's cores (no dashboard, listening on 127.0.0.1 only); 'auto' or "
                    "HOST:PORT joins a Ray cluster started with `ray start`.")
flags.DEFINE_float("trial_cpus", None,
                   "--runner=ray: CPUs Ray reserves for each trial; its TensorFlow threads "
                   "match them (default 1).", lower_bound=0.0)
flags.DEFINE_float("trial_gpus", None,
                   "--runner=ray: GPUs Ray reserves for each trial; a fraction shares a GPU "
                   "(default 0).", lower_bound=0.0)
flags.DEFINE_string("cache_dir", None,
                    "Cache of generated data sets (default: $SPINESEARCH_CACHE or "
                    "~/.cache/spinesearch).")
flags.DEFINE_integer("top_k", 5, "Architectures kept in <search_dir>/best/.", lower_bound=1)

OPERATIONAL_FLAGS = ("search_dir", "num_trials", "max_parallel_trials", "max_failed_trials",
                     "trial_timeout_s", "runner", "cache_dir", "top_k", "ray_address",
                     "trial_cpus", "trial_gpus", "trial_isolation", "worker_max_trials",
                     "worker_max_rss_mb")
# flag -> (the runner option it sets, the runners that take it)
RUNNER_OPTION_FLAGS = {
    "ray_address": ("address", ("ray",)),
    "trial_cpus": ("trial_cpus", ("ray",)),
    "trial_gpus": ("trial_gpus", ("ray",)),
    "trial_isolation": ("trial_isolation", ("local", "ray")),
    "worker_max_trials": ("worker_max_trials", ("local", "ray")),
    "worker_max_rss_mb": ("worker_max_rss_mb", ("local", "ray")),
}
_WORKER_FLAGS = ("worker_max_trials", "worker_max_rss_mb")
_RNN = ("ppo", "reinforce")
# flag -> (the algorithm option it sets, the algorithms that take it)
ALGORITHM_OPTION_FLAGS = {
    "controller_batch_size": ("batch_size", _RNN),
    "controller_learning_rate": ("learning_rate", _RNN),
    "entropy_weight": ("entropy_weight", _RNN),
    "baseline_decay": ("baseline_decay", _RNN),
    "ppo_epochs": ("ppo_epochs", ("ppo",)),
    "clip_epsilon": ("clip_epsilon", ("ppo",)),
    "population_size": ("population_size", ("evolution",)),
    "sample_size": ("sample_size", ("evolution",)),
    "num_mutations": ("num_mutations", ("evolution",)),
    "initial_mutations": ("initial_mutations", ("evolution",) + _RNN),
}


def search_defining_flags() -> Dict[str, Any]:
  """Values of the flags that define the search, as stored in its metadata."""
  names = [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]
  return {name: FLAGS[name].value for name in sorted(names) if name not in OPERATIONAL_FLAGS}


# ---- flags -> the parts of a search ---------------------------------------------------

def space_options() -> Dict[str, Any]:
  options = {"preset": FLAGS.space_preset}
  presets = space_registry.presets_of(FLAGS.search_space)
  if FLAGS.space_preset not in presets:
    raise ConfigError(f"--space_preset={FLAGS.space_preset} is not a preset of the "
                      f"{FLAGS.search_space} space (its presets: {', '.join(presets)})")
  if FLAGS.parent_window is not None:
    if FLAGS.search_space != "spinenet":
      raise ConfigError(f"--parent_window applies to --search_space=spinenet only, "
                        f"not {FLAGS.search_space}")
    options["parent_window"] = FLAGS.parent_window
  if FLAGS.search_head:
    options["search_head"] = True
  if FLAGS.search_fusion:
    options["search_fusion"] = True
  return options


def algorithm_options() -> Dict[str, Any]:
  """Options of --algorithm from the flags that were set (checked here, before
  the RNN controller's TensorFlow import)."""
  options = {}
  for flag_name, (option, algorithms) in ALGORITHM_OPTION_FLAGS.items():
    value = FLAGS[flag_name].value
    if value is None:
      continue
    if FLAGS.algorithm not in algorithms:
      raise ConfigError(f"--{flag_name} applies to --algorithm={'/'.join(algorithms)}, "
                        f"not --algorithm={FLAGS.algorithm}")
    options[option] = value
  return options


def runner_options() -> Dict[str, Any]:
  """Options of --runner from the flags that were set."""
  options = {}
  for flag_name, (option, runners) in RUNNER_OPTION_FLAGS.items():
    value = FLAGS[flag_name].value
    if value is None:
      continue
    if FLAGS.runner not in runners:
      raise ConfigError(f"--{flag_name} applies to --runner={'/'.join(runners)}, "
                        f"not --runner={FLAGS.runner}")
    if flag_name in _WORKER_FLAGS and FLAGS.trial_isolation == "process":
      raise ConfigError(f"--{flag_name} applies to --trial_isolation=worker, not "
                        f"--trial_isolation=process")
    options[option] = value
  return options


def reward_settings(space) -> Dict[str, Any]:
  """The reward part of every trial request (see spinesearch.evaluate)."""
  reward_type = evaluate.REWARD_TYPES[FLAGS.reward]
  settings: Dict[str, Any] = {"type": FLAGS.reward}
  cost = _cost_settings(reward_type)
  zero_shot = _zero_shot_settings(space)
  if FLAGS.reward == "oneshot":
    settings.update(_oneshot_settings(space))
  elif FLAGS.supernet is not None:
    raise ConfigError("--supernet applies to --reward=oneshot")
  elif reward_type.needs_dataset or reward_type.measures_cost:
    settings["proxy"], image_size = _proxy_settings(space)
    if reward_type.needs_dataset:
      settings["dataset"] = _dataset_settings(image_size)
  settings["cost"] = cost
  if zero_shot is not None:
    settings["zero_shot"] = zero_shot
  return settings


def proxy_training_settings(space) -> Dict[str, Any]:
  """The proxy settings and data set `--reward=proxy` would train with under
  the other flags, whatever --reward is: how an architecture trains
  stand-alone at a search's proxy scaling (scripts/validate_search.py)."""
  proxy, image_size = _proxy_settings(space)
  return {"proxy": proxy, "dataset": _dataset_settings(image_size)}


_SYNTHETIC_FLAGS = ("synthetic_num_train", "synthetic_num_val", "synthetic_image_size",
                    "synthetic_seed")


def _oneshot_settings(space) -> Dict[str, Any]:
  """The supernet, its proxy settings and the data set of --reward=oneshot."""
  from spinesearch.data import dataset
  from spinesearch.oneshot.supernet import Supernet
  if not FLAGS.supernet:
    raise ConfigError("--reward=oneshot needs --supernet: a trained supernet's folder or a "
                      "bundled name")
  given = [f"--proxy_{name}" for name, _, _ in _PROXY_OVERRIDES if FLAGS[f"proxy_{name}"].present]
  given += [f"--{name}" for name in ("proxy_preset", "proxy_precision") if FLAGS[name].present]
  if given:
    raise ConfigError(f"{', '.join(given)}: the supernet fixes the proxy settings of "
                      f"--reward=oneshot")
  supernet = Supernet.open(FLAGS.supernet)
  supernet.check_compatible(space.config())
  if FLAGS.dataset == "tfrecord":
    paths = dataclasses.asdict(dataset.user_dataset(*_tfrecord_flags()))
  else:
    given = [f"--{name}" for name in _SYNTHETIC_FLAGS if FLAGS[name].present]
    if given:
      raise ConfigError(f"{', '.join(given)}: --reward=oneshot uses the supernet's own "
                        f"data set unless --dataset=tfrecord")
    print(f"dataset: the supernet's ({supernet.meta['dataset']})", flush=True)
    paths = dataclasses.asdict(dataset.from_spec(supernet.meta["dataset"], FLAGS.cache_dir))
  return {"oneshot": {"supernet": os.path.abspath(supernet.folder),
                      "bn_batches": FLAGS.oneshot_bn_batches,
                      "finetune_steps": FLAGS.oneshot_finetune_steps,
                      "eval_images": FLAGS.oneshot_eval_images},
          "proxy": {"preset": supernet.config.proxy_preset,
                    "overrides": dict(supernet.config.proxy_overrides)},
          "dataset": paths}


def _tfrecord_flags() -> Tuple[str, str, str]:
  names = ("train_pattern", "val_pattern", "val_annotations")
  missing = [f"--{name}" for name in names if not FLAGS[name].value]
  if missing:
    raise ConfigError(f"--dataset=tfrecord needs {', '.join(missing)}")
  return tuple(FLAGS[name].value for name in names)


_ZERO_SHOT_FLAGS = {"zero_shot_part": "part", "zero_shot_image_size": "image_size",
                    "zero_shot_batch_size": "batch_size", "zero_shot_repeats": "repeats"}


def _zero_shot_settings(space) -> Optional[Dict[str, Any]]:
  """ZenSettings fields (spinesearch.zeroshot) from the flags that were set,
  for --reward=zero_shot and --zero_shot_prefilter (the prefilter reads them
  from the reward settings); None when neither is asked for."""
  used = FLAGS.reward == "zero_shot" or FLAGS.zero_shot_prefilter is not None
  if FLAGS.reward == "zero_shot" and FLAGS.zero_shot_prefilter is not None:
    raise ConfigError("--zero_shot_prefilter picks proposals by Zen-score for a reward that "
                      "trains; with --reward=zero_shot every trial already is that score")
  settings = {}
  for flag_name, field in _ZERO_SHOT_FLAGS.items():
    value = FLAGS[flag_name].value
    if value is None:
      continue
    if not used:
      raise ConfigError(f"--{flag_name} applies to --reward=zero_shot or "
                        f"--zero_shot_prefilter")
    settings[field] = value
  if "image_size" in settings:
    try:
      space.sample_architecture(random.Random(0)).check_image_size(settings["image_size"])
    except ArchitectureError as e:
      raise ConfigError(f"--zero_shot_image_size: {e}") from None
  return settings if used else None


def _cost_settings(reward_type) -> Optional[Dict[str, Any]]:
  if FLAGS.target_flops is not None and FLAGS.target_latency_ms is not None:
    raise ConfigError("--target_flops and --target_latency_ms: set one cost target, not both")
  if FLAGS.target_flops is not None:
    metric, target = "multiply_adds", FLAGS.target_flops
  elif FLAGS.target_latency_ms is not None:
    metric, target = "latency_ms", FLAGS.target_latency_ms
  else:
    return None
  if not target > 0:
    raise ConfigError(f"--target_{'flops' if metric == 'multiply_adds' else 'latency_ms'}: "
                      f"must be positive, got {target}")
  if not reward_type.measures_cost:
    raise ConfigError(f"--reward={reward_type.name} measures no cost; a cost target needs "
                      f"a reward that builds the model, e.g. --reward=proxy")
  return {"metric": metric, "target": target, "cost_weight": FLAGS.cost_weight,
          "hard_constraint": FLAGS.hard_constraint}


def _proxy_settings(space) -> Tuple[Dict[str, Any], int]:
  """The proxy preset and overrides (checked here, once), and its image size."""
  overrides = {name: FLAGS[f"proxy_{name}"].value for name, _, _ in _PROXY_OVERRIDES
               if FLAGS[f"proxy_{name}"].value is not None}
  if FLAGS.proxy_precision is not None:
    overrides["precision"] = FLAGS.proxy_precision
  overrides["seed"] = FLAGS.seed
  config = ProxyConfig.from_preset(FLAGS.proxy_preset, **overrides)
  space.sample_architecture(random.Random(0)).check_image_size(config.image_size)
  return {"preset": FLAGS.proxy_preset, "overrides": overrides}, config.image_size


def _dataset_settings(proxy_image_size: int) -> Dict[str, Any]:
  from spinesearch.data import dataset
  tfrecord_flags = ("train_pattern", "val_pattern", "val_annotations")
  if FLAGS.dataset == "tfrecord":
    paths = dataset.user_dataset(*_tfrecord_flags())
  else:
    given = [f"--{name}" for name in tfrecord_flags if FLAGS[name].value]
    if given:
      raise ConfigError(f"{', '.join(given)}: only for --dataset=tfrecord")
    cache_dir = os.path.expanduser(FLAGS.cache_dir or dataset.default_cache_dir())
    image_size = FLAGS.synthetic_image_size or proxy_image_size
    print(f"dataset: synthetic, {FLAGS.synthetic_num_train} train / {FLAGS.synthetic_num_val} "
          f"val images at {image_size} px, cached in {cache_dir}", flush=True)
    paths = dataset.ensure_synthetic(cache_dir, num_train=FLAGS.synthetic_num_train,
                                     num_val=FLAGS.synthetic_num_val, image_size=image_size,
                                     seed=FLAGS.synthetic_seed)
  return dataclasses.asdict(paths)


# ---- the command ---------------------------------------------------------------------

def _raise_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}: every setting is a --flag "
                      f"(see --helpfull)")
  if not FLAGS.search_dir:
    raise ConfigError("--search_dir is required: the folder that holds the search")
  signal.signal(signal.SIGTERM, _raise_interrupt)
  settings = SearchSettings(
      search_dir=FLAGS.search_dir, search_space=FLAGS.search_space,
      space_options=space_options(), algorithm=FLAGS.algorithm,
      algorithm_options=algorithm_options(), seed=FLAGS.seed,
      defining_flags=search_defining_flags(), num_trials=FLAGS.num_trials,
      flag_defaults={name: FLAGS[name].default for name in search_defining_flags()},
      max_parallel_trials=FLAGS.max_parallel_trials,
      max_failed_trials=FLAGS.max_failed_trials, trial_timeout_s=FLAGS.trial_timeout_s,
      runner=FLAGS.runner, runner_options=runner_options(), top_k=FLAGS.top_k,
      zero_shot_prefilter=FLAGS.zero_shot_prefilter)
  try:
    driver = SearchDriver(settings, reward_settings)
  except KeyboardInterrupt:
    print("interrupted while preparing the search", file=sys.stderr)
    return EXIT_INTERRUPTED
  return driver.run()


def main(argv: List[str]) -> int:
  logs.configure()
  return run_cli(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)
