"""The object classes of the synthetic detection set, drawn as binary masks.

Classes differ in outline, not in colour: colours are drawn at random per
object elsewhere. Each shape is drawn into a box of a requested width and
height; shapes with a direction (triangle, ell, crescent) are turned by a
random multiple of 90 degrees so orientation carries no class information
beyond the outline itself.
"""
import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

Point = Tuple[float, float]

# Category ids are 1 + the index here; 0 is Model Garden's background label.
SHAPE_NAMES = ("circle", "square", "triangle", "ring", "cross", "star",
               "diamond", "hexagon", "ell", "crescent")

_RING_HOLE = 0.55        # inner diameter as a fraction of the outer one
_CROSS_BAR = 1.0 / 3.0   # bar thickness as a fraction of the box side
_ELL_BAR = 0.38
_STAR_INNER = 0.42       # inner radius of the star as a fraction of the outer
_CRESCENT_SHIFT = 0.38   # offset of the cut-away disc, fraction of the width


def _regular_points(count: int, start_degrees: float,
                    radii: Sequence[float]) -> List[Point]:
  """Points on a circle in the unit box, cycling through `radii`."""
  points = []
  for i in range(count):
    angle = math.radians(start_degrees + 360.0 * i / count)
    radius = radii[i % len(radii)]
    points.append((0.5 + radius * math.cos(angle),
                   0.5 + radius * math.sin(angle)))
  return points


_POLYGONS: Dict[str, List[Point]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "hexagon": _regular_points(6, 0.0, [0.5]),
    "star": _regular_points(10, -90.0, [0.5, 0.5 * _STAR_INNER]),
    "cross": [(0.5 - _CROSS_BAR / 2, 0), (0.5 + _CROSS_BAR / 2, 0),
              (0.5 + _CROSS_BAR / 2, 0.5 - _CROSS_BAR / 2),
              (1, 0.5 - _CROSS_BAR / 2), (1, 0.5 + _CROSS_BAR / 2),
              (0.5 + _CROSS_BAR / 2, 0.5 + _CROSS_BAR / 2),
              (0.5 + _CROSS_BAR / 2, 1), (0.5 - _CROSS_BAR / 2, 1),
              (0.5 - _CROSS_BAR / 2, 0.5 + _CROSS_BAR / 2),
              (0, 0.5 + _CROSS_BAR / 2), (0, 0.5 - _CROSS_BAR / 2),
              (0.5 - _CROSS_BAR / 2, 0.5 - _CROSS_BAR / 2)],
    "ell": [(0, 0), (_ELL_BAR, 0), (_ELL_BAR, 1 - _ELL_BAR), (1, 1 - _ELL_BAR),
            (1, 1), (0, 1)],
}

# Shapes whose outline points somewhere; the rest look alike under a turn.
_DIRECTED = frozenset({"triangle", "ell", "crescent"})


def _scaled(points: Sequence[Point], width: int, height: int) -> List[Point]:
  return [(x * (width - 1), y * (height - 1)) for x, y in points]


def _draw_polygon(name: str) -> Callable[[ImageDraw.ImageDraw, int, int], None]:
  def draw(canvas: ImageDraw.ImageDraw, width: int, height: int) -> None:
    canvas.polygon(_scaled(_POLYGONS[name], width, height), fill=255)
  return draw


def _draw_circle(canvas: ImageDraw.ImageDraw, width: int, height: int) -> None:
  canvas.ellipse([0, 0, width - 1, height - 1], fill=255)


def _draw_ring(canvas: ImageDraw.ImageDraw, width: int, height: int) -> None:
  canvas.ellipse([0, 0, width - 1, height - 1], fill=255)
  margin_x = (width - 1) * (1 - _RING_HOLE) / 2
  margin_y = (height - 1) * (1 - _RING_HOLE) / 2
  canvas.ellipse([margin_x, margin_y, width - 1 - margin_x,
                  height - 1 - margin_y], fill=0)


def _draw_crescent(canvas: ImageDraw.ImageDraw, width: int,
                   height: int) -> None:
  canvas.ellipse([0, 0, width - 1, height - 1], fill=255)
  shift = _CRESCENT_SHIFT * (width - 1)
  canvas.ellipse([shift, -0.1 * height, width - 1 + shift, 1.1 * height - 1],
                 fill=0)


_DRAWERS = {
    "circle": _draw_circle,
    "ring": _draw_ring,
    "crescent": _draw_crescent,
    **{name: _draw_polygon(name) for name in _POLYGONS},
}


def render_mask(name: str, width: int, height: int,
                rng: np.random.Generator) -> np.ndarray:
  """Returns a [height, width] boolean mask of shape `name` filling the box.

  A directed shape is turned by a random multiple of 90 degrees; `rng` is used
  only for that, so symmetric shapes consume no random numbers.
  """
  quarter_turns = int(rng.integers(4)) if name in _DIRECTED else 0
  # A quarter turn swaps the sides, so draw on the swapped box to end up with
  # the requested width and height.
  draw_w, draw_h = (height, width) if quarter_turns % 2 else (width, height)
  image = Image.new("L", (draw_w, draw_h), 0)
  _DRAWERS[name](ImageDraw.Draw(image), draw_w, draw_h)
  mask = np.asarray(image) > 0
  return np.rot90(mask, quarter_turns)
