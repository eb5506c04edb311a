"""Structural keys and shared variables: every variable has a key that does not
depend on the permutation, one shape per key, sharing across architectures,
and bank -> model -> bank is the identity."""
import collections
import random

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spinesearch.modeling import structure
from spinesearch.oneshot import bank, keys
from spinesearch.proxy import ProxyConfig
from spinesearch.space import known
from spinesearch.space.registry import build_space

TINY = ProxyConfig.from_preset("tiny")
NUM_CLASSES = 11


def build(arch, space, scope):
  """The tiny-scaled RetinaNet of `arch` built inside `scope` (a building()
  context of SharedVariables or inherited_variables)."""
  from spinesearch.modeling import builder
  arch = TINY.scaled(arch)
  with scope as built:
    model = builder.build_retinanet(arch, num_classes=NUM_CLASSES, image_size=TINY.image_size,
                                    block_names=keys.block_names(space, arch))
    built.restrict_to(model)
  return model, built


def test_block_names_follow_the_allocation_not_the_position():
  space = build_space("spinenet")
  names = space.block_names(known.spinenet49().blocks)
  # SpineNet-49's intermediate levels 2, 4, 3, 4, 6, 4, 5, 7, 5, 5; levels 6 and 7
  # come from base levels by their offsets.
  assert names[:4] == ["L2.1", "L4.1", "L3.1", "L4.2"]
  assert names[10:] == ["P4", "P3", "P5", "P7", "P6"]
  assert len(set(names)) == len(names)
  assert space.block_names(known.spinenet49().blocks) == names


def test_every_variable_is_marked_with_its_part():
  seen = []

  def creator(next_creator, **kwargs):
    seen.append((structure.current_part(), kwargs.get("name"), kwargs.get("dtype")))
    return next_creator(**kwargs)

  from spinesearch.modeling import builder
  with tf.variable_creator_scope(creator):
    builder.build_retinanet(TINY.scaled(known.spinenet49_nasfpn()), num_classes=NUM_CLASSES,
                            image_size=TINY.image_size)
  floats = [s for s in seen if tf.as_dtype(s[2] or tf.float32).is_floating]
  assert floats and all(part is not None for part, _, _ in floats)
  kinds = collections.Counter(part.kind for (part, _), _, _ in floats)
  for kind in ("stem", "block", "resample", "endpoint", "cell", "head"):
    assert kinds[kind] > 0, kind


def test_bank_to_model_to_bank_is_the_identity():
  space = build_space("joint")
  rng = np.random.default_rng(0)
  arch = known.spinenet49_nasfpn()
  _, first = build(arch, space, bank.inherited_variables({}))
  arrays = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in first.variables.items()}
  model, built = build(arch, space, bank.inherited_variables(arrays))
  assert sorted(built.variables) == sorted(arrays) and not built.new
  back = built.arrays()
  for key, value in arrays.items():
    np.testing.assert_array_equal(back[key], value)
  # Every weight the model holds is one of the keyed ones.
  assert {id(v) for v in model.weights} == {id(v) for v in built.variables.values()}


def test_two_architectures_that_share_a_block_share_its_tensors():
  space = build_space("spinenet")
  shared = bank.SharedVariables()
  a = known.spinenet49()
  # The same architecture with the last output block's type changed: every
  # other block, and the stem and head, are the same parts.
  blocks = list(a.blocks)
  last = blocks[-1]
  blocks[-1] = type(last)(last.level, "residual", last.input_offsets, last.is_output)
  b = a.replace(blocks=tuple(blocks))
  model_a, built_a = build(a, space, shared.building())
  model_b, built_b = build(b, space, shared.building())
  common = set(built_a.variables) & set(built_b.variables)
  assert any(k.startswith("block/L4.2/") for k in common)
  assert any(k.startswith("stem/") for k in common) and any(k.startswith("head/") for k in common)
  for key in common:
    assert built_a.variables[key] is built_b.variables[key]
  only_a = set(built_a.variables) - set(built_b.variables)
  assert any(k.startswith("block/P6/bottleneckx") for k in only_a)
  assert any(k.startswith("block/P6/residualx") for k in set(built_b.variables) - common)
  # A step on one model moves the other's shared weight.
  key = next(k for k in sorted(common) if k.startswith("block/L4.2/"))
  variable = built_b.variables[key]
  before = variable.numpy().copy()
  built_a.variables[key].assign_add(tf.ones_like(before))
  np.testing.assert_array_equal(variable.numpy(), before + 1)
  assert {id(v) for v in model_b.weights} >= {id(built_a.variables[k]) for k in common}


# Every space with shared weights, and the CR-NAS, head and fusion options.
HEAD, FUSION = {"search_head": True}, {"search_fusion": True}
KEYED_SPACES = [("spinenet", "default", {}), ("nasfpn", "default", {}),
                ("spinenet", "mobile", {}), ("joint", "mobile", {}),
                ("joint", "default", {}), ("spinenet", "realloc", {}),
                ("scale_decreased", "dilated", {}), ("joint", "default", HEAD),
                ("spinenet", "default", FUSION), ("spinenet", "mobile", FUSION),
                ("spinenet", "mobile_dilated", {})]


# The joint space's keys are those of the joint space with a searched head
# but for the head's: make test samples only the latter.
@pytest.mark.parametrize("space_name,preset,options",
                         [s for s in KEYED_SPACES if s != ("joint", "default", {})])
def test_every_key_of_random_samples_has_one_shape(space_name, preset, options):
  # Two random samples of each here, 200 of each in the slow test.
  check_key_shapes(space_name, num_samples=2, preset=preset, **options)


@pytest.mark.slow
@pytest.mark.parametrize("space_name,preset,options", KEYED_SPACES)
def test_every_key_of_200_random_samples_has_one_shape(space_name, preset, options):
  check_key_shapes(space_name, num_samples=200, preset=preset, **options)


def test_a_searched_head_is_keyed_by_layer_and_shape():
  from spinesearch.space.architecture import HeadSpec
  space = build_space("spinenet", search_head=True)
  narrow, wide = (known.spinenet49().replace(head=HeadSpec(n, 1.0, False)) for n in (2, 3))
  _, built_2 = build(narrow, space, bank.inherited_variables({}))
  tf_keras.backend.clear_session()
  _, built_3 = build(wide, space, bank.inherited_variables({}))
  head_2 = {k for k in built_2.variables if k.startswith("head/")}
  head_3 = {k for k in built_3.variables if k.startswith("head/")}
  # A third convolution adds keys; the first two and the output layers are shared.
  assert head_2 < head_3
  assert any(k.startswith("head/classnet-conv_2/kernel/") for k in head_3 - head_2)
  assert any(k.startswith("head/scores/kernel/") for k in head_2)


def check_key_shapes(space_name, num_samples, preset="default", **options):
  space = build_space(space_name, preset, **options)
  shapes = {}
  rng = random.Random(7)
  for _ in range(num_samples):
    tf_keras.backend.clear_session()
    arch = space.decode(space.sample(rng))
    _, built = build(arch, space, bank.inherited_variables({}))
    for key, variable in built.variables.items():
      assert shapes.setdefault(key, tuple(variable.shape)) == tuple(variable.shape), key
    # Keys name parts, not positions: no key mentions a block index.
    assert not any("block_" in k or "scale_permuted" in k for k in built.variables)
  assert len(shapes) > 100


def test_a_weight_of_another_shape_is_refused():
  space = build_space("spinenet")
  _, built = build(known.spinenet49(), space, bank.inherited_variables({}))
  arrays = built.arrays()
  key = next(k for k in sorted(arrays) if k.startswith("head/"))
  arrays[key] = np.zeros(arrays[key].shape + (2,), np.float32)
  with pytest.raises(bank.ShapeMismatch, match=key):
    build(known.spinenet49(), space, bank.inherited_variables(arrays))


def test_arrays_files_round_trip_and_refuse_tampering(tmp_path):
  arrays = {"a/0": np.arange(4, dtype=np.float32), "b/1": np.full((2, 2), 7e5, np.float32)}
  path = str(tmp_path / "w.npz")
  record = bank.write_arrays(path, arrays, float16=True)
  back = bank.read_arrays(path, record)
  assert back["a/0"].dtype == np.float16 and back["b/1"].dtype == np.float32
  np.testing.assert_array_equal(back["b/1"], arrays["b/1"])
  data = bytearray(open(path, "rb").read())
  data[-40] ^= 1
  open(path, "wb").write(bytes(data))
  with pytest.raises(bank.UserError, match="refused"):
    bank.read_arrays(path, record)
