"""COCO detection JSON: writing it, and reading it with checks that name the bad
record in one line.

Pure Python (no TensorFlow) so a broken file is reported in well under a second.
Category ids are kept as class labels, as Model Garden and its COCO evaluator
expect; label 0 is the background, so a model needs max category id + 1
classes.
"""
import dataclasses
import json
import numbers
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from spinesearch.errors import DatasetError
from spinesearch.files import write_text_atomically

# Sub-pixel overshoot, as rounding leaves in real annotation files, is clipped;
# anything larger is a real error in the file.
BOX_TOLERANCE_PX = 0.5


@dataclasses.dataclass(frozen=True)
class CocoImage:
  id: int
  file_name: str
  width: int
  height: int


@dataclasses.dataclass(frozen=True)
class CocoObject:
  """One annotation; `bbox` is [x, y, w, h] in pixels, clipped to the image."""
  id: int
  image_id: int
  category_id: int
  bbox: Tuple[float, float, float, float]
  area: float
  iscrowd: int


@dataclasses.dataclass(frozen=True)
class CocoDataset:
  """A checked COCO file: every box inside its image, every id known."""
  path: str
  images: Tuple[CocoImage, ...]
  objects_by_image: Mapping[int, Tuple[CocoObject, ...]]
  categories: Mapping[int, str]

  @property
  def num_classes(self) -> int:
    """Model Garden's num_classes: max category id + 1 (0 is background)."""
    return max(self.categories) + 1

  @property
  def num_objects(self) -> int:
    return sum(len(objects) for objects in self.objects_by_image.values())


def write_coco(path: str, images: Sequence[Mapping[str, Any]],
               annotations: Sequence[Mapping[str, Any]],
               categories: Sequence[Mapping[str, Any]]) -> None:
  document = {"images": list(images), "annotations": list(annotations),
              "categories": list(categories)}
  write_text_atomically(path, json.dumps(document, separators=(",", ":")))


def load_coco(path: str) -> CocoDataset:
  """Reads and checks a COCO detection file; raises DatasetError on the first
  problem, naming the file and the record."""
  try:
    with open(path, encoding="utf-8") as f:
      document = json.load(f)
  except FileNotFoundError:
    raise DatasetError(f"{path}: file not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DatasetError(f"{path}: cannot read: {e}") from None
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(document, dict):
    raise DatasetError(f"{path}: expected a JSON object with images, "
                       f"annotations and categories, got "
                       f"{type(document).__name__}")
  for key in ("images", "annotations", "categories"):
    if key not in document:
      raise DatasetError(f"{path}: missing top-level key '{key}'")
    if not isinstance(document[key], list):
      raise DatasetError(f"{path}: '{key}' must be a list, got "
                         f"{type(document[key]).__name__}")

  categories = _read_categories(path, document["categories"])
  images = _read_images(path, document["images"])
  images_by_id = {image.id: image for image in images}
  objects_by_image: Dict[int, List[CocoObject]] = {
      image.id: [] for image in images}
  seen_ids = set()
  for index, record in enumerate(document["annotations"]):
    obj = _read_annotation(path, index, record, images_by_id, categories)
    if obj.id in seen_ids:
      raise DatasetError(f"{path}: annotation id {obj.id} appears twice")
    seen_ids.add(obj.id)
    objects_by_image[obj.image_id].append(obj)
  return CocoDataset(
      path=path, images=tuple(images),
      objects_by_image={k: tuple(v) for k, v in objects_by_image.items()},
      categories=categories)


def _where(kind: str, index: int, record: Any) -> str:
  """Names a record by its id when it has a usable one, else by position."""
  if isinstance(record, dict) and _is_int(record.get("id")):
    return f"{kind} id {record['id']}"
  return f"{kind} at index {index}"


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _field(path: str, where: str, record: Any, key: str, check, expected: str):
  if not isinstance(record, dict):
    raise DatasetError(f"{path}: {where}: expected a JSON object, got "
                       f"{type(record).__name__}")
  if key not in record:
    raise DatasetError(f"{path}: {where}: missing key '{key}'")
  value = record[key]
  if not check(value):
    raise DatasetError(f"{path}: {where}: '{key}' must be {expected}, got "
                       f"{json.dumps(value)}")
  return value


def _read_categories(path: str, records: List[Any]) -> Dict[int, str]:
  categories: Dict[int, str] = {}
  for index, record in enumerate(records):
    where = _where("category", index, record)
    category_id = _field(path, where, record, "id", _is_int, "an integer")
    name = _field(path, where, record, "name",
                  lambda v: isinstance(v, str), "a string")
    if category_id < 1:
      raise DatasetError(f"{path}: {where}: category ids must be >= 1 "
                         f"(0 is the background label)")
    if category_id in categories:
      raise DatasetError(f"{path}: category id {category_id} appears twice")
    categories[category_id] = name
  if not categories:
    raise DatasetError(f"{path}: 'categories' is empty")
  return categories


def _read_images(path: str, records: List[Any]) -> List[CocoImage]:
  images: List[CocoImage] = []
  seen = set()
  for index, record in enumerate(records):
    where = _where("image", index, record)
    image_id = _field(path, where, record, "id", _is_int, "an integer")
    file_name = _field(path, where, record, "file_name",
                       lambda v: isinstance(v, str) and v, "a file name")
    width = _field(path, where, record, "width",
                   lambda v: _is_int(v) and v > 0, "a positive integer")
    height = _field(path, where, record, "height",
                    lambda v: _is_int(v) and v > 0, "a positive integer")
    if image_id in seen:
      raise DatasetError(f"{path}: image id {image_id} appears twice")
    seen.add(image_id)
    images.append(CocoImage(image_id, file_name, width, height))
  return images


def _read_annotation(path: str, index: int, record: Any,
                     images_by_id: Mapping[int, CocoImage],
                     categories: Mapping[int, str]) -> CocoObject:
  where = _where("annotation", index, record)
  annotation_id = _field(path, where, record, "id", _is_int, "an integer")
  image_id = _field(path, where, record, "image_id", _is_int, "an integer")
  where = f"{where} (image {image_id})"
  if image_id not in images_by_id:
    raise DatasetError(f"{path}: {where}: no image has id {image_id}")
  category_id = _field(path, where, record, "category_id", _is_int,
                       "an integer")
  if category_id not in categories:
    known = ", ".join(str(k) for k in sorted(categories))
    raise DatasetError(f"{path}: {where}: unknown category id {category_id} "
                       f"(categories: {known})")
  box = _field(path, where, record, "bbox",
               lambda v: isinstance(v, list) and len(v) == 4
               and all(_is_number(x) for x in v),
               "a list of 4 numbers [x, y, width, height]")
  iscrowd = record.get("iscrowd", 0)
  if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
    raise DatasetError(f"{path}: {where}: 'iscrowd' must be 0 or 1, got "
                       f"{json.dumps(iscrowd)}")
  image = images_by_id[image_id]
  clipped = _checked_box(path, where, box, image)
  area = record.get("area", clipped[2] * clipped[3])
  if not _is_number(area) or area < 0:
    raise DatasetError(f"{path}: {where}: 'area' must be a number >= 0, got "
                       f"{json.dumps(area)}")
  return CocoObject(annotation_id, image_id, category_id, clipped,
                    float(area), int(iscrowd))


def _checked_box(path: str, where: str, box: List[float],
                 image: CocoImage) -> Tuple[float, float, float, float]:
  x, y, w, h = (float(v) for v in box)
  shown = json.dumps(box)
  if w <= 0 or h <= 0:
    raise DatasetError(f"{path}: {where}: box {shown} has no area "
                       f"(width and height must be > 0)")
  tolerance = BOX_TOLERANCE_PX
  x0, y0 = max(x, 0.0), max(y, 0.0)
  x1, y1 = min(x + w, float(image.width)), min(y + h, float(image.height))
  if (x < -tolerance or y < -tolerance or x + w > image.width + tolerance
      or y + h > image.height + tolerance or x1 <= x0 or y1 <= y0):
    raise DatasetError(f"{path}: {where}: box {shown} extends outside the "
                       f"{image.width}x{image.height} image")
  return (x0, y0, x1 - x0, y1 - y0)
