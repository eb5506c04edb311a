"""Architecture -> Keras RetinaNet, assembled from TF Model Garden parts.

This is the only module that builds Keras models. Every layer comes from Model
Garden (`official.vision`): SpineNet / SpineNetMobile for searched backbones,
ResNet as the fixed backbone of the NAS-FPN space, NASFPN for merging cells,
and Model Garden's own RetinaNet factory for the head, detection generator and
model. Nothing here re-implements a layer; this module only maps the
architecture schema (`spinesearch.space.architecture`) onto constructor
arguments.

What is built per space:

  spinenet  SpineNet (or SpineNetMobile for mbconv blocks), no decoder
  nasfpn    ResNet-`scaling.resnet_model_id` + NASFPN(cells)
  joint     SpineNet + NASFPN(cells)
"""
from typing import Any, Dict, Optional, Sequence

import tf_keras
from official.vision.configs import common as common_cfg
from official.vision.configs import decoders as decoders_cfg
from official.vision.configs import retinanet as retinanet_cfg
from official.vision.modeling import factory
from official.vision.modeling.backbones import resnet
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.backbones import spinenet
from official.vision.modeling.backbones import spinenet_mobile
from official.vision.modeling.decoders import nasfpn

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.modeling import structure
from spinesearch.space.architecture import Architecture, HeadSpec, Scaling

# Mobile SpineNet's block settings (arXiv 2010.11426, Model Garden defaults).
MBCONV_EXPAND_RATIO = 6
MBCONV_SE_RATIO = 0.2

# SpineNet's own activation switch accepts only these two.
ACTIVATIONS = ("relu", "swish")

# Model Garden's default NMS ('v2') takes about 50 s per call on this CPU.
NMS_VERSION = "batched"


def prepare_architecture(architecture: Architecture, image_size: int,
                         scaling: Optional[Scaling] = None) -> Architecture:
  """Applies a scaling override, validates, and checks the input size.

  Raises ArchitectureError for a malformed architecture or an image size that
  is not a multiple of 2^max_level.
  """
  if scaling is not None:
    architecture = architecture.with_scaling(scaling)
  architecture.validate()
  architecture.check_image_size(image_size)
  return architecture


def build_backbone(architecture: Architecture, *, image_size: int,
                   scaling: Optional[Scaling] = None,
                   activation: str = "relu",
                   norm_momentum: float = 0.99,
                   norm_epsilon: float = 1e-3,
                   l2_regularizer=None,
                   block_names: Optional[Sequence[str]] = None) -> tf_keras.Model:
  """The backbone of `architecture`: a Keras model image -> {level: features}.

  Searched blocks build a Model Garden SpineNet (SpineNetMobile when the blocks
  are mbconv, which has no `resample_alpha`); an architecture without blocks
  (the NAS-FPN space) gets Model Garden's fixed ResNet-`scaling.resnet_model_id`.
  The input size is fixed: SpineNet decides from the feature sizes which
  unconsumed blocks join an output block. Variables are marked with their
  structural part (`structure`); `block_names` names the searched blocks.
  """
  architecture = prepare_architecture(architecture, image_size, scaling)
  _check_activation(activation)
  scaling = architecture.scaling
  input_specs = tf_keras.layers.InputSpec(shape=[None, image_size, image_size, 3])
  common = dict(input_specs=input_specs, activation=activation,
                norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
                kernel_regularizer=l2_regularizer)
  if not architecture.blocks:
    with structure.part(structure.Part("resnet")):
      return _build_resnet(scaling.resnet_model_id, **common)
  levels = dict(min_level=architecture.min_level, max_level=architecture.max_level)
  if architecture.blocks[0].block_fn == "mbconv":
    return structure.StructuredSpineNetMobile(
        block_names=block_names,
        dilations=[b.dilation for b in architecture.blocks],
        weighted_fusion=architecture.fusion == "weighted",
        block_specs=[spinenet_mobile.BlockSpec(*b.as_tuple())
                     for b in architecture.blocks],
        endpoints_num_filters=scaling.endpoints_num_filters,
        filter_size_scale=scaling.filter_size_scale,
        block_repeats=scaling.block_repeats,
        expand_ratio=MBCONV_EXPAND_RATIO,
        se_ratio=MBCONV_SE_RATIO,
        **levels, **common)
  return structure.StructuredSpineNet(
      block_names=block_names,
      weighted_fusion=architecture.fusion == "weighted",
      dilations=[b.dilation for b in architecture.blocks],
      block_specs=[spinenet.BlockSpec(*b.as_tuple()) for b in architecture.blocks],
      endpoints_num_filters=scaling.endpoints_num_filters,
      filter_size_scale=scaling.filter_size_scale,
      resample_alpha=scaling.resample_alpha,
      block_repeats=scaling.block_repeats,
      **levels, **common)


def build_decoder(architecture: Architecture, backbone_output_specs,
                  *, scaling: Optional[Scaling] = None,
                  activation: str = "relu",
                  norm_momentum: float = 0.99,
                  norm_epsilon: float = 1e-3,
                  l2_regularizer=None) -> Optional[tf_keras.Model]:
  """The merging cells of `architecture` as a Model Garden NASFPN, or None
  (identity: the backbone's features go straight to the head) when the
  architecture has no cells (the SpineNet space)."""
  if scaling is not None:
    architecture = architecture.with_scaling(scaling)
  architecture.validate()
  _check_activation(activation)
  if not architecture.cells:
    return None
  return structure.StructuredNASFPN(
      input_specs=dict(backbone_output_specs),
      min_level=architecture.min_level,
      max_level=architecture.max_level,
      block_specs=[nasfpn.BlockSpec(*c.as_tuple()) for c in architecture.cells],
      num_filters=architecture.scaling.fpn_num_filters,
      num_repeats=architecture.built_scaling.fpn_num_repeats,
      activation=activation,
      norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      kernel_regularizer=l2_regularizer)


def retinanet_config_fields(architecture: Architecture, *, num_classes: int,
                            image_size: int,
                            activation: str = "relu",
                            norm_momentum: float = 0.99,
                            norm_epsilon: float = 1e-3,
                            num_scales: int = 3,
                            aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                            anchor_size: float = 4.0,
                            pre_nms_top_k: int = 1000,
                            pre_nms_score_threshold: float = 0.05,
                            nms_iou_threshold: float = 0.5,
                            max_num_detections: int = 100) -> Dict[str, Any]:
  """Fields of Model Garden's RetinaNet model config other than the backbone
  and decoder: classes, input size, levels, anchors, head, NMS, norm/activation.

  The head's depth and width come from `architecture.built_scaling` (the
  scaling with a searched head applied), separable convolutions from
  `architecture.head`. Shared by
  `build_retinanet` and the Model Garden experiment config (`garden.py`) so
  both describe the same model.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ConfigError(f"num_classes: expected a positive integer, got {num_classes!r}")
  if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
    raise ConfigError(f"num_scales: expected a positive integer, got {num_scales!r}")
  if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
    raise ConfigError(f"aspect_ratios: expected positive numbers, got {list(aspect_ratios)!r}")
  _check_activation(activation)
  scaling = architecture.built_scaling
  return dict(
      num_classes=num_classes,
      input_size=[image_size, image_size, 3],
      min_level=architecture.min_level,
      max_level=architecture.max_level,
      anchor=retinanet_cfg.Anchor(num_scales=num_scales,
                                  aspect_ratios=[float(r) for r in aspect_ratios],
                                  anchor_size=float(anchor_size)),
      head=retinanet_cfg.RetinaNetHead(num_convs=scaling.head_num_convs,
                                       num_filters=scaling.head_num_filters,
                                       use_separable_conv=architecture.head.separable),
      detection_generator=retinanet_cfg.DetectionGenerator(
          nms_version=NMS_VERSION,
          pre_nms_top_k=pre_nms_top_k,
          pre_nms_score_threshold=pre_nms_score_threshold,
          nms_iou_threshold=nms_iou_threshold,
          max_num_detections=max_num_detections),
      norm_activation=common_cfg.NormActivation(
          activation=activation, use_sync_bn=False,
          norm_momentum=norm_momentum, norm_epsilon=norm_epsilon),
  )


def build_retinanet(architecture: Architecture, *, num_classes: int,
                    image_size: int,
                    scaling: Optional[Scaling] = None,
                    activation: str = "relu",
                    norm_momentum: float = 0.99,
                    norm_epsilon: float = 1e-3,
                    num_scales: int = 3,
                    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                    anchor_size: float = 4.0,
                    pre_nms_top_k: int = 1000,
                    pre_nms_score_threshold: float = 0.05,
                    nms_iou_threshold: float = 0.5,
                    max_num_detections: int = 100,
                    l2_regularizer=None,
                    block_names: Optional[Sequence[str]] = None):
  """A Model Garden `RetinaNetModel` for `architecture`, all weights created.

  `scaling`, when given, replaces `architecture.scaling` (backbone, decoder and
  head sizes). The model takes [batch, image_size, image_size, 3] images.
  `block_names` names the searched blocks in the structural marks of their
  variables (`structure`; one-shot weight sharing keys on them).
  Raises ArchitectureError for a malformed architecture or an image size that
  is not a multiple of 2^max_level, ConfigError for bad head/anchor settings.
  """
  architecture = prepare_architecture(architecture, image_size, scaling)
  norm = dict(activation=activation, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
  fields = retinanet_config_fields(
      architecture, num_classes=num_classes, image_size=image_size,
      num_scales=num_scales, aspect_ratios=aspect_ratios,
      anchor_size=anchor_size, pre_nms_top_k=pre_nms_top_k,
      pre_nms_score_threshold=pre_nms_score_threshold,
      nms_iou_threshold=nms_iou_threshold,
      max_num_detections=max_num_detections, **norm)
  model_config = _model_config(fields)
  backbone = build_backbone(architecture, image_size=image_size,
                            l2_regularizer=l2_regularizer, block_names=block_names, **norm)
  decoder = build_decoder(architecture, backbone.output_specs,
                          l2_regularizer=l2_regularizer, **norm)
  with structure.part(_head_part(architecture)):
    model = factory.build_retinanet(
        input_specs=tf_keras.layers.InputSpec(shape=[None, image_size, image_size, 3]),
        model_config=model_config,
        l2_regularizer=l2_regularizer,
        backbone=backbone,
        decoder=decoder)
    complete_build(model)
  return model


class DenseDetector(tf_keras.Model):
  """The dense part of a RetinaNet: backbone -> decoder (merging cells, if
  any) -> head, images -> (class outputs, box outputs) by level, with no
  anchors, box decoding or NMS. What the Zen-score runs and the costs count
  (spinesearch.modeling.cost takes it as it takes a RetinaNetModel)."""

  def __init__(self, backbone, decoder, head, **kwargs):
    super().__init__(**kwargs)
    # Held in a dict first, as RetinaNetModel holds them, so `weights` lists
    # the same variables in the same order (the Zen-score draws kernels in
    # that order).
    self._parts = {"backbone": backbone, "decoder": decoder, "head": head}
    self._backbone, self._decoder, self._head = backbone, decoder, head

  @property
  def backbone(self):
    return self._backbone

  @property
  def decoder(self):
    return self._decoder

  @property
  def head(self):
    return self._head

  def call(self, images, training=None):
    features = self.backbone(images, training=training)
    if self.decoder is not None:
      features = self.decoder(features, training=training)
    class_outputs, box_outputs, _ = self.head(features, training=training)
    return class_outputs, box_outputs


def build_dense_detector(architecture: Architecture, *, num_classes: int, image_size: int,
                         scaling: Optional[Scaling] = None, activation: str = "relu",
                         norm_momentum: float = 0.99, norm_epsilon: float = 1e-3,
                         num_scales: int = 3,
                         aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                         l2_regularizer=None) -> DenseDetector:
  """The DenseDetector of `architecture`: the same backbone, decoder and head,
  weights in the same order, as `build_retinanet` builds with these settings.

  Model Garden's RetinaNet factory calls the backbone once more on a symbolic
  input and adds the detection generator; neither is needed for the dense
  forward pass, and the first costs 0.4-0.6 s for a x0.25 SpineNet-49 here.
  The head is Model Garden's RetinaNetHead with the factory's arguments, from
  the same model config.
  """
  architecture = prepare_architecture(architecture, image_size, scaling)
  norm = dict(activation=activation, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
  model_config = _model_config(retinanet_config_fields(
      architecture, num_classes=num_classes, image_size=image_size, num_scales=num_scales,
      aspect_ratios=aspect_ratios, **norm))
  backbone = build_backbone(architecture, image_size=image_size,
                            l2_regularizer=l2_regularizer, **norm)
  decoder = build_decoder(architecture, backbone.output_specs,
                          l2_regularizer=l2_regularizer, **norm)
  head_config, norm_config = model_config.head, model_config.norm_activation
  with structure.part(_head_part(architecture)):
    head = dense_prediction_heads.RetinaNetHead(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_classes=model_config.num_classes,
        num_anchors_per_location=(len(model_config.anchor.aspect_ratios)
                                  * model_config.anchor.num_scales),
        num_convs=head_config.num_convs, num_filters=head_config.num_filters,
        attribute_heads=[cfg.as_dict() for cfg in (head_config.attribute_heads or [])],
        share_classification_heads=head_config.share_classification_heads,
        use_separable_conv=head_config.use_separable_conv,
        activation=norm_config.activation, use_sync_bn=norm_config.use_sync_bn,
        norm_momentum=norm_config.norm_momentum, norm_epsilon=norm_config.norm_epsilon,
        kernel_regularizer=l2_regularizer, share_level_convs=head_config.share_level_convs)
    specs = (decoder or backbone).output_specs
    head({level: tf_keras.Input(shape=shape[1:]) for level, shape in specs.items()})
  return DenseDetector(backbone, decoder, head)


def _head_part(architecture: Architecture) -> structure.Part:
  """The head's structural part: 'searched' when the architecture sets its own
  head (its variables are then keyed by layer and shape, `oneshot.keys`)."""
  return structure.Part("head", "searched" if architecture.head != HeadSpec() else "")


def _model_config(fields: Dict[str, Any]) -> retinanet_cfg.RetinaNet:
  """Model Garden's RetinaNet config of `retinanet_config_fields`. The
  backbone and decoder are built apart, so only the head, anchor and
  generator parts of it are read (the decoder type matters only when the
  decoder is None: 'identity' keeps Model Garden from adding an FPN)."""
  return retinanet_cfg.RetinaNet(decoder=decoders_cfg.Decoder(type="identity"), **fields)


def complete_build(model) -> None:
  """Creates the head's weights of a Model Garden RetinaNetModel if missing.

  Model Garden's factory builds the head only when there is a decoder, so a
  SpineNet RetinaNet fresh from `factory.build_retinanet` (or a task's
  `build_model`) reports no head weights until its first call.
  """
  if model.head.built:
    return
  # Symbolic inputs shaped like the head's inputs: cheaper than running the
  # backbone's graph again.
  specs = (model.decoder or model.backbone).output_specs
  model.head({level: tf_keras.Input(shape=shape[1:]) for level, shape in specs.items()})


def _build_resnet(model_id: int, **kwargs) -> tf_keras.Model:
  if model_id not in resnet.RESNET_SPECS:
    raise ArchitectureError(
        f"scaling.resnet_model_id: Model Garden's ResNet has depths "
        f"{', '.join(map(str, sorted(resnet.RESNET_SPECS)))}; got {model_id}")
  return resnet.ResNet(model_id=model_id, **kwargs)


def _check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS:
    raise ConfigError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
