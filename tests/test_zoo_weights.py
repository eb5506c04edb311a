"""Weights files: checkpoint-compatible keys, float16 storage, determinism,
and refusal of anything that does not match its entry."""
import os

import numpy as np
import pytest
import tensorflow as tf

from model_zoo import modeling
from model_zoo import weights as weights_lib
from model_zoo.entry import ZooEntry, ZooError
from spinesearch.space import known
from spinesearch.space.architecture import Scaling

TINY = Scaling(filter_size_scale=0.125, resample_alpha=0.25, endpoints_num_filters=16,
               head_num_convs=1, head_num_filters=16)


@pytest.fixture(scope="module")
def model():
  entry = ZooEntry(name="tiny", architecture=known.spinenet49(TINY), input_size=128,
                   num_classes=3)
  return modeling.build_model(entry)


def test_variables_are_keyed_as_a_checkpoint_names_them(model, tmp_path):
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
  checkpoint_keys = {k[len("model/"):-len(suffix)]
                     for k in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
                     if k.startswith("model/") and k.endswith(suffix)}
  paths = weights_lib.variables_by_path(model)
  assert set(paths) == checkpoint_keys
  assert len(paths) == len(model.weights)


def test_saved_weights_load_back_within_float16_rounding(model, tmp_path):
  record = weights_lib.save_weights(model, str(tmp_path), "tiny", source="test")
  assert record.file.startswith("tiny-") and record.sha256.startswith(record.file[5:15])
  assert os.path.getsize(tmp_path / record.file) == record.bytes
  arrays = weights_lib.read_verified(str(tmp_path / record.file), record)
  # float16 halves the file: 2 bytes per weight plus the archive's headers.
  assert record.bytes < 2.5 * sum(a.size for a in arrays.values()) + 200 * len(arrays)
  originals = {k: v.numpy() for k, v in weights_lib.variables_by_path(model).items()}
  for key, array in arrays.items():
    assert array.dtype == np.float16
    np.testing.assert_allclose(array.astype(np.float32), originals[key], rtol=1e-3, atol=1e-4)


def test_the_same_weights_give_the_same_file(model, tmp_path):
  first = weights_lib.save_weights(model, str(tmp_path / "a"), "tiny")
  second = weights_lib.save_weights(model, str(tmp_path / "b"), "tiny")
  assert (first.sha256, first.bytes, first.file) == (second.sha256, second.bytes, second.file)


def test_float32_storage_is_exact(model, tmp_path):
  record = weights_lib.save_weights(model, str(tmp_path), "tiny", float16=False)
  arrays = weights_lib.read_verified(str(tmp_path / record.file), record)
  for key, var in weights_lib.variables_by_path(model).items():
    np.testing.assert_array_equal(arrays[key], var.numpy())


def test_tampered_truncated_or_missing_files_are_refused(model, tmp_path):
  record = weights_lib.save_weights(model, str(tmp_path), "tiny")
  path = tmp_path / record.file
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(ZooError, match="refused, the file does not match its record"):
    weights_lib.read_verified(str(path), record)
  path.write_bytes(bytes(data[:-10]))
  with pytest.raises(ZooError, match="does not match"):
    weights_lib.read_verified(str(path), record)
  with pytest.raises(ZooError, match=r"cannot read \(No such file"):
    weights_lib.read_verified(str(tmp_path / "gone.npz"), record)


def test_weights_of_another_model_are_refused(model):
  arrays = {k: v.numpy() for k, v in weights_lib.variables_by_path(model).items()}
  missing = dict(arrays)
  missing.pop(sorted(missing)[0])
  with pytest.raises(ZooError, match="1 .* missing"):
    weights_lib.assign(model, missing, source="w.npz")
  with pytest.raises(ZooError, match="not in the model"):
    weights_lib.assign(model, dict(arrays, extra=np.zeros(3)), source="w.npz")
  key = sorted(arrays)[0]
  reshaped = dict(arrays, **{key: np.zeros(arrays[key].shape + (2,))})
  with pytest.raises(ZooError, match="has shape"):
    weights_lib.assign(model, reshaped, source="w.npz")
