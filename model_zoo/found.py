"""Zoo entries for architectures found by a search, with the search's provenance.

The trial is read from `<search_dir>/trials.db` read-only (a running search
keeps its lock and is not disturbed). The entry is the trial's architecture
at the scaling the search evaluated it with (the proxy's, or for a one-shot
search its supernet's: its rank is only known at that size) or at the
architecture's own scaling, with that proxy's input size, anchors and
activation, and the classes of the dataset it will be trained on.

Its provenance names the search (folder, trial, reward, flags, space, seed),
for a one-shot search the supernet (location, the sha256 of the weights the
trial was scored on, its training settings), and, when
`scripts/validate_search.py` has run on the search, the validation's recipe
and its table (every architecture's AP over the seeds, from scratch and
fine-tuned).
"""
import dataclasses
import json
import os
import sqlite3
from typing import Any, Dict, Optional, Tuple

from model_zoo.entry import HeadSpec, NormActivation, ZooEntry, ZooError
from spinesearch.data.dataset import DatasetPaths
from spinesearch.errors import UserError
from spinesearch.files import read_json
from spinesearch.proxy import ProxyConfig
from spinesearch.space.architecture import Architecture

SCALINGS = ("proxy", "architecture")


def read_trial(search_dir: str, trial_id: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(search metadata, trial row as a dict) of a finished, successful trial."""
  path = os.path.join(search_dir, "trials.db")
  if not os.path.isfile(path):
    raise ZooError(f"{search_dir}: not a search directory (no trials.db)")
  try:
    conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    try:
      metadata = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM search")}
      row = conn.execute("SELECT id, architecture, status, reward, metrics, error FROM trials"
                         " WHERE id = ?", (trial_id,)).fetchone()
      done = [r[0] for r in conn.execute(
          "SELECT id FROM trials WHERE status = 'done' ORDER BY reward DESC, id LIMIT 5")]
    finally:
      conn.close()
  except sqlite3.DatabaseError as e:
    raise ZooError(f"{path}: not a readable trial store ({e})") from None
  if row is None:
    raise ZooError(f"{search_dir}: no trial {trial_id}; best done trials: "
                   f"{', '.join(map(str, done)) or 'none'}")
  trial = dict(zip(("id", "architecture", "status", "reward", "metrics", "error"), row))
  if trial["status"] != "done":
    raise ZooError(f"{search_dir}: trial {trial_id} is {trial['status']}"
                   f"{': ' + trial['error'] if trial['error'] else ''}; pick a done trial "
                   f"(best: {', '.join(map(str, done)) or 'none'})")
  trial["architecture"] = json.loads(trial["architecture"])
  trial["metrics"] = json.loads(trial["metrics"] or "{}")
  return metadata, trial


REWARDS = ("proxy", "oneshot")
VALIDATION_FILE = os.path.join("validate_search", "validate_search.json")


def proxy_config_of_search(flags: Dict[str, Any]) -> ProxyConfig:
  """The proxy config a search evaluated its trials with: its preset plus the
  `--proxy_*` flags it set, or for a one-shot search its supernet's."""
  if flags.get("reward") == "oneshot":
    return _supernet(flags).proxy
  fields = {f.name for f in dataclasses.fields(ProxyConfig)}
  overrides = {key[len("proxy_"):]: value for key, value in flags.items()
               if key.startswith("proxy_") and key != "proxy_preset" and value is not None
               and key[len("proxy_"):] in fields}
  try:
    return ProxyConfig.from_preset(flags.get("proxy_preset") or "quickstart", **overrides)
  except UserError as e:
    raise ZooError(f"the search's proxy settings: {e}") from None


def entry_from_search(search_dir: str, trial_id: int, name: str, dataset: DatasetPaths, *,
                      scaling: str = "proxy") -> ZooEntry:
  """A new entry (without weights) for trial `trial_id` of the search."""
  if scaling not in SCALINGS:
    raise ZooError(f"scaling: one of {', '.join(SCALINGS)}, got {scaling!r}")
  metadata, trial = read_trial(search_dir, trial_id)
  flags = metadata.get("flags", {})
  if flags.get("reward") not in (None,) + REWARDS:
    raise ZooError(f"{search_dir}: a {flags['reward']!r} search measures no detector; "
                   f"zoo entries come from searches with the {' or '.join(REWARDS)} reward")
  config = proxy_config_of_search(flags)
  architecture = Architecture.from_dict(trial["architecture"])
  if scaling == "proxy":
    architecture = config.scaled(architecture)
  entry = ZooEntry(
      name=name,
      description=(f"Architecture of trial {trial_id} of the search in {search_dir} "
                   f"({flags.get('search_space', '?')} space, {flags.get('algorithm', '?')}), "
                   f"at the {scaling} scaling."),
      architecture=architecture.replace(name=name),
      input_size=config.image_size,
      num_classes=dataset.num_classes,
      class_names=dataset.class_names,
      head=HeadSpec(num_scales=config.num_scales, aspect_ratios=config.aspect_ratios,
                    anchor_size=config.anchor_size,
                    pre_nms_score_threshold=config.pre_nms_score_threshold),
      norm_activation=NormActivation(activation="relu"),
      provenance={
          "kind": "search",
          "search_dir": search_dir,
          "trial_id": trial_id,
          "search_reward": trial["reward"],
          "search_metrics": trial["metrics"],
          "scaling": scaling,
          "flags": flags,
          "space": metadata.get("space"),
          "seed": metadata.get("seed"),
          "spinesearch_version": metadata.get("version"),
          **_oneshot_provenance(flags, trial),
          **_validation_provenance(search_dir, trial_id),
      })
  # Round trip through the schema: what is saved must load.
  return ZooEntry.from_dict(entry.to_dict(), source=f"entry for trial {trial_id}")


def search_dataset(metadata: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """The synthetic set a search (its metadata, from `read_trial`) evaluated
  on ({num_train, num_val, image_size, seed}; image_size None: the proxy's),
  or None for a search on the user's TFRecords."""
  flags = metadata.get("flags", {})
  if flags.get("reward") == "oneshot":
    spec = dict(_supernet(flags).meta["dataset"])
  elif flags.get("dataset", "synthetic") == "synthetic":
    spec = {key: flags.get(f"synthetic_{key}") for key in ("num_train", "num_val", "image_size",
                                                            "seed")}
    spec["type"] = "synthetic"
  else:
    return None
  if spec.pop("type", "synthetic") != "synthetic":
    return None
  return spec


def _supernet(flags: Dict[str, Any]):
  from spinesearch.oneshot.supernet import Supernet
  try:
    return Supernet.open(flags.get("supernet") or "")
  except UserError as e:
    raise ZooError(f"the search's supernet: {e}") from None


def _oneshot_provenance(flags: Dict[str, Any], trial: Dict[str, Any]) -> Dict[str, Any]:
  """The supernet a one-shot trial was scored on ({} for other rewards)."""
  if flags.get("reward") != "oneshot":
    return {}
  supernet = _supernet(flags)
  scored_on = trial["metrics"].get("supernet_sha256")
  return {"supernet": {
      "location": flags["supernet"],
      "weights_sha256": supernet.weights_sha256,
      "trial_scored_on_sha256": scored_on,
      "same_weights_as_the_trial": scored_on == supernet.weights_sha256,
      "config": supernet.meta["config"],
      "reference_ap": supernet.meta.get("reference_ap"),
  }}


def _validation_provenance(search_dir: str, trial_id: int) -> Dict[str, Any]:
  """The validation of the search (`scripts/validate_search.py`), when it
  has run and trained this trial: its recipe and every row's APs."""
  path = os.path.join(search_dir, VALIDATION_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    report = read_json(path)
    rows, ways = report["rows"], report["ways"]
  except (ValueError, KeyError, TypeError) as e:
    raise ZooError(f"{path}: not a validate_search report ({e}); move it away") from None
  if not any(row.get("trial_id") == trial_id for row in rows):
    return {}
  keep = ("architecture", "trial_id", "search_reward", "multiply_adds_g", "params_m")
  return {"validation": {
      "file": path, "recipe": report.get("recipe"), "dataset": report.get("dataset"),
      "ways": ways,
      "rows": [{**{k: row.get(k) for k in keep},
                **{way: {k: row[way].get(k) for k in ("aps", "mean", "std")} for way in ways}}
               for row in rows]}}
