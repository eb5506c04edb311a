"""A trained supernet, opened read-only: what one-shot trials score on.

`Supernet.open(DIR)` reads `supernet.json` and, on first use, `weights.npz`
(checked against its sha256). A name without a slash opens a supernet bundled
with SpineSearch (`spinesearch/oneshot/supernets/<name>/`). Trials never write
a supernet, so any number of them (processes, Ray workers) can read one while
it is still training: its files are replaced whole, never changed in place.
"""
import functools
import json
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from spinesearch.errors import UserError
from spinesearch.oneshot.config import WEIGHTS_FILE, SupernetConfig, read_meta
from spinesearch.proxy.config import ProxyConfig

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supernets")


def bundled_names():
  if not os.path.isdir(BUNDLED_DIR):
    return []
  return sorted(n for n in os.listdir(BUNDLED_DIR)
                if os.path.isfile(os.path.join(BUNDLED_DIR, n, "supernet.json")))


def resolve(location: str) -> str:
  """The folder of a supernet given as a folder or a bundled name."""
  if os.path.isdir(location):
    return location
  if os.sep not in location and location in bundled_names():
    return os.path.join(BUNDLED_DIR, location)
  names = ", ".join(bundled_names()) or "none"
  raise UserError(f"supernet {location!r}: no such folder, and not a bundled supernet "
                  f"(bundled: {names})")


class Supernet:
  """A supernet folder's description and weights (module docstring)."""

  def __init__(self, folder: str, meta: Mapping[str, Any]):
    self.folder = folder
    self.meta = meta
    self.config = SupernetConfig.from_dict(meta["config"])

  @classmethod
  def open(cls, location: str) -> "Supernet":
    folder = resolve(location)
    meta = read_meta(folder)
    if meta is None:
      raise UserError(f"{folder}: no supernet.json; not a supernet folder "
                      f"(train one with python -m spinesearch.oneshot train)")
    if not meta.get("weights"):
      raise UserError(f"{folder}: the supernet has no weights yet (its training has not "
                      f"reached its first checkpoint)")
    return cls(folder, meta)

  @property
  def proxy(self) -> ProxyConfig:
    """The proxy settings its paths were built with."""
    fields = dict(self.meta["proxy"])
    fields["aspect_ratios"] = tuple(fields["aspect_ratios"])
    return ProxyConfig(**fields)

  @property
  def weights_sha256(self) -> str:
    return self.meta["weights"]["sha256"]

  def arrays(self) -> Dict[str, np.ndarray]:
    """The shared weights by key (read once per process and weights file)."""
    return _read_weights(os.path.join(self.folder, WEIGHTS_FILE),
                         tuple(sorted(self.meta["weights"].items())))

  def check_compatible(self, space_config: Mapping[str, Any],
                       num_classes: Optional[int] = None) -> None:
    """Refuses, in one line, a search whose space (or classes) is not the one
    the supernet was trained for."""
    if _canonical(space_config) != _canonical(self.meta["space"]):
      raise UserError(f"supernet {self.folder} was trained for the space "
                      f"{self.meta['space']}, not {dict(space_config)}")
    if num_classes is not None and num_classes != self.meta["num_classes"]:
      raise UserError(f"supernet {self.folder} has a head for {self.meta['num_classes']} "
                      f"classes; this data set has {num_classes}")

  def space(self):
    from spinesearch.space.registry import space_from_config
    return space_from_config(self.meta["space"])

  def scorer(self, settings, dataset=None, cache_dir: Optional[str] = None):
    """A OneShotScorer on the supernet's proxy settings, for its own data set
    (or `dataset`, DatasetPaths with the same classes)."""
    from spinesearch.data import dataset as dataset_lib
    from spinesearch.oneshot.evaluation import OneShotScorer
    from spinesearch.proxy.task import ProxyTask
    if dataset is None:
      dataset = dataset_lib.from_spec(self.meta["dataset"], cache_dir)
    if dataset.num_classes != self.meta["num_classes"]:
      raise UserError(f"supernet {self.folder} has a head for {self.meta['num_classes']} "
                      f"classes; the data set has {dataset.num_classes}")
    return OneShotScorer(ProxyTask(self.proxy, dataset), self.space(), settings)

  def score(self, architecture, settings, dataset=None, cache_dir: Optional[str] = None):
    """The one-shot TrialResult of `architecture` (see OneShotScorer)."""
    from spinesearch.oneshot import keys
    space = self.space()
    if architecture.space != (space.architecture_space or space.name):
      raise UserError(f"a {architecture.space} architecture cannot be scored on a supernet "
                      f"of the {space.name} space")
    keys.block_names(space, architecture)  # refuses blocks the space has no slot for
    return self.scorer(settings, dataset, cache_dir).score(architecture, self.arrays())


def _canonical(value) -> str:
  return json.dumps(value, sort_keys=True)


@functools.lru_cache(maxsize=2)
def _read_weights(path: str, record_items) -> Dict[str, np.ndarray]:
  from spinesearch.oneshot import bank
  return bank.read_arrays(path, dict(record_items))
