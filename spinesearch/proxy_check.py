"""Does the proxy task rank architectures the way longer training does?

  python -m spinesearch.proxy_check --flagfile=configs/search/proxy.flags \
      [--num_architectures=10] [--long_train_factor=4] [--repeats=3] [--json]

Samples `--num_architectures` architectures from the search space the flagfile
describes (`--include_reference`: the first two are SpineNet-49 and its
scale-decreased ordering), scores each with the search's reward and trains
each with a longer schedule (`--long_train_factor` times the proxy's steps,
`--long_train_steps`, or another `--long_preset`). The search's reward is its
proxy (preset and overrides), or with `--reward=oneshot` the one-shot AP on
its supernet; the long schedule then trains stand-alone from scratch with the
supernet's proxy settings and data. It also scores each with the zero-shot
reward when that is registered, and scores the first architecture `--repeats`
times with different seeds. It reports

  * Kendall's tau between the reward's and the long schedule's AP rankings
    (1: the same order, 0: unrelated),
  * Kendall's tau between the zero-shot score and the long schedule's AP,
  * the coefficient of variation (std / mean) of AP over the repeats: seed
    noise that a search's reward differences must exceed,

as a table on stdout (`--json`: one JSON document), in
`<output_dir>/proxy_check.json`, and as a scatter plot
`<output_dir>/proxy_check.png`. Every evaluation runs through the search's
runner (`--runner`, `--max_parallel_trials`, `--trial_timeout_s`) and is
written to the JSON as it finishes, so running the same command again after a
stop evaluates only what is missing.
"""
import contextlib
import json
import math
import os
import random
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags

from spinesearch import controller, evaluate, logs
from spinesearch.errors import ConfigError, parse_absl_flags, run_cli
from spinesearch.jobs import (Job, fingerprint, proxy_schedule, reference_architectures,
                              reseeded, reward_of, run_jobs)
from spinesearch.proxy.config import ProxyConfig
from spinesearch.runners.registry import build_runner
from spinesearch.space.registry import build_space

flags.DEFINE_integer("num_architectures", 10, "Architectures sampled from the space.",
                     lower_bound=2)
flags.DEFINE_float("long_train_factor", 4.0,
                   "The long schedule trains this many times the proxy's steps (or epochs).",
                   lower_bound=1.0)
flags.DEFINE_integer("long_train_steps", None,
                     "The long schedule trains this many steps (instead of "
                     "--long_train_factor; its warm-up scales with it).", lower_bound=1)
flags.DEFINE_boolean("include_reference", False,
                     "Architectures 0 and 1 are SpineNet-49 and the scale-decreased ordering "
                     "of its blocks (spaces with SpineNet blocks); the rest are sampled.")
flags.DEFINE_integer("near_reference_mutations", None,
                     "Sample the architectures near the first reference (SpineNet-49, "
                     "NAS-FPN) instead of uniformly: each with 1 to this many decisions "
                     "re-sampled, as a supernet trained with --sampling=around_reference "
                     "draws its paths.", lower_bound=1)
flags.DEFINE_string("long_preset", None,
                    "Train the long schedule with this proxy preset instead (e.g. paper); "
                    "--long_train_factor then applies to that preset's schedule.")
flags.DEFINE_integer("repeats", 3, "Seeds the first architecture is trained with, for the "
                     "coefficient of variation of its AP.", lower_bound=1)
flags.DEFINE_string("output_dir", None,
                    "Where results and the plot go (default: <search_dir>/proxy_check).")
flags.DEFINE_boolean("json", False, "Print the report as JSON instead of a table.")

FLAGS = flags.FLAGS
RESULTS_FILE = "proxy_check.json"
PLOT_FILE = "proxy_check.png"
ZERO_SHOT_REWARD = "zero_shot"


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
  """Kendall's tau-b (ties in either ranking count as neither agreement nor
  disagreement); None when either side has no two distinct values."""
  if len(x) != len(y):
    raise ValueError("kendall_tau needs two sequences of the same length")
  concordant = discordant = ties_x = ties_y = 0
  for i in range(len(x)):
    for j in range(i + 1, len(x)):
      dx, dy = x[i] - x[j], y[i] - y[j]
      if dx == 0 and dy == 0:
        continue
      if dx == 0:
        ties_x += 1
      elif dy == 0:
        ties_y += 1
      elif (dx > 0) == (dy > 0):
        concordant += 1
      else:
        discordant += 1
  denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
  return (concordant - discordant) / denominator if denominator else None


def coefficient_of_variation(values: Sequence[float]) -> Optional[float]:
  """Sample standard deviation over the mean; None for fewer than 2 values or
  a zero mean."""
  if len(values) < 2:
    return None
  mean = sum(values) / len(values)
  if mean == 0:
    return None
  variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return math.sqrt(variance) / abs(mean)


# ---- the evaluations ------------------------------------------------------------------

def plan_jobs(space, proxy: Dict[str, Any], dataset: Dict[str, Any], *, seed: int,
              num_architectures: int, long_preset: Optional[str], long_train_factor: float,
              repeats: int, zero_shot: Optional[Dict[str, Any]],
              reward: Optional[Dict[str, Any]] = None, long_train_steps: Optional[int] = None,
              include_reference: bool = False,
              near_reference_mutations: Optional[int] = None) -> List[Job]:
  """Every evaluation the check needs, with keys that name them. `zero_shot`:
  the ZenSettings fields of the zero-shot job (None: no zero-shot job).
  `reward`: the search's reward settings when it is not the proxy (the
  one-shot reward); its repeats change the trial seed.
  `near_reference_mutations`: see `_architectures`."""
  long_proxy = proxy_schedule(proxy, long_preset, long_train_factor, long_train_steps)
  jobs = []
  for index, (architecture, decisions) in enumerate(
      _architectures(space, seed, num_architectures, include_reference,
                     near_reference_mutations)):
    base = {"seed": seed, "decisions": decisions, "space": space.config(),
            "architecture": architecture.to_dict()}

    def job(kind, reward, index=index, base=base, **changes):
      jobs.append(Job(f"{kind}/{index}", index, dict(base, reward=reward, **changes)))

    short = (dict(reward, cost=None) if reward is not None else
             {"type": "proxy", "proxy": proxy, "dataset": dataset, "cost": None})
    job("proxy", short)
    job("long", {"type": "proxy", "proxy": long_proxy, "dataset": dataset, "cost": None})
    if zero_shot is not None:
      job("zero_shot", {"type": ZERO_SHOT_REWARD, "proxy": proxy, "zero_shot": zero_shot,
                        "cost": None})
    if index == 0:
      for repeat in range(1, repeats):
        if reward is not None:
          job(f"repeat{repeat}", short, seed=seed + repeat)
        else:
          job(f"repeat{repeat}", {"type": "proxy", "proxy": reseeded(proxy, seed + repeat),
                                  "dataset": dataset, "cost": None})
  return jobs


def _architectures(space, seed: int, count: int, include_reference: bool,
                   near_reference_mutations: Optional[int] = None):
  """(architecture, decisions) to check: sampled with the check's own seed,
  after SpineNet-49 and its scale-decreased ordering when asked
  (`jobs.reference_architectures`); uniformly from the space, or with
  `near_reference_mutations` as distinct mutations of the first reference."""
  from spinesearch.algorithms.evolution import near
  references = reference_architectures(space)
  chosen = list(references) if include_reference else []
  rng = random.Random(f"proxy-check-{seed}")
  seen = {tuple(d) for _, d in chosen}
  for _ in range(1000 * count):
    if len(chosen) >= count:
      break
    if near_reference_mutations:
      decisions = near(space, references[0][1], rng, near_reference_mutations, 1)
    else:
      decisions = space.sample(rng)
    if near_reference_mutations and tuple(decisions) in seen:
      continue
    seen.add(tuple(decisions))
    chosen.append((space.decode(decisions), decisions))
  return chosen[:count]


# ---- the report -----------------------------------------------------------------------

def summarize(jobs: List[Job], results: Dict[str, Dict[str, Any]],
              repeats: int) -> Dict[str, Any]:
  """The table rows and the three statistics."""
  num_architectures = 1 + max(j.arch_index for j in jobs)
  rows = []
  for index in range(num_architectures):
    short, long = results.get(f"proxy/{index}"), results.get(f"long/{index}")
    zero_shot = results.get(f"zero_shot/{index}")
    metrics = (short or {}).get("metrics") or {}
    rows.append({
        "arch": index,
        "proxy_ap": reward_of(short), "long_ap": reward_of(long),
        "zero_shot": reward_of(zero_shot),
        "multiply_adds_g": _giga(metrics.get("multiply_adds")),
        "params_m": (metrics["params"] / 1e6) if metrics.get("params") else None,
        "errors": [r["error"] for r in (short, long, zero_shot) if r and r["status"] != "done"],
    })
  repeat_aps = [reward_of(results.get("proxy/0"))] + [
      reward_of(results.get(f"repeat{r}/0")) for r in range(1, repeats)]
  repeat_aps = [ap for ap in repeat_aps if ap is not None]
  return {
      "rows": rows,
      "kendall_tau_proxy_vs_long": _tau(rows, "proxy_ap"),
      "kendall_tau_zero_shot_vs_long": _tau(rows, "zero_shot"),
      "repeat_aps": repeat_aps,
      "ap_coefficient_of_variation": coefficient_of_variation(repeat_aps),
  }


def _giga(value: Optional[float]) -> Optional[float]:
  return value / 1e9 if value else None


def _tau(rows: List[Dict[str, Any]], column: str) -> Optional[float]:
  pairs = [(r[column], r["long_ap"]) for r in rows
           if r[column] is not None and r["long_ap"] is not None]
  if len(pairs) < 2:
    return None
  return kendall_tau([a for a, _ in pairs], [b for _, b in pairs])


def format_table(summary: Dict[str, Any]) -> str:
  def cell(value, spec):
    return format(value, spec) if value is not None else "-"

  label = "one-shot" if summary.get("reward") == "oneshot" else "proxy AP"
  lines = [f"{'arch':>4}  {label:>9}  {'long AP':>9}  {'zero-shot':>10}  "
           f"{'G mult-adds':>11}  {'params M':>8}"]
  for r in summary["rows"]:
    lines.append(f"{r['arch']:>4}  {cell(r['proxy_ap'], '9.4f')}  {cell(r['long_ap'], '9.4f')}  "
                 f"{cell(r['zero_shot'], '10.2f')}  {cell(r['multiply_adds_g'], '11.3f')}  "
                 f"{cell(r['params_m'], '8.3f')}")
    for error in r["errors"]:
      lines.append(f"      failed: {error}")
  cv = summary["ap_coefficient_of_variation"]
  lines += [
      f"Kendall tau, {label} vs long AP:   {cell(summary['kendall_tau_proxy_vs_long'], '.3f')}",
      f"Kendall tau, zero-shot vs long AP:  {cell(summary['kendall_tau_zero_shot_vs_long'], '.3f')}",
      f"AP over {len(summary['repeat_aps'])} seeds of arch 0: "
      + ", ".join(f"{ap:.4f}" for ap in summary["repeat_aps"])
      + f"  (coefficient of variation {cell(cv * 100 if cv is not None else None, '.1f')}%)",
  ]
  return "\n".join(lines)


def plot(summary: Dict[str, Any], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  panels = [("proxy_ap", "proxy AP", summary["kendall_tau_proxy_vs_long"]),
            ("zero_shot", "zero-shot score", summary["kendall_tau_zero_shot_vs_long"])]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  for axis, (column, label, tau) in zip(axes, panels):
    points = [(r[column], r["long_ap"], r["arch"]) for r in summary["rows"]
              if r[column] is not None and r["long_ap"] is not None]
    for x, y, index in points:
      axis.scatter(x, y, color="tab:blue")
      axis.annotate(str(index), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    tau_text = f"{tau:.2f}" if tau is not None else "n/a"
    axis.set_title(f"{label} vs long-schedule AP (Kendall tau {tau_text})", fontsize=10)
    axis.set_xlabel(label)
    axis.set_ylabel("long-schedule AP")
    axis.grid(alpha=0.3)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


# ---- the command ----------------------------------------------------------------------

def _main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}: every setting is a --flag")
  if not evaluate.REWARD_TYPES[FLAGS.reward].needs_dataset:
    raise ConfigError(f"--reward={FLAGS.reward} trains nothing; proxy_check needs a search "
                      f"flagfile with a training reward such as --reward=proxy")
  space = build_space(FLAGS.search_space, **controller.space_options())
  with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the report
    settings = controller.reward_settings(space)
  long_preset = FLAGS.long_preset
  if long_preset is not None:
    ProxyConfig.from_preset(long_preset)  # an unknown name is refused here
  jobs = plan_jobs(space, settings["proxy"], settings["dataset"], seed=FLAGS.seed,
                   num_architectures=FLAGS.num_architectures, long_preset=long_preset,
                   long_train_factor=FLAGS.long_train_factor, repeats=FLAGS.repeats,
                   zero_shot=(settings.get("zero_shot") or {}
                              if ZERO_SHOT_REWARD in evaluate.REWARD_TYPES else None),
                   reward=settings if FLAGS.reward != "proxy" else None,
                   long_train_steps=FLAGS.long_train_steps,
                   include_reference=FLAGS.include_reference,
                   near_reference_mutations=FLAGS.near_reference_mutations)
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.search_dir or ".", "proxy_check")
  os.makedirs(output_dir, exist_ok=True)
  runner = build_runner(FLAGS.runner, max_parallel=FLAGS.max_parallel_trials,
                        timeout_s=FLAGS.trial_timeout_s, search_dir=output_dir)
  results = run_jobs(jobs, runner, os.path.join(output_dir, RESULTS_FILE),
                     fingerprint([j.request for j in jobs]))
  summary = summarize(jobs, results, FLAGS.repeats)
  summary["output_dir"] = output_dir
  summary["reward"] = FLAGS.reward
  plot(summary, os.path.join(output_dir, PLOT_FILE))
  if FLAGS.json:
    print(json.dumps(summary, indent=2))
  else:
    print(format_table(summary))
    print(f"results: {os.path.join(output_dir, RESULTS_FILE)}, "
          f"plot: {os.path.join(output_dir, PLOT_FILE)}")
  return 0


def main(argv: List[str]) -> int:
  logs.configure()
  return run_cli(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)
