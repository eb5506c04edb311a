"""Zero-shot scoring: the Zen-score of an architecture, without training or data.

Zen-score (Lin et al. 2021, ZenNAS, arXiv 2102.01063) measures how strongly a
randomly initialised network separates nearby inputs:

  score = log E ||f(x) - f(x + alpha * eps)||_1
          + sum over BN layers of log sqrt(mean over channels of the running variance)

x and eps are Gaussian images, alpha = 0.01, f the feature maps before global
pooling, every weight Gaussian. How this module measures it:

- Network: built through `spinesearch.modeling.builder` at `image_size` with
  the scaling given (the search's proxy scaling). `part="backbone"` scores the
  backbone alone, f = its endpoints; `part="detector"` (the default) scores the
  dense detector, backbone -> merging cells -> RetinaNet head, f = the head's
  class and box outputs at every level. The backbone of a NAS-FPN architecture
  is a fixed ResNet, so only "detector" tells its architectures apart.
- Multi-level features: the L1 norm is taken over every level's maps together
  (the sum of the per-level norms), i.e. f is the whole pyramid.
- Weights as ZenNAS sets them: convolution kernels N(0, 1), re-drawn for
  every repeat; biases 0, BN gamma 1 and beta 0. Kernels and images come from
  numpy generators seeded with (seed, repeat), so the same seed gives the same
  score, and every architecture of a search sees the same images.
- BN: every layer in training mode (batch statistics), built with momentum 0,
  so a layer's running variance after a forward pass is that pass's batch
  variance; it is read after the pass on the unperturbed x. (ZenNAS' code reads
  PyTorch's running average after both passes, which still mixes in the
  initial value 1; the paper's formula uses the batch statistics.)
- Expectation: mean over the batch; the score is the mean over `repeats`.
- Speed: the forward passes run eagerly. Tracing them into a tf.function costs
  more than it saves at a few repeats (measured on 2 cores: about 2.3 s to
  trace a x0.25 SpineNet-49 at 128 px, 0.06 s per traced pass, 0.4 s per eager
  pass); building the Keras model (2.5-4 s) dominates either way.
"""
import dataclasses
import math
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow loads)
import tensorflow as tf
import tf_keras

from spinesearch import phases
from spinesearch.errors import ConfigError
from spinesearch.modeling import builder, cost
from spinesearch.space.architecture import Architecture, Scaling

PARTS = ("backbone", "detector")
ZEN_ALPHA = 0.01

# Weight name -> how ZenNAS initialises it (None: Gaussian N(0, 1)).
_INITIAL_VALUES = {"kernel": None, "depthwise_kernel": None, "bias": 0.0, "beta": 0.0,
                   "gamma": 1.0, "moving_mean": 0.0, "moving_variance": 1.0,
                   # Equal weights, as a weighted fusion starts (EfficientDet).
                   "fusion_weight": 1.0}


@dataclasses.dataclass(frozen=True)
class ZenSettings:
  """How a Zen-score is measured.

  num_classes, num_scales and aspect_ratios shape the RetinaNet head of
  part="detector" (and the model whose cost is measured); they are the same
  for every architecture of a search, so they shift its scores alike.
  """
  image_size: int = 128
  batch_size: int = 8
  repeats: int = 2
  part: str = "detector"
  alpha: float = ZEN_ALPHA
  num_classes: int = 2
  num_scales: int = 3
  aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "aspect_ratios", tuple(self.aspect_ratios))
    for name in ("image_size", "batch_size", "repeats", "num_classes", "num_scales"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"zero-shot {name}: expected a positive integer, got {value!r}")
    if self.batch_size < 2:
      raise ConfigError(f"zero-shot batch_size: BN batch statistics need at least 2 images, "
                        f"got {self.batch_size}")
    if self.part not in PARTS:
      raise ConfigError(f"zero-shot part: must be one of {', '.join(PARTS)}, got {self.part!r}")
    if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
        or not 0 < self.alpha < math.inf:
      raise ConfigError(f"zero-shot alpha: expected a positive number, got {self.alpha!r}")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise ConfigError(f"zero-shot seed: expected an integer >= 0, got {self.seed!r}")

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "ZenSettings":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ConfigError(f"zero-shot settings: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class ZenScore:
  """A measured Zen-score and its two terms (means over the repeats)."""
  score: float
  log_difference: float
  log_bn_scale: float
  repeat_scores: Tuple[float, ...]
  num_bn_layers: int
  params: int
  build_seconds: float
  score_seconds: float

  def metrics(self) -> Dict[str, Any]:
    return {"zen_score": self.score, "zen_log_difference": self.log_difference,
            "zen_log_bn_scale": self.log_bn_scale, "params": self.params,
            "build_seconds": self.build_seconds, "score_seconds": self.score_seconds}


def zen_score(architecture: Architecture, *, scaling: Optional[Scaling] = None,
              **settings) -> float:
  """The Zen-score of `architecture` (built with `scaling` when given);
  `settings` are ZenSettings fields (image_size, batch_size, repeats, part,
  alpha, num_classes, num_scales, aspect_ratios, seed)."""
  return measure_zen_score(architecture, ZenSettings.from_dict(settings), scaling=scaling).score


def measure_zen_score(architecture: Architecture, settings: ZenSettings = ZenSettings(),
                      *, scaling: Optional[Scaling] = None) -> ZenScore:
  """The Zen-score with its terms and timings (see the module docstring)."""
  return ZenNetwork(architecture, settings, scaling=scaling).measure()


class ZenNetwork:
  """The network one architecture is scored on, built once, its kernels
  re-drawn for every repeat. `detector` is the dense detector, backbone ->
  merging cells -> head (builder.DenseDetector, built for part="detector" or
  `with_detector=True`, e.g. to measure its cost): the Zen-score needs no
  anchors, box decoding or NMS.

  Building one clears Keras' global state (tf_keras.backend.clear_session):
  models built earlier keep working, but Keras' layer-name counters restart.
  """

  @phases.timed("build")
  def __init__(self, architecture: Architecture, settings: ZenSettings, *,
               scaling: Optional[Scaling] = None, with_detector: bool = False):
    self.settings = settings
    started = time.perf_counter()
    architecture = builder.prepare_architecture(architecture, settings.image_size, scaling)
    # Keras keeps every model built in a process in its global graph (about
    # 25 MB per x0.25 SpineNet); a search scores hundreds of them.
    tf_keras.backend.clear_session()
    # Momentum 0: a BN layer's running variance becomes the last batch's variance.
    norm = dict(norm_momentum=0.0)
    self.detector = None
    if settings.part == "detector" or with_detector:
      self.detector = builder.build_dense_detector(
          architecture, num_classes=settings.num_classes, image_size=settings.image_size,
          num_scales=settings.num_scales, aspect_ratios=settings.aspect_ratios, **norm)
    if settings.part == "detector":
      self._parts = [self.detector]
      self._forward = self._detector_outputs
    else:
      backbone = (self.detector.backbone if self.detector is not None else
                  builder.build_backbone(architecture, image_size=settings.image_size, **norm))
      self._parts = [backbone]
      self._forward = lambda images: _by_level(backbone(images, training=True))
    self.weights = [w for part in self._parts for w in part.weights]
    self.bn_variances = [w for w in self.weights if _weight_kind(w) == "moving_variance"]
    self._kernels = []
    for weight in self.weights:
      value = _INITIAL_VALUES.get(_weight_kind(weight), "unknown")
      if value == "unknown":
        raise RuntimeError(f"zero-shot: no ZenNAS initialisation for weight {weight.name}")
      if value is None:
        self._kernels.append(weight)
      else:
        # Set once: scoring never changes a constant (BN's moving statistics
        # become each pass's batch statistics, whatever they were before).
        weight.assign(tf.fill(weight.shape, tf.constant(value, weight.dtype)))
    self.build_seconds = time.perf_counter() - started

  @property
  def params(self) -> int:
    return int(sum(np.prod(w.shape) for w in self.weights))

  @phases.timed("evaluate")
  def measure(self) -> ZenScore:
    started = time.perf_counter()
    terms = [self.score_once(repeat) for repeat in range(self.settings.repeats)]
    differences, bn_scales = (np.array(t) for t in zip(*terms))
    scores = differences + bn_scales
    return ZenScore(score=float(scores.mean()), log_difference=float(differences.mean()),
                    log_bn_scale=float(bn_scales.mean()),
                    repeat_scores=tuple(float(s) for s in scores),
                    num_bn_layers=len(self.bn_variances), params=self.params,
                    build_seconds=self.build_seconds,
                    score_seconds=time.perf_counter() - started)

  def score_once(self, repeat: int) -> Tuple[float, float]:
    """(log E||f(x) - f(x + alpha eps)||_1, sum of log BN scales) for one draw."""
    # Separate streams: the images of a repeat are the same for every architecture.
    image_rng = np.random.default_rng([self.settings.seed, repeat, 0])
    self._draw_kernels(np.random.default_rng([self.settings.seed, repeat, 1]))
    size = self.settings.image_size
    shape = (self.settings.batch_size, size, size, 3)
    images = image_rng.standard_normal(shape, dtype=np.float32)
    noise = image_rng.standard_normal(shape, dtype=np.float32)
    perturbed = self._forward(tf.constant(images + np.float32(self.settings.alpha) * noise))
    # The unperturbed pass runs last: its batch statistics are the ones read.
    clean = self._forward(tf.constant(images))
    per_image = tf.add_n([tf.reduce_sum(tf.abs(a - b), axis=tf.range(1, tf.rank(a)))
                          for a, b in zip(clean, perturbed)])
    # A network blind to its input (or a BN layer fed a constant) scores -inf.
    with np.errstate(divide="ignore"):
      log_difference = float(np.log(float(tf.reduce_mean(per_image))))
      log_bn_scale = float(sum(0.5 * np.log(float(tf.reduce_mean(v)))
                               for v in self.bn_variances))
    return log_difference, log_bn_scale

  def _draw_kernels(self, rng: np.random.Generator) -> None:
    for kernel in self._kernels:
      kernel.assign(rng.standard_normal(kernel.shape, dtype=np.float32))

  def _detector_outputs(self, images: tf.Tensor) -> List[tf.Tensor]:
    model = self.detector
    features = model.backbone(images, training=True)
    if model.decoder is not None:
      features = model.decoder(features, training=True)
    class_outputs, box_outputs, _ = model.head(features, training=True)
    return _by_level(class_outputs) + _by_level(box_outputs)


def _by_level(outputs: Mapping[str, tf.Tensor]) -> List[tf.Tensor]:
  return [outputs[level] for level in sorted(outputs, key=int)]


def _weight_kind(weight) -> str:
  return weight.name.rsplit("/", 1)[-1].split(":", 1)[0]


# ---- requests: the zero_shot reward (spinesearch.evaluate) and the prefilter ----------

# (architecture fingerprint, scaling, settings) -> ZenScore. A score is a
# function of these alone, and a converging search proposes an architecture
# many times: the in-process runner and the prefilter score each once.
_SCORES: Dict[Tuple[str, Scaling, ZenSettings], ZenScore] = {}


def score_request(request: Dict[str, Any]) -> Tuple[float, Dict[str, Any]]:
  """The Zen-score of a trial request and its metrics (see spinesearch.evaluate).

  The architecture is built with the proxy task's scaling (request["reward"]
  ["proxy"], default the quickstart preset); request["reward"]["zero_shot"]
  holds ZenSettings fields, the seed is the request's. With a cost target
  (request["reward"]["cost"]) the detector's multiply-adds or latency and its
  parameters are measured as well. Metrics: zen_score, its two terms,
  params (of the network scored), build_seconds and score_seconds (0 when
  this process scored the architecture before: `zen_cached`).
  """
  reward = request["reward"]
  settings = zen_settings(reward, request["seed"])
  scaling = proxy_config(reward.get("proxy")).scaling
  architecture = Architecture.from_dict(request["architecture"])
  cost_target = reward.get("cost")
  if not cost_target:
    measured, cached = _cached_score(architecture, settings, scaling)
    return measured.score, dict(measured.metrics(), zen_cached=cached)
  network = ZenNetwork(architecture, settings, scaling=scaling, with_detector=True)
  measured = network.measure()
  metrics = dict(measured.metrics(), params=cost.count_params(network.detector))
  if cost_target["metric"] == "multiply_adds":
    metrics["multiply_adds"] = cost.count_multiply_adds(network.detector, settings.image_size)
  else:
    metrics["latency_ms"] = cost.measure_latency_ms(network.detector, settings.image_size)
  return measured.score, metrics


def score_candidates(architectures: Sequence[Architecture], reward: Mapping[str, Any],
                     seed: int) -> List[float]:
  """Zen-scores of candidate architectures under a search's reward settings
  (its proxy scaling and zero-shot settings): the --zero_shot_prefilter ranking."""
  settings = zen_settings(reward, seed)
  scaling = proxy_config(reward.get("proxy")).scaling
  return [_cached_score(a, settings, scaling)[0].score for a in architectures]


def zen_settings(reward: Mapping[str, Any], seed: int) -> ZenSettings:
  """ZenSettings of a request's reward part (the proxy's anchors for the head)."""
  options = dict(reward.get("zero_shot") or {}, seed=seed)
  proxy = proxy_config(reward.get("proxy"))
  options.setdefault("num_scales", proxy.num_scales)
  options.setdefault("aspect_ratios", proxy.aspect_ratios)
  return ZenSettings.from_dict(options)


def proxy_config(proxy: Optional[Mapping[str, Any]]):
  """The ProxyConfig of a request's proxy settings; the quickstart preset by default."""
  from spinesearch.proxy.config import ProxyConfig
  if not proxy:
    return ProxyConfig.from_preset("quickstart")
  return ProxyConfig.from_preset(proxy["preset"], **proxy.get("overrides", {}))


def _cached_score(architecture: Architecture, settings: ZenSettings,
                  scaling: Optional[Scaling]) -> Tuple[ZenScore, bool]:
  """The score, measured or remembered, and whether it was remembered."""
  key = (architecture.fingerprint(), scaling or architecture.scaling, settings)
  if key in _SCORES:
    return dataclasses.replace(_SCORES[key], build_seconds=0.0, score_seconds=0.0), True
  _SCORES[key] = measure_zen_score(architecture, settings, scaling=scaling)
  return _SCORES[key], False
