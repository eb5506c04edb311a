"""The joint backbone + merging-cell space, and the registry of spaces."""
import dataclasses
import json
import math
import random

import pytest

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from space_helpers import count_sequences
from spinesearch.space.joint import JointSpace
from spinesearch.space.nasfpn import MergingCellSpace
from spinesearch.space.scale_decreased import ScaleDecreasedSpace
from spinesearch.space.registry import SPACES, build_space, space_for, space_from_config
from spinesearch.space.spinenet import ScalePermutedSpace




def tiny_joint_space():
  backbone = ScalePermutedSpace(intermediate_allocation={3: 1}, output_levels=(3, 4),
                                level_offsets=(0,), block_fns=("residual",))
  fpn = MergingCellSpace(num_cells=2, levels=(3, 4), combine_fns=("sum",))
  return JointSpace(backbone, fpn)


def test_spinenet49_nasfpn_round_trips():
  space = JointSpace()
  arch = known.spinenet49_nasfpn()
  decoded = space.decode(space.encode(arch))
  assert decoded.space == "joint"
  assert decoded.blocks == arch.blocks and decoded.cells == arch.cells
  assert space.validate(arch) is arch


def test_decisions_are_the_backbones_then_the_cells_with_prefixed_names():
  space = JointSpace()
  backbone, fpn = space.backbone.decisions(), space.fpn.decisions()
  names = [d.name for d in space.decisions()]
  assert len(set(names)) == len(names) == len(backbone) + len(fpn)
  assert names[0] == "backbone/intermediate[0].base_level"
  assert names[len(backbone)] == "fpn/cell[0].input0"
  assert [d.kind for d in space.decisions()] == [d.kind for d in backbone + fpn]
  choices_by_kind = {}
  for d in space.decisions():
    assert choices_by_kind.setdefault(d.kind, d.choices) == d.choices
  arch = known.spinenet49_nasfpn()
  assert space.encode(arch) == (space.backbone.encode_blocks(arch.blocks) +
                                space.fpn.encode_cells(arch.cells))


@pytest.mark.parametrize("space", [JointSpace(), JointSpace.vertex()], ids=["default", "vertex"])
def test_random_samples_are_valid_in_space_and_round_trip(space):
  rng = random.Random(13)
  for _ in range(200):
    decisions = space.sample(rng)
    arch = space.decode(decisions)
    arch.validate()
    space.validate(arch)
    assert space.decode(space.encode(arch)) == arch
    assert space.masks(decisions) == (
        space.backbone.masks(decisions[:len(space.backbone.decisions())]) +
        space.fpn.masks(decisions[len(space.backbone.decisions()):]))


def test_masked_out_choices_are_refused_in_both_parts():
  space = JointSpace()
  rng = random.Random(2)
  decisions = space.sample(rng)
  masks = space.masks(decisions)
  names = [d.name for d in space.decisions()]
  for name in ("backbone/block[3].parent1", "fpn/cell[4].level"):
    position = names.index(name)
    invalid = [c for c, ok in enumerate(masks[position]) if not ok]
    bad = decisions[:position] + [invalid[0]] + decisions[position + 1:]
    with pytest.raises(ArchitectureError, match="is not valid at this point"):
      space.decode(bad)
  with pytest.raises(ArchitectureError, match="expected 98 decisions"):
    space.decode(decisions[:-1])


def test_out_of_space_parts_are_refused_with_the_reason():
  space = JointSpace()
  arch = known.spinenet49_nasfpn()
  blocks = list(arch.blocks)
  blocks[9] = dataclasses.replace(blocks[9], input_offsets=(5, 10))
  with pytest.raises(ArchitectureError, match=r"blocks\[9\].input_offsets: parent 5 is outside"):
    space.encode(arch.replace(blocks=tuple(blocks)))
  with pytest.raises(ArchitectureError, match=r"cells: this space builds 7 cells"):
    space.encode(arch.replace(cells=arch.cells[:-1]))
  with pytest.raises(ArchitectureError, match="from the 'spinenet' space, not 'joint'"):
    space.encode(known.spinenet49())


def test_log10_size_is_the_sum_of_the_parts_and_matches_brute_force():
  space = tiny_joint_space()
  assert space.log10_size() == pytest.approx(math.log10(count_sequences(space)), abs=1e-9)
  default = JointSpace()
  assert default.log10_size() == pytest.approx(
      default.backbone.log10_size() + default.fpn.log10_size())


def test_cell_levels_must_equal_the_backbone_output_levels():
  with pytest.raises(ConfigError, match=r"the cells' levels \[3, 4, 5, 6, 7\] must equal the "
                                        r"backbone's output levels \[3, 4, 5, 6\]"):
    JointSpace(ScalePermutedSpace(output_levels=(3, 4, 5, 6)))
  with pytest.raises(ConfigError, match="backbone must be a ScalePermutedSpace"):
    JointSpace(MergingCellSpace())


def test_a_joint_space_with_other_levels_decodes_valid_architectures():
  backbone = ScalePermutedSpace(output_levels=(3, 4, 5, 6))
  space = JointSpace(backbone, MergingCellSpace(levels=(3, 4, 5, 6), num_cells=6))
  arch = space.sample_architecture(random.Random(0))
  assert arch.validate().output_levels == (3, 4, 5, 6)


# ---- registry ------------------------------------------------------------------

def test_registry_names_every_space():
  assert SPACES == {"spinenet": ScalePermutedSpace, "nasfpn": MergingCellSpace,
                    "joint": JointSpace, "scale_decreased": ScaleDecreasedSpace}
  for name, cls in SPACES.items():
    assert isinstance(build_space(name), cls) and cls.name == name


def test_build_space_with_presets_and_settings():
  assert build_space("spinenet", "vertex").config() == ScalePermutedSpace.vertex().config()
  assert build_space("nasfpn", "vertex").config() == MergingCellSpace.vertex().config()
  assert build_space("joint", "vertex").config() == JointSpace.vertex().config()
  assert build_space("spinenet", parent_window=3).parent_window == 3
  assert build_space("spinenet", "vertex", parent_window=3).allocation == {2: 1, 3: 3, 4: 5, 5: 2}


@pytest.mark.parametrize("call,message", [
    (lambda: build_space("detnas"),
     "unknown search space 'detnas'; valid: spinenet, nasfpn, joint"),
    (lambda: build_space("spinenet", window=3),
     "spinenet space: unknown setting.s. window; valid: intermediate_allocation"),
    (lambda: build_space("nasfpn", "paper"), "unknown preset 'paper'"),
    (lambda: build_space("joint", backbone=None), "joint space: takes no settings"),
    (lambda: space_from_config([]), "expected an object, got list"),
    (lambda: space_from_config({"levels": [3, 4]}), "missing key 'name'"),
    (lambda: space_from_config({"name": "fpn"}), "unknown search space 'fpn'"),
    (lambda: space_from_config({"name": "nasfpn", "cells": 7}), "unknown setting.s. cells"),
    (lambda: space_from_config({"name": "joint", "backbone": {"name": "spinenet"}}),
     r"missing: \['fpn'\]"),
    (lambda: space_from_config({"name": "joint", "backbone": {"name": "nasfpn"},
                                "fpn": {"name": "nasfpn"}}),
     "backbone must be a ScalePermutedSpace"),
])
def test_registry_refuses_bad_names_and_settings(call, message):
  with pytest.raises(ConfigError, match=message):
    call()


@pytest.mark.parametrize("space", [
    JointSpace(), JointSpace.vertex(), tiny_joint_space(), ScalePermutedSpace(),
    MergingCellSpace.vertex()], ids=lambda s: s.name)
def test_space_from_config_inverts_config(space):
  config = json.loads(json.dumps(space.config()))
  assert config["name"] == space.name
  rebuilt = space_from_config(config)
  assert type(rebuilt) is type(space)
  assert rebuilt.config() == space.config()
  assert rebuilt.decisions() == space.decisions()


def test_space_for_an_architecture_is_its_default_space():
  for arch in (known.spinenet49(), known.nasfpn(), known.spinenet49_nasfpn()):
    space = space_for(arch)
    assert space.name == arch.space
    assert space.config() == build_space(arch.space).config()
    assert space.decode(space.encode(arch)).fingerprint() == arch.fingerprint()
  with pytest.raises(ArchitectureError, match="space: must be one of spinenet, nasfpn, joint"):
    space_for(known.spinenet49().replace(space="mobile"))


def test_mobile_preset_is_mobile_spinenet_blocks_with_the_papers_cells():
  space = JointSpace.preset("mobile")
  assert space.backbone.config() == ScalePermutedSpace.preset("mobile").config()
  assert space.fpn.config() == MergingCellSpace().config()
  arch = known.mobile_spinenet49().replace(space="joint", cells=known.nasfpn().cells)
  decoded = space.decode(space.encode(arch))
  assert (decoded.blocks, decoded.cells) == (arch.blocks, arch.cells)
  assert space_from_config(json.loads(json.dumps(space.config()))).config() == space.config()
