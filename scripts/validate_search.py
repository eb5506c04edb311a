r"""Does the architecture a search found beat SpineNet-49 when trained properly?

  python scripts/validate_search.py --search_dir=searches/cpu_full [--top_k=1] \
      [--train_steps=4000] [--batch_size=16] [--seeds=3] [--finetune] \
      [--runner=local] [--max_parallel_trials=1] [--output_dir=DIR] [--report_only] \
      [--dataset=tfrecord --train_pattern=GLOB --val_pattern=GLOB --val_annotations=JSON]

Takes the `--top_k` best distinct architectures of the search's done trials
(by reward), SpineNet-49's permutation and the scale-decreased ordering of the
same blocks, and trains each stand-alone from scratch at the search's proxy
scaling with one recipe: the search's proxy (with `--reward=oneshot`, its
supernet's) for `--train_steps` steps of batch `--batch_size`, its warm-up
scaled alike, for `--seeds` seeds (the search's seed and the next ones). With
`--finetune` (searches with `--reward=oneshot`) it also fine-tunes each from
the search's supernet for the same steps (the one-shot reward with
`finetune_steps`; its batch size is the supernet's) and measures both ways on
the same validation images.

The search's settings (space, reward, proxy, supernet, data, seed) are read
from `<search_dir>/trials.db`, read-only, so a running search is not
disturbed; a flag given here that defines the search must agree with them,
except the data flags (`--dataset=tfrecord`, `--train_pattern`,
`--val_pattern`, `--val_annotations`, `--synthetic_*`), which train and
measure on other data. Runs go through the runner flags of the search driver
(`--runner`, `--max_parallel_trials`, `--trial_timeout_s`, ...).

Prints a table (architecture, G multiply-adds, parameters, AP mean +- std
over the seeds for each way) and writes it as JSON to
`<output_dir>/validate_search.json` (default output_dir:
`<search_dir>/validate_search`). Every run is written to
`<output_dir>/validate_search.results.json` as it finishes, so the same
command after a stop, or with more seeds or a larger --top_k, runs only what
is missing (and again what failed); `--report_only` writes and prints the
table of the runs done so far without running any. A run in progress saves its training
state every 5 minutes in `<output_dir>/checkpoints/` and logs its steps in
its trial log (`<output_dir>/workers/`), so a run killed midway (a stopped
machine) resumes from its last save.
"""
import contextlib
import dataclasses
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags

from spinesearch import controller, logs
from spinesearch.driver import EXIT_INTERRUPTED
from spinesearch.errors import ConfigError, parse_absl_flags, run_cli
from spinesearch.files import write_text_atomically
from spinesearch.jobs import (Job, fingerprint, load_results, proxy_schedule,
                              reference_architectures, reseeded, reward_of, run_jobs)
from spinesearch.proxy.config import ProxyConfig
from spinesearch.runners.registry import build_runner
from spinesearch.space.architecture import Architecture
from spinesearch.space.registry import space_from_config
from spinesearch.store import Trial, read_search

FLAGS = flags.FLAGS

RESULTS_FILE = "validate_search.results.json"
REPORT_FILE = "validate_search.json"
CHECKPOINTS_DIR = "checkpoints"
SCRATCH, FINETUNE = "scratch", "finetune"
# Flags that may differ from the search's: they choose the data trained and
# measured on. A --dataset other than the search's drops its data paths.
DATA_FLAGS = ("dataset", "train_pattern", "val_pattern", "val_annotations",
              "synthetic_num_train", "synthetic_num_val", "synthetic_image_size",
              "synthetic_seed")
DATA_PATH_FLAGS = ("train_pattern", "val_pattern", "val_annotations")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A row of the table: an architecture and, for a found one, its trial."""
  label: str
  architecture: Architecture
  decisions: List[int]
  trial: Optional[Trial] = None

  @property
  def key(self) -> str:
    """Names the architecture's runs: its structure (scaling aside)."""
    return fingerprint(self.architecture.fingerprint())


# ---- the search -------------------------------------------------------------------------

def apply_search_flags(stored: Dict[str, Any]) -> None:
  """Every flag the search was created with takes its value there, unless
  given here: a data flag given here wins; another must agree."""
  replace_data = FLAGS["dataset"].present and FLAGS.dataset != stored.get("dataset")
  differences = []
  for name, value in sorted(stored.items()):
    if name not in FLAGS:
      raise ConfigError(f"the search was created with --{name}, which this version of "
                        f"SpineSearch does not have; validate it with the version that "
                        f"created it")
    if not FLAGS[name].present:
      if not (replace_data and name in DATA_PATH_FLAGS):
        FLAGS.set_default(name, value)
    elif name not in DATA_FLAGS and FLAGS[name].value != value:
      differences.append(f"--{name}={FLAGS[name].value} here, {value} in the search")
  if differences:
    raise ConfigError(f"{FLAGS.search_dir} holds a search with other settings: "
                      f"{'; '.join(differences)}. Leave these flags out: they are read "
                      f"from the search")


def best_trials(trials: Sequence[Trial], k: int) -> List[Trial]:
  """The k done trials of highest reward (ties: the earlier first) whose
  architectures differ."""
  best, seen = [], set()
  for trial in sorted((t for t in trials if t.status == "done"), key=lambda t: (-t.reward, t.id)):
    structure = Architecture.from_dict(trial.architecture).fingerprint()
    if structure not in seen:
      seen.add(structure)
      best.append(trial)
    if len(best) == k:
      break
  return best


def candidates(space, trials: Sequence[Trial], top_k: int, search_dir: str) -> List[Candidate]:
  """The two references, then the search's best."""
  try:
    (reference, ref_decisions), (decreased, _) = reference_architectures(space)
  except ConfigError as e:
    raise ConfigError(f"{search_dir}: {e}") from None
  best = best_trials(trials, top_k)
  if not best:
    counts = {s: sum(t.status == s for t in trials) for s in ("failed", "pending", "running")}
    raise ConfigError(f"{search_dir}: no trial is done yet ({len(trials)} trials: "
                      + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
  rows = [Candidate(reference.name, reference, ref_decisions),
          Candidate(decreased.name, decreased, [])]
  rows += [Candidate(f"trial {t.id}", Architecture.from_dict(t.architecture), t.decisions, t)
           for t in best]
  return rows


def search_settings(space) -> Dict[str, Any]:
  """The search's proxy and data set (and, for a one-shot search, its
  one-shot settings) under the flags."""
  with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the table
    if FLAGS.reward == "oneshot":
      return controller.reward_settings(space)
    return controller.proxy_training_settings(space)


# ---- the runs ---------------------------------------------------------------------------

def scratch_proxy(proxy: Dict[str, Any], train_steps: int, batch_size: int,
                  trained_steps: Optional[int] = None) -> Dict[str, Any]:
  """The stand-alone recipe: the search's proxy for `train_steps` steps of
  `batch_size`, its warm-up scaled alike. `trained_steps`: how long the
  proxy's settings trained when they are a supernet's (whose warm-up was
  chosen for that length, not for the preset's)."""
  if trained_steps is not None:
    proxy = dict(proxy, overrides=dict(proxy["overrides"], train_steps=trained_steps))
  schedule = proxy_schedule(proxy, steps=train_steps)
  return dict(schedule, overrides=dict(schedule["overrides"], batch_size=batch_size))


def _supernet_steps(settings: Dict[str, Any]) -> Optional[int]:
  """The training steps of a one-shot search's supernet (None otherwise)."""
  if "oneshot" not in settings:
    return None
  from spinesearch.oneshot.supernet import Supernet
  return Supernet.open(settings["oneshot"]["supernet"]).config.train_steps


def finetune_reward(settings: Dict[str, Any], train_steps: int,
                    eval_images: int) -> Dict[str, Any]:
  """The one-shot reward of the search, fine-tuning `train_steps` steps from
  the supernet and measuring on `eval_images` validation images."""
  oneshot = dict(settings["oneshot"], finetune_steps=train_steps, eval_images=eval_images)
  return dict(settings, oneshot=oneshot, cost=None)


def plan(rows: Sequence[Candidate], space, settings: Dict[str, Any], *, seed: int, seeds: int,
         train_steps: int, batch_size: int, finetune: bool) -> List[Job]:
  """Every run of the table, once each (a found architecture equal to a
  reference shares its runs), keyed by way, architecture and seed."""
  proxy = scratch_proxy(settings["proxy"], train_steps, batch_size, _supernet_steps(settings))
  ways = {SCRATCH: lambda s: {"type": "proxy", "proxy": reseeded(proxy, s),
                              "dataset": settings["dataset"], "cost": None}}
  if finetune:
    config = ProxyConfig.from_preset(proxy["preset"], **proxy["overrides"])
    tuned = finetune_reward(settings, train_steps,
                            config.max_eval_images or settings["dataset"]["num_val"])
    ways[FINETUNE] = lambda s: tuned
  # Seed by seed, the found architectures first: a stopped run leaves whole
  # rows of the table (every architecture, both ways) for the seeds it did.
  order = sorted(range(len(rows)), key=lambda i: rows[i].trial is None)
  jobs = {}
  for s in range(seed, seed + seeds):
    for index in order:
      row = rows[index]
      for way, reward in ways.items():
        key = run_key(way, row, s)
        jobs.setdefault(key, Job(key, index, {
            "seed": s, "decisions": row.decisions, "space": space.config(),
            "architecture": row.architecture.to_dict(), "reward": reward(s)}))
  return list(jobs.values())


def run_key(way: str, row: Candidate, seed: int) -> str:
  return f"{way}/{row.key}/seed{seed}"


def results_fingerprint(settings: Dict[str, Any], space, train_steps: int,
                        batch_size: int) -> str:
  """What every run shares: a results file holds runs of one recipe, on one
  data set, of one search space (seeds, --top_k and --finetune may change).
  A supernet is named by its weights' sha256, not its folder, so a moved
  checkout keeps its results."""
  oneshot = settings.get("oneshot")
  if oneshot:
    from spinesearch.oneshot.supernet import Supernet
    oneshot = dict(oneshot, supernet=Supernet.open(oneshot["supernet"]).weights_sha256)
  return fingerprint({"space": space.config(), "dataset": settings["dataset"],
                      "proxy": scratch_proxy(settings["proxy"], train_steps, batch_size),
                      "oneshot": oneshot})


# ---- the table --------------------------------------------------------------------------

def summarize(rows: Sequence[Candidate], results: Dict[str, Dict[str, Any]], ways: Sequence[str],
              *, seed: int, seeds: int, proxy: Dict[str, Any]) -> List[Dict[str, Any]]:
  """A dict per row: the architecture as trained, its cost, and per way the
  APs over the seeds, their mean and standard deviation, and any errors."""
  config = ProxyConfig.from_preset(proxy["preset"], **proxy["overrides"])
  summary = []
  for row in rows:
    by_way = {way: [results.get(run_key(way, row, s)) for s in range(seed, seed + seeds)]
              for way in ways}
    metrics = _first_metrics([r for runs in by_way.values() for r in runs])
    summary.append({
        "architecture": row.label,
        "trial_id": row.trial.id if row.trial else None,
        "search_reward": row.trial.reward if row.trial else None,
        "multiply_adds_g": _scaled(metrics.get("multiply_adds"), 1e9),
        "params_m": _scaled(metrics.get("params"), 1e6),
        **{way: ap_statistics(runs) for way, runs in by_way.items()},
        "trained_architecture": config.scaled(row.architecture).to_dict(),
    })
  return summary


def ap_statistics(runs: Sequence[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
  aps = [reward_of(r) for r in runs]
  aps = [ap for ap in aps if ap is not None]
  return {"aps": aps, "mean": statistics.mean(aps) if aps else None,
          "std": statistics.stdev(aps) if len(aps) > 1 else None,
          "errors": [r["error"] for r in runs if r and r["status"] != "done"]}


def _first_metrics(runs: Sequence[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
  """The metrics of the first done run that counted multiply-adds, else of
  the first done run."""
  done = [r["metrics"] for r in runs if r and r["status"] == "done"]
  return next((m for m in done if m.get("multiply_adds")), done[0] if done else {})


def _scaled(value: Optional[float], unit: float) -> Optional[float]:
  return value / unit if value else None


def format_table(summary: Sequence[Dict[str, Any]], ways: Sequence[str], seeds: int) -> str:
  def cell(value, spec):
    """`value` formatted, or "-" right-aligned to the spec's width."""
    return format(value, spec) if value is not None else format("-", f">{spec.split('.')[0]}")

  def ap_cell(stats):
    text = f"{cell(stats['mean'], '.4f')} ± {cell(stats['std'], '.4f')}"
    return text + (f" ({len(stats['aps'])}/{seeds})" if len(stats["aps"]) < seeds else "")

  width = max(len("architecture"), *(len(r["architecture"]) for r in summary))
  titles = {SCRATCH: "AP from scratch", FINETUNE: "AP fine-tuned"}
  lines = [f"{'architecture':<{width}}  {'G mult-adds':>11}  {'params M':>8}  "
           + "  ".join(f"{titles[w] + f' ({seeds} seeds)':<25}" for w in ways).rstrip()]
  for r in summary:
    lines.append(f"{r['architecture']:<{width}}  {cell(r['multiply_adds_g'], '11.3f')}  "
                 f"{cell(r['params_m'], '8.3f')}  "
                 + "  ".join(f"{ap_cell(r[w]):<25}" for w in ways).rstrip())
    for way in ways:
      for error in r[way]["errors"]:
        lines.append(f"    {way} failed: {error}")
  return "\n".join(lines)


# ---- the command ------------------------------------------------------------------------

def _main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}: every setting is a --flag")
  if not FLAGS.search_dir:
    raise ConfigError("--search_dir is required: the folder of the search to validate")
  metadata, trials = read_search(FLAGS.search_dir)
  if metadata is None:
    raise ConfigError(f"{FLAGS.search_dir}: the trial store holds no search yet")
  apply_search_flags(metadata.get("flags", {}))
  if FLAGS.finetune and FLAGS.reward != "oneshot":
    raise ConfigError(f"--finetune fine-tunes from the search's supernet; this search's "
                      f"reward is {FLAGS.reward}, not oneshot")
  space = space_from_config(metadata.get("space"))
  rows = candidates(space, trials, FLAGS.top_k, FLAGS.search_dir)
  settings = search_settings(space)
  recipe = dict(seed=FLAGS.seed, seeds=FLAGS.seeds, train_steps=FLAGS.train_steps,
                batch_size=FLAGS.batch_size)
  jobs = plan(rows, space, settings, finetune=FLAGS.finetune, **recipe)
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.search_dir, "validate_search")
  os.makedirs(output_dir, exist_ok=True)
  results_path = os.path.join(output_dir, RESULTS_FILE)
  settings_fingerprint = results_fingerprint(settings, space, FLAGS.train_steps, FLAGS.batch_size)
  if FLAGS.report_only:
    results = load_results(results_path, settings_fingerprint)
  else:
    runner = build_runner(FLAGS.runner, max_parallel=FLAGS.max_parallel_trials,
                          timeout_s=FLAGS.trial_timeout_s, search_dir=output_dir,
                          **controller.runner_options())
    try:
      results = run_jobs(jobs, runner, results_path, settings_fingerprint,
                         checkpoint_dir=os.path.join(output_dir, CHECKPOINTS_DIR))
    except KeyboardInterrupt:
      print("interrupted; run the same command to resume", file=sys.stderr)
      return EXIT_INTERRUPTED
  ways = [SCRATCH] + ([FINETUNE] if FLAGS.finetune else [])
  proxy = scratch_proxy(settings["proxy"], FLAGS.train_steps, FLAGS.batch_size)
  summary = summarize(rows, results, ways, seed=FLAGS.seed, seeds=FLAGS.seeds, proxy=proxy)
  report_path = os.path.join(output_dir, REPORT_FILE)
  write_text_atomically(report_path, json.dumps({
      "search_dir": FLAGS.search_dir, "reward": FLAGS.reward, "space": space.config(),
      "recipe": dict(recipe, proxy=proxy, finetune=FLAGS.finetune),
      "dataset": settings["dataset"], "ways": ways, "rows": summary}, indent=2) + "\n")
  print(format_table(summary, ways, FLAGS.seeds))
  print(f"results: {report_path}")
  return 0


def main(argv: List[str]) -> int:
  logs.configure()
  return run_cli(_main, argv)


def define_flags() -> None:
  """The command's own flags, beside the search driver's (defined when the
  command runs, not on import: tests import it beside other commands)."""
  flags.DEFINE_integer("train_steps", 4000, "Training (and fine-tuning) steps of every run.",
                       lower_bound=1)
  flags.DEFINE_integer("batch_size", 16, "Batch size of the stand-alone training.",
                       lower_bound=1)
  flags.DEFINE_integer("seeds", 3, "Runs of each architecture and way, seeded from the "
                       "search's seed up.", lower_bound=1)
  flags.DEFINE_boolean("finetune", False, "Also fine-tune each architecture from the "
                       "search's supernet (searches with --reward=oneshot).")
  flags.DEFINE_boolean("report_only", False, "Run nothing: write and print the table of the "
                       "runs done so far (beside a validation still running, or stopped).")
  flags.DEFINE_string("output_dir", None,
                      "Where the results go (default: <search_dir>/validate_search).")
  # Driver flags that mean something else here.
  FLAGS.set_default("top_k", 1)
  FLAGS["top_k"].help = "The best distinct architectures of the search that are validated."
  FLAGS.set_default("trial_timeout_s", 12 * 3600.0)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_absl_flags)
