"""Progress reporting shared by long runs (searches, supernet training,
validation runs): TensorBoard scalars written without TensorFlow, training
steps as log lines, and durations for humans."""
import os
import socket
import sys
import time
from typing import Callable, Dict


class ScalarEvents:
  """TensorBoard scalars without TensorFlow: event records written with
  TensorBoard's own record writer, so a search whose reward needs no
  TensorFlow never loads it. Each run of the driver adds one events file."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self.logdir = logdir
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._writer = RecordWriter(open(os.path.join(logdir, name), "ab"))
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in sorted(values.items())])
    self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    self._writer.close()

  def _write(self, event) -> None:
    self._writer.write(event.SerializeToString())
    self._writer.flush()


def format_duration(seconds: float) -> str:
  """42s, 3m10s, 2h05m."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def step_logger(label: str, every: int = 500, out=None) -> Callable[[int, int, float], None]:
  """A training loop's progress callback (step, steps, loss) that prints a
  line every `every` steps and at the last, with the time since the first."""
  start = time.perf_counter()

  def log(step: int, steps: int, loss: float) -> None:
    if step % every == 0 or step == steps:
      print(f"{label}: step {step}/{steps} loss {loss:.4f} "
            f"({format_duration(time.perf_counter() - start)})", file=out or sys.stderr,
            flush=True)
  return log
