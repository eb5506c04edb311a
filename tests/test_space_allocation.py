"""Stage reallocation (CR-NAS): the allocation as decisions, under a fixed block
total and a block-cost budget; the scale-decreased space; per-block dilation
in the schema, the spaces and the Model Garden build."""
import collections
import json
import random

import numpy as np
import pytest

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from spinesearch.space.allocation import AllocationChoice, block_cost
from spinesearch.space.architecture import Architecture
from spinesearch.space.registry import build_space, space_from_config
from space_helpers import sample_round_trips

NEW_SPACES = [("spinenet", "realloc"), ("scale_decreased", "default"),
              ("scale_decreased", "dilated")]
# ResNet-50's stages C2..C5 ([3, 4, 6, 3] blocks) and one block each for P6, P7.
RESNET_LIKE = {2: 3, 3: 4, 4: 6, 5: 3, 6: 1, 7: 1}


@pytest.mark.parametrize("space_name,preset", NEW_SPACES)
def test_200_samples_validate_round_trip_and_survive_json(space_name, preset):
  space = build_space(space_name, preset)
  seen = {architecture.fingerprint()
          for architecture in sample_round_trips(space, random.Random(1), 200)}
  assert len(seen) > 190
  assert space_from_config(json.loads(json.dumps(space.config()))).config() == space.config()


def test_the_published_points_lie_in_the_new_spaces():
  realloc = build_space("spinenet", "realloc")
  spinenet49 = known.spinenet49()
  assert realloc.decode(realloc.encode(spinenet49)).fingerprint() == spinenet49.fingerprint()
  decreased = build_space("scale_decreased")
  reference = known.scale_decreased(spinenet49)
  assert known.published_point(decreased) == reference
  assert decreased.decode(decreased.encode(reference)).fingerprint() == reference.fingerprint()
  # A ResNet-like allocation: 18 blocks in level order, 2 residual.
  resnet_like = build_space("scale_decreased", allocation=RESNET_LIKE)
  fns = [("residual" if i < 2 else "bottleneck", 1) for i in range(18)]
  blocks = resnet_like.blocks_for(RESNET_LIKE, fns)
  architecture = Architecture(space="spinenet", blocks=blocks).validate()
  assert [b.level for b in blocks] == [2] * 3 + [3] * 4 + [4] * 6 + [5] * 3 + [6, 7]
  assert [i for i, b in enumerate(blocks) if b.is_output] == [6, 12, 15, 16, 17]
  assert all(b.input_offsets == (i, i + 1) for i, b in enumerate(blocks))
  decisions = resnet_like.encode(architecture)
  assert decisions[:6] == [3, 4, 6, 3, 1, 1]
  assert resnet_like.decode(decisions) == architecture
  # The scale-permuted SpineNet-49 is not a scale-decreased architecture.
  with pytest.raises(ArchitectureError, match="level order"):
    decreased.encode(spinenet49)


@pytest.mark.parametrize("budget", [0.75, 1.0, 1.5])
def test_a_budgeted_allocation_never_exceeds_its_budget(budget):
  for space in (build_space("spinenet", search_allocation=True, allocation_budget=budget),
                build_space("scale_decreased", allocation_budget=budget)):
    choice = space.allocation_choice if hasattr(space, "allocation_choice") else space.choice
    rng = random.Random(int(budget * 10))
    costs = []
    for _ in range(300):
      decisions = space.sample(rng)
      counts = decisions[:len(choice.levels)]
      allocation = dict(zip(choice.levels, counts))
      assert sum(counts) == choice.total and min(counts) >= choice.min_count
      costs.append(choice.relative_cost(allocation))
      assert costs[-1] <= budget + 1e-9, (allocation, costs[-1])
    # Every allocation the masks allow fits, and the budget binds: some use most of it.
    assert all(choice.fits(a) for a in choice.allocations())
    assert max(costs) > 0.8 * min(budget, max(choice.relative_cost(a)
                                              for a in choice.allocations()))
  # Outside the budget is outside the space.
  tight = build_space("scale_decreased", allocation_budget=0.6)
  reference = known.scale_decreased(known.spinenet49())
  with pytest.raises(ArchitectureError, match="block cost at most 0.6x"):
    tight.encode(reference)


@pytest.mark.parametrize("space", [
    lambda: build_space("spinenet", intermediate_allocation={2: 1, 3: 1}, output_levels=(3,),
                        level_offsets=(0, 1), block_fns=("bottleneck", "residual"),
                        parent_window=2, max_block_level=4, search_allocation=True,
                        min_blocks_per_level=0, dilations=(1, 2)),
    lambda: build_space("spinenet", intermediate_allocation={2: 1, 3: 1, 4: 1},
                        output_levels=(3,), level_offsets=(0,), block_fns=("bottleneck",),
                        parent_window=2, max_block_level=4, search_allocation=True,
                        allocation_budget=1.0),
    lambda: build_space("scale_decreased", allocation={2: 1, 3: 2, 4: 1}, output_levels=(3, 4),
                        dilations=(1, 3)),
])
def test_log10_size_matches_brute_force_enumeration(space):
  import math
  from space_helpers import count_sequences
  space = space()
  assert space.log10_size() == pytest.approx(math.log10(count_sequences(space)), abs=1e-9)


def test_block_costs_follow_model_gardens_widths():
  # 64^2/4^2 = 128^2/4^3 = 256^2/4^4: the widths double as the resolution halves up to L4.
  assert block_cost(2) == block_cost(3) == block_cost(4) == 256
  assert (block_cost(5), block_cost(6), block_cost(7)) == (64, 16, 4)
  choice = AllocationChoice({2: 1, 3: 1, 4: 4, 5: 4}, budget=1.0)
  assert choice.cost({2: 1, 3: 1, 4: 4, 5: 4}) == 6 * 256 + 4 * 64
  # Moving a block from L5 to L4 costs 192 more units: over a budget of 1.0.
  assert not choice.fits({2: 1, 3: 1, 4: 5, 5: 3})
  assert choice.fits({2: 1, 3: 1, 4: 3, 5: 5})


@pytest.mark.parametrize("settings,message", [
    ({"search_allocation": False, "allocation_budget": 1.0}, "apply only with search_allocation"),
    ({"search_allocation": True, "allocation_budget": 0.01}, "no allocation of 10 blocks fits"),
    ({"search_allocation": True, "min_blocks_per_level": 3}, "need more than the 10 blocks"),
    ({"dilations": (2, 3)}, "include 1"),
    ({"dilations": (1, 1, 2)}, "lists a value twice"),
])
def test_bad_allocation_and_dilation_settings_are_refused(settings, message):
  with pytest.raises(ConfigError, match=message):
    build_space("spinenet", **settings)


def test_dilation_is_schema_checked():
  blocks = list(known.spinenet49().blocks)
  residual = next(i for i, b in enumerate(blocks) if b.block_fn == "residual")
  bottleneck = next(i for i, b in enumerate(blocks) if b.block_fn == "bottleneck")
  data = known.spinenet49().to_dict()
  # Undilated blocks keep the JSON they had.
  assert all("dilation" not in b for b in data["blocks"])
  data["blocks"][bottleneck]["dilation"] = 2
  data["blocks"][residual]["dilation"] = 3
  parsed = Architecture.from_dict(data)
  assert (parsed.blocks[bottleneck].dilation, parsed.blocks[residual].dilation) == (2, 3)
  for index, value, message in ((residual, 0, "must be an integer 1..3"),
                                (bottleneck, 4, "must be an integer 1..3"),
                                (bottleneck, "2", "expected an integer")):
    bad = json.loads(json.dumps(data))
    bad["blocks"][index]["dilation"] = value
    with pytest.raises(ArchitectureError, match=message):
      Architecture.from_dict(bad)
  # A space without dilation refuses a dilated architecture.
  with pytest.raises(ArchitectureError, match="not a dilation rate of this space"):
    build_space("spinenet").encode(Architecture.from_dict(data))
  # Dilation changes the architecture's identity.
  assert Architecture.from_dict(data).fingerprint() != known.spinenet49().fingerprint()


@pytest.mark.parametrize("space_name,preset", [("spinenet", "realloc"),
                                               ("spinenet", "mobile_dilated"),
                                               ("scale_decreased", "dilated")])
def test_every_block_type_takes_every_dilation(space_name, preset):
  space = build_space(space_name, preset)
  rng = random.Random(5)
  rates = collections.defaultdict(set)
  for _ in range(100):
    for block in space.decode(space.sample(rng)).blocks:
      rates[block.block_fn].add(block.dilation)
  assert rates and all(found == {1, 2, 3} for found in rates.values())


# (block type, the layer class whose 3x3 convolutions a dilated block of that
# type dilates, how many such convolutions one block has)
DILATED_BLOCKS = [("bottleneck", "BottleneckBlock", 1), ("residual", "DilatedResidualBlock", 2),
                  ("mbconv", "InvertedBottleneckBlock", 1)]


@pytest.mark.parametrize("block_fn,block_class,convolutions", DILATED_BLOCKS)
def test_a_dilated_block_builds_with_its_rate_through_model_garden(block_fn, block_class,
                                                                   convolutions):
  import tensorflow as tf
  from official.vision.modeling.backbones import spinenet, spinenet_mobile
  from official.vision.modeling.layers import nn_blocks
  from spinesearch.modeling import builder
  from spinesearch.proxy import ProxyConfig
  tiny = ProxyConfig.from_preset("tiny")
  point = known.mobile_spinenet49() if block_fn == "mbconv" else known.spinenet49()
  blocks = list(point.blocks)
  index = next(i for i, b in enumerate(blocks) if b.block_fn == block_fn)
  blocks[index] = blocks[index].replace(dilation=3)
  architecture = tiny.scaled(point.replace(blocks=tuple(blocks)))
  model = builder.build_backbone(architecture, image_size=128)
  convs = [layer for layer in model.submodules
           if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
  dilated = [layer for layer in convs if tuple(layer.dilation_rate) == (3, 3)]
  # Exactly the block's 3x3 convolutions are dilated, and only in that block.
  assert {tuple(layer.dilation_rate) for layer in convs} == {(1, 1), (3, 3)}
  assert len(dilated) == convolutions
  assert all(layer.kernel_size == (3, 3) for layer in dilated)
  owners = [layer for layer in model.submodules if type(layer).__name__ == block_class and
            any(conv is sub for sub in layer.submodules for conv in dilated)]
  assert len(owners) == 1
  # Model Garden's modules are left as they were.
  assert spinenet.nn_blocks is nn_blocks and spinenet_mobile.nn_blocks is nn_blocks
  images = tf.random.stateless_normal([1, 128, 128, 3], seed=[0, 1])
  outputs = model(images)
  assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
  # The rate changes what the network computes.
  undilated = builder.build_backbone(tiny.scaled(point), image_size=128)
  undilated.set_weights(model.get_weights())
  before = undilated(images)
  assert any(not np.allclose(before[k].numpy(), outputs[k].numpy()) for k in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("space_name,preset", NEW_SPACES)
def test_200_samples_build_at_tiny_size_with_finite_outputs(space_name, preset):
  import tensorflow as tf
  import tf_keras
  from spinesearch.modeling import builder
  from spinesearch.proxy import ProxyConfig
  tiny = ProxyConfig.from_preset("tiny")
  space = build_space(space_name, preset)
  rng = random.Random(2)
  images = tf.random.stateless_normal([1, 128, 128, 3], seed=[0, 1])
  for _ in range(200):
    architecture = tiny.scaled(space.sample_architecture(rng))
    model = builder.build_backbone(architecture, image_size=128)
    outputs = model(images, training=True)
    assert sorted(int(k) for k in outputs) == list(architecture.output_levels)
    assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
    tf_keras.backend.clear_session()
