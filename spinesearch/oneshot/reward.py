"""The one-shot reward of a search trial (`--reward=oneshot`).

A trial request's reward settings carry {"oneshot": {"supernet": DIR,
"bn_batches": N, "finetune_steps": F, "eval_images": E}, "dataset": {...},
"cost": ...}; the architecture is scored on the supernet's weights
(`evaluation.OneShotScorer`) with the search's seed, so the same architecture
always gets the same score. A worker that runs many trials opens the
supernet and reads its weights once.
"""
import functools
import json
from typing import Any, Dict, Tuple

from spinesearch.proxy.result import TrialResult

SETTINGS_KEY = "oneshot"


def evaluate_request(request: Dict[str, Any]) -> Tuple[TrialResult, Dict[str, Any]]:
  """The trial's result and the metrics to record with it."""
  from spinesearch.proxy import checkpoint as checkpoint_lib
  from spinesearch.space.architecture import Architecture
  reward = request["reward"]
  settings = reward[SETTINGS_KEY]
  cost = reward.get("cost") or {}
  scorer, supernet = _scorer(settings["supernet"], _frozen(settings), _frozen(reward["dataset"]),
                             request["seed"], _frozen(request["space"]))
  architecture = Architecture.from_dict(request["architecture"])
  # A long fine-tuning (a validation's) may ask for a checkpoint.
  checkpoint = checkpoint_lib.of_request(request) if settings.get("finetune_steps") else None
  trial = scorer.score(architecture, supernet.arrays(),
                       measure_multiply_adds=cost.get("metric") == "multiply_adds",
                       measure_latency=cost.get("metric") == "latency_ms",
                       checkpoint=checkpoint)
  if checkpoint:
    checkpoint.remove()
  metrics = {k: v for k, v in trial.to_dict().items()
             if k not in ("status", "error") and v is not None}
  metrics["supernet_sha256"] = supernet.weights_sha256
  return trial, metrics


@functools.lru_cache(maxsize=4)
def _scorer(location, settings, dataset, seed, space):
  from spinesearch.data.dataset import DatasetPaths
  from spinesearch.oneshot.evaluation import OneShotSettings
  from spinesearch.oneshot.supernet import Supernet
  supernet = Supernet.open(location)
  supernet.check_compatible(_thawed(space))
  settings = dict(_thawed(settings))
  settings.pop("supernet")
  paths = dict(_thawed(dataset))
  paths["class_names"] = tuple(paths["class_names"])
  return (supernet.scorer(OneShotSettings(seed=seed, **settings), DatasetPaths(**paths)),
          supernet)


def _frozen(value) -> str:
  """A hashable copy of JSON data, for the cache key."""
  return json.dumps(value, sort_keys=True)


def _thawed(text: str):
  return json.loads(text)
