"""The search report (spinesearch.report): written at the end of a search and
by its command, every file present, a diagram node per block, the Pareto
front, and a report failure that never fails a finished search."""
import io
import os
import random
import sqlite3
import subprocess
import sys

import pytest

from spinesearch import report, report_plots
from spinesearch.driver import SearchDriver, SearchSettings
from spinesearch.space import known
from spinesearch.space.registry import build_space
from spinesearch.store import TrialStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ("--reward=target_similarity", "--algorithm=evolution", "--population_size=4",
        "--sample_size=2", "--runner=inline")


def run(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout)


def is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == PNG_MAGIC


def test_a_finished_search_writes_every_report_file(tmp_path):
  search_dir = str(tmp_path / "search")
  done = run("spinesearch.controller", f"--search_dir={search_dir}", *FAST, "--num_trials=8",
             "--top_k=3")
  assert done.returncode == 0, done.stderr
  folder = os.path.join(search_dir, "report")
  assert f"report: {os.path.join(folder, 'report.md')}" in done.stdout
  assert sorted(os.listdir(folder)) == ["best_architecture.png", "progress.png", "report.md"]
  assert is_png(os.path.join(folder, "progress.png"))
  assert is_png(os.path.join(folder, "best_architecture.png"))
  with sqlite3.connect(os.path.join(search_dir, "trials.db")) as conn:
    top = conn.execute("SELECT id, reward FROM trials ORDER BY reward DESC, id LIMIT 3").fetchall()
  with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
    text = f.read()
  assert "| --reward | target_similarity |" in text
  assert "- trials: 8 (8 done, 0 failed, 0 not finished)" in text
  assert "![reward per trial](progress.png)" in text
  assert "No plot: no trial measured a cost" in text  # target_similarity measures none
  for rank, (trial_id, reward) in enumerate(top, start=1):
    assert (f"| {rank} | {trial_id} | {reward:.4f} | "
            f"[json](../best/rank{rank:02d}-trial{trial_id:04d}.json) |") in text


def make_proxy_like_search(search_dir, num_trials=6):
  """A store as a proxy search leaves it: AP, cost metrics, one failed trial."""
  space = build_space("spinenet")
  rng = random.Random(0)
  with TrialStore(str(search_dir)) as store:
    store.create_search({"flags": {"reward": "proxy", "algorithm": "random", "seed": 0},
                         "space": space.config(), "seed": 0, "version": "test"})
    for i in range(num_trials):
      decisions = space.sample(rng)
      trial = store.add_trial(space.decode(decisions).to_dict(), decisions)
      store.mark_running(trial.id, "worker")
      if i == 2:
        store.finish_trial(trial.id, "failed", None, {}, "out of memory")
        continue
      ap = 0.1 + 0.05 * (i % 3)
      store.finish_trial(trial.id, "done", ap, {
          "ap": ap, "ap50": 2 * ap, "multiply_adds": int((1 + i) * 1e8),
          "params": 1_000_000 + i, "latency_ms": 10.0 + i}, None)


def test_the_report_of_a_proxy_search_has_cost_plot_and_top_table(tmp_path):
  make_proxy_like_search(tmp_path / "search")
  files = report.write_report(str(tmp_path / "search"), top_k=2)
  assert set(files.plots) == {"progress.png", "accuracy_vs_cost.png", "best_architecture.png"}
  assert all(is_png(path) for path in files.plots.values())
  with open(files.markdown, encoding="utf-8") as f:
    text = f.read()
  assert "- trials: 6 (5 done, 1 failed, 0 not finished)" in text
  assert "| rank | trial | reward | AP | AP50 | G mult-adds | params (M) | latency (ms) |" in text
  assert "| 1 | 6 | 0.2000 | 0.2000 | 0.4000 | 0.600 | 1.00 | 15.0 | - |" in text
  # Trials 2 and 5 share the second-best AP: the earlier one ranks first.
  assert "| 2 | 2 | 0.1500 | 0.1500 | 0.3000 | 0.200 | 1.00 | 11.0 | - |" in text
  assert "| 3 |" not in text


def test_the_accuracy_vs_cost_axes_fall_back_to_the_reward_and_parameters(tmp_path):
  make_proxy_like_search(tmp_path / "search")
  with TrialStore(str(tmp_path / "search")) as store:
    done = store.trials(("done",))
  points, x_label, y_label = report.cost_axes(done, "proxy")
  assert (x_label, y_label) == ("G multiply-adds", "AP")
  assert sorted(p[2] for p in points) == [1, 2, 4, 5, 6]
  for trial in done:  # a zero-shot search: a score and the scored network's parameters
    trial.metrics.pop("ap"), trial.metrics.pop("multiply_adds")
  points, x_label, y_label = report.cost_axes(done, "zero_shot")
  assert (x_label, y_label) == ("parameters (M)", "reward (zero_shot)")
  assert report.cost_axes([], "proxy") is None


def test_pareto_front_keeps_points_no_other_beats_on_cost_and_accuracy():
  points = [(1.0, 0.1), (2.0, 0.3), (2.5, 0.2), (3.0, 0.3), (4.0, 0.5), (0.5, 0.05)]
  assert report_plots.pareto_front(points) == [5, 0, 1, 4]
  assert report_plots.pareto_front([]) == []


@pytest.mark.parametrize("architecture, stems, features", [
    (known.spinenet49(), 2, 0),
    (known.nasfpn(), 0, 5),
    (known.spinenet49_nasfpn(), 2, 0),
])
def test_the_diagram_has_one_node_per_block_and_an_edge_per_parent(architecture, stems,
                                                                   features):
  graph = report_plots.architecture_graph(architecture)
  kinds = [n.kind for n in graph.nodes]
  assert kinds.count("stem") == stems and kinds.count("feature") == features
  assert kinds.count("block") == len(architecture.blocks)
  assert kinds.count("cell") == len(architecture.cells)
  assert len(graph.nodes) == stems + features + len(architecture.blocks) + len(architecture.cells)
  searched = [n for n in graph.nodes if n.kind in ("block", "cell")]
  assert [n.level for n in searched] == [s.level for s in architecture.blocks + architecture.cells]
  # Blocks left to right in build order, each fed by its two parents from its left.
  assert [n.position for n in searched] == sorted({n.position for n in searched})
  assert len(graph.edges) == 2 * len(searched)
  for parent, child in graph.edges:
    assert graph.nodes[parent].position < graph.nodes[child].position
  outputs = [n.label for n in graph.nodes if n.is_output]
  pyramids = 2 if architecture.blocks and architecture.cells else 1
  assert sorted(outputs) == sorted([f"P{level}" for level in range(3, 8)] * pyramids)


def test_the_diagram_connects_cells_to_the_backbones_outputs():
  architecture = known.spinenet49_nasfpn()
  graph = report_plots.architecture_graph(architecture)
  first_cell = 2 + len(architecture.blocks)
  parents = [graph.nodes[p] for p, c in graph.edges if c == first_cell]
  # NAS-FPN's first cell reads P4 and P6 (input offsets 1 and 3 of P3..P7).
  assert sorted((n.kind, n.level, n.is_output) for n in parents) == [
      ("block", 4, True), ("block", 6, True)]


def test_the_diagram_shows_dilation_and_a_searched_head(tmp_path):
  from spinesearch.space.architecture import HeadSpec
  blocks = list(known.spinenet49().blocks)
  blocks[0] = blocks[0].replace(dilation=2)
  architecture = known.spinenet49_nasfpn().replace(blocks=tuple(blocks),
                                                   head=HeadSpec(2, 0.5, True), fpn_repeats=3)
  graph = report_plots.architecture_graph(architecture)
  labels = [n.label for n in graph.nodes if n.kind == "block"]
  assert labels[0] == f"L{blocks[0].level}d2" and not any("d" in x for x in labels[1:])
  assert report_plots.head_caption(architecture) == \
      "head: 2 convs per head, width x0.5, separable; NAS-FPN cells x3"
  assert report_plots.head_caption(known.spinenet49()) == ""
  path = str(tmp_path / "a.png")
  report_plots.plot_architecture(architecture, path, "dilated")
  assert os.path.getsize(path) > 1000


def test_a_report_error_is_a_warning_and_the_search_still_succeeds(tmp_path, monkeypatch,
                                                                   capsys):
  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(report, "write_report", broken)
  search_settings = SearchSettings(
      search_dir=str(tmp_path / "s"), search_space="spinenet",
      space_options={"preset": "default"}, algorithm="random", algorithm_options={}, seed=0,
      defining_flags={}, num_trials=2, runner="inline")
  out = io.StringIO()
  driver = SearchDriver(search_settings, lambda space: {"type": "target_similarity",
                                                        "cost": None}, out=out)
  assert driver.run() == 0
  assert "search finished: 2 trials (2 done, 0 failed)" in out.getvalue()
  warning = capsys.readouterr().err
  assert warning.startswith("warning: no search report (disk full)") and warning.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (("--search_dir={d}",), "no search here"),
    ((), "--search_dir"),
    (("--search_dir={d}", "--top_k=0"), "top_k"),
    (("--search_dir={d}", "--top_k=many"), "--top_k"),
])
def test_the_report_command_refuses_bad_input_in_one_line(tmp_path, args, message):
  done = run("spinesearch.report", *(a.format(d=tmp_path / "none") for a in args))
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
  assert message in done.stderr
  assert not os.path.exists(tmp_path / "none")


def test_the_report_command_rewrites_a_report_and_drops_stale_plots(tmp_path):
  search_dir = tmp_path / "search"
  make_proxy_like_search(search_dir)
  folder = search_dir / "report"
  folder.mkdir()
  (folder / "accuracy_vs_cost.png").write_bytes(b"stale")
  with sqlite3.connect(search_dir / "trials.db") as conn:
    conn.execute("UPDATE trials SET metrics = '{}'")  # no cost measured any more
  done = run("spinesearch.report", f"--search_dir={search_dir}")
  assert done.returncode == 0, done.stderr
  assert f"report: {folder / 'report.md'}" in done.stdout
  assert sorted(os.listdir(folder)) == ["best_architecture.png", "progress.png", "report.md"]
