"""The architecture JSON schema: round trips, and every malformed input refused
with a message that says what is wrong."""
import json
import os

import pytest

from spinesearch.errors import ArchitectureError, UserError
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, BlockSpec, Scaling

MOBILE = Architecture(space="spinenet", name="spinenet-mobile-49",
                      blocks=tuple(BlockSpec(*b) for b in known.SPINENET_MOBILE_BLOCKS))

KNOWN = [known.spinenet49(), known.nasfpn(), known.spinenet49_nasfpn(), MOBILE] + [
    known.spinenet49(published.scaling).replace(name=f"spinenet{name}")
    for name, published in known.SPINENET_FAMILY.items()]


def spinenet49_dict():
  return known.spinenet49().to_dict()


def nasfpn_dict():
  return known.nasfpn().to_dict()


@pytest.mark.parametrize("arch", KNOWN, ids=lambda a: a.name)
def test_known_architectures_round_trip_through_json(arch, tmp_path):
  assert arch.validate() is arch
  assert Architecture.from_json(arch.to_json()) == arch
  assert Architecture.from_json(arch.to_json(indent=None)) == arch
  path = str(tmp_path / "arch.json")
  arch.save(path)
  assert Architecture.load(path) == arch
  assert os.listdir(tmp_path) == ["arch.json"]


def test_document_layout():
  data = json.loads(known.spinenet49_nasfpn().to_json())
  assert list(data) == ["version", "space", "name", "blocks", "cells", "scaling"]
  assert data["blocks"][0] == {"level": 2, "block_fn": "bottleneck", "input_offsets": [0, 1],
                               "is_output": False}
  assert data["cells"][0] == {"level": 4, "combine_fn": "attention", "input_offsets": [1, 3],
                              "is_output": False}
  assert "blocks" not in known.nasfpn().to_dict()
  assert "name" not in known.nasfpn().replace(name="").to_dict()


def test_scaling_defaults_when_absent_and_fingerprint_ignores_name_and_scaling():
  data = spinenet49_dict()
  del data["scaling"]
  assert Architecture.from_dict(data).scaling == Scaling()
  a = known.spinenet49()
  b = a.replace(name="other").with_scaling(filter_size_scale=0.25, resample_alpha=0.25)
  assert a.fingerprint() == b.fingerprint()
  assert a.fingerprint() != known.nasfpn().fingerprint()
  assert b.scaling.resample_alpha == 0.25 and b.scaling.block_repeats == 1


def test_derived_levels():
  assert known.spinenet49().output_levels == (3, 4, 5, 6, 7)
  assert known.nasfpn().min_level == 3 and known.nasfpn().max_level == 7


DELETE = object()


def with_key(data, path, value):
  """`data` with the value at `path` (keys and list indices) replaced; a value of
  DELETE removes the key."""
  target = data
  for key in path[:-1]:
    target = target[key]
  if value is DELETE:
    del target[path[-1]]
  else:
    target[path[-1]] = value
  return data

MALFORMED = [
    # (id, document, message)
    ("non-object", [], "architecture: expected a JSON object, got list"),
    ("unknown key", with_key(spinenet49_dict(), ["color"], "red"),
     r"architecture: unknown key.s. 'color'; allowed: blocks, cells, fpn_repeats, fusion, head, name"),
    ("unknown block key", with_key(spinenet49_dict(), ["blocks", 0, "stride"], 2),
     r"blocks\[0\]: unknown key.s. 'stride'"),
    ("unknown scaling key", with_key(spinenet49_dict(), ["scaling", "depth"], 2),
     r"scaling: unknown key.s. 'depth'"),
    ("missing version", with_key(spinenet49_dict(), ["version"], DELETE),
     "architecture: missing required key 'version'"),
    ("missing space", with_key(spinenet49_dict(), ["space"], DELETE),
     "architecture: missing required key 'space'"),
    ("missing block key", with_key(spinenet49_dict(), ["blocks", 3, "is_output"], DELETE),
     r"blocks\[3\]: missing key.s. 'is_output'"),
    ("level type", with_key(spinenet49_dict(), ["blocks", 0, "level"], "2"),
     r"blocks\[0\].level: expected an integer, got '2'"),
    ("level bool", with_key(spinenet49_dict(), ["blocks", 0, "level"], True),
     r"blocks\[0\].level: expected an integer, got True"),
    ("block_fn type", with_key(spinenet49_dict(), ["blocks", 1, "block_fn"], 1),
     r"blocks\[1\].block_fn: expected a string, got 1"),
    ("one offset", with_key(spinenet49_dict(), ["blocks", 2, "input_offsets"], [2]),
     r"blocks\[2\].input_offsets: expected two integers, got \[2\]"),
    ("offset type", with_key(spinenet49_dict(), ["blocks", 2, "input_offsets"], [2, "3"]),
     r"blocks\[2\].input_offsets: expected two integers"),
    ("is_output type", with_key(spinenet49_dict(), ["blocks", 2, "is_output"], 0),
     r"blocks\[2\].is_output: expected true or false, got 0"),
    ("name type", with_key(spinenet49_dict(), ["name"], 49), "name: expected a string, got 49"),
    ("blocks type", with_key(spinenet49_dict(), ["blocks"], {}),
     "blocks: expected a list, got dict"),
    ("cell type", with_key(nasfpn_dict(), ["cells", 0], "sum"),
     r"cells\[0\]: expected a JSON object, got str"),
    ("scaling type", with_key(spinenet49_dict(), ["scaling"], 1.0),
     "scaling: expected a JSON object, got float"),
    ("scaling number", with_key(spinenet49_dict(), ["scaling", "resample_alpha"], "0.5"),
     r"scaling.resample_alpha: expected a number, got '0.5'"),
    ("scaling integer", with_key(spinenet49_dict(), ["scaling", "block_repeats"], 1.5),
     r"scaling.block_repeats: expected an integer, got 1.5"),
    ("scaling zero", with_key(spinenet49_dict(), ["scaling", "filter_size_scale"], 0),
     r"scaling.filter_size_scale: must be a positive finite number, got 0"),
    ("scaling negative", with_key(spinenet49_dict(), ["scaling", "head_num_convs"], -4),
     r"scaling.head_num_convs: must be a positive finite number, got -4"),
    ("level too high", with_key(spinenet49_dict(), ["blocks", 4, "level"], 8),
     r"blocks\[4\].level: 8 is outside 1..7"),
    ("cell level outside pyramid", with_key(nasfpn_dict(), ["cells", 0, "level"], 2),
     r"cells\[0\].level: 2 is outside the pyramid's levels 3..7"),
    ("same parent twice", with_key(spinenet49_dict(), ["blocks", 5, "input_offsets"], [4, 4]),
     r"blocks\[5\].input_offsets: \[4, 4\] names the same input twice"),
    ("parent not earlier", with_key(spinenet49_dict(), ["blocks", 5, "input_offsets"], [3, 7]),
     r"blocks\[5\].input_offsets: 7 is not an earlier block .*valid: 0..6"),
    ("negative parent", with_key(spinenet49_dict(), ["blocks", 5, "input_offsets"], [-1, 3]),
     r"blocks\[5\].input_offsets: -1 is not an earlier block"),
    ("cell input not earlier", with_key(nasfpn_dict(), ["cells", 1, "input_offsets"], [1, 6]),
     r"cells\[1\].input_offsets: 6 is not an earlier feature .*valid: 0..5"),
    ("duplicate output level", with_key(spinenet49_dict(), ["blocks", 14, "level"], 7),
     "blocks: level 7 is produced by two output blocks"),
    ("non-contiguous outputs", with_key(spinenet49_dict(), ["blocks", 14, "is_output"], False),
     r"blocks: output levels \[3, 4, 5, 7\] must be one contiguous range"),
    ("duplicate cell output", with_key(nasfpn_dict(), ["cells", 6, "level"], 3),
     "cells: level 3 is produced by two output cells"),
    ("unknown block_fn", with_key(spinenet49_dict(), ["blocks", 0, "block_fn"], "conv"),
     r"blocks\[0\].block_fn: must be one of bottleneck, residual, mbconv, got 'conv'"),
    ("unknown combine_fn", with_key(nasfpn_dict(), ["cells", 0, "combine_fn"], "max"),
     r"cells\[0\].combine_fn: must be one of sum, attention, got 'max'"),
    ("mbconv mixed", with_key(spinenet49_dict(), ["blocks", 0, "block_fn"], "mbconv"),
     "blocks: mbconv blocks cannot be mixed with bottleneck/residual blocks"),
    ("wrong version", with_key(spinenet49_dict(), ["version"], 2),
     "version: this SpineSearch reads architecture schema version 1, got 2"),
    ("unknown space", with_key(spinenet49_dict(), ["space"], "detnas"),
     "space: must be one of spinenet, nasfpn, joint, got 'detnas'"),
    ("spinenet without blocks", with_key(spinenet49_dict(), ["blocks"], []),
     "blocks: a spinenet architecture needs backbone blocks"),
    ("spinenet with cells", with_key(spinenet49_dict(), ["cells"], nasfpn_dict()["cells"]),
     "cells: a spinenet architecture has no merging cells"),
    ("nasfpn with blocks", with_key(nasfpn_dict(), ["blocks"], spinenet49_dict()["blocks"]),
     "blocks: a nasfpn architecture has no searched backbone blocks"),
    ("joint without cells", with_key(spinenet49_dict(), ["space"], "joint"),
     "cells: a joint architecture needs merging cells"),
]


@pytest.mark.parametrize("document,message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_documents_are_refused_with_their_reason(document, message):
  with pytest.raises(ArchitectureError, match=message):
    Architecture.from_dict(document)
  with pytest.raises(ArchitectureError, match="^doc.json: " + message):
    Architecture.from_json(json.dumps(document), source="doc.json")


def test_cell_outputs_must_match_the_backbone_levels():
  data = known.spinenet49_nasfpn().to_dict()
  # Drop the L7 output cell: outputs 3..6 are contiguous but not the backbone's 3..7.
  cells = data["cells"][:5] + [dict(data["cells"][6], input_offsets=[8, 9])]
  with pytest.raises(ArchitectureError,
                     match=r"cells: output levels \[3, 4, 5, 6\] must match the backbone's "
                           r"levels 3..7"):
    Architecture.from_dict(dict(data, cells=cells))


def test_invalid_json_is_refused_with_its_position():
  with pytest.raises(ArchitectureError,
                     match=r"^arch.json: not valid JSON \(Expecting .* at line 1 column \d+\)"):
    Architecture.from_json('{"version": 1,', source="arch.json")


def test_load_refuses_a_missing_file_and_a_non_utf8_file(tmp_path):
  missing = str(tmp_path / "nope.json")
  with pytest.raises(ArchitectureError, match=r"nope.json: cannot read \(No such file"):
    Architecture.load(missing)
  binary = tmp_path / "latin1.json"
  binary.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
  with pytest.raises(ArchitectureError, match=r"latin1.json: not a UTF-8 text file"):
    Architecture.load(str(binary))
  broken = tmp_path / "broken.json"
  broken.write_text(json.dumps(with_key(spinenet49_dict(), ["version"], 3)))
  with pytest.raises(ArchitectureError, match=r"broken.json: version: .* got 3"):
    Architecture.load(str(broken))
  assert issubclass(ArchitectureError, UserError)


def test_save_replaces_a_good_file_whole(tmp_path):
  path = str(tmp_path / "arch.json")
  known.spinenet49().save(path)
  known.nasfpn().save(path)
  assert Architecture.load(path) == known.nasfpn()
  assert os.listdir(tmp_path) == ["arch.json"]


def test_check_image_size():
  arch = known.spinenet49()
  with pytest.raises(
      ArchitectureError,
      match=r"image size 100 is not a multiple of 128 \(2\^max_level, max_level=7\)"):
    arch.check_image_size(100)
  with pytest.raises(ArchitectureError, match="image size 200 .* use e.g. 128 or 256"):
    arch.check_image_size(200)
  with pytest.raises(ArchitectureError, match="image size must be a positive integer, got 0"):
    arch.check_image_size(0)
  with pytest.raises(ArchitectureError, match="positive integer, got 'abc'"):
    arch.check_image_size("abc")
  with pytest.raises(ArchitectureError, match="image size 100 .* use e.g. 128$"):
    arch.check_image_size(100)
  for size in (128, 256, 640, 1024):
    arch.check_image_size(size)


def test_non_finite_scaling_is_refused():
  text = known.spinenet49().to_json().replace('"resample_alpha": 0.5', '"resample_alpha": NaN')
  with pytest.raises(ArchitectureError, match="resample_alpha"):
    Architecture.from_json(text)


def test_boolean_version_is_refused():
  with pytest.raises(ArchitectureError, match="version"):
    Architecture.from_dict(with_key(spinenet49_dict(), ["version"], True))


def test_deeply_nested_json_is_one_clear_error():
  with pytest.raises(ArchitectureError, match="nested too deeply"):
    Architecture.from_json("[" * 100000)


def test_nasfpn_architecture_may_serve_a_shorter_pyramid():
  from spinesearch.space.nasfpn import MergingCellSpace
  import random
  space = MergingCellSpace(num_cells=6, levels=(3, 4, 5, 6))
  arch = space.decode(space.sample(random.Random(0)))
  assert arch.validate().output_levels == (3, 4, 5, 6)
