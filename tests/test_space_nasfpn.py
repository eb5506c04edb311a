"""The merging-cell space: decisions <-> cells, masks, size."""
import dataclasses
import json
import math
import random

import pytest

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from space_helpers import count_sequences, random_walks_refuse_masked_choices
from spinesearch.space.nasfpn import MergingCellSpace
from spinesearch.space.registry import space_from_config




def with_cell(arch, index, **changes):
  cells = list(arch.cells)
  cells[index] = dataclasses.replace(cells[index], **changes)
  return arch.replace(cells=tuple(cells))


def test_nasfpn_round_trips_through_the_default_space():
  space = MergingCellSpace()
  arch = known.nasfpn()
  decoded = space.decode(space.encode(arch))
  assert decoded.cells == arch.cells
  assert decoded.space == "nasfpn" and not decoded.blocks
  assert space.validate(arch) is arch


def test_input_order_is_kept():
  space = MergingCellSpace()
  arch = with_cell(known.nasfpn(), 4, input_offsets=(8, 7))
  assert space.decode(space.encode(arch)).cells == arch.cells
  assert space.encode(arch) != space.encode(known.nasfpn())


def test_decisions_have_unique_readable_names_and_shared_vocabularies():
  space = MergingCellSpace()
  names = [d.name for d in space.decisions()]
  assert len(set(names)) == len(names) == 7 * 4
  assert names[8:12] == ["cell[2].input0", "cell[2].input1", "cell[2].level",
                         "cell[2].combine_fn"]
  choices_by_kind = {}
  for d in space.decisions():
    assert choices_by_kind.setdefault(d.kind, d.choices) == d.choices
  assert choices_by_kind["cell_input"] == tuple(str(i) for i in range(11))
  assert choices_by_kind["cell_level"] == ("3", "4", "5", "6", "7")
  assert choices_by_kind["combine_fn"] == ("sum", "attention")


@pytest.mark.parametrize("space", [MergingCellSpace(), MergingCellSpace.vertex()],
                         ids=["default", "vertex"])
def test_random_samples_are_valid_in_space_and_round_trip(space):
  rng = random.Random(5)
  for _ in range(200):
    arch = space.decode(space.sample(rng))
    arch.validate()
    space.validate(arch)
    assert space.decode(space.encode(arch)) == arch
    for cell in arch.cells[:space.num_intermediate]:
      assert cell.level in space.intermediate_levels


def test_random_walks_under_masks_always_validate_and_masked_out_choices_are_refused():
  rng = random.Random(9)
  assert random_walks_refuse_masked_choices(MergingCellSpace.vertex(), rng, 50) > 50 * 10


def test_masks_for_inputs_and_levels():
  space = MergingCellSpace.vertex()
  masks = space.masks(space.encode(known.nasfpn()))
  names = [d.name for d in space.decisions()]
  # Cell 1 sees P3..P7 and cell 0; known.nasfpn's cell 1 takes input 1 first.
  assert [i for i, ok in enumerate(masks[names.index("cell[1].input0")]) if ok] == list(range(6))
  assert [i for i, ok in enumerate(masks[names.index("cell[1].input1")]) if ok] == [0, 2, 3, 4, 5]
  assert masks[names.index("cell[0].level")] == (False, True, True, True, True)
  # Output cells 2..6 produce 3, 4, 5, 7: only level 6 is left for the last.
  assert masks[names.index("cell[6].level")] == (False, False, False, True, False)


OUT_OF_SPACE = [
    ("cell count", lambda a: a.replace(cells=a.cells[:-1]),
     r"cells: this space builds 7 cells \(2 intermediate, then 5 outputs\), got 6"),
    ("intermediate marked output", lambda a: with_cell(a, 1, is_output=True),
     r"cells\[1\].is_output: must be false"),
    ("output marked intermediate", lambda a: with_cell(a, 2, is_output=False),
     r"cells\[2\].is_output: must be true"),
    ("same input twice", lambda a: with_cell(a, 3, input_offsets=(6, 6)),
     r"cells\[3\].input_offsets: \[6, 6\] names the same input twice"),
    ("input not earlier", lambda a: with_cell(a, 0, input_offsets=(1, 5)),
     r"cells\[0\].input_offsets: 5 is not an earlier feature \(valid: 0..4\)"),
    ("output level twice", lambda a: with_cell(a, 6, level=7),
     r"output cell levels \[3, 4, 5, 7, 7\] are not one each of this space's levels"),
    ("output level outside", lambda a: with_cell(a, 6, level=2),
     r"cells\[6\].level: 2 is not a level an output cell may have in this space"),
    ("space", lambda a: a.replace(space="spinenet"),
     r"space: architecture is from the 'spinenet' space, not 'nasfpn'"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in OUT_OF_SPACE],
                         ids=[c[0] for c in OUT_OF_SPACE])
def test_architectures_outside_the_space_are_refused_with_the_reason(change, message):
  with pytest.raises(ArchitectureError, match=message):
    MergingCellSpace().encode(change(known.nasfpn()))


def test_restricted_levels_and_ops_are_refused():
  arch = with_cell(known.nasfpn(), 0, level=3)
  with pytest.raises(ArchitectureError,
                     match=r"cells\[0\].level: 3 is not a level an intermediate cell may "
                           r"have in this space \(4, 5, 6, 7\)"):
    MergingCellSpace.vertex().encode(arch)
  with pytest.raises(ArchitectureError,
                     match=r"cells\[0\].combine_fn: 'attention' is not an op of this space"):
    MergingCellSpace(combine_fns=("sum",)).encode(known.nasfpn())


def test_log10_size_of_the_default_space_is_the_closed_form():
  # Ordered input pairs P(P-1) for pools of 5..11, 5 levels for each of the 2
  # intermediate cells, 5! output orders, 2 ops per cell.
  count = math.prod(p * (p - 1) for p in range(5, 12)) * 5 ** 2 * 120 * 2 ** 7
  assert MergingCellSpace().log10_size() == pytest.approx(math.log10(count), abs=1e-9)


@pytest.mark.parametrize("settings", [
    dict(num_cells=3, levels=(3, 4), intermediate_levels=(4,)),
    dict(num_cells=3, levels=(3, 4, 5), combine_fns=("sum",)),
])
def test_log10_size_matches_brute_force_enumeration(settings):
  space = MergingCellSpace(**settings)
  assert space.log10_size() == pytest.approx(math.log10(count_sequences(space)), abs=1e-9)


def test_vertex_preset():
  space = MergingCellSpace.vertex()
  assert space.intermediate_levels == (4, 5, 6, 7)
  assert space.num_intermediate == 2
  assert space.config() == MergingCellSpace.preset("vertex").config()
  assert space.log10_size() < MergingCellSpace().log10_size()


@pytest.mark.parametrize("space", [
    MergingCellSpace(), MergingCellSpace.vertex(),
    MergingCellSpace(num_cells=5, levels=(4, 3, 5), combine_fns=("attention",))])
def test_config_round_trips_through_json(space):
  config = json.loads(json.dumps(space.config()))
  rebuilt = space_from_config(config)
  assert isinstance(rebuilt, MergingCellSpace)
  assert rebuilt.config() == space.config() == config
  assert rebuilt.decisions() == space.decisions()


@pytest.mark.parametrize("settings,message", [
    (dict(num_cells=4), "num_cells must be an integer >= 5"),
    (dict(num_cells="7"), "num_cells must be an integer >= 5"),
    (dict(levels=(3, 5)), r"levels \[3, 5\] must be a contiguous range"),
    (dict(levels=(3,)), r"levels \[3\] must be a contiguous range of at least two levels"),
    (dict(levels=(7, 8)), r"levels \[7, 8\] must be a contiguous range"),
    (dict(levels=()), "levels must be a non-empty list of integers"),
    (dict(intermediate_levels=(2, 4)), r"intermediate_levels \[2\] are not among the levels"),
    (dict(intermediate_levels=(4, 4)), "intermediate_levels lists a value twice"),
    (dict(combine_fns=("sum", "max")), "unknown combine_fn 'max'"),
    (dict(combine_fns=()), "combine_fns must be a non-empty list"),
])
def test_bad_settings_are_config_errors(settings, message):
  with pytest.raises(ConfigError, match=message):
    MergingCellSpace(**settings)


def test_sampling_is_seeded():
  space = MergingCellSpace()
  assert space.sample(random.Random(4)) == space.sample(random.Random(4))
  assert space.sample(random.Random(4)) != space.sample(random.Random(5))
