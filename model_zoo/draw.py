"""Detections drawn on an image with Pillow: a box and a "name score" label
per detection, one colour per class."""
import colorsys
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colour(label: int) -> Tuple[int, int, int]:
  """A bright colour per class id, spread around the hue circle."""
  hue = (label * 0.618033988749895) % 1.0
  return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0))


def draw_detections(image: np.ndarray, detections: Dict[str, np.ndarray]) -> Image.Image:
  """A copy of the uint8 HxWx3 `image` with `detections` (one image's result
  of `Detector.predict`) drawn on it."""
  canvas = Image.fromarray(image).convert("RGB")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  width = max(1, round(max(canvas.size) / 300))
  # Lowest scores first, so the best detections end up on top.
  for i in np.argsort(detections["scores"]):
    ymin, xmin, ymax, xmax = (float(v) for v in detections["boxes"][i])
    colour = class_colour(int(detections["classes"][i]))
    draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
    label = f"{detections['class_names'][i]} {detections['scores'][i]:.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    text_y = ymin - (bottom - top) - 2 if ymin >= (bottom - top) + 2 else ymin
    draw.rectangle([xmin, text_y, xmin + right - left + 2, text_y + bottom - top + 2], fill=colour)
    draw.text((xmin + 1, text_y + 1 - top), label, fill=(0, 0, 0), font=font)
  return canvas
