"""Where a detection dataset's files are, for training and evaluation code.

A dataset is TFRecords in Model Garden's detection schema for training and
validation, plus the validation split's COCO JSON for the COCO evaluator. It
comes either from the synthetic generator (a folder with `dataset.json`, cached
by its parameters) or from the user's own files, checked here before any
training starts.
"""
import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional, Tuple

from spinesearch.data import coco_json
from spinesearch.errors import DatasetError

DATASET_FILE = "dataset.json"
BACKGROUND_NAME = "background"


@dataclasses.dataclass(frozen=True)
class DatasetPaths:
  """Everything a proxy task needs to read a dataset.

  Attributes:
    train_pattern: glob of the training TFRecords.
    val_pattern: glob of the validation TFRecords.
    val_annotations: path of the validation split's COCO JSON.
    num_classes: Model Garden's num_classes, max category id + 1 (label 0 is
      the background).
    image_size: side of the square images, or None when sizes vary (user data).
    class_names: names indexed by label; [0] is "background", and labels no
      category uses are "".
    num_train: training images, or None when not known without reading every
      record (user data).
    num_val: validation images.
  """
  train_pattern: str
  val_pattern: str
  val_annotations: str
  num_classes: int
  image_size: Optional[int]
  class_names: Tuple[str, ...]
  num_train: Optional[int] = None
  num_val: Optional[int] = None

  @classmethod
  def from_dir(cls, folder: str) -> "DatasetPaths":
    """Reads `folder/dataset.json` as written by `synthetic.generate`."""
    path = os.path.join(folder, DATASET_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        description = json.load(f)
      splits = description["splits"]
      categories = {int(c["id"]): str(c["name"])
                    for c in description["categories"]}
      paths = cls(
          train_pattern=os.path.join(folder, splits["train"]["pattern"]),
          val_pattern=os.path.join(folder, splits["val"]["pattern"]),
          val_annotations=os.path.join(folder, splits["val"]["annotations"]),
          num_classes=int(description["num_classes"]),
          image_size=description.get("image_size"),
          class_names=_class_names(categories),
          num_train=int(splits["train"]["num_images"]),
          num_val=int(splits["val"]["num_images"]))
    except FileNotFoundError:
      raise DatasetError(f"{folder}: no {DATASET_FILE}; not a dataset folder "
                         f"written by spinesearch.data.synthetic") from None
    except json.JSONDecodeError as e:
      raise DatasetError(f"{path}: not valid JSON: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
      raise DatasetError(f"{path}: malformed dataset description "
                         f"({type(e).__name__}: {e})") from None
    paths.check_files()
    return paths

  def check_files(self) -> None:
    """Raises DatasetError unless every file the paths name exists."""
    for name, pattern in (("train", self.train_pattern),
                          ("val", self.val_pattern)):
      if not glob.glob(pattern):
        raise DatasetError(f"no file matches the {name} pattern {pattern}")
    if not os.path.isfile(self.val_annotations):
      raise DatasetError(f"{self.val_annotations}: file not found")


def _class_names(categories) -> Tuple[str, ...]:
  names = [""] * (max(categories) + 1)
  names[0] = BACKGROUND_NAME
  for category_id, name in categories.items():
    names[category_id] = name
  return tuple(names)


def default_cache_dir() -> str:
  """Where generated data is cached: $SPINESEARCH_CACHE, else ~/.cache/spinesearch."""
  return os.path.expanduser(os.environ.get("SPINESEARCH_CACHE") or "~/.cache/spinesearch")


def synthetic_dir_name(*, num_train: int, num_val: int, image_size: int,
                       seed: int) -> str:
  from spinesearch.data.synthetic import GENERATOR_VERSION
  return f"synthetic-v{GENERATOR_VERSION}-{image_size}px-{num_train}-{num_val}-seed{seed}"


def ensure_synthetic(cache_dir: str, *, num_train: int, num_val: int,
                     image_size: int, seed: int) -> DatasetPaths:
  """Returns the synthetic set with these parameters, generating it on first
  use into `cache_dir/synthetic-<size>px-<train>-<val>-seed<k>/`.

  The set is built in a temporary folder and renamed into place, so a killed
  run never leaves a folder that looks complete. A lock file serializes
  callers: a second process waits for the first and then reuses its result.
  """
  name = synthetic_dir_name(num_train=num_train, num_val=num_val,
                            image_size=image_size, seed=seed)
  final_dir = os.path.join(cache_dir, name)
  if os.path.isfile(os.path.join(final_dir, DATASET_FILE)):
    return DatasetPaths.from_dir(final_dir)
  os.makedirs(cache_dir, exist_ok=True)
  with _exclusive_lock(os.path.join(cache_dir, f".{name}.lock")):
    if os.path.isfile(os.path.join(final_dir, DATASET_FILE)):
      return DatasetPaths.from_dir(final_dir)
    if os.path.exists(final_dir):
      raise DatasetError(f"{final_dir}: exists but has no {DATASET_FILE}; "
                         f"remove it to have it generated again")
    _remove_abandoned_builds(cache_dir, name)
    # Imported here so that finding an existing set does not load TensorFlow.
    from spinesearch.data import synthetic
    build_dir = tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{name}-")
    try:
      synthetic.generate(build_dir, num_train=num_train, num_val=num_val,
                         image_size=image_size, seed=seed)
      # mkdtemp makes the folder private; the cache is meant to be shared.
      os.chmod(build_dir, 0o755)
      os.rename(build_dir, final_dir)
    except BaseException:
      shutil.rmtree(build_dir, ignore_errors=True)
      raise
  return DatasetPaths.from_dir(final_dir)


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
  with open(path, "a", encoding="utf-8") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_abandoned_builds(cache_dir: str, name: str) -> None:
  # Only called under the lock, so any build folder found is one whose owner
  # died before renaming it.
  for leftover in glob.glob(os.path.join(cache_dir, f".tmp-{name}-*")):
    shutil.rmtree(leftover, ignore_errors=True)


def from_spec(spec, cache_dir: Optional[str] = None) -> DatasetPaths:
  """The dataset a description names: {"type": "synthetic", "num_train",
  "num_val", "image_size", "seed"} (generated into `cache_dir` on first use)
  or {"type": "tfrecord", "train_pattern", "val_pattern", "val_annotations"}."""
  kind = spec.get("type")
  try:
    if kind == "synthetic":
      return ensure_synthetic(os.path.expanduser(cache_dir or default_cache_dir()),
                              num_train=int(spec["num_train"]), num_val=int(spec["num_val"]),
                              image_size=int(spec["image_size"]), seed=int(spec["seed"]))
    if kind == "tfrecord":
      return user_dataset(spec["train_pattern"], spec["val_pattern"], spec["val_annotations"])
  except KeyError as e:
    raise DatasetError(f"dataset description {dict(spec)}: missing {e}") from None
  raise DatasetError(f"dataset description {dict(spec)}: type must be synthetic or tfrecord")


def user_dataset(train_pattern: str, val_pattern: str,
                 val_annotations: str) -> DatasetPaths:
  """Checks the user's files and describes them.

  The TFRecords must exist (their content is read by Model Garden's decoder at
  training time); the COCO JSON is read and checked in full, since a bad
  validation file would otherwise surface only after a whole training run.
  """
  for name, pattern in (("train", train_pattern), ("val", val_pattern)):
    files = glob.glob(pattern)
    if not files:
      raise DatasetError(f"no file matches the {name} pattern {pattern}")
    for path in files:
      if os.path.getsize(path) == 0:
        raise DatasetError(f"{path}: empty file (matched by the {name} "
                           f"pattern {pattern})")
  coco = coco_json.load_coco(val_annotations)
  return DatasetPaths(
      train_pattern=train_pattern, val_pattern=val_pattern,
      val_annotations=val_annotations, num_classes=coco.num_classes,
      image_size=None, class_names=_class_names(coco.categories),
      num_train=None, num_val=len(coco.images))
