"""The search loop behind `spinesearch.controller`: propose, run, record, observe.

Every step that changes the search is written to the trial store before the
next one starts, in this order, so a driver killed between any two steps
resumes without losing or repeating a finished trial:

  propose -> store the pending trial (with the algorithm state that proposed
  it) -> submit -> mark it running -> ... -> store its outcome -> observe ->
  store the algorithm state.

On resume, trials left pending or running run again with the same id and
decisions, and finished trials the saved algorithm state has not observed are
fed to it (in the order they finished) before anything new is proposed.

A search that reaches its budget ends with its report (spinesearch.report).
"""
import collections
import dataclasses
import glob
import json
import math
import os
import sys
import time
from typing import Any, Callable, Deque, Dict, List, Optional, TextIO, Tuple

import spinesearch
from spinesearch.algorithms.base import Observation, Proposal
from spinesearch.errors import ConfigError
from spinesearch.runners.base import TrialOutcome
from spinesearch.files import write_text_atomically
from spinesearch.progress import ScalarEvents, format_duration
from spinesearch.space.architecture import Architecture
from spinesearch.store import Trial, TrialStore

EXIT_SEARCH_FAILED = 1
EXIT_INTERRUPTED = 130
_POLL_WAIT_S = 1.0
# best/ is rewritten at most this often while trials finish (and always when
# the driver stops): fast rewards finish many trials a second.
_BEST_INTERVAL_S = 10.0
_ERROR_CHARS = 160


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """Everything a search needs; `defining_flags` is what resume compares.
  `flag_defaults` are those flags' defaults: a flag added since a search was
  created stood at its default then (a new flag's default keeps the old
  behaviour)."""
  search_dir: str
  search_space: str
  space_options: Dict[str, Any]
  algorithm: str
  algorithm_options: Dict[str, Any]
  seed: int
  defining_flags: Dict[str, Any]
  num_trials: int = 100
  flag_defaults: Dict[str, Any] = dataclasses.field(default_factory=dict)
  max_parallel_trials: int = 1
  max_failed_trials: int = 10
  trial_timeout_s: Optional[float] = None
  runner: str = "local"
  runner_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
  top_k: int = 5
  # K proposals per new trial, the best by Zen-score runs (None: no prefilter).
  zero_shot_prefilter: Optional[int] = None


class SearchFailed(Exception):
  """The search stopped because too many trials failed."""


class SearchDriver:
  """One run of a search over `settings.search_dir` (new or resumed).

  `reward_settings(space)` returns the reward part of every trial request; it
  is called after the stored search (if any) has been checked against the
  settings, so a refused resume never prepares data.

  With `settings.zero_shot_prefilter` = K, each new trial is the best of K
  proposals by `candidate_scorer(architectures) -> scores` (default: their
  Zen-scores under the reward's proxy scaling and zero-shot settings, computed
  in this process). The other proposals are dropped before anything is
  stored: no algorithm keeps state waiting on a proposal (see
  spinesearch.algorithms.base), so the algorithm observes only trials that
  ran, each with the log-probs of its own sampling, and the checkpoint saved
  with the trial holds the random state after all K proposals, so a resumed
  search proposes what an uninterrupted one would have.
  """

  def __init__(self, settings: SearchSettings,
               reward_settings: Callable[[Any], Dict[str, Any]], out: TextIO = sys.stdout,
               candidate_scorer: Optional[Callable[[List[Architecture]], List[float]]] = None):
    from spinesearch.algorithms.registry import algorithm_from_state, build_algorithm
    from spinesearch.runners.registry import build_runner
    from spinesearch.space.registry import build_space
    self.settings = settings
    self.out = out
    self.store = TrialStore(settings.search_dir)
    self.runner = None
    try:
      stored = self.store.metadata()
      if stored is not None:
        _check_same_search(stored, settings, self.store.path)
      self.space = build_space(settings.search_space, **settings.space_options)
      if stored is not None and stored["space"] != _json_round_trip(self.space.config()):
        raise ConfigError(
            f"{self.store.path}: the {settings.search_space} space's configuration changed "
            f"since this search was created ({stored['space']} then, "
            f"{self.space.config()} now); resume it with the version that created it")
      self.reward = reward_settings(self.space)
      checkpoint = self.store.load_checkpoint()
      if checkpoint is None:
        self.algorithm = build_algorithm(settings.algorithm, self.space, settings.seed,
                                         **settings.algorithm_options)
      else:
        self.algorithm = algorithm_from_state(self.space, checkpoint)
      if stored is None:
        self.store.create_search({
            "flags": settings.defining_flags, "space": self.space.config(),
            "seed": settings.seed, "version": spinesearch.__version__})
      counts = self.store.counts()
      if sum(counts.values()) > settings.num_trials:
        raise ConfigError(
            f"--num_trials={settings.num_trials} is below the {sum(counts.values())} trials "
            f"this search already has")
      self.runner = build_runner(settings.runner, max_parallel=settings.max_parallel_trials,
                                 timeout_s=settings.trial_timeout_s,
                                 search_dir=settings.search_dir, **settings.runner_options)
    except BaseException:
      self.store.close()
      raise
    self.num_done, self.num_failed = counts["done"], counts["failed"]
    self.num_created = sum(counts.values())
    self.events = ScalarEvents(os.path.join(settings.search_dir, "tensorboard"))
    self.best = BestArchitectures(os.path.join(settings.search_dir, "best"), settings.top_k)
    best = self.store.best_trials(1)
    self.best_reward = best[0].reward if best else None
    self.last_error = ""
    self.score_candidates = candidate_scorer or self._zen_scores
    # Prefilter metrics of trials proposed in this run, until their outcome is stored.
    self.prefilter_metrics: Dict[int, Dict[str, Any]] = {}

  @property
  def num_finished(self) -> int:
    return self.num_done + self.num_failed

  def run(self) -> int:
    """Runs the search to its budget; returns the exit status."""
    started = time.monotonic()
    finished_before = self.num_finished
    try:
      queue = self._resume()
      self._print(f"search {self.settings.search_dir}: {self.settings.search_space} space, "
                  f"{self.settings.algorithm}, reward {self.reward['type']}, "
                  f"{self.num_finished}/{self.settings.num_trials} trials finished"
                  + (f", {len(queue)} to run again" if queue else ""))
      while self.num_finished < self.settings.num_trials:
        self._check_failures()
        self._fill_workers(queue)
        for outcome in self.runner.poll(_POLL_WAIT_S):
          self._record(outcome, started, finished_before)
    except SearchFailed as e:
      print(f"error: {e}", file=sys.stderr)
      return EXIT_SEARCH_FAILED
    except KeyboardInterrupt:
      print(f"interrupted after {self.num_finished}/{self.settings.num_trials} finished "
            f"trials; run the same command to resume", file=sys.stderr)
      return EXIT_INTERRUPTED
    finally:
      self.close()
    self._summary(time.monotonic() - started, self._write_report())
    return 0

  def close(self) -> None:
    if self.runner is not None:
      self.runner.shutdown()
      self.runner = None
      self.store.requeue_unfinished()
      self.best.update(self.store.best_trials(self.settings.top_k))
      self.store.close()
      self.events.close()

  # ---- steps -----------------------------------------------------------------

  def _resume(self) -> Deque[Trial]:
    """Unfinished trials to run again; re-feeds the algorithm what it missed."""
    queue = collections.deque(self.store.requeue_unfinished())
    seen = set(self.algorithm.observed_ids)
    finished = self.store.finished_trials()
    failures = [t for t in finished if t.status == "failed"]
    if failures:
      self.last_error = f"trial {failures[-1].id}: {failures[-1].error}"
    missed = [t for t in finished if t.id not in seen]
    for trial in missed:
      self.algorithm.observe(_observation(trial))
    if missed:
      self.store.save_checkpoint(self.algorithm.state())
    self.best.update(self.store.best_trials(self.settings.top_k))
    return queue

  def _fill_workers(self, queue: Deque[Trial]) -> None:
    while self.runner.free_slots() > 0:
      if queue:
        trial = queue.popleft()
      elif self.num_created < self.settings.num_trials:
        trial = self._new_trial()
      else:
        return
      worker = self.runner.submit(trial.id, self._request(trial))
      self.store.mark_running(trial.id, worker)

  def _new_trial(self) -> Trial:
    if self.settings.zero_shot_prefilter:
      proposal, prefilter_metrics = self._prefiltered_proposal()
    else:
      proposal, prefilter_metrics = self.algorithm.propose(), None
    architecture = self.space.decode(proposal.decisions)
    self.num_created += 1
    trial = self.store.add_trial(architecture.to_dict(), proposal.decisions,
                                 proposal.log_probs, checkpoint=self.algorithm.state())
    if prefilter_metrics is not None:
      self.prefilter_metrics[trial.id] = prefilter_metrics
    return trial

  def _prefiltered_proposal(self) -> Tuple[Proposal, Dict[str, Any]]:
    """The best of K proposals by zero-shot score (the first of equals), and
    the metrics recorded with its trial."""
    started = time.monotonic()
    candidates = [self.algorithm.propose() for _ in range(self.settings.zero_shot_prefilter)]
    scores = [float(s) for s in self.score_candidates(
        [self.space.decode(c.decisions) for c in candidates])]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return candidates[best], {"zen_score": scores[best], "zen_candidates": scores,
                              "prefilter_seconds": time.monotonic() - started}

  def _zen_scores(self, architectures: List[Architecture]) -> List[float]:
    from spinesearch import zeroshot
    return zeroshot.score_candidates(architectures, self.reward, self.settings.seed)

  def _prefilter_metrics_of(self, trial_id: int) -> Dict[str, Any]:
    """What the prefilter recorded for a trial. A trial proposed before the
    driver restarted is scored again (the same score: it is seeded); the
    scores of the proposals it beat are not kept across runs."""
    if not self.settings.zero_shot_prefilter:
      return {}
    if trial_id in self.prefilter_metrics:
      return self.prefilter_metrics.pop(trial_id)
    architecture = Architecture.from_dict(self.store.trial(trial_id).architecture)
    return {"zen_score": float(self.score_candidates([architecture])[0])}

  def _request(self, trial: Trial) -> Dict[str, Any]:
    return {"trial_id": trial.id, "seed": self.settings.seed,
            "architecture": trial.architecture, "decisions": trial.decisions,
            "space": self.space.config(), "reward": self.reward}

  def _record(self, outcome: TrialOutcome, started: float, finished_before: int) -> None:
    metrics = dict(outcome.metrics, **self._prefilter_metrics_of(outcome.trial_id))
    trial = self.store.finish_trial(outcome.trial_id, outcome.status, outcome.reward,
                                    metrics, outcome.error)
    scalars = self.algorithm.observe(_observation(trial))
    self.store.save_checkpoint(self.algorithm.state())
    if trial.status == "done":
      self.num_done += 1
      if self.best_reward is None or trial.reward > self.best_reward:
        self.best_reward = trial.reward
      if time.monotonic() - self.best.updated >= _BEST_INTERVAL_S:
        self.best.update(self.store.best_trials(self.settings.top_k))
    else:
      self.num_failed += 1
      self.last_error = f"trial {trial.id}: {trial.error}"
    self._log_scalars(trial, scalars)
    elapsed = time.monotonic() - started
    done_here = self.num_finished - finished_before
    eta = elapsed / done_here * (self.settings.num_trials - self.num_finished)
    result = (f"reward {trial.reward:.4f}" if trial.status == "done"
              else f"FAILED ({_shorten(trial.error)})")
    best = "-" if self.best_reward is None else f"{self.best_reward:.4f}"
    self._print(f"[{self.num_finished}/{self.settings.num_trials}] trial {trial.id} {result} "
                f"best {best} elapsed {format_duration(elapsed)} eta {format_duration(eta)}")

  def _log_scalars(self, trial: Trial, algorithm_scalars: Dict[str, float]) -> None:
    values = {"search/failed_trials": self.num_failed}
    if trial.status == "done":
      values["search/reward"] = trial.reward
    if self.best_reward is not None:
      values["search/best_reward"] = self.best_reward
    values.update({f"algorithm/{k}": v for k, v in algorithm_scalars.items()})
    values.update({f"trial/{k}": v for k, v in trial.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)})
    self.events.scalars(self.num_finished, values)

  def _check_failures(self) -> None:
    if self.num_failed > self.settings.max_failed_trials:
      raise SearchFailed(
          f"stopping the search: {self.num_failed} trials failed, more than "
          f"--max_failed_trials={self.settings.max_failed_trials}; last failure: "
          f"{_shorten(self.last_error)}. Fix the cause (trial logs in "
          f"{os.path.join(self.settings.search_dir, 'logs')}) or raise --max_failed_trials, "
          f"then run the same command to resume")

  def _write_report(self) -> Optional[str]:
    """Writes the search report (spinesearch.report) once the store is
    closed; returns its path. The search has finished either way: a report
    that fails is a warning line."""
    try:
      from spinesearch import report
      return report.write_report(self.settings.search_dir, top_k=self.settings.top_k).markdown
    except (Exception, KeyboardInterrupt) as e:  # nothing here may undo a finished search
      reason = _shorten(str(e)) or type(e).__name__
      print(f"warning: no search report ({reason}); write it later with "
            f"python -m spinesearch.report --search_dir {self.settings.search_dir}",
            file=sys.stderr)
      return None

  def _summary(self, seconds: float, report: Optional[str]) -> None:
    folder = self.settings.search_dir
    if self.best.entries:
      top = self.best.entries[0]
      best = f"best reward {top.reward:.4f} from trial {top.id}: {self.best.path(1, top)}"
    else:
      best = "no trial finished with a reward"
    self._print(
        f"search finished: {self.num_finished} trials ({self.num_done} done, "
        f"{self.num_failed} failed); this run took {format_duration(seconds)}\n"
        f"{best}\n"
        f"top {len(self.best.entries)} architectures: {self.best.folder}\n"
        f"trials: {os.path.join(folder, 'trials.db')}\n"
        + (f"report: {report}\n" if report else "")
        + f"TensorBoard: tensorboard --logdir {self.events.logdir}")

  def _print(self, line: str) -> None:
    print(line, file=self.out, flush=True)


def _observation(trial: Trial) -> Observation:
  return Observation(trial.id, Proposal(list(trial.decisions), trial.log_probs),
                     trial.reward if trial.status == "done" else None)


def _check_same_search(stored: Dict[str, Any], settings: SearchSettings, where: str) -> None:
  given = _json_round_trip(settings.defining_flags)
  then = {**_json_round_trip(settings.flag_defaults), **stored["flags"]}
  changed = [f"--{name}={_text(then.get(name))} then, "
             f"{_text(given.get(name))} now"
             for name in sorted(set(then) | set(given))
             if then.get(name) != given.get(name)]
  if changed:
    raise ConfigError(
        f"{where} holds a search created with other flags: {'; '.join(changed)}. "
        f"Use the flags it was created with to resume it, or a new --search_dir")


def _text(value: Any) -> str:
  if value is None:
    return "(unset)"
  return str(value).lower() if isinstance(value, bool) else str(value)


def _json_round_trip(value: Any) -> Any:
  return json.loads(json.dumps(value, sort_keys=True))


def _shorten(text: Optional[str]) -> str:
  text = " ".join((text or "").split())
  return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS - 3] + "..."


# ---- outputs -------------------------------------------------------------------------

class BestArchitectures:
  """`<search_dir>/best/`: the top-k done trials, best first, as
  `rankNN-trialNNNN.json` (the shared architecture schema, named after the
  trial) and `rankNN-trialNNNN.metrics.json` (reward, metrics, decisions)."""

  def __init__(self, folder: str, k: int):
    self.folder = folder
    self.k = k
    self.entries: List[Trial] = []
    self.updated = -math.inf  # time.monotonic() of the last update

  def path(self, rank: int, trial: Trial, suffix: str = ".json") -> str:
    return os.path.join(self.folder, f"rank{rank:02d}-trial{trial.id:04d}{suffix}")

  def update(self, best: List[Trial]) -> None:
    """Brings the folder up to date with `best`. A finished trial never
    changes, so a file whose name (rank and trial) is already there is
    current; files are written atomically, metrics before architecture."""
    keep = set()
    for rank, trial in enumerate(best, start=1):
      keep.update({self.path(rank, trial), self.path(rank, trial, ".metrics.json")})
      if os.path.exists(self.path(rank, trial)):
        continue
      write_text_atomically(self.path(rank, trial, ".metrics.json"), json.dumps(
          {"rank": rank, "trial_id": trial.id, "reward": trial.reward,
           "metrics": trial.metrics, "decisions": trial.decisions}, indent=2) + "\n")
      architecture = Architecture.from_dict(trial.architecture)
      architecture.replace(name=f"trial{trial.id:04d}").save(self.path(rank, trial))
    for stale in glob.glob(os.path.join(self.folder, "rank*-trial*.json")):
      if stale not in keep:
        os.unlink(stale)
    self.entries = list(best)
    self.updated = time.monotonic()
