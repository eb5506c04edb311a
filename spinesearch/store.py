"""The trial store of one search: `<search_dir>/trials.db` (SQLite).

Only the search driver writes it. Every write is one transaction in WAL
mode, so a driver killed at any moment (kill -9 included) leaves either the
state before a write or the state after it, never a mix. Commits are synced
at WAL checkpoints (synchronous=NORMAL): a power cut may roll back the last
few commits, but never leaves a half-written one, and the driver's fast
rewards would otherwise wait on an fsync per trial.

Tables:
  search      key/value metadata: the flags that define the search, the
              space's config, the seed, versions, the creation time.
  trials      one row per trial (see `Trial`); `finish_order` numbers finished
              trials in the order they finished, so the algorithm can be re-fed
              in that order on resume.
  checkpoint  the search algorithm's latest state (one row); its
              `observed_ids` is the record of which finished trials the saved
              state has seen.

A search directory is used by one driver at a time: the store holds an
exclusive lock on `<search_dir>/.lock` while it is open (the kernel drops it
when the process dies, however it dies).
"""
import base64
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import sqlite3
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from spinesearch.errors import ConfigError

DB_NAME = "trials.db"
LOCK_NAME = ".lock"
STORE_SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
FINISHED = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
  id INTEGER PRIMARY KEY,
  architecture TEXT NOT NULL,
  decisions TEXT NOT NULL,
  log_probs TEXT,
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
  reward REAL,
  metrics TEXT,
  error TEXT,
  created REAL NOT NULL,
  started REAL,
  finished REAL,
  worker TEXT,
  finish_order INTEGER UNIQUE
);
CREATE INDEX IF NOT EXISTS trials_by_reward ON trials (status, reward DESC, id);
CREATE TABLE IF NOT EXISTS checkpoint (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  state TEXT NOT NULL,
  observed_ids TEXT NOT NULL,
  saved REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Trial:
  """One row of the trials table, decoded."""
  id: int
  architecture: Dict[str, Any]
  decisions: List[int]
  log_probs: Optional[List[float]]
  status: str
  reward: Optional[float]
  metrics: Dict[str, Any]
  error: Optional[str]
  created: float
  started: Optional[float]
  finished: Optional[float]
  worker: Optional[str]
  finish_order: Optional[int]


class TrialStore:
  """Trials, search metadata and the algorithm checkpoint of one search."""

  def __init__(self, search_dir: str):
    self.search_dir = search_dir
    os.makedirs(search_dir, exist_ok=True)
    self._lock_file = _acquire_lock(os.path.join(search_dir, LOCK_NAME))
    self.path = os.path.join(search_dir, DB_NAME)
    try:
      self._conn = sqlite3.connect(self.path, isolation_level=None)
      self._conn.execute("PRAGMA journal_mode=WAL")
      self._conn.execute("PRAGMA synchronous=NORMAL")
      self._conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as e:
      self._lock_file.close()
      raise ConfigError(f"{self.path}: not a usable trial store ({e})") from None

  def close(self) -> None:
    self._conn.close()
    self._lock_file.close()

  def __enter__(self) -> "TrialStore":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @contextlib.contextmanager
  def _transaction(self) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if anything in it fails."""
    self._conn.execute("BEGIN IMMEDIATE")
    try:
      yield self._conn
    except BaseException:
      self._conn.execute("ROLLBACK")
      raise
    self._conn.execute("COMMIT")

  # ---- search metadata -------------------------------------------------------

  def metadata(self) -> Optional[Dict[str, Any]]:
    """The search's metadata, or None for a store no search was created in."""
    return _read_metadata(self._conn)

  def create_search(self, metadata: Dict[str, Any]) -> None:
    """Records what defines the search; once per store."""
    with self._transaction() as conn:
      if conn.execute("SELECT COUNT(*) FROM search").fetchone()[0]:
        raise ConfigError(f"{self.path}: a search was already created here")
      entries = dict(metadata, store_schema_version=STORE_SCHEMA_VERSION,
                     created=time.time())
      conn.executemany("INSERT INTO search (key, value) VALUES (?, ?)",
                       [(k, json.dumps(v, sort_keys=True)) for k, v in entries.items()])

  # ---- trials ----------------------------------------------------------------

  def add_trial(self, architecture: Dict[str, Any], decisions: Sequence[int],
                log_probs: Optional[Sequence[float]] = None,
                checkpoint: Optional[Dict[str, Any]] = None) -> Trial:
    """A new pending trial; with `checkpoint`, the algorithm state that
    proposed it is saved in the same transaction."""
    with self._transaction() as conn:
      cursor = conn.execute(
          "INSERT INTO trials (architecture, decisions, log_probs, status, created)"
          " VALUES (?, ?, ?, 'pending', ?)",
          (json.dumps(architecture), json.dumps([int(d) for d in decisions]),
           None if log_probs is None else json.dumps([float(p) for p in log_probs]),
           time.time()))
      if checkpoint is not None:
        self._write_checkpoint(conn, checkpoint)
      trial_id = cursor.lastrowid
    return self.trial(trial_id)

  def mark_running(self, trial_id: int, worker: str) -> None:
    with self._transaction() as conn:
      changed = conn.execute(
          "UPDATE trials SET status = 'running', started = ?, worker = ?"
          " WHERE id = ? AND status = 'pending'", (time.time(), worker, trial_id)).rowcount
      if not changed:
        raise ValueError(f"trial {trial_id} is not pending")

  def finish_trial(self, trial_id: int, status: str, reward: Optional[float],
                   metrics: Optional[Dict[str, Any]], error: Optional[str]) -> Trial:
    """Records a trial's outcome; a trial finishes exactly once."""
    if status not in FINISHED:
      raise ValueError(f"a finished trial is done or failed, not {status!r}")
    if status == "done" and (reward is None or not math.isfinite(reward)):
      raise ValueError(f"trial {trial_id}: a done trial needs a finite reward, got {reward!r}")
    with self._transaction() as conn:
      order = conn.execute("SELECT COALESCE(MAX(finish_order), 0) + 1 FROM trials").fetchone()[0]
      changed = conn.execute(
          "UPDATE trials SET status = ?, reward = ?, metrics = ?, error = ?, finished = ?,"
          " finish_order = ? WHERE id = ? AND status IN ('pending', 'running')",
          (status, None if status == "failed" else float(reward),
           _metrics_json(metrics), error, time.time(), order,
           trial_id)).rowcount
      if not changed:
        raise ValueError(f"trial {trial_id} is not pending or running")
    return self.trial(trial_id)

  def requeue_unfinished(self) -> List[Trial]:
    """Running trials (their driver stopped) become pending again; returns
    every pending trial, oldest first, to run with the same id and decisions."""
    with self._transaction() as conn:
      conn.execute("UPDATE trials SET status = 'pending', started = NULL, worker = NULL"
                   " WHERE status = 'running'")
    return self.trials(("pending",))

  def trial(self, trial_id: int) -> Trial:
    row = self._conn.execute(f"SELECT {_COLUMNS} FROM trials WHERE id = ?",
                             (trial_id,)).fetchone()
    if row is None:
      raise KeyError(f"no trial {trial_id}")
    return _trial_from_row(row)

  def trials(self, statuses: Sequence[str] = STATUSES) -> List[Trial]:
    """Trials with the given statuses, by id."""
    marks = ", ".join("?" * len(statuses))
    rows = self._conn.execute(
        f"SELECT {_COLUMNS} FROM trials WHERE status IN ({marks}) ORDER BY id",
        tuple(statuses)).fetchall()
    return [_trial_from_row(r) for r in rows]

  def finished_trials(self) -> List[Trial]:
    """Done and failed trials in the order they finished."""
    rows = self._conn.execute(
        f"SELECT {_COLUMNS} FROM trials WHERE status IN ('done', 'failed')"
        " ORDER BY finish_order").fetchall()
    return [_trial_from_row(r) for r in rows]

  def counts(self) -> Dict[str, int]:
    """Number of trials per status (every status present, zero included)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in self._conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"):
      counts[status] = n
    return counts

  def best_trials(self, k: int) -> List[Trial]:
    """The k done trials of highest reward (ties: the earlier trial first)."""
    rows = self._conn.execute(
        f"SELECT {_COLUMNS} FROM trials WHERE status = 'done'"
        " ORDER BY reward DESC, id LIMIT ?", (k,)).fetchall()
    return [_trial_from_row(r) for r in rows]

  # ---- algorithm checkpoint ------------------------------------------------------

  def save_checkpoint(self, state: Dict[str, Any]) -> None:
    with self._transaction() as conn:
      self._write_checkpoint(conn, state)

  def load_checkpoint(self) -> Optional[Dict[str, Any]]:
    row = self._conn.execute("SELECT state FROM checkpoint WHERE id = 1").fetchone()
    return None if row is None else decode_state(row[0])

  @staticmethod
  def _write_checkpoint(conn: sqlite3.Connection, state: Dict[str, Any]) -> None:
    observed = [int(i) for i in state.get("observed_ids", [])]
    conn.execute(
        "INSERT OR REPLACE INTO checkpoint (id, state, observed_ids, saved) VALUES (1, ?, ?, ?)",
        (encode_state(state), json.dumps(observed), time.time()))


def read_search(search_dir: str) -> Tuple[Optional[Dict[str, Any]], List[Trial]]:
  """(metadata, trials by id) of the search in `search_dir`, read-only and
  without its lock: a running driver is not disturbed, and what is read is
  the state after its last committed write. Metadata is None for a store no
  search was created in."""
  path = os.path.join(search_dir, DB_NAME)
  if not os.path.isfile(path):
    raise ConfigError(f"{search_dir}: no search here (no {DB_NAME})")
  try:
    conn = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro",
                           uri=True)
    try:
      metadata = _read_metadata(conn)
      rows = conn.execute(f"SELECT {_COLUMNS} FROM trials ORDER BY id").fetchall()
    finally:
      conn.close()
  except sqlite3.DatabaseError as e:
    raise ConfigError(f"{path}: not a readable trial store ({e})") from None
  return metadata, [_trial_from_row(r) for r in rows]


def _read_metadata(conn: sqlite3.Connection) -> Optional[Dict[str, Any]]:
  rows = conn.execute("SELECT key, value FROM search").fetchall()
  if not rows:
    return None
  return {key: json.loads(value) for key, value in rows}


# ---- state encoding: JSON, with numpy arrays kept exactly --------------------------

_ARRAY_KEY = "__ndarray__"


def encode_state(state: Any) -> str:
  """JSON text of an algorithm state; numpy arrays round-trip bit for bit."""
  return json.dumps(state, default=_encode_numpy, allow_nan=True)


def decode_state(text: str) -> Any:
  return json.loads(text, object_hook=_decode_array)


def _encode_numpy(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    data = np.ascontiguousarray(value)
    return {_ARRAY_KEY: base64.b64encode(data.tobytes()).decode("ascii"),
            "dtype": data.dtype.str, "shape": list(data.shape)}
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"algorithm state: cannot store a {type(value).__name__}")


def _decode_array(value: Dict[str, Any]) -> Any:
  if _ARRAY_KEY not in value:
    return value
  raw = base64.b64decode(value[_ARRAY_KEY])
  return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def _metrics_json(metrics: Optional[Dict[str, Any]]) -> str:
  """Metrics as JSON; numpy scalars and arrays become numbers and lists."""
  return json.dumps(metrics or {}, default=_plain_numpy, allow_nan=True)


def _plain_numpy(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  raise TypeError(f"metrics: cannot store a {type(value).__name__}")


# ---- rows --------------------------------------------------------------------

_COLUMNS = ("id, architecture, decisions, log_probs, status, reward, metrics, error,"
            " created, started, finished, worker, finish_order")


def _trial_from_row(row: tuple) -> Trial:
  (trial_id, architecture, decisions, log_probs, status, reward, metrics, error,
   created, started, finished, worker, finish_order) = row
  return Trial(id=trial_id, architecture=json.loads(architecture),
               decisions=json.loads(decisions),
               log_probs=None if log_probs is None else json.loads(log_probs),
               status=status, reward=reward,
               metrics={} if metrics is None else json.loads(metrics), error=error,
               created=created, started=started, finished=finished, worker=worker,
               finish_order=finish_order)


def _acquire_lock(path: str):
  lock_file = open(path, "a+", encoding="utf-8")
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock_file.seek(0)
    holder = lock_file.read().strip() or "another process"
    lock_file.close()
    raise ConfigError(
        f"{os.path.dirname(path)}: this search directory is in use by {holder}; "
        f"one driver at a time") from None
  lock_file.seek(0)
  lock_file.truncate()
  lock_file.write(f"pid {os.getpid()}\n")
  lock_file.flush()
  return lock_file
