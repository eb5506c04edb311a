"""Test set-up: Keras 2 for Model Garden, quiet TensorFlow, small thread pools
under pytest-xdist, and tests that share a module fixture kept on one worker."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):
  # One worker per core (`make test` runs -n 2 on two cores): TensorFlow's
  # default pools, one thread per core in each worker, would spin against the
  # other worker's. Subprocesses the tests start inherit the same limits.
  for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import pytest  # noqa: E402

import spinesearch  # noqa: E402,F401  (sets the environment before TensorFlow loads)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """With `--dist loadgroup`, a test that uses a module-scoped fixture (a tiny
  supernet, a trained zoo model) joins its module's group, so the fixture is
  built on one worker only; the other tests spread one by one."""
  for item in items:
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None:
      continue
    scopes = {d.scope for defs in fixture_info.name2fixturedefs.values() for d in defs}
    if "module" in scopes:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
