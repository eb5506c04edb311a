"""Where zoo entries live and how a name resolves to one.

A zoo is a folder with `entries/<name>.json` and `weights/<file>`; the
package's own folder is the default zoo. Another folder (for example the
output of `python -m model_zoo convert`) is used by passing `zoo_dir`, and a
path to an entry JSON file stands for that entry, its weights being looked up
in the `weights/` folder beside the entry's `entries/` folder.

`load_architecture` is what any tool's `--architecture` takes: a zoo name, a
zoo entry file or an architecture file.
"""
import difflib
import os
from typing import List, Optional, Tuple

from model_zoo.entry import ZooEntry, ZooError
from spinesearch.files import read_json
from spinesearch.space.architecture import Architecture

PACKAGE_ZOO_DIR = os.path.dirname(os.path.abspath(__file__))
ENTRIES = "entries"
WEIGHTS = "weights"


def zoo_dir_or_default(zoo_dir: Optional[str]) -> str:
  return PACKAGE_ZOO_DIR if zoo_dir is None else zoo_dir


def entry_path(name: str, zoo_dir: Optional[str] = None) -> str:
  return os.path.join(zoo_dir_or_default(zoo_dir), ENTRIES, f"{name}.json")


def weights_dir(zoo_dir: Optional[str] = None) -> str:
  return os.path.join(zoo_dir_or_default(zoo_dir), WEIGHTS)


def zoo_dir_of_entry_file(path: str) -> str:
  """The zoo an entry file belongs to: the parent of its `entries/` folder."""
  return os.path.dirname(os.path.dirname(os.path.abspath(path)))


def list_models(zoo_dir: Optional[str] = None) -> List[str]:
  """Names of the zoo's entries, sorted."""
  folder = os.path.join(zoo_dir_or_default(zoo_dir), ENTRIES)
  if not os.path.isdir(folder):
    raise ZooError(f"{folder}: no such folder; a zoo has entries/ and weights/ folders")
  return sorted(f[:-len(".json")] for f in os.listdir(folder)
                if f.endswith(".json") and not f.startswith("."))


def get_entry(name: str, zoo_dir: Optional[str] = None) -> ZooEntry:
  """The entry called `name`; an unknown name is refused with the closest
  names of the zoo. A path to an entry JSON file is loaded as it is."""
  return locate(name, zoo_dir)[0]


def locate(name: str, zoo_dir: Optional[str] = None) -> Tuple[ZooEntry, str]:
  """The entry `name` (or entry file) and the zoo folder its weights are in."""
  if name.endswith(".json") and os.path.isfile(name):
    return ZooEntry.load(name), zoo_dir_of_entry_file(name)
  names = list_models(zoo_dir)
  if name not in names:
    raise ZooError(unknown_name_message(name, names))
  path = entry_path(name, zoo_dir)
  entry = ZooEntry.load(path)
  if entry.name != name:
    raise ZooError(f"{path}: the entry's name is {entry.name!r}; "
                   f"an entry file is named after its entry")
  return entry, zoo_dir_or_default(zoo_dir)


def unknown_name_message(name: str, names: List[str]) -> str:
  return f"no zoo model named {name!r}; {close_names_hint(name, names)}"


def close_names_hint(name: str, names: List[str]) -> str:
  """The zoo names closest to a wrong one, or all of them if none is close."""
  lowered = {n.lower(): n for n in names}
  close = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.5)
  hint = (f"did you mean {', '.join(lowered[c] for c in close)}?" if close else
          f"the zoo has {', '.join(names) or 'no entries'}")
  return f"{hint} (python -m model_zoo list)"


def load_architecture(source: str, zoo_dir: Optional[str] = None) -> Architecture:
  """The architecture `source` stands for, for any tool that takes one: a zoo
  entry name (`mobile-spinenet-49s`), a zoo entry file or an architecture file
  (the project's schema). An existing file wins over a name. Anything else is
  one ZooError line, with the closest zoo names when it looks like a name."""
  if os.path.isfile(source):
    return (ZooEntry.load(source).architecture if _is_zoo_entry_file(source) else
            Architecture.load(source))
  if _looks_like_path(source):
    raise ZooError(f"{source}: no such file (expected an architecture JSON file, "
                   f"a zoo entry JSON file or a zoo model name)")
  names = list_models(zoo_dir)
  if source not in names:
    raise ZooError(f"{source!r} is neither a file nor a zoo model name; "
                   f"{close_names_hint(source, names)}")
  return get_entry(source, zoo_dir).architecture


def _is_zoo_entry_file(path: str) -> bool:
  """Whether a file is a zoo entry (it has `zoo_version`). Anything else,
  unreadable or malformed files included, is left to the architecture loader,
  whose error says what is wrong."""
  try:
    data = read_json(path)
  except ValueError:
    return False
  return isinstance(data, dict) and "zoo_version" in data


def _looks_like_path(source: str) -> bool:
  # Zoo names never contain a path separator, and their files end in .json.
  return source.endswith(".json") or os.sep in source or "/" in source
