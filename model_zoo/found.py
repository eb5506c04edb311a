"""Zoo entries for architectures found by a search, with the search's provenance.

The trial is read from `<search_dir>/trials.db` read-only (a running search
keeps its lock and is not disturbed). The entry is the trial's architecture
at the scaling the search evaluated it with (the proxy's: its rank is only
known at that size) or at the architecture's own scaling, with the proxy's
input size, anchors and activation, and the classes of the dataset it will be
trained on.
"""
import dataclasses
import json
import os
import sqlite3
from typing import Any, Dict, Tuple

from model_zoo.entry import HeadSpec, NormActivation, ZooEntry, ZooError
from spinesearch.data.dataset import DatasetPaths
from spinesearch.errors import UserError
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


def proxy_config_of_search(flags: Dict[str, Any]) -> ProxyConfig:
  """The proxy config a search trained its trials with: its preset plus the
  `--proxy_*` flags it set."""
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
  if flags.get("reward") not in (None, "proxy"):
    raise ZooError(f"{search_dir}: a {flags['reward']!r} search trains no detector; "
                   f"zoo entries come from proxy-reward searches")
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
      })
  # Round trip through the schema: what is saved must load.
  return ZooEntry.from_dict(entry.to_dict(), source=f"entry for trial {trial_id}")
