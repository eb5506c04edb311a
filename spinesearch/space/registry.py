"""Search spaces by name: build one from a name (command line) or from the
settings stored with a search (`space.config()`)."""
import inspect
from typing import Any, Dict, Mapping, Tuple, Type

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space.architecture import SPACES as ARCHITECTURE_SPACES, Architecture
from spinesearch.space.base import SearchSpace
from spinesearch.space.fusion import WithFusion
from spinesearch.space.head import WithHead
from spinesearch.space.joint import JointSpace
from spinesearch.space.nasfpn import PRESETS as NASFPN_PRESETS, MergingCellSpace
from spinesearch.space.scale_decreased import (PRESETS as SCALE_DECREASED_PRESETS,
                                               ScaleDecreasedSpace)
from spinesearch.space.spinenet import PRESETS as SPINENET_PRESETS, ScalePermutedSpace

SPACES: Dict[str, Type[SearchSpace]] = {
    ScalePermutedSpace.name: ScalePermutedSpace,
    MergingCellSpace.name: MergingCellSpace,
    JointSpace.name: JointSpace,
    ScaleDecreasedSpace.name: ScaleDecreasedSpace,
}


def presets_of(name: str) -> Tuple[str, ...]:
  """The presets of space `name` (the joint space takes its backbone's)."""
  _space_class(name)
  return tuple({"nasfpn": NASFPN_PRESETS,
                "scale_decreased": SCALE_DECREASED_PRESETS}.get(name, SPINENET_PRESETS))


def preset_names() -> Tuple[str, ...]:
  """Every space's presets (a space refuses the ones it lacks)."""
  names = []
  for presets in (SPINENET_PRESETS, NASFPN_PRESETS, SCALE_DECREASED_PRESETS):
    names += [name for name in presets if name not in names]
  return tuple(names)


def _space_class(name: Any) -> Type[SearchSpace]:
  if not isinstance(name, str) or name not in SPACES:
    raise ConfigError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
  return SPACES[name]


# Options of a whole architecture, outermost last: a config names each by its key.
OPTION_WRAPPERS = (WithHead, WithFusion)


def build_space(name: str, preset: str = "default", *, search_head=False,
                search_fusion=False, **settings) -> SearchSpace:
  """The space `name` with a preset's settings, overridden by `settings`;
  with `search_head` (True, or WithHead's keyword arguments) it also searches
  the detection head (`space.head`), with `search_fusion` (True, or
  WithFusion's) how its blocks merge their inputs (`space.fusion`)."""
  space = _build_space(name, preset, **settings)
  for wrapper, wanted in zip(OPTION_WRAPPERS, (search_head, search_fusion)):
    if wanted:
      space = wrapper(space, **(wanted if isinstance(wanted, Mapping) else {}))
  return space


def _build_space(name: str, preset: str = "default", **settings) -> SearchSpace:
  cls = _space_class(name)
  if cls is JointSpace:
    if settings:
      raise ConfigError(f"joint space: takes no settings beyond a preset, got "
                        f"{', '.join(sorted(settings))}; build it from a config instead")
    return JointSpace.preset(preset)
  _refuse_unknown_settings(cls, settings)
  return cls.preset(preset, **settings)


def space_from_config(config: Mapping) -> SearchSpace:
  """The space whose `config()` is `config` (also after a JSON round trip)."""
  if not isinstance(config, Mapping):
    raise ConfigError(f"search space config: expected an object, got {type(config).__name__}")
  if "name" not in config:
    raise ConfigError("search space config: missing key 'name'")
  for wrapper in reversed(OPTION_WRAPPERS):
    key = wrapper.config_key
    if key in config:
      options = config[key]
      if not isinstance(options, Mapping):
        raise ConfigError(f"search space config: {key} must be an object, got {options!r}")
      inner = space_from_config({k: v for k, v in config.items() if k != key})
      _refuse_unknown_settings(wrapper, options, skip=("space",))
      return wrapper(inner, **options)
  cls = _space_class(config["name"])
  settings = {k: v for k, v in config.items() if k != "name"}
  if cls is JointSpace:
    unknown = sorted(set(settings) - {"backbone", "fpn"})
    missing = sorted({"backbone", "fpn"} - set(settings))
    if unknown or missing:
      raise ConfigError(f"joint space config: needs exactly the keys backbone and fpn "
                        f"(unknown: {unknown}, missing: {missing})")
    backbone = space_from_config(settings["backbone"])
    fpn = space_from_config(settings["fpn"])
    return JointSpace(backbone, fpn)
  _refuse_unknown_settings(cls, settings)
  return cls(**settings)


def space_for(architecture: Architecture) -> SearchSpace:
  """The default space of the architecture's `space` field."""
  if architecture.space not in ARCHITECTURE_SPACES:
    raise ArchitectureError(
        f"space: must be one of {', '.join(ARCHITECTURE_SPACES)}, got {architecture.space!r}")
  return SPACES[architecture.space]()


def _refuse_unknown_settings(cls: Type[SearchSpace], settings: Mapping, skip=()) -> None:
  valid = [p for p in inspect.signature(cls.__init__).parameters
           if p != "self" and p not in skip]
  unknown = sorted(set(settings) - set(valid))
  if unknown:
    label = (f"{cls.name} space" if isinstance(cls.name, str) else
             f"search space {cls.config_key}")
    raise ConfigError(f"{label}: unknown setting(s) {', '.join(unknown)}; "
                      f"valid: {', '.join(valid)}")
