"""A zoo entry: one detector as data.

An entry is a JSON file in `<zoo>/entries/`. Its `architecture` is the
project's one architecture schema (`spinesearch.space.architecture`, which also
holds the backbone, decoder and head widths in `scaling`); around it the entry
says how the RetinaNet is completed (input size, classes, anchors, post-
processing, activation), what it costs, where its weights are and how they
were checked, what it scored and on what, and where it came from::

  {"zoo_version": 1, "name": "mobile-spinenet-49xs", "description": "...",
   "architecture": {<architecture schema>},
   "input_size": 128, "num_classes": 11, "class_names": ["background", ...],
   "head": {"use_separable_conv": true, "num_scales": 3, "aspect_ratios": [0.5, 1.0, 2.0],
            "anchor_size": 1.0, "pre_nms_top_k": 1000, "pre_nms_score_threshold": 0.05,
            "nms_iou_threshold": 0.5, "max_num_detections": 100},
   "norm_activation": {"activation": "swish", "norm_momentum": 0.99, "norm_epsilon": 0.001},
   "cost": {"params": 123, "params_all": 130, "multiply_adds": 456, "input_size": 128},
   "weights": {"file": "x.npz", "sha256": "...", "bytes": 1, "format": "npz-v1", "source": "..."},
   "metrics": [{"dataset": "...", "split": "val", "input_size": 128, "measured_here": true,
                "ap": 0.31, ...}],
   "training": {...}, "provenance": {"kind": "paper" | "search" | ..., ...},
   "score_threshold": {"threshold": 0.12, "method": "...", "weights_sha256": "...",
                       "calibration": {"dataset": "...", "split": "val", "num_images": 200,
                                       "recall": 0.7, "detections_per_object": 1.9, ...}}}

`weights` and `training` may be null (an entry without weights). AP values
are fractions in [0, 1], as pycocotools reports them. `score_threshold` is
optional: the `min_score` that `predict` uses by default, as calibrated for
the weights of `weights_sha256` (`python -m model_zoo calibrate`); without it,
or when it was calibrated for other weights, the default is
DEFAULT_MIN_SCORE.
"""
import dataclasses
import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from spinesearch.errors import ArchitectureError, UserError
from spinesearch.files import read_json, write_text_atomically
from spinesearch.space.architecture import Architecture

ZOO_VERSION = 1
WEIGHTS_FORMAT = "npz-v1"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ACTIVATIONS = ("relu", "swish")
# predict's min_score for an entry without a calibrated score threshold.
DEFAULT_MIN_SCORE = 0.3


class ZooError(UserError, ValueError):
  """A zoo entry, name or weights file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """RetinaNet head settings other than its depth and width (those are the
  architecture's `scaling.head_num_convs` / `head_num_filters`): convolution
  type, anchors and the detection generator."""
  use_separable_conv: bool = False
  num_scales: int = 3
  aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  anchor_size: float = 4.0
  pre_nms_top_k: int = 1000
  pre_nms_score_threshold: float = 0.05
  nms_iou_threshold: float = 0.5
  max_num_detections: int = 100

  def __post_init__(self):
    object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))

  def to_dict(self) -> Dict[str, Any]:
    return dict(dataclasses.asdict(self), aspect_ratios=list(self.aspect_ratios))


@dataclasses.dataclass(frozen=True)
class NormActivation:
  activation: str = "relu"
  norm_momentum: float = 0.99
  norm_epsilon: float = 0.001

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WeightsRecord:
  """A weights file in `<zoo>/weights/` and what it must hash to."""
  file: str
  sha256: str
  bytes: int
  format: str = WEIGHTS_FORMAT
  source: str = ""

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ScoreThreshold:
  """The score threshold that suits an entry's weights: `threshold` in (0, 1),
  how it was chosen (`method`), the weights it was chosen for and what it
  gave there (`calibration`: data set, images, recall, detections per object)."""
  threshold: float
  method: str = ""
  weights_sha256: str = ""
  calibration: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> Dict[str, Any]:
    return dict(dataclasses.asdict(self), calibration=dict(self.calibration))


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """One detector of the zoo (see the module docstring for the JSON)."""
  name: str
  architecture: Architecture
  input_size: int
  num_classes: int
  head: HeadSpec = HeadSpec()
  norm_activation: NormActivation = NormActivation()
  description: str = ""
  class_names: Tuple[str, ...] = ()
  cost: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  weights: Optional[WeightsRecord] = None
  metrics: Tuple[Mapping[str, Any], ...] = ()
  training: Optional[Mapping[str, Any]] = None
  provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  score_threshold: Optional[ScoreThreshold] = None

  def __post_init__(self):
    object.__setattr__(self, "class_names", tuple(self.class_names))
    object.__setattr__(self, "metrics", tuple(self.metrics))

  def replace(self, **changes) -> "ZooEntry":
    return dataclasses.replace(self, **changes)

  def class_name(self, label: int) -> str:
    """The name of a class id (0 is the background), or "class N"."""
    if 0 <= label < len(self.class_names) and self.class_names[label]:
      return self.class_names[label]
    return f"class {label}"

  def metric_measured_here(self) -> Optional[Mapping[str, Any]]:
    """The metrics record measured here on the current weights, if any."""
    if self.weights is None:
      return None
    for record in self.metrics:
      if record.get("measured_here") and record.get("weights_sha256") == self.weights.sha256:
        return record
    return None

  def default_min_score(self) -> float:
    """predict's min_score when none is given: the calibrated threshold, else
    DEFAULT_MIN_SCORE."""
    threshold = self.calibrated_threshold()
    return DEFAULT_MIN_SCORE if threshold is None else threshold

  def calibrated_threshold(self) -> Optional[float]:
    """The entry's score threshold if it was calibrated for these weights (or
    set for no weights in particular); None otherwise."""
    record = self.score_threshold
    if record is None:
      return None
    if record.weights_sha256 and (self.weights is None or
                                  record.weights_sha256 != self.weights.sha256):
      return None
    return record.threshold

  # ---- JSON ----------------------------------------------------------------

  def to_dict(self) -> Dict[str, Any]:
    data = {
        "zoo_version": ZOO_VERSION,
        "name": self.name,
        "description": self.description,
        "architecture": self.architecture.to_dict(),
        "input_size": self.input_size,
        "num_classes": self.num_classes,
        "class_names": list(self.class_names),
        "head": self.head.to_dict(),
        "norm_activation": self.norm_activation.to_dict(),
        "cost": dict(self.cost),
        "weights": None if self.weights is None else self.weights.to_dict(),
        "metrics": [dict(m) for m in self.metrics],
        "training": None if self.training is None else dict(self.training),
        "provenance": dict(self.provenance),
    }
    if self.score_threshold is not None:
      data["score_threshold"] = self.score_threshold.to_dict()
    return data

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2) + "\n"

  def save(self, path: str) -> None:
    """Writes atomically: a reader never sees a half-written entry."""
    write_text_atomically(path, self.to_json())

  @classmethod
  def from_dict(cls, data: Any, source: str = "zoo entry") -> "ZooEntry":
    try:
      return _parse_entry(data)
    except (ZooError, ArchitectureError) as e:
      raise ZooError(f"{source}: {e}") from None

  @classmethod
  def load(cls, path: str) -> "ZooEntry":
    try:
      data = read_json(path)
    except ValueError as e:
      raise ZooError(f"{path}: {e}") from None
    return cls.from_dict(data, source=path)


# ---- parsing -------------------------------------------------------------------

_REQUIRED = ("zoo_version", "name", "architecture", "input_size", "num_classes")
_OPTIONAL = ("description", "class_names", "head", "norm_activation", "cost", "weights",
             "metrics", "training", "provenance", "score_threshold")


def _parse_entry(data: Any) -> ZooEntry:
  _check_keys(data, _REQUIRED, _OPTIONAL, "entry")
  if data["zoo_version"] != ZOO_VERSION:
    raise ZooError(f"zoo_version: this SpineSearch reads zoo entries of version "
                   f"{ZOO_VERSION}, got {data['zoo_version']!r}")
  name = data["name"]
  if not isinstance(name, str) or not NAME_PATTERN.match(name):
    raise ZooError(f"name: lower-case letters, digits, '.', '_' and '-' only, got {name!r}")
  architecture = Architecture.from_dict(data["architecture"])
  input_size = _positive_int(data["input_size"], "input_size")
  architecture.check_image_size(input_size)
  num_classes = _positive_int(data["num_classes"], "num_classes")
  class_names = data.get("class_names") or []
  if (not isinstance(class_names, list) or len(class_names) > num_classes or
      not all(isinstance(n, str) for n in class_names)):
    raise ZooError(f"class_names: expected at most num_classes={num_classes} strings")
  norm = _parse_dataclass(NormActivation, data.get("norm_activation", {}), "norm_activation")
  if norm.activation not in ACTIVATIONS:
    raise ZooError(f"norm_activation.activation: must be one of {', '.join(ACTIVATIONS)}, "
                   f"got {norm.activation!r}")
  weights = data.get("weights")
  return ZooEntry(
      name=name,
      description=_string(data.get("description", ""), "description"),
      architecture=architecture,
      input_size=input_size,
      num_classes=num_classes,
      class_names=tuple(class_names),
      head=_parse_dataclass(HeadSpec, data.get("head", {}), "head"),
      norm_activation=norm,
      cost=_mapping(data.get("cost", {}), "cost"),
      weights=None if weights is None else _parse_weights(weights),
      metrics=tuple(_mapping(m, f"metrics[{i}]") for i, m in enumerate(_list(data, "metrics"))),
      training=None if data.get("training") is None else _mapping(data["training"], "training"),
      provenance=_mapping(data.get("provenance", {}), "provenance"),
      score_threshold=(None if data.get("score_threshold") is None else
                       _parse_score_threshold(data["score_threshold"])),
  )


def _parse_score_threshold(data: Any) -> ScoreThreshold:
  where = "score_threshold"
  _check_keys(data, ("threshold",), ("method", "weights_sha256", "calibration"), where)
  threshold = data["threshold"]
  if not _is_number(threshold) or not 0 < threshold < 1:
    raise ZooError(f"{where}.threshold: expected a number between 0 and 1 (both excluded), "
                   f"got {threshold!r}")
  sha256 = _string(data.get("weights_sha256", ""), f"{where}.weights_sha256")
  if sha256:
    _check_sha256(sha256, f"{where}.weights_sha256")
  return ScoreThreshold(
      threshold=float(threshold), method=_string(data.get("method", ""), f"{where}.method"),
      weights_sha256=sha256,
      calibration=_mapping(data.get("calibration", {}), f"{where}.calibration"))


def _parse_weights(data: Any) -> WeightsRecord:
  record = _parse_dataclass(WeightsRecord, data, "weights", required=("file", "sha256", "bytes"))
  if not record.file or "/" in record.file or "\\" in record.file or record.file.startswith("."):
    raise ZooError(f"weights.file: a plain file name in the zoo's weights folder, "
                   f"got {record.file!r}")
  _check_sha256(record.sha256, "weights.sha256")
  if record.format != WEIGHTS_FORMAT:
    raise ZooError(f"weights.format: this SpineSearch reads {WEIGHTS_FORMAT!r}, "
                   f"got {record.format!r}")
  return record


def _check_sha256(value: str, where: str) -> None:
  if not re.fullmatch(r"[0-9a-f]{64}", value):
    raise ZooError(f"{where}: expected 64 lower-case hex digits, got {value!r}")


def _parse_dataclass(cls, data: Any, where: str, required: Tuple[str, ...] = ()):
  """Builds `cls` from a JSON object, checking every value against its
  field's type (bool, str, positive int, non-negative float, or a tuple of
  positive numbers)."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  _check_keys(data, required, [n for n in fields if n not in required], where)
  values = {}
  for key, value in data.items():
    kind = fields[key].type
    if kind is bool:
      if not isinstance(value, bool):
        raise ZooError(f"{where}.{key}: expected true or false, got {value!r}")
    elif kind is str:
      if not isinstance(value, str):
        raise ZooError(f"{where}.{key}: expected a string, got {value!r}")
    elif kind is int:
      _positive_int(value, f"{where}.{key}")
    elif kind is float:
      if not _is_number(value) or value < 0:
        raise ZooError(f"{where}.{key}: expected a non-negative number, got {value!r}")
    elif (not isinstance(value, list) or not value or
          not all(_is_number(v) and v > 0 for v in value)):
      raise ZooError(f"{where}.{key}: expected a list of positive numbers, got {value!r}")
    values[key] = value
  return cls(**values)


def _check_keys(data: Any, required, optional, where: str) -> None:
  if not isinstance(data, Mapping):
    raise ZooError(f"{where}: expected a JSON object, got {type(data).__name__}")
  missing = [k for k in required if k not in data]
  if missing:
    raise ZooError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
  unknown = sorted(set(data) - set(required) - set(optional))
  if unknown:
    raise ZooError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                   f"allowed: {', '.join(sorted(set(required) | set(optional)))}")


def _is_number(value: Any) -> bool:
  return (not isinstance(value, bool) and isinstance(value, (int, float)) and
          math.isfinite(value))


def _positive_int(value: Any, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ZooError(f"{where}: expected a positive integer, got {value!r}")
  return value


def _string(value: Any, where: str) -> str:
  if not isinstance(value, str):
    raise ZooError(f"{where}: expected a string, got {value!r}")
  return value


def _mapping(value: Any, where: str) -> Dict[str, Any]:
  if not isinstance(value, Mapping):
    raise ZooError(f"{where}: expected a JSON object, got {type(value).__name__}")
  return dict(value)


def _list(data: Mapping, key: str) -> List[Any]:
  value = data.get(key, [])
  if not isinstance(value, list):
    raise ZooError(f"{key}: expected a list, got {type(value).__name__}")
  return value
