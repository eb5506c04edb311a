"""How much the libraries under SpineSearch say on stderr.

TensorFlow, Model Garden and absl write pages of INFO and WARNING lines that
a user of our command-line tools does not need: the COCO evaluator's "Using
annotation file", grappler's "Starting new session" and "Number of eligible
GPUs", deprecation notices, tf.function retracing warnings. `configure` keeps
stderr to errors unless the user asks for more with absl's standard levels
(`--verbosity` / `-v`): -1 warnings, 0 info, 1 and up debug.

The lines come from four places, each with its own switch:

- Python logging: absl's verbosity sets the root and `absl` loggers; the
  `tensorflow` logger is set too, since TensorFlow may give it its own handler.
- TensorFlow's C++ logging (tsl): TF_CPP_MIN_LOG_LEVEL, which `import
  spinesearch` sets to 3 unless the user did. TensorFlow reads it when it
  first logs, at import, so an explicit verbosity only reaches it from a tool
  that has not imported TensorFlow yet.
- Abseil's C++ logging, which grappler (`single_machine.cc`, `devices.cc`)
  writes to: it ignores TF_CPP_MIN_LOG_LEVEL and TF_CPP_MAX_VLOG_LEVEL, and
  before `absl::InitializeLog()` (which TensorFlow never calls) it writes
  everything to stderr whatever the stderr threshold. Only
  `absl::SetMinLogLevel` silences it; nothing in TensorFlow's Python API
  reaches that, so it is called through ctypes. By default it follows
  TF_CPP_MIN_LOG_LEVEL, so one variable governs all of TensorFlow's C++ side.
- Python warnings, unless the user chose filters (-W, PYTHONWARNINGS).
"""
import ctypes
import importlib.util
import logging
import os
import sys
import warnings
from typing import Optional

from absl import flags
from absl import logging as absl_logging
from absl.logging import converter

# What stderr shows when the user does not say: errors (absl's level -2).
DEFAULT_VERBOSITY = absl_logging.ERROR
# absl::SetMinLogLevel as exported by TensorFlow 2.20's bundled Abseil; the
# mangled name carries Abseil's LTS release, so another TensorFlow build may
# need its name added here (until then its grappler INFO lines come back).
_ABSL_SET_MIN_LOG_LEVEL = ("_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE",)
_FRAMEWORK_LIBRARY = {"linux": "libtensorflow_framework.so.2",
                      "darwin": "libtensorflow_framework.2.dylib"}


def configure(verbosity: Optional[int] = None) -> None:
  """Sets what TensorFlow, Model Garden, absl and Python warnings write to
  stderr. `verbosity` is in absl's levels (-3 fatal, -2 error, -1 warning,
  0 info, 1+ debug). None means the `--verbosity` / `-v` the user gave an
  absl tool (whose flags are parsed by now), or errors only if none.

  Call it before the tool imports TensorFlow: an explicit verbosity then also
  sets TF_CPP_MIN_LOG_LEVEL, which TensorFlow reads at import.
  """
  if verbosity is None:
    verbosity = _absl_flag_verbosity()
  if verbosity is None:
    level, severity = DEFAULT_VERBOSITY, _tf_cpp_min_log_level()
  else:
    level, severity = verbosity, _cpp_severity(verbosity)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(severity)
  _set_python_logging(level)
  _set_absl_cpp_min_log_level(severity)
  if level < absl_logging.WARNING and not sys.warnoptions:
    warnings.simplefilter("ignore")


def _absl_flag_verbosity() -> Optional[int]:
  """The --verbosity / -v the user gave an absl tool, or None. (absl's own
  default under app.run is info, which is what this module exists to avoid.)"""
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return flags.FLAGS.verbosity
  return None


def _set_python_logging(level: int) -> None:
  # A tool without absl's app.run (argparse) gets absl's handler on the root
  # logger, so that `-v 0` shows INFO lines as absl tools do; a process whose
  # root logger already has handlers (pytest, an embedding program) keeps them.
  if not logging.root.handlers:
    absl_logging.use_absl_handler()
  absl_logging.set_verbosity(level)
  logging.getLogger("tensorflow").setLevel(converter.absl_to_standard(level))


def _cpp_severity(level: int) -> int:
  """absl's verbosity as a C++ severity (0 info ... 3 fatal), the scale of
  TF_CPP_MIN_LOG_LEVEL and absl::LogSeverityAtLeast."""
  return min(3, max(0, -level))


def _tf_cpp_min_log_level() -> int:
  """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: unset or not a number is 0."""
  try:
    return min(3, max(0, int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))))
  except ValueError:
    return 0


def _set_absl_cpp_min_log_level(severity: int) -> None:
  """absl::SetMinLogLevel(severity) in TensorFlow's framework library. The
  library is loaded (without TensorFlow's Python side, about 50 ms) if it is
  not already; a TensorFlow build without the symbol is left as it is."""
  library = _FRAMEWORK_LIBRARY.get(sys.platform)
  spec = importlib.util.find_spec("tensorflow")
  if library is None or spec is None or not spec.submodule_search_locations:
    return
  try:
    # Local symbols: loaded global before TensorFlow is imported, the library's
    # own OpenSSL symbols would take the place of Python's and crash the
    # import of hashlib (seen here). TensorFlow's later load of the library
    # is this same one.
    framework = ctypes.CDLL(os.path.join(spec.submodule_search_locations[0], library),
                            mode=ctypes.RTLD_LOCAL)
  except OSError:
    return
  for symbol in _ABSL_SET_MIN_LOG_LEVEL:
    set_min_log_level = getattr(framework, symbol, None)
    if set_min_log_level is not None:
      set_min_log_level.argtypes = [ctypes.c_int]
      set_min_log_level.restype = None
      set_min_log_level(severity)
      return
