"""The trial store: round trips, transactions, ordering, the directory lock,
and a store whose writer is SIGKILLed mid-write."""
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from spinesearch.errors import ConfigError
from spinesearch.store import TrialStore, decode_state, encode_state

ARCH = {"version": 1, "space": "spinenet", "blocks": []}


@pytest.fixture
def store(tmp_path):
  with TrialStore(str(tmp_path / "search")) as s:
    yield s


def test_trial_round_trip(store):
  trial = store.add_trial(ARCH, [3, 1, 4], [-0.5, -1.25, -2.0])
  assert (trial.id, trial.status, trial.decisions, trial.log_probs) == (
      1, "pending", [3, 1, 4], [-0.5, -1.25, -2.0])
  store.mark_running(trial.id, "local:pid42")
  running = store.trial(trial.id)
  assert running.status == "running" and running.worker == "local:pid42"
  assert running.started >= running.created
  done = store.finish_trial(trial.id, "done", 0.625,
                            {"ap": np.float32(0.5), "sizes": np.array([1, 2])}, None)
  assert done.status == "done" and done.reward == 0.625
  assert done.metrics == {"ap": 0.5, "sizes": [1, 2]}
  assert done.finish_order == 1 and done.finished >= done.started
  assert done.architecture == ARCH


def test_failed_trial_keeps_reason_and_no_reward(store):
  trial = store.add_trial(ARCH, [0])
  failed = store.finish_trial(trial.id, "failed", 0.3, {}, "timed out after 5 s")
  assert (failed.status, failed.reward, failed.error) == ("failed", None, "timed out after 5 s")
  assert failed.log_probs is None


def test_a_trial_finishes_exactly_once(store):
  trial = store.add_trial(ARCH, [0])
  store.finish_trial(trial.id, "done", 0.5, {}, None)
  with pytest.raises(ValueError, match="not pending or running"):
    store.finish_trial(trial.id, "failed", None, {}, "again")
  with pytest.raises(ValueError, match="not pending"):
    store.mark_running(trial.id, "w")
  assert store.trial(trial.id).status == "done"


def test_done_needs_a_finite_reward(store):
  trial = store.add_trial(ARCH, [0])
  with pytest.raises(ValueError, match="finite reward"):
    store.finish_trial(trial.id, "done", math.nan, {}, None)
  assert store.trial(trial.id).status == "pending"


def test_failed_write_rolls_back_the_whole_transaction(store):
  # The checkpoint cannot be encoded, so the trial inserted in the same
  # transaction must not exist either.
  with pytest.raises(TypeError):
    store.add_trial(ARCH, [0], checkpoint={"observed_ids": [], "bad": object()})
  assert store.counts()["pending"] == 0
  assert store.load_checkpoint() is None
  assert store.add_trial(ARCH, [0]).id == 1


def test_requeue_turns_running_into_pending_oldest_first(store):
  ids = [store.add_trial(ARCH, [i]).id for i in range(4)]
  store.mark_running(ids[0], "a")
  store.mark_running(ids[2], "b")
  store.finish_trial(ids[3], "done", 0.1, {}, None)
  pending = store.requeue_unfinished()
  assert [t.id for t in pending] == ids[:3]
  assert all(t.status == "pending" and t.worker is None and t.started is None for t in pending)
  assert store.counts() == {"pending": 3, "running": 0, "done": 1, "failed": 0}


def test_finished_trials_in_finish_order_and_best_by_reward(store):
  ids = [store.add_trial(ARCH, [i]).id for i in range(5)]
  for trial_id, reward in ((ids[3], 0.2), (ids[0], 0.9), (ids[4], None), (ids[1], 0.9),
                           (ids[2], 0.5)):
    store.finish_trial(trial_id, "failed" if reward is None else "done", reward, {},
                       None if reward is not None else "crashed")
  assert [t.id for t in store.finished_trials()] == [ids[3], ids[0], ids[4], ids[1], ids[2]]
  assert [t.id for t in store.best_trials(3)] == [ids[0], ids[1], ids[2]]


def test_metadata_is_written_once(store):
  assert store.metadata() is None
  store.create_search({"flags": {"seed": 3}, "space": {"name": "spinenet"}, "seed": 3})
  meta = store.metadata()
  assert meta["flags"] == {"seed": 3} and meta["seed"] == 3
  assert meta["store_schema_version"] == 1 and meta["created"] > 0
  with pytest.raises(ConfigError, match="already created"):
    store.create_search({"flags": {}})


def test_checkpoint_keeps_arrays_bit_for_bit(store):
  weights = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  state = {"name": "rnn", "observed_ids": [1, 2], "rng": [3, [1, 2], None],
           "policy": {"w": weights, "steps": np.int64(7), "slots": [np.arange(3)]}}
  store.save_checkpoint(state)
  loaded = store.load_checkpoint()
  assert loaded["observed_ids"] == [1, 2] and loaded["rng"] == [3, [1, 2], None]
  assert loaded["policy"]["w"].dtype == np.float32
  assert loaded["policy"]["w"].tobytes() == weights.tobytes()
  assert loaded["policy"]["steps"] == 7
  np.testing.assert_array_equal(loaded["policy"]["slots"][0], np.arange(3))
  assert math.isnan(decode_state(encode_state({"x": np.float64("nan")}))["x"])


def test_one_driver_per_search_dir(tmp_path):
  folder = str(tmp_path / "search")
  first = TrialStore(folder)
  with pytest.raises(ConfigError, match="in use by pid"):
    TrialStore(folder)
  first.close()
  TrialStore(folder).close()


def test_not_a_database_is_one_clear_error(tmp_path):
  folder = tmp_path / "search"
  folder.mkdir()
  (folder / "trials.db").write_text("not sqlite " * 100)
  with pytest.raises(ConfigError, match="not a usable trial store"):
    TrialStore(str(folder))


_WRITER = textwrap.dedent("""
    import sys
    from spinesearch.store import TrialStore
    store = TrialStore(sys.argv[1])
    i = 0
    while True:
      trial = store.add_trial({"n": i}, [i], checkpoint={"observed_ids": list(range(i))})
      store.mark_running(trial.id, "w")
      store.finish_trial(trial.id, "done", float(i), {"i": i}, None)
      store.save_checkpoint({"observed_ids": list(range(i + 1))})
      if i == 20:
        print("ready", flush=True)
      i += 1
""")


def test_sigkill_mid_write_leaves_a_consistent_store(tmp_path):
  folder = str(tmp_path / "search")
  for kill_after_s in (0.0, 0.05, 0.2):
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, folder],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(kill_after_s)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    with sqlite3.connect(os.path.join(folder, "trials.db")) as conn:
      assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with TrialStore(folder) as store:
      store.requeue_unfinished()
      finished = store.finished_trials()
      assert [t.finish_order for t in finished] == list(range(1, len(finished) + 1))
      assert all(t.reward == t.architecture["n"] == t.metrics["i"] for t in finished)
      observed = store.load_checkpoint()["observed_ids"]
      assert observed == list(range(len(observed)))
