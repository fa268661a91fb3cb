"""Metric output without TensorFlow: TensorBoard event files, a JSONL log, a progress line.

TensorBoard files are written with the `tensorboard` package's own EventFileWriter and
protos (the path PyTorch's SummaryWriter takes), so `tensorboard --logdir` reads them.
"""

import io
import json
import logging as logging_lib
import math
import os
import time

import numpy as np
from absl import app
from absl import logging
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from dermjax import fileio


def _jsonable(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else value
  return value


class SummaryWriter:
  """Scalars (and images) to TensorBoard event files under `logdir`, plus `logdir`/metrics.jsonl.

  Only process 0 of a multi-host run should write: pass `enabled=False` elsewhere.
  """

  def __init__(self, logdir: str, *, enabled: bool = True, flush_secs: int = 30,
               resume_step: int | None = None):
    self.logdir, self.enabled = logdir, enabled
    self._events = self._jsonl = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      if resume_step is not None:
        truncate_jsonl(os.path.join(logdir, "metrics.jsonl"), resume_step)
      self._events = EventFileWriter(logdir, flush_secs=flush_secs)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def _add(self, step: int, values):
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values))
    self._events.add_event(event)

  def write_scalars(self, step: int, scalars: dict):
    """scalars: {tag: number}. Non-finite values go to TensorBoard as they are, to JSONL as null."""
    if not self.enabled or not scalars:
      return
    self._add(step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                     for tag, v in scalars.items()])
    record = {"step": int(step), **{k: _jsonable(float(v)) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_images(self, step: int, images: dict):
    """images: {tag: uint8 [H, W, 3] or [H, W]} as PNG image summaries."""
    if not self.enabled or not images:
      return
    values = []
    for tag, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8:
        raise ValueError(f"write_images: {tag!r} must be uint8, got {image.dtype}")
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, format="PNG")
      values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
          height=image.shape[0], width=image.shape[1],
          colorspace=1 if image.ndim == 2 else image.shape[2], encoded_image_string=buf.getvalue())))
    self._add(step, values)

  def flush(self):
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self):
    if self.enabled:
      self._events.close()
      self._jsonl.close()
      self.enabled = False


def truncate_jsonl(path: str, resume_step: int) -> int:
  """Drops the rows a resumed run will write again from metrics.jsonl (atomically): rows
  after `resume_step`, final-evaluation rows (tags "final_*") and a torn last line.
  Returns the number of rows dropped."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
        keep = row["step"] <= resume_step and not any(k.startswith("final_") for k in row)
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    fileio.write_text(path, "".join(kept))
  return dropped


class Progress:
  """Progress line with steps/s and ETA: `progress(step)` returns it (and logs it)."""

  def __init__(self, total_steps: int, start_step: int = 0):
    self.total_steps = total_steps
    self._last_step, self._last_time = start_step, time.perf_counter()

  def __call__(self, step: int, extra: str = "") -> tuple[float, str]:
    now = time.perf_counter()
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
    line = (f"step {step}/{self.total_steps} ({100.0 * step / max(self.total_steps, 1):.1f}%) "
            f"{steps_per_sec:.2f} steps/s, ETA {format_seconds(eta)}" + (f" | {extra}" if extra else ""))
    logging.info(line)
    return steps_per_sec, line


def format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/array_record/")


class QuietLibraries(logging_lib.Filter):
  """Drops INFO (and lower) records of chatty libraries (orbax logs every manager setting)."""

  def filter(self, record):
    return record.levelno > logging_lib.INFO or not any(
        part in record.pathname for part in QUIET_LIBRARIES)


def quiet_libraries():
  """Installs QuietLibraries on absl's log handler (the entry points call it first)."""
  logging.get_absl_handler().addFilter(QuietLibraries())


def start_command(argv, flag_values, required=()):
  """The preamble of an absl command's main: no positional arguments, quiet libraries, and
  every flag named in `required` given (one UsageError naming all missing ones)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_libraries()
  missing = [f"--{name}" for name in required if getattr(flag_values, name) in (None, "")]
  if missing:
    raise app.UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
