"""A synthetic multi-scale detection set, deterministic from a seed.

Each image holds 1-6 shapes of the classes in `shapes.SHAPE_NAMES` on a
textured background (gradient, stripes, blotches or noise) with distractor
strokes that are not objects. Object sizes (square root of the box area) are
log-uniform from 1/16 to 3/4 of the image side, the range RetinaNet's P3..P7
anchors serve. Colours are random per object so only the outline tells the
class. Later objects are drawn over earlier ones; an object left less than
`MIN_VISIBLE_FRACTION` visible is not drawn at all, so every visible shape has
a box, and boxes are the tight boxes of the visible pixels (COCO's convention).

Writes, into the output folder:
  train-SSSSS-of-NNNNN.tfrecord, val-...   Model Garden detection tf.Examples
  train_annotations.json, val_annotations.json   COCO detection JSON
  dataset.json   what is where (read by `dataset.DatasetPaths.from_dir`)

Usage:
  python -m spinesearch.data.synthetic --output_dir DIR --num_train 2000 \
      --num_val 200 --image_size 128 --seed 0 [--num_shards 2]
"""
import argparse
import colorsys
import dataclasses
import io
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from spinesearch.data import coco_json, shapes, tfexample
from spinesearch.errors import ConfigError, run_cli
from spinesearch.files import write_text_atomically

DATASET_FILE = "dataset.json"
DATASET_FORMAT = "spinesearch-detection-dataset"
SPLITS = ("train", "val")
CATEGORIES = tuple({"id": i + 1, "name": name}
                   for i, name in enumerate(shapes.SHAPE_NAMES))

MIN_OBJECTS, MAX_OBJECTS = 1, 6
MIN_SIZE_FRACTION, MAX_SIZE_FRACTION = 1.0 / 16, 3.0 / 4
MAX_ASPECT = 1.5
MIN_SIDE_PX = 4
MIN_VISIBLE_FRACTION = 0.6
PLACEMENT_TRIES = 4
MIN_IMAGE_SIZE = 64
MIN_COLOUR_DISTANCE = 80.0
# Objects take their class's hue (+-HUE_JITTER of the colour wheel) except this often.
RANDOM_COLOUR_FRACTION = 0.3
HUE_JITTER = 0.04
# Bumped whenever the images a seed gives change, so caches are not reused.
GENERATOR_VERSION = 2


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A labelled object: COCO box [x, y, w, h] of its visible pixels, their
  count, and the share of the whole shape they are."""
  category_id: int
  bbox: Tuple[int, int, int, int]
  area: int
  visible_fraction: float


@dataclasses.dataclass
class _Placed:
  category_id: int
  x0: int
  y0: int
  mask: np.ndarray

  def window(self) -> Tuple[slice, slice]:
    height, width = self.mask.shape
    return (slice(self.y0, self.y0 + height), slice(self.x0, self.x0 + width))


def render_scene(
    image_size: int,
    rng: np.random.Generator) -> Tuple[np.ndarray, List[SceneObject]]:
  """Returns an [S, S, 3] uint8 image and its objects, bottom to top."""
  background = Image.fromarray(_to_uint8(_background(image_size, rng)))
  _draw_clutter(background, rng)
  canvas = np.asarray(background, dtype=np.float32).copy()

  placed = _place_objects(image_size, rng)
  owner = _owner_map(image_size, placed)
  full_areas = [int(p.mask.sum()) for p in placed]
  visible = np.bincount(owner[owner >= 0], minlength=len(placed))
  # Dropping an object only uncovers the ones below it, so one pass leaves
  # every kept object at least as visible as measured here.
  kept = [(p, area) for p, area, shown in zip(placed, full_areas, visible)
          if shown >= MIN_VISIBLE_FRACTION * area]
  owner = _owner_map(image_size, [p for p, _ in kept])

  for obj, _ in kept:
    _paint(canvas, obj, rng)
  canvas += rng.normal(0.0, rng.uniform(2.0, 8.0), canvas.shape)

  objects = []
  for index, (obj, full_area) in enumerate(kept):
    ys, xs = np.nonzero(owner == index)
    x0, y0 = int(xs.min()), int(ys.min())
    objects.append(SceneObject(
        obj.category_id,
        (x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0),
        int(xs.size), xs.size / full_area))
  return _to_uint8(canvas), objects


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0.0, 255.0, 3).astype(np.float32)


def _object_colour(category_id: int, rng: np.random.Generator) -> np.ndarray:
  """Usually near the class's own hue, sometimes any colour: colour is a hint a
  small detector picks up within a proxy task's few thousand images, and shape
  stays the only cue that always holds."""
  if rng.random() < RANDOM_COLOUR_FRACTION:
    return _random_colour(rng)
  hue = ((category_id - 1) / len(shapes.SHAPE_NAMES) + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
  rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
  return np.asarray(rgb, dtype=np.float32) * 255.0


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
  """A textured [S, S, 3] float background of one of four kinds."""
  kind = int(rng.integers(4))
  low, high = _random_colour(rng), _random_colour(rng)
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
  angle = rng.uniform(0.0, 2.0 * math.pi)
  along = xs * math.cos(angle) + ys * math.sin(angle)
  if kind == 0:  # linear gradient between two colours
    t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
  elif kind == 1:  # soft or hard stripes at a random angle and period
    period = math.exp(rng.uniform(math.log(size / 32), math.log(size / 4)))
    t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period
                           + rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5:
      t = (t > 0.5).astype(np.float32)
    high = np.clip(low + rng.uniform(-100, 100, 3), 0, 255).astype(np.float32)
  elif kind == 2:  # smooth colour blotches: a coarse grid, upsampled
    cells = int(rng.integers(3, 9))
    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize(
        (size, size), Image.BILINEAR), dtype=np.float32)
  else:  # coarse per-pixel noise around one colour
    return low + rng.normal(0.0, rng.uniform(8.0, 30.0), (size, size, 3))
  return low + t[..., None] * (high - low)


def _draw_clutter(image: Image.Image, rng: np.random.Generator) -> None:
  """Thin strokes and specks: marks a detector must learn are not objects."""
  size = image.size[0]
  draw = ImageDraw.Draw(image)
  scale = size / 128.0
  for _ in range(int(rng.integers(1, 7))):
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    stroke = max(1, int(round(scale * rng.uniform(1.0, 2.5))))
    kind = int(rng.integers(4))
    if kind == 0:  # straight line
      ends = rng.uniform(0, size, (2, 2))
      draw.line([tuple(ends[0]), tuple(ends[1])], fill=colour, width=stroke)
    elif kind == 1:  # open arc
      x0, y0 = rng.uniform(-size / 4, size, 2)
      extent = rng.uniform(size / 8, size / 2, 2)
      start = rng.uniform(0, 360)
      draw.arc([x0, y0, x0 + extent[0], y0 + extent[1]], start,
               start + rng.uniform(60, 270), fill=colour, width=stroke)
    elif kind == 2:  # scribble: a short random polyline
      centre = rng.uniform(0, size, 2)
      points = centre + rng.normal(0, size / 10, (int(rng.integers(3, 7)), 2))
      draw.line([tuple(p) for p in points], fill=colour, width=stroke)
    else:  # scattered specks, far smaller than the smallest object
      side = max(1, int(round(2 * scale)))
      count = int(rng.integers(3, 13))
      for x, y in rng.integers(0, size - side + 1, (count, 2)):
        draw.rectangle([int(x), int(y), int(x) + side - 1, int(y) + side - 1],
                       fill=colour)


def _place_objects(size: int, rng: np.random.Generator) -> List[_Placed]:
  """Draws classes, sizes and positions; a position that would hide too much
  of an earlier object is retried a few times, then kept anyway."""
  owner = np.full((size, size), -1, dtype=np.int16)
  full_areas: List[int] = []
  visible: List[int] = []
  placed: List[_Placed] = []
  log_min = math.log(MIN_SIZE_FRACTION * size)
  log_max = math.log(MAX_SIZE_FRACTION * size)
  for index in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
    category_id = int(rng.integers(len(shapes.SHAPE_NAMES))) + 1
    side = math.exp(rng.uniform(log_min, log_max))
    # Width / height = stretch ** 2, log-uniform in [1/MAX_ASPECT, MAX_ASPECT];
    # width * height stays side ** 2.
    stretch = math.sqrt(math.exp(rng.uniform(-math.log(MAX_ASPECT),
                                             math.log(MAX_ASPECT))))
    width = int(np.clip(round(side * stretch), MIN_SIDE_PX, size))
    height = int(np.clip(round(side / stretch), MIN_SIDE_PX, size))
    mask = shapes.render_mask(shapes.SHAPE_NAMES[category_id - 1], width,
                              height, rng)
    for _ in range(PLACEMENT_TRIES):
      obj = _Placed(category_id, int(rng.integers(0, size - width + 1)),
                    int(rng.integers(0, size - height + 1)), mask)
      covered = owner[obj.window()][mask]
      left = np.asarray(visible) - np.bincount(covered[covered >= 0],
                                               minlength=index)
      if np.all(left >= MIN_VISIBLE_FRACTION * np.asarray(full_areas)):
        break
    visible = [int(v) for v in left]
    owner[obj.window()][mask] = index
    full_areas.append(int(mask.sum()))
    visible.append(full_areas[-1])
    placed.append(obj)
  return placed


def _owner_map(size: int, objects: Sequence[_Placed]) -> np.ndarray:
  """Index of the topmost object at each pixel, -1 where none."""
  owner = np.full((size, size), -1, dtype=np.int16)
  for index, obj in enumerate(objects):
    owner[obj.window()][obj.mask] = index
  return owner


def _paint(canvas: np.ndarray, obj: _Placed, rng: np.random.Generator) -> None:
  """Fills the object's pixels with a random colour that stands out from what
  is under it, plain or striped."""
  region = canvas[obj.window()]
  under = region[obj.mask].mean(axis=0)
  best, best_distance = None, -1.0
  for _ in range(6):
    colour = _object_colour(obj.category_id, rng)
    distance = float(np.linalg.norm(colour - under))
    if distance > best_distance:
      best, best_distance = colour, distance
    if distance >= MIN_COLOUR_DISTANCE:
      break
  fill = np.broadcast_to(best, region.shape).copy()
  if rng.random() < 0.35:
    height, width = obj.mask.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = max(3.0, rng.uniform(0.15, 0.4) * max(height, width))
    wave = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle))
                  / period)
    fill += rng.uniform(25, 60) * wave[..., None]
  region[obj.mask] = fill[obj.mask]


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  # The images are noisy, so harder compression saves ~5% of the bytes for
  # ~40% more encoding time at 640 px.
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def _image_rng(seed: int, split: str, image_id: int) -> np.random.Generator:
  # Each image has its own stream, so an image depends only on (seed, split,
  # id): sizes of the splits and shard counts do not change it.
  return np.random.default_rng([seed, SPLITS.index(split), image_id])


def write_split(output_dir: str, split: str, *, num_images: int,
                image_size: int, seed: int, num_shards: int) -> Dict:
  """Renders one split into TFRecords and a COCO JSON; returns its summary."""
  num_shards = max(1, min(num_shards, num_images))
  images, annotations = [], []
  prefix = os.path.join(output_dir, split)
  with tfexample.ShardedRecordWriter(prefix, num_shards) as writer:
    for image_id in range(1, num_images + 1):
      pixels, objects = render_scene(image_size,
                                     _image_rng(seed, split, image_id))
      file_name = f"{split}-{image_id:06d}.png"
      example = tfexample.encode_detection_example(
          image_bytes=encode_png(pixels), image_format="png",
          width=image_size, height=image_size, image_id=image_id,
          filename=file_name, coco_boxes=[o.bbox for o in objects],
          labels=[o.category_id for o in objects],
          areas=[o.area for o in objects], is_crowd=[0] * len(objects))
      writer.write(example.SerializeToString())
      images.append({"id": image_id, "file_name": file_name,
                     "width": image_size, "height": image_size})
      for obj in objects:
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": obj.category_id,
                            "bbox": list(obj.bbox), "area": obj.area,
                            "iscrowd": 0})
  annotations_file = f"{split}_annotations.json"
  coco_json.write_coco(os.path.join(output_dir, annotations_file), images,
                       annotations, CATEGORIES)
  return {"pattern": os.path.basename(writer.pattern),
          "annotations": annotations_file, "num_images": num_images,
          "num_objects": len(annotations), "num_shards": num_shards}


def generate(output_dir: str, *, num_train: int, num_val: int, image_size: int,
             seed: int, num_shards: int = 2) -> Dict:
  """Writes the whole set into `output_dir`; `dataset.json` is written last,
  so its presence means every other file is complete. Returns its content."""
  if image_size < MIN_IMAGE_SIZE:
    raise ConfigError(f"image_size must be >= {MIN_IMAGE_SIZE} so the "
                      f"smallest objects keep a shape, got {image_size}")
  for name, value in (("num_train", num_train), ("num_val", num_val),
                      ("num_shards", num_shards)):
    if value < 1:
      raise ConfigError(f"{name} must be >= 1, got {value}")
  os.makedirs(output_dir, exist_ok=True)
  splits = {split: write_split(output_dir, split, num_images=count,
                               image_size=image_size, seed=seed,
                               num_shards=num_shards)
            for split, count in (("train", num_train), ("val", num_val))}
  description = {
      "format": DATASET_FORMAT, "version": 1,
      "generator": "spinesearch.data.synthetic", "seed": seed,
      "image_size": image_size,
      "num_classes": len(CATEGORIES) + 1,
      "categories": list(CATEGORIES),
      "splits": splits,
  }
  write_text_atomically(os.path.join(output_dir, DATASET_FILE),
                        json.dumps(description, indent=2) + "\n")
  return description


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m spinesearch.data.synthetic",
      description="Render the synthetic multi-scale shapes detection set.")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--num_train", type=int, required=True)
  parser.add_argument("--num_val", type=int, required=True)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_shards", type=int, default=2,
                      help="shards per split (fewer if a split is smaller)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  description = generate(args.output_dir, num_train=args.num_train,
                         num_val=args.num_val, image_size=args.image_size,
                         seed=args.seed, num_shards=args.num_shards)
  seconds = time.perf_counter() - start
  total = args.num_train + args.num_val
  objects = sum(s["num_objects"] for s in description["splits"].values())
  print(f"wrote {total} images ({objects} objects, "
        f"{len(CATEGORIES)} classes) to {args.output_dir} in {seconds:.1f} s "
        f"({total / seconds:.0f} images/s)")


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
