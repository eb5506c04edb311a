"""--zero_shot_prefilter: each trial is the best of K proposals by zero-shot
score. The chosen proposal keeps the log-probs of its own sampling, PPO trains
only on trials that ran, and a prefiltered search resumes (even from a stop in
the middle of scoring candidates) exactly as if it had never stopped."""
import io

import numpy as np

from spinesearch.driver import EXIT_INTERRUPTED, SearchDriver, SearchSettings
from spinesearch.store import TrialStore

K = 3


def target_similarity_reward(space):
  del space
  return {"type": "target_similarity", "cost": None}


def settings(search_dir, num_trials, algorithm="ppo", prefilter=K):
  options = {"batch_size": 4} if algorithm == "ppo" else {}
  return SearchSettings(
      search_dir=str(search_dir), search_space="spinenet", space_options={"preset": "default"},
      algorithm=algorithm, algorithm_options=options, seed=0,
      defining_flags={"algorithm": algorithm, "zero_shot_prefilter": prefilter},
      num_trials=num_trials, runner="inline", zero_shot_prefilter=prefilter)


def fake_scores(architectures):
  """A cheap stand-in for the Zen-score that differs between architectures."""
  return [sum((b.level - 4) ** 2 + (b.block_fn == "bottleneck") for b in a.blocks)
          for a in architectures]


class InterruptingScorer:
  """fake_scores, but a stop (Ctrl-C) arrives during call number `stop_at`."""

  def __init__(self, stop_at):
    self.calls, self.stop_at = 0, stop_at

  def __call__(self, architectures):
    self.calls += 1
    if self.calls == self.stop_at:
      raise KeyboardInterrupt
    return fake_scores(architectures)


def run_search(search_settings, scorer=fake_scores, spy=None):
  driver = SearchDriver(search_settings, target_similarity_reward, out=io.StringIO(),
                        candidate_scorer=scorer)
  if spy:
    spy(driver.algorithm)
  return driver.run()


def stored_trials(search_dir):
  with TrialStore(str(search_dir)) as store:
    return store.trials(), store.load_checkpoint()


def test_prefiltered_ppo_trials_keep_their_own_sampling_log_probs(tmp_path):
  proposals, batches = [], []

  def spy(algorithm):
    propose, update = algorithm.propose, algorithm._update

    def recording_propose():
      proposal = propose()
      proposals.append(proposal)
      return proposal

    def recording_update(batch):
      batches.append([dict(item) for item in batch])
      return update(batch)

    algorithm.propose, algorithm._update = recording_propose, recording_update

  assert run_search(settings(tmp_path / "s", num_trials=10), spy=spy) == 0
  trials, state = stored_trials(tmp_path / "s")
  assert len(proposals) == K * len(trials) == 30
  for trial in trials:
    group = proposals[K * (trial.id - 1):K * trial.id]
    scores = fake_scores([_decode(p.decisions) for p in group])
    chosen = group[int(np.argmax(scores))]
    assert trial.decisions == chosen.decisions and trial.log_probs == chosen.log_probs
    assert trial.metrics["zen_score"] == max(scores)
    assert trial.metrics["zen_candidates"] == scores
  # PPO's batches and its pending buffer hold exactly the trials that ran, in
  # the order they finished, each with its own log-probs: nothing discarded.
  ran = [{"decisions": t.decisions, "log_probs": t.log_probs, "reward": t.reward}
         for t in sorted(trials, key=lambda t: t.finish_order)]
  assert [item for batch in batches for item in batch] + state["buffer"] == ran
  assert len(batches) == state["num_updates"] == 2
  assert state["observed_ids"] == [t.id for t in sorted(trials, key=lambda t: t.finish_order)]


def test_a_prefiltered_search_resumes_as_if_it_never_stopped(tmp_path):
  assert run_search(settings(tmp_path / "whole", num_trials=9)) == 0
  # Stopped after 4 trials, then stopped again while scoring the candidates
  # of trial 7, then resumed to the budget.
  assert run_search(settings(tmp_path / "parts", num_trials=4)) == 0
  assert run_search(settings(tmp_path / "parts", num_trials=9),
                    scorer=InterruptingScorer(stop_at=3)) == EXIT_INTERRUPTED
  assert len(stored_trials(tmp_path / "parts")[0]) == 6
  assert run_search(settings(tmp_path / "parts", num_trials=9)) == 0
  whole, whole_state = stored_trials(tmp_path / "whole")
  parts, parts_state = stored_trials(tmp_path / "parts")
  assert [(t.decisions, t.log_probs, t.reward) for t in parts] == \
      [(t.decisions, t.log_probs, t.reward) for t in whole]
  assert parts_state["observed_ids"] == whole_state["observed_ids"]
  assert parts_state["buffer"] == whole_state["buffer"]


def test_without_a_prefilter_no_zero_shot_metrics_are_recorded(tmp_path):
  assert run_search(settings(tmp_path / "s", num_trials=3, algorithm="random",
                             prefilter=None)) == 0
  trials, _ = stored_trials(tmp_path / "s")
  assert len(trials) == 3 and all("zen_score" not in t.metrics for t in trials)


def test_the_default_prefilter_ranks_candidates_by_zen_score(tmp_path):
  """The real scorer, in the driver process, at the tiny proxy's scaling."""
  def reward(space):
    del space
    return {"type": "target_similarity", "cost": None,
            "proxy": {"preset": "tiny", "overrides": {}},
            "zero_shot": {"part": "backbone", "batch_size": 2, "repeats": 1}}

  driver = SearchDriver(settings(tmp_path / "s", num_trials=1, algorithm="random", prefilter=2),
                        reward, out=io.StringIO())
  assert driver.run() == 0
  (trial,), _ = stored_trials(tmp_path / "s")
  candidates = trial.metrics["zen_candidates"]
  assert len(candidates) == 2 and len(set(candidates)) == 2
  assert trial.metrics["zen_score"] == max(candidates)
  assert trial.metrics["prefilter_seconds"] > 0


def _decode(decisions):
  from spinesearch.space.registry import build_space
  return build_space("spinenet").decode(decisions)
