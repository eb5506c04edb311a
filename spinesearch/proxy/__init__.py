"""The proxy task: the reward of a search."""
from spinesearch.proxy.config import PRESETS, ProxyConfig
from spinesearch.proxy.result import STATUS_DONE, STATUS_FAILED, TrialResult


def __getattr__(name):
  # ProxyTask imports TensorFlow; the config and result types do not, so a
  # search driver can read presets without paying for a TensorFlow import.
  if name == "ProxyTask":
    from spinesearch.proxy.task import ProxyTask
    return ProxyTask
  raise AttributeError(name)
