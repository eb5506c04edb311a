"""File helpers shared by the data sets, runners, searches, supernets and zoo.

Every file SpineSearch writes appears whole or not at all: it is written to a
temporary file in the same folder, synced and renamed over the target, so a
reader (or a run killed half way) never sees half a file and a good file is
never replaced by a broken one.

Weights are `.npz` archives of plain arrays, written deterministically (fixed
member order and timestamps, no compression) so the same arrays always hash
the same, and read with `allow_pickle=False`: nothing is ever unpickled.
"""
import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any, Dict, Mapping, Optional

import numpy as np

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_bytes_atomically(path: str, data: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  # mkstemp makes the file private (0600); give it the mode a plain open() would.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomically(path: str, text: str) -> None:
  write_bytes_atomically(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
  """The JSON document in `path`. ValueError, with the reason, when the file
  cannot be read or is not UTF-8 JSON; callers name the file in their error."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise ValueError(f"cannot read ({e.strerror or e})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"not a valid JSON file ({e})") from None


def sha256_hex(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def to_float16_storage(array: np.ndarray) -> np.ndarray:
  """float16 when every value stays finite, float32 otherwise (batch-norm
  moving variances can exceed float16's range)."""
  array = np.asarray(array, dtype=np.float32)
  if array.size and np.max(np.abs(array)) >= _FLOAT16_MAX:
    return array
  return array.astype(np.float16)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  """An .npz archive of `arrays`, in the given order, deterministically."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
    for key, array in arrays.items():
      member = io.BytesIO()
      # np.require keeps a 0-d array 0-d (np.ascontiguousarray would make it 1-d).
      np.lib.format.write_array(member, np.require(array, requirements='C'),
                                allow_pickle=False)
      info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
      info.external_attr = 0o644 << 16
      archive.writestr(info, member.getvalue())
  return buffer.getvalue()


def read_npz(data: bytes) -> Dict[str, np.ndarray]:
  """The arrays of an .npz archive; ValueError when it is not one."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f"not a weights archive ({e})") from None


def read_checked_npz(path: str, sha256: Optional[str] = None,
                     size: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The arrays of the .npz at `path`, after checking its byte count and
  sha256 against `size` and `sha256` when given: a changed file is refused
  before it is parsed. ValueError, with the reason, when the file cannot be
  read, does not match or is not an archive; callers name the file."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"cannot read ({e.strerror or e})") from None
  digest = sha256_hex(data)
  if (sha256 is not None and digest != sha256) or (size is not None and len(data) != size):
    raise ValueError(f"refused, the file does not match its record (sha256 {digest[:12]}..., "
                     f"{len(data)} bytes; expected {(sha256 or '?')[:12]}..., {size} bytes); "
                     f"it is damaged or was replaced")
  return read_npz(data)
