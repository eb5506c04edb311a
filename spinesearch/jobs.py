"""Evaluations of chosen architectures outside a search, resumable.

The machinery shared by the tools that train or score a fixed set of
architectures through a search's runner (`spinesearch.proxy_check`,
`scripts/validate_search.py`): a `Job` is one trial request under a key that
names it; `run_jobs` evaluates the jobs whose key is not yet in a results
file and writes each outcome there as it comes, so running the same command
again after a stop evaluates only what is missing. A results file belongs to
one set of settings (its fingerprint); other settings are refused.

Also here, because both tools plan with them: the two SpineNet-49 reference
architectures, and proxy schedules of another length or seed.
"""
import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from spinesearch.errors import ConfigError
from spinesearch.files import read_json, write_text_atomically
from spinesearch.proxy.checkpoint import REQUEST_KEY as CHECKPOINT_KEY
from spinesearch.proxy.config import ProxyConfig


@dataclasses.dataclass(frozen=True)
class Job:
  """One evaluation: an architecture under one schedule (and seed)."""
  key: str
  arch_index: int
  request: Dict[str, Any]


def fingerprint(settings: Any) -> str:
  """A short hash of JSON-able settings: what a results file belongs to."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---- what to evaluate -------------------------------------------------------------------

def reference_architectures(space) -> List[Tuple[Any, List[int]]]:
  """(architecture, decisions) of SpineNet-49 (with the space's NAS-FPN for
  the joint space) and of the scale-decreased ordering of its blocks. The
  scale-decreased ordering has no decision sequence in the space (its outputs
  are not last): its decisions are empty, which only the rewards that read
  the architecture (training, one-shot) accept."""
  from spinesearch.space import known
  reference = known.published_point(space) if space.name != "nasfpn" else None
  if reference is None:
    raise ConfigError(f"the SpineNet-49 references need a space with SpineNet blocks that "
                      f"holds SpineNet-49 (or Mobile SpineNet-49), not {space.name} with "
                      f"these settings")
  return [(reference, space.encode(reference)), (known.scale_decreased(reference), [])]


def proxy_schedule(proxy: Dict[str, Any], preset: Optional[str] = None, factor: float = 1.0,
                   steps: Optional[int] = None) -> Dict[str, Any]:
  """Proxy settings (preset and overrides) that train `factor` times as long
  as `proxy` (steps and warm-up, or epochs), or `steps` steps with the
  warm-up scaled alike; `preset` trains another preset's schedule instead,
  keeping only the seed of `proxy`'s overrides."""
  preset_name = preset or proxy["preset"]
  overrides = dict(proxy["overrides"])
  if preset:
    overrides = {"seed": overrides.get("seed", 0)}
  config = ProxyConfig.from_preset(preset_name, **overrides)
  if steps is not None:
    overrides.update(train_steps=steps, train_epochs=None,
                     warmup_steps=round(config.warmup_steps * steps / config.train_steps))
  elif config.train_epochs:
    overrides["train_epochs"] = config.train_epochs * factor
  else:
    overrides["train_steps"] = max(1, round(config.train_steps * factor))
    overrides["warmup_steps"] = round(config.warmup_steps * factor)
  return {"preset": preset_name, "overrides": overrides}


def reseeded(proxy: Dict[str, Any], seed: int) -> Dict[str, Any]:
  """`proxy` training with another seed."""
  return dict(proxy, overrides=dict(proxy["overrides"], seed=seed))


# ---- running them -----------------------------------------------------------------------

def run_jobs(jobs: List[Job], runner, results_path: str, settings_fingerprint: str,
             out=sys.stderr, checkpoint_dir: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
  """Evaluates the jobs not yet done in `results_path` (new ones, and again
  those that failed: a killed or out-of-memory run may succeed this time);
  writes each outcome there as it comes. Returns every result in the file by
  key (also of jobs not asked for this time). With `checkpoint_dir`, each
  request asks for a training checkpoint there (`proxy.checkpoint.of_request`),
  so a long run killed midway resumes from its last save."""
  results = load_results(results_path, settings_fingerprint)
  pending = [j for j in jobs if results.get(j.key, {}).get("status") != "done"]
  failed = sum(j.key in results for j in pending)
  if failed:
    print(f"running again {failed} run(s) that failed before", file=out, flush=True)
  by_id = {}
  next_id = len(results) + 1
  try:
    while pending or by_id:
      while pending and runner.free_slots() > 0:
        job = pending.pop(0)
        trial_id, next_id = next_id, next_id + 1
        request = dict(job.request, trial_id=trial_id)
        if checkpoint_dir:
          request[CHECKPOINT_KEY] = {"folder": checkpoint_dir,
                                     "name": job.key.replace("/", "_")}
        runner.submit(trial_id, request)
        by_id[trial_id] = job
      for outcome in runner.poll(1.0):
        job = by_id.pop(outcome.trial_id)
        results[job.key] = {"status": outcome.status, "reward": outcome.reward,
                            "metrics": outcome.metrics, "error": outcome.error}
        write_text_atomically(results_path, json.dumps(
            {"fingerprint": settings_fingerprint, "results": results}, indent=1) + "\n")
        note = f"{outcome.reward:.4f}" if outcome.status == "done" else f"failed: {outcome.error}"
        finished = sum(j.key in results for j in jobs)
        print(f"[{finished}/{len(jobs)}] {job.key}: {note}", file=out, flush=True)
  finally:
    runner.shutdown()
  return results


def load_results(path: str, settings_fingerprint: str) -> Dict[str, Dict[str, Any]]:
  """The results stored in `path` by key ({} when there is no file yet)."""
  if not os.path.exists(path):
    return {}
  try:
    stored = read_json(path)
    results, stored_fingerprint = stored["results"], stored["fingerprint"]
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"{path}: not a results file of evaluations ({e}); move it away") from e
  if stored_fingerprint != settings_fingerprint:
    raise ConfigError(f"{path}: holds evaluations with other settings; use another "
                      f"--output_dir")
  return results


def reward_of(result: Optional[Dict[str, Any]]) -> Optional[float]:
  """The reward of a done result; None for a failed or missing one."""
  return result["reward"] if result and result["status"] == "done" else None
