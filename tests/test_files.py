"""File helpers: atomic writes, deterministic archives, float16 storage."""
import os

import numpy as np
import pytest

from spinesearch import files


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
  path = str(tmp_path / "sub" / "a.txt")
  files.write_text_atomically(path, "first")
  assert open(path).read() == "first"

  def broken_fsync(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError):
    files.write_text_atomically(path, "second")
  assert open(path).read() == "first"
  assert os.listdir(tmp_path / "sub") == ["a.txt"]


def test_npz_bytes_are_deterministic_and_read_back():
  arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(2, np.float16),
            "text": np.array('{"step": 3}')}
  data = files.npz_bytes(arrays)
  assert data == files.npz_bytes(dict(arrays))
  back = files.read_npz(data)
  assert list(back) == ["b", "a", "text"]
  for key in arrays:
    np.testing.assert_array_equal(back[key], arrays[key])
    assert back[key].dtype == arrays[key].dtype and back[key].shape == arrays[key].shape


def test_read_npz_refuses_other_bytes():
  with pytest.raises(ValueError, match="not a weights archive"):
    files.read_npz(b"not a zip file")


def test_values_beyond_float16_stay_float32():
  assert files.to_float16_storage(np.array([1.0, 1e6])).dtype == np.float32
  assert files.to_float16_storage(np.array([1.0, -3.5])).dtype == np.float16


def test_file_sha256_matches_bytes(tmp_path):
  path = tmp_path / "x.bin"
  path.write_bytes(b"abc" * 1000)
  assert files.file_sha256(str(path)) == files.sha256_hex(b"abc" * 1000)


def test_read_json_reads_a_document_and_says_why_it_cannot(tmp_path):
  good = tmp_path / "good.json"
  good.write_text('{"a": [1, 2]}', encoding="utf-8")
  assert files.read_json(str(good)) == {"a": [1, 2]}
  with pytest.raises(ValueError, match=r"cannot read \(No such file"):
    files.read_json(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text('{"a": ', encoding="utf-8")
  with pytest.raises(ValueError, match="not a valid JSON file"):
    files.read_json(str(bad))
  latin = tmp_path / "latin.json"
  latin.write_bytes(b'{"a": "\xe9"}')
  with pytest.raises(ValueError, match="not a valid JSON file"):
    files.read_json(str(latin))


def test_read_checked_npz_refuses_a_changed_file_before_parsing_it(tmp_path):
  data = files.npz_bytes({"w": np.arange(3, dtype=np.float32)})
  path = tmp_path / "w.npz"
  path.write_bytes(data)
  digest = files.sha256_hex(data)
  np.testing.assert_array_equal(files.read_checked_npz(str(path), digest, len(data))["w"],
                                [0, 1, 2])
  assert list(files.read_checked_npz(str(path))) == ["w"]  # nothing to check against
  changed = bytearray(data)
  changed[len(data) // 2] ^= 0xFF  # same size, other bytes
  path.write_bytes(bytes(changed))
  with pytest.raises(ValueError, match="refused, the file does not match its record"):
    files.read_checked_npz(str(path), digest, len(data))
  with pytest.raises(ValueError, match=r"cannot read \(No such file"):
    files.read_checked_npz(str(tmp_path / "missing.npz"), digest, len(data))
  path.write_bytes(b"not an archive")
  with pytest.raises(ValueError, match="not a weights archive"):
    files.read_checked_npz(str(path))
