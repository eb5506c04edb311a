"""The SpineSearch model zoo: the SpineNet family and searched architectures
as RetinaNet detectors.

  import model_zoo
  model_zoo.list_models()                        # entry names
  detector = model_zoo.load("mobile-spinenet-49xs")
  detections = detector.predict(image)           # per image: boxes (pixels), scores, classes
                                                 # (min_score: the entry's calibrated threshold)
  detector.export_saved_model("exported/")       # serving signature on uint8 images
  config = detector.model_garden_config()        # Model Garden ExperimentConfig
  model_zoo.load_architecture("mobile-spinenet-49s")  # a name, entry file or architecture file

Listing and reading entries does not load TensorFlow; `load` does.
"""
import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)

from model_zoo.entry import (HeadSpec, NormActivation, ScoreThreshold, WeightsRecord, ZooEntry,
                             ZooError)
from model_zoo.registry import get_entry, list_models, load_architecture


def load(name: str, pretrained: bool = True, zoo_dir=None):
  """The zoo model `name` as a `Detector` (see `model_zoo.detector.load`)."""
  from model_zoo import detector
  return detector.load(name, pretrained=pretrained, zoo_dir=zoo_dir)


__all__ = ["HeadSpec", "NormActivation", "ScoreThreshold", "WeightsRecord", "ZooEntry", "ZooError",
           "get_entry", "list_models", "load", "load_architecture"]
