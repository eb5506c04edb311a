"""Compound scaling (python -m spinesearch.scale): member sizes, a run on a tiny
reward whose family brackets the target, resume, and refused settings."""
import json
import os
import subprocess
import sys

import pytest

from spinesearch.proxy import ProxyConfig
from spinesearch.compound import Rates, at_target, member_settings
from spinesearch.space.architecture import Architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ZERO_SHOT = ("--reward=zero_shot", "--proxy_preset=tiny", "--zero_shot_part=detector",
                  "--zero_shot_batch_size=2", "--zero_shot_repeats=1", "--runner=inline")


def scale(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "spinesearch.scale", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_members_grow_every_dimension_with_phi():
  base = ProxyConfig.from_preset("quickstart")
  rates = Rates(width=1.35, depth=1.2, resolution=1.15, head=1 / 3)
  assert member_settings(base, rates, 0.0, 128)["image_size"] == base.image_size
  small, large = (member_settings(base, rates, phi, 128) for phi in (0.0, 6.0))
  assert large["filter_size_scale"] == pytest.approx(base.filter_size_scale * 1.35 ** 6, 1e-5)
  assert large["endpoints_num_filters"] % 8 == 0
  assert large["endpoints_num_filters"] > small["endpoints_num_filters"]
  assert large["block_repeats"] == round(1.2 ** 6) and large["fpn_num_repeats"] > 1
  assert large["image_size"] == 256 and large["anchor_size"] == 2 * base.anchor_size
  assert large["head_num_convs"] == base.head_num_convs + 2  # EfficientDet: + floor(phi / 3)
  assert at_target([{"multiply_adds_g": 1.0}, {"multiply_adds_g": 2.0}], 1.5) == \
      {"multiply_adds_g": 1.0}
  assert at_target([{"multiply_adds_g": 2.0}], 1.5) is None


def test_a_tiny_compound_scaling_run_brackets_the_target_and_resumes(tmp_path):
  target = 0.25
  flags = ("--architecture=spinenet-49", f"--target_flops={target}", *TINY_ZERO_SHOT,
           "--width_rates=1.2,1.4", "--depth_rates=1.0", "--resolution_rates=1.0",
           "--phi_step=1", f"--output_dir={tmp_path}")
  run = scale(*flags)
  assert run.returncode == 0, run.stderr[-3000:]
  family = json.loads((tmp_path / "family.json").read_text())
  costs = [m["multiply_adds_g"] for m in family["members"]]
  assert costs == sorted(costs) and costs[0] <= target < costs[-1]
  chosen = [m for m in family["members"] if m["at_target"]]
  assert len(chosen) == 1 and chosen[0]["multiply_adds_g"] <= target
  assert chosen[0]["reward"] == max(v for v in family["scored"].values() if v is not None)
  assert set(family["scored"]) == {"w1.2-d1-r1", "w1.4-d1-r1"}
  for member in family["members"]:
    architecture = Architecture.load(str(tmp_path / member["file"]))
    assert architecture.fingerprint() == Architecture.from_dict(
        family["architecture"]).fingerprint()
  widths = [Architecture.load(str(tmp_path / m["file"])).scaling.filter_size_scale
            for m in family["members"]]
  assert widths == sorted(widths) and widths[0] < widths[-1]
  # The same command measures and scores nothing again.
  costs_file = tmp_path / "scale.costs.json"
  measured = os.path.getmtime(costs_file)
  again = scale(*flags)
  assert again.returncode == 0 and "[1/" not in again.stderr
  assert os.path.getmtime(costs_file) == measured
  assert json.loads((tmp_path / "family.json").read_text())["members"] == family["members"]


@pytest.mark.parametrize("extra,message", [
    (("--reward=oneshot",), "a supernet holds one scaling"),
    (("--target_flops=0.25", "--width_rates=1,1", "--depth_rates=1", "--resolution_rates=1"),
     "every rate is 1"),
    (("--target_flops=0.25", "--width_rates=0.5"), "rates must be numbers >= 1"),
    (("--target_flops=0.25", "--architecture=nowhere.json"), "nowhere.json: no such file"),
])
def test_bad_settings_are_one_line(extra, message, tmp_path):
  run = scale("--architecture=spinenet-49", "--target_flops=0.25", f"--output_dir={tmp_path}",
              *extra)
  assert run.returncode == 2, run.stderr[-2000:]
  assert run.stderr.count("\n") == 1 and message in run.stderr
