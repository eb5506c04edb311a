"""What Model Garden's SpineNet and SpineNetMobile lack, added without copying them.

- Dilation for every block type (CR-NAS). Model Garden's BottleneckBlock and
  InvertedBottleneckBlock take `dilation_rate`, but its SpineNets never pass
  one on; its ResidualBlock has none (`DilatedResidualBlock` adds it). Inside
  `dilated(module, rate)` the SpineNet module sees `nn_blocks` through a view
  whose blocks have that rate, so the block it builds there is dilated.
- Trainable weighted fusion (EfficientDet). Model Garden's `weighted_fusion`
  makes each input's weight a bare `tf.Variable` in the middle of building a
  functional model, where Keras never tracks it: a graph constant with no
  gradient and no place in the saved weights. Inside
  `trainable_fusion(module, make_weight)` the module sees `tf` through a view
  whose `Variable` is `make_weight`, which returns a `FusionWeight` layer's
  output: a tracked trainable scalar, on which Model Garden's arithmetic runs
  unchanged.

Both views swap a module attribute for the length of a build and restore it;
model building is single-threaded here. `modeling.structure` uses them.
"""
import contextlib
import functools
from typing import Iterator

import tensorflow as tf
import tf_keras
from official.vision.modeling.layers import nn_blocks


class FusionWeight(tf_keras.layers.Layer):
  """One input's weight in a block's weighted fusion: a trainable scalar,
  created as a Keras weight so that models track, train and save it. Its
  input only places it in a functional graph; the output is the weight."""

  def __init__(self, initial_value: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.initial_value = float(initial_value)

  def build(self, input_shape):
    self.weight = self.add_weight(
        name="fusion_weight", shape=(), trainable=True,
        initializer=tf_keras.initializers.Constant(self.initial_value))
    super().build(input_shape)

  def call(self, inputs):
    del inputs
    return tf.identity(self.weight)

  def get_config(self):
    return {**super().get_config(), "initial_value": self.initial_value}


class _FusionTF:
  """TensorFlow as a Model Garden module sees it while fusion weights are
  made: `Variable` is `make_weight`, everything else is TensorFlow's."""

  def __init__(self, make_weight):
    self.Variable = make_weight  # pylint: disable=invalid-name

  def __getattr__(self, attribute):
    return getattr(tf, attribute)


@contextlib.contextmanager
def trainable_fusion(module, make_weight) -> Iterator[None]:
  """Model Garden's `module` makes its fusion weights with `make_weight` inside."""
  module.tf = _FusionTF(make_weight)
  try:
    yield
  finally:
    module.tf = tf


class DilatedResidualBlock(nn_blocks.ResidualBlock):
  """Model Garden's ResidualBlock with both 3x3 convolutions dilated by
  `dilation_rate` (CR-NAS). Model Garden's block has no such argument; its
  convolutions are made in `build`, so the rate is set on them there, before
  they first run. Dilation needs stride 1 and 'same' padding, as SpineNet's
  blocks have."""

  def __init__(self, *args, dilation_rate: int = 1, **kwargs):
    super().__init__(*args, **kwargs)
    if dilation_rate != 1 and (self._strides != 1 or self._use_explicit_padding):
      raise ValueError("a dilated residual block needs strides=1 and 'same' padding")
    self._dilation_rate = dilation_rate

  def build(self, input_shape):
    super().build(input_shape)
    for conv in (self._conv1, self._conv2):
      conv.dilation_rate = (self._dilation_rate, self._dilation_rate)

  def get_config(self):
    return {**super().get_config(), "dilation_rate": self._dilation_rate}


class _DilatedBlocks:
  """Model Garden's nn_blocks, with SpineNet's and SpineNetMobile's blocks at a
  fixed dilation rate."""

  # The attributes are named as the module's classes they stand in for.
  def __init__(self, rate: int):
    # pylint: disable=invalid-name
    self.BottleneckBlock = functools.partial(nn_blocks.BottleneckBlock, dilation_rate=rate)
    self.ResidualBlock = functools.partial(DilatedResidualBlock, dilation_rate=rate)
    self.InvertedBottleneckBlock = functools.partial(nn_blocks.InvertedBottleneckBlock,
                                                     dilation_rate=rate)

  def __getattr__(self, attribute):
    return getattr(nn_blocks, attribute)


@contextlib.contextmanager
def dilated(module, rate: int) -> Iterator[None]:
  """Model Garden's `module` builds its blocks with dilation `rate` inside."""
  if rate == 1:
    yield
    return
  module.nn_blocks = _DilatedBlocks(rate)
  try:
    yield
  finally:
    module.nn_blocks = nn_blocks
