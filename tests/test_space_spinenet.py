"""The scale-permuted backbone space: decisions <-> blocks, masks, size."""
import dataclasses
import json
import math
import random

import pytest

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from space_helpers import count_sequences, random_walks_refuse_masked_choices
from spinesearch.space.registry import space_from_config
from spinesearch.space.spinenet import ScalePermutedSpace




def with_block(arch, index, **changes):
  blocks = list(arch.blocks)
  blocks[index] = dataclasses.replace(blocks[index], **changes)
  return arch.replace(blocks=tuple(blocks))


def test_spinenet49_round_trips_through_the_default_space():
  space = ScalePermutedSpace()
  arch = known.spinenet49()
  decoded = space.decode(space.encode(arch))
  assert decoded.blocks == arch.blocks
  assert decoded.space == "spinenet"
  assert space.validate(arch) is arch


def test_descending_parents_are_the_same_network_and_encode_canonically():
  space = ScalePermutedSpace()
  arch = known.spinenet49()
  reversed_parents = arch.replace(blocks=tuple(
      dataclasses.replace(b, input_offsets=tuple(reversed(b.input_offsets)))
      for b in arch.blocks))
  assert space.encode(reversed_parents) == space.encode(arch)
  assert space.decode(space.encode(reversed_parents)).blocks == arch.blocks


def test_decisions_have_unique_readable_names_and_shared_vocabularies():
  space = ScalePermutedSpace()
  names = [d.name for d in space.decisions()]
  assert len(set(names)) == len(names)
  assert names[0] == "intermediate[0].base_level"
  assert names[10] == "output[0].level"
  assert names[15:19] == ["block[0].parent0", "block[0].parent1", "block[0].level_offset",
                          "block[0].block_fn"]
  assert names[-3:] == ["block[14].parent0", "block[14].parent1", "block[14].block_fn"]
  choices_by_kind = {}
  for d in space.decisions():
    assert choices_by_kind.setdefault(d.kind, d.choices) == d.choices
  assert choices_by_kind["intermediate_base_level"] == ("2", "3", "4", "5")
  assert choices_by_kind["parent"] == tuple(str(i) for i in range(16))
  assert choices_by_kind["level_offset"] == ("-1", "0", "+1", "+2")
  # 10 base levels + 5 output levels + 15 blocks x (2 parents + type) + 10 offsets.
  assert len(names) == 10 + 5 + 15 * 3 + 10


@pytest.mark.parametrize("space", [ScalePermutedSpace(), ScalePermutedSpace.vertex()],
                         ids=["default", "vertex"])
def test_random_samples_are_valid_in_space_and_round_trip(space):
  rng = random.Random(7)
  for _ in range(200):
    arch = space.decode(space.sample(rng))
    arch.validate()
    space.validate(arch)
    assert space.decode(space.encode(arch)) == arch
    for b, block in enumerate(arch.blocks):
      assert block.input_offsets[0] < block.input_offsets[1]
      assert set(block.input_offsets) <= set(space.parent_range(b))
      assert block.is_output == (b >= space.num_intermediate)


def test_random_walks_under_masks_always_validate_and_masked_out_choices_are_refused():
  rng = random.Random(3)
  assert random_walks_refuse_masked_choices(ScalePermutedSpace(), rng, 30) > 30 * 20


def test_cursor_refuses_a_masked_out_choice_and_an_early_architecture():
  cursor = ScalePermutedSpace().start()
  with pytest.raises(ArchitectureError, match="decisions made"):
    cursor.architecture()
  cursor.choose(0)  # the single level-2 base block
  with pytest.raises(ArchitectureError, match=r"intermediate\[1\].base_level: choice 0"):
    cursor.choose(0)


def test_masks_follow_window_ascending_parents_and_level_range():
  space = ScalePermutedSpace()
  decisions = space.encode(known.spinenet49())
  masks = space.masks(decisions)
  names = [d.name for d in space.decisions()]
  # Block 7 is feature 9: the window of 5 is features 4..8; parent0 must leave a parent1.
  p0 = masks[names.index("block[7].parent0")]
  assert [i for i, ok in enumerate(p0) if ok] == [4, 5, 6, 7]
  p1 = masks[names.index("block[7].parent1")]
  assert [i for i, ok in enumerate(p1) if ok] == [7, 8]  # spinenet49 picks parent0 = 6
  # Output block 14 is feature 16: any earlier feature.
  p0 = masks[names.index("block[14].parent0")]
  assert [i for i, ok in enumerate(p0) if ok] == list(range(15))
  # Block 0 has base level 2: offset -1 would give level 1, below min_block_level.
  assert masks[names.index("block[0].level_offset")] == (False, True, True, True)
  last_output = masks[names.index("output[4].level")]
  assert sum(last_output) == 1


def offsets_of(space, decisions):
  names = [d.name for d in space.decisions()]
  return [space.level_offsets[decisions[names.index(f"block[{b}].level_offset")]]
          for b in range(space.num_intermediate)]


def test_ambiguous_base_levels_prefer_the_smallest_offset_in_block_order():
  space = ScalePermutedSpace()
  # Levels 2 4 3 4 6 4 5 7 5 5 from bases {2: 1, 3: 1, 4: 4, 5: 4}: L6 may be
  # base 5 + 1 or base 4 + 2; the first is preferred, so the last L5 block
  # must take base 4 + 1.
  decisions = space.encode(known.spinenet49())
  assert offsets_of(space, decisions) == [0, 0, 0, 0, 1, 0, 0, 2, 0, 1]


def test_base_level_matching_looks_ahead_where_greedy_would_fail():
  space = ScalePermutedSpace()
  # With a second L7 (base 5 + 2 only) the L5 block 8 has to leave its base 5
  # to block 9, although offset 0 is preferred for it in isolation.
  arch = with_block(known.spinenet49(), 9, level=7)
  decisions = space.encode(arch)
  assert space.decode(decisions).blocks == arch.blocks
  assert offsets_of(space, decisions) == [0, 0, 0, 0, 1, 0, 0, 2, 1, 2]


OUT_OF_SPACE = [
    ("block count", lambda a: a.replace(blocks=a.blocks[:-1]),
     r"blocks: this space builds 15 blocks \(10 intermediate, then 5 outputs\), got 14"),
    ("output too early", lambda a: with_block(a, 9, is_output=True),
     r"blocks\[9\].is_output: must be false"),
    ("output levels", lambda a: with_block(a, 14, level=5),
     r"output block levels \[4, 3, 5, 7, 5\] are not one each of this space's output levels"),
    ("parent outside window", lambda a: with_block(a, 9, input_offsets=(5, 10)),
     r"blocks\[9\].input_offsets: parent 5 is outside the window of the last 5 features"
     r" an intermediate block may use \(6..10\)"),
    ("parent not earlier", lambda a: with_block(a, 3, input_offsets=(2, 5)),
     r"blocks\[3\].input_offsets: parent 5 is not an earlier feature \(valid: 0..4\)"),
    ("same parent twice", lambda a: with_block(a, 12, input_offsets=(7, 7)),
     r"blocks\[12\].input_offsets: \[7, 7\] names the same parent twice"),
    ("unreachable level", lambda a: with_block(a, 2, level=1),
     r"blocks\[2\].level: level 1 cannot be reached from any base level"),
    ("allocation exhausted", lambda a: with_block(with_block(a, 2, level=2), 3, level=2),
     r"intermediate levels \(count per level \{2: 3, .*cannot be made from the base levels"),
    ("block type", lambda a: with_block(a, 5, block_fn="mbconv"),
     r"blocks\[5\].block_fn: 'mbconv' is not a block type of this space"),
    ("space", lambda a: a.replace(space="joint"),
     r"space: architecture is from the 'joint' space, not 'spinenet'"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in OUT_OF_SPACE],
                         ids=[c[0] for c in OUT_OF_SPACE])
def test_architectures_outside_the_space_are_refused_with_the_reason(change, message):
  with pytest.raises(ArchitectureError, match=message):
    ScalePermutedSpace().encode(change(known.spinenet49()))


def test_block_type_outside_a_restricted_space():
  space = ScalePermutedSpace(block_fns=("bottleneck",))
  with pytest.raises(ArchitectureError, match=r"blocks\[1\].block_fn: 'residual'"):
    space.encode(known.spinenet49())


def test_log10_size_of_the_default_space_is_the_closed_form():
  # 10!/(1!1!4!4!) base orders x 5! output orders x offsets (3 for base 2, 4 else)
  # x 2^15 block types x parent pairs C(2,2) C(3,2) C(4,2) C(5,2)^7 C(12..16, 2).
  count = (math.factorial(10) // (24 * 24) * 120 * 3 * 4 ** 9 * 2 ** 15 *
           1 * 3 * 6 * 10 ** 7 * 66 * 78 * 91 * 105 * 120)
  assert ScalePermutedSpace().log10_size() == pytest.approx(math.log10(count), abs=1e-9)


@pytest.mark.parametrize("settings", [
    dict(intermediate_allocation={2: 1, 3: 2}, output_levels=(3,), level_offsets=(-1, 0, 1),
         block_fns=("bottleneck",), parent_window=3, max_block_level=3),
    dict(intermediate_allocation={3: 1}, output_levels=(3, 4), level_offsets=(0, 1),
         block_fns=("bottleneck", "residual"), parent_window=2),
])
def test_log10_size_matches_brute_force_enumeration(settings):
  space = ScalePermutedSpace(**settings)
  assert space.log10_size() == pytest.approx(math.log10(count_sequences(space)), abs=1e-9)


def test_vertex_preset():
  space = ScalePermutedSpace.vertex()
  assert space.allocation == {2: 1, 3: 3, 4: 5, 5: 2}
  assert space.parent_window == 4
  assert space.num_blocks == 16
  assert space.config() == ScalePermutedSpace.preset("vertex").config()
  assert ScalePermutedSpace.preset("vertex", parent_window=5).parent_window == 5
  with pytest.raises(ConfigError, match="unknown preset 'nas'"):
    ScalePermutedSpace.preset("nas")
  with pytest.raises(ArchitectureError, match="this space builds 16 blocks"):
    space.encode(known.spinenet49())


@pytest.mark.parametrize("space", [
    ScalePermutedSpace(), ScalePermutedSpace.vertex(),
    ScalePermutedSpace(intermediate_allocation={"3": 2, "4": 0}, output_levels=(3, 4, 5),
                       block_fns=("mbconv",), parent_window=3, max_block_level=6)])
def test_config_round_trips_through_json(space):
  config = json.loads(json.dumps(space.config()))
  rebuilt = space_from_config(config)
  assert isinstance(rebuilt, ScalePermutedSpace)
  assert rebuilt.config() == space.config() == config
  assert rebuilt.decisions() == space.decisions()


@pytest.mark.parametrize("settings,message", [
    (dict(intermediate_allocation={}), "no intermediate block"),
    (dict(intermediate_allocation={3: -1}), r"intermediate_allocation\[3\] must be a count >= 0"),
    (dict(intermediate_allocation={"x": 1}), "non-integer level 'x'"),
    (dict(intermediate_allocation={8: 1}), "base level 8 is outside 2..7"),
    (dict(intermediate_allocation={2: 1}, level_offsets=(-1,)),
     r"no level offset in \[-1\] keeps base level 2 within 2..7"),
    (dict(output_levels=(3, 5)), r"output_levels \[3, 5\] must be a contiguous range"),
    (dict(output_levels=(3, 3, 4)), "output_levels lists a value twice"),
    (dict(level_offsets=()), "level_offsets must not be empty"),
    (dict(block_fns=("bottleneck", "conv")), "unknown block_fn 'conv'"),
    (dict(block_fns=("bottleneck", "mbconv")), "mbconv cannot be mixed"),
    (dict(block_fns="bottleneck"), "block_fns must be a non-empty list"),
    (dict(parent_window=1), "parent_window must be an integer >= 2, got 1"),
    (dict(parent_window=True), "parent_window must be an integer >= 2, got True"),
    (dict(max_block_level=8), "max_block_level must be <= 7"),
    (dict(min_block_level=0), "min_block_level must be an integer >= 1"),
])
def test_bad_settings_are_config_errors(settings, message):
  with pytest.raises(ConfigError, match=message):
    ScalePermutedSpace(**settings)


def test_sampling_is_seeded():
  space = ScalePermutedSpace()
  assert space.sample(random.Random(11)) == space.sample(random.Random(11))
  assert space.sample(random.Random(11)) != space.sample(random.Random(12))


def test_mobile_preset_contains_mobile_spinenet49_exactly():
  space = ScalePermutedSpace.preset("mobile")
  assert space.block_fns == ("mbconv",)
  assert space.num_intermediate == 11 and space.num_blocks == 16
  arch = known.mobile_spinenet49()
  decisions = space.encode(arch)
  assert space.decode(decisions).blocks == arch.blocks
  assert space.validate(arch) is arch
  with pytest.raises(ArchitectureError, match="this space builds 16 blocks"):
    space.encode(known.spinenet49().replace(blocks=tuple(
        dataclasses.replace(b, block_fn="mbconv") for b in known.spinenet49().blocks)))
  for seed in range(200):
    sample = space.sample_architecture(random.Random(seed))
    assert {b.block_fn for b in sample.blocks} == {"mbconv"}
    assert space.decode(space.encode(sample)) == sample


def test_mobile_scalings_are_model_gardens():
  from official.vision.modeling.backbones import spinenet_mobile
  for name, scaling in known.MOBILE_SPINENET_SCALINGS.items():
    garden = spinenet_mobile.SCALING_MAP[name]
    assert scaling.filter_size_scale == garden["filter_size_scale"]
    assert scaling.endpoints_num_filters == garden["endpoints_num_filters"]
    assert scaling.block_repeats == garden["block_repeats"]
    assert scaling.head_num_filters == garden["endpoints_num_filters"]


@pytest.mark.parametrize("member", ["49", "49S", "49XS"])
def test_the_zoo_mobile_entries_are_points_of_the_mobile_preset(member):
  import pathlib
  from spinesearch.space.architecture import Architecture
  path = (pathlib.Path(__file__).parents[1] / "model_zoo" / "entries" /
          f"mobile-spinenet-{member.lower()}.json")
  arch = Architecture.from_dict(json.loads(path.read_text())["architecture"])
  ScalePermutedSpace.preset("mobile").validate(arch)
  scaling = known.MOBILE_SPINENET_SCALINGS[member]
  assert (arch.scaling.filter_size_scale, arch.scaling.endpoints_num_filters,
          arch.scaling.head_num_filters) == (scaling.filter_size_scale,
                                              scaling.endpoints_num_filters,
                                              scaling.head_num_filters)
