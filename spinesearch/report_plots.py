"""The pictures of a search report: progress, accuracy vs cost, and an
architecture diagram.

`architecture_graph` and `pareto_front` are plain data (no matplotlib), so
tests and other tools can use the layout and the front without drawing.
Drawing uses matplotlib's Agg backend (no display) and writes each PNG
atomically.

The architecture diagram follows the SpineNet paper's figures: blocks from
left to right in the order they are built, at the height of their feature
level, an edge from each of a block's two parents, output blocks marked with
their level (P3..P7). The stem's two level-2 blocks (Model Garden's, which
input offsets 0 and 1 name) come first. NAS-FPN merging cells are drawn the
same way, after the pyramid features they read (the fixed backbone's, or the
searched backbone's output blocks), once: Model Garden stacks them
`fpn_num_repeats` times. Model Garden also adds a block that no
later block reads into the output block of its level when their shapes
match; those implicit sums are not drawn. A dilated block's label carries its
rate ("L4d2"); a searched head and NAS-FPN repeat count are written under the
title (`head_caption`).
"""
import dataclasses
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from spinesearch.space.architecture import NUM_STEM_BLOCKS, Architecture

_COLORS = {"bottleneck": "tab:blue", "residual": "tab:orange", "mbconv": "tab:green",
           "sum": "tab:purple", "attention": "tab:red", "stem": "tab:gray",
           "backbone feature": "tab:gray"}


@dataclasses.dataclass(frozen=True)
class Node:
  """One drawn block. kind: stem, block (searched backbone block), feature (a
  pyramid level a merging cell reads from a fixed backbone) or cell."""
  kind: str
  position: int
  level: int
  op: str
  is_output: bool
  dilation: int = 1

  @property
  def label(self) -> str:
    if self.kind == "feature":
      return f"C{self.level}"
    label = f"P{self.level}" if self.is_output else f"L{self.level}"
    return label + (f"d{self.dilation}" if self.dilation != 1 else "")


@dataclasses.dataclass(frozen=True)
class ArchitectureGraph:
  """Nodes in drawing order (x = `Node.position`) and edges (parent, child)
  as indices into `nodes`."""
  nodes: Tuple[Node, ...]
  edges: Tuple[Tuple[int, int], ...]


def architecture_graph(architecture: Architecture) -> ArchitectureGraph:
  """The diagram's layout: one node per stem block, searched block, pyramid
  feature read from a fixed backbone, and merging cell."""
  nodes: List[Node] = []
  edges: List[Tuple[int, int]] = []
  pyramid: Dict[int, int] = {}  # level -> node of the features merging cells read
  if architecture.blocks:
    for _ in range(NUM_STEM_BLOCKS):
      nodes.append(Node("stem", len(nodes), 2, "stem", False))
    for block in architecture.blocks:
      child = len(nodes)
      nodes.append(Node("block", child, block.level, block.block_fn, block.is_output,
                        block.dilation))
      edges.extend((offset, child) for offset in block.input_offsets)
      if block.is_output:
        pyramid[block.level] = child
  elif architecture.cells:
    for level in range(architecture.min_level, architecture.max_level + 1):
      pyramid[level] = len(nodes)
      nodes.append(Node("feature", 0, level, "backbone feature", False))
  if architecture.cells:
    # A cell's input offsets index [pyramid levels low to high, cells...].
    sources = [pyramid[level] for level in sorted(pyramid)]
    first_x = max(n.position for n in nodes) + 1
    for i, cell in enumerate(architecture.cells):
      sources.append(len(nodes))
      nodes.append(Node("cell", first_x + i, cell.level, cell.combine_fn, cell.is_output))
      edges.extend((sources[offset], sources[-1]) for offset in cell.input_offsets)
  return ArchitectureGraph(tuple(nodes), tuple(edges))


def head_caption(architecture: Architecture) -> str:
  """The searched head, NAS-FPN repeats and a weighted input fusion in words,
  or "" when the architecture leaves them to its scaling and sums its inputs."""
  head, parts = architecture.head, []
  if head.num_convs:
    parts.append(f"{head.num_convs} conv{'s' if head.num_convs > 1 else ''} per head")
  if head.filters_scale != 1.0:
    parts.append(f"width x{head.filters_scale:g}")
  if head.separable:
    parts.append("separable")
  text = "head: " + ", ".join(parts) if parts else ""
  if architecture.fpn_repeats:
    repeats = f"NAS-FPN cells x{architecture.fpn_repeats}"
    text = f"{text}; {repeats}" if text else repeats
  if architecture.fusion != "sum":
    fusion = f"{architecture.fusion} input fusion"
    text = f"{text}; {fusion}" if text else fusion
  return text


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
  """Indices of the points no other point beats on both cost (x, lower is
  better) and accuracy (y, higher is better), by increasing cost."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  front, best = [], None
  for i in order:
    if best is None or points[i][1] > best:
      front.append(i)
      best = points[i][1]
  return front


# ---- drawing ---------------------------------------------------------------------------

def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot
  return pyplot


def _save(fig, path: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
  os.close(fd)
  # mkstemp makes the file private; give it the mode a plain open() would.
  umask = os.umask(0)
  os.umask(umask)
  try:
    fig.savefig(tmp, dpi=110)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
    _pyplot().close(fig)


def plot_progress(rewards: Sequence[Optional[float]], path: str, title: str) -> None:
  """Reward of each finished trial (in the order they finished; None = failed,
  drawn as a red x on the axis) and the best reward so far."""
  plt = _pyplot()
  fig, axis = plt.subplots(figsize=(8, 4.2))
  done = [(n, r) for n, r in enumerate(rewards, start=1) if r is not None]
  failed = [n for n, r in enumerate(rewards, start=1) if r is None]
  if done:
    axis.scatter([n for n, _ in done], [r for _, r in done], s=14, alpha=0.6,
                 color="tab:blue", label="trial reward")
    best, running = [], None
    for n, r in done:
      running = r if running is None else max(running, r)
      best.append((n, running))
    axis.step([n for n, _ in best], [b for _, b in best], where="post", color="tab:red",
              label="best so far")
  if failed:
    floor = min((r for _, r in done), default=0.0)
    axis.scatter(failed, [floor] * len(failed), marker="x", color="tab:red", s=24,
                 label="failed trial")
  axis.set_xlabel("finished trials")
  axis.set_ylabel("reward")
  axis.set_title(title, fontsize=10)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  _save(fig, path)


def plot_pareto(points: Sequence[Tuple[float, float, int]], path: str, *, x_label: str,
                y_label: str, highlight: Sequence[int] = ()) -> None:
  """Accuracy (y) against cost (x) of each trial `(x, y, trial_id)`, the
  Pareto front as a line, the trials in `highlight` labelled."""
  plt = _pyplot()
  fig, axis = plt.subplots(figsize=(7, 4.8))
  axis.scatter([p[0] for p in points], [p[1] for p in points], s=14, alpha=0.5,
               color="tab:blue", label="trial")
  front = [points[i] for i in pareto_front([(p[0], p[1]) for p in points])]
  axis.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red",
            marker="o", markersize=4, label="Pareto front")
  for x, y, trial_id in points:
    if trial_id in highlight:
      axis.annotate(f"trial {trial_id}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
  axis.set_xlabel(x_label)
  axis.set_ylabel(y_label)
  axis.set_title(f"{y_label} vs {x_label}", fontsize=10)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  _save(fig, path)


def plot_architecture(architecture: Architecture, path: str, title: str) -> None:
  """The diagram of `architecture_graph(architecture)`."""
  from matplotlib.lines import Line2D
  from matplotlib.patches import FancyArrowPatch
  plt = _pyplot()
  graph = architecture_graph(architecture)
  width = max(6.0, 0.55 * (max(n.position for n in graph.nodes) + 2))
  fig, axis = plt.subplots(figsize=(width, 4.2))
  for parent, child in graph.edges:
    a, b = graph.nodes[parent], graph.nodes[child]
    # An edge between blocks of one level would run through the blocks
    # between them: it arcs over them, about as high for a long edge as for a
    # short one.
    span = max(1, abs(b.position - a.position))
    bend = -min(0.4, 1.2 / span) if a.level == b.level else -0.1
    axis.add_patch(FancyArrowPatch(
        (a.position, a.level), (b.position, b.level), arrowstyle="-|>", mutation_scale=8,
        connectionstyle=f"arc3,rad={bend}", color="0.45", linewidth=0.8,
        shrinkA=9, shrinkB=9, zorder=1))
  for node in graph.nodes:
    axis.scatter([node.position], [node.level], s=260, color=_COLORS[node.op], zorder=2,
                 edgecolors="black" if node.is_output else "white",
                 linewidths=2.2 if node.is_output else 0.8)
    axis.annotate(node.label, (node.position, node.level), ha="center", va="center",
                  fontsize=6.5, color="white", weight="bold", zorder=3)
  ops = sorted({n.op for n in graph.nodes}, key=list(_COLORS).index)
  handles = [Line2D([], [], marker="o", linestyle="", color=_COLORS[op], label=op)
             for op in ops]
  handles.append(Line2D([], [], marker="o", linestyle="", color="white",
                        markeredgecolor="black", markeredgewidth=2, label="output (P level)"))
  levels = [n.level for n in graph.nodes]
  axis.set_yticks(range(min(levels), max(levels) + 1))
  axis.set_yticklabels([f"L{level}" for level in range(min(levels), max(levels) + 1)])
  axis.set_ylim(min(levels) - 0.8, max(levels) + 0.8)
  axis.set_xlim(-0.8, max(n.position for n in graph.nodes) + 0.8)
  axis.set_xticks([])
  axis.set_xlabel("build order")
  axis.set_ylabel("feature level")
  caption = head_caption(architecture)
  axis.set_title(f"{title}\n{caption}" if caption else title, fontsize=10)
  axis.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  for side in ("top", "right"):
    axis.spines[side].set_visible(False)
  fig.tight_layout()
  _save(fig, path)
