"""What a run does when something goes wrong around it: one-line errors, the workdir lock,
graceful SIGINT / SIGTERM, and the cause of a failed write dug out of library noise.

  RunError          an error a user can act on; dermjax.main prints its message as one
                    line (no traceback) and exits with `exit_code`.
  WorkdirLock       fcntl.flock on <workdir>/.lock: one run per workdir; the OS drops the
                    lock when the process dies (kill -9 leaves no stale lock).
  StopSignals       the first SIGINT / SIGTERM asks the trainer to stop at the next step
                    boundary (it saves `latest` there); a second one exits at once.
  storage_error     the OSError (disk full, permission) buried in an exception chain, as
                    a one-line RunError; None for anything else.
  fail / command    the one `dermjax: error: ...` line and exit status of every command
                    (main, cv, evaluate, predict): `command(main)` wraps an absl main so
                    that a RunError, a bad dataset or a full / read-only disk ends in that
                    line instead of a traceback.
"""

import contextlib
import datetime
import errno
import fcntl
import logging as logging_lib
import os
import signal
import socket
import sys
import threading

from absl import logging

from dermjax.data.errors import DatasetError

LOCK_NAME = ".lock"
# errno values meaning "the storage refused the write".
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


class RunError(RuntimeError):
  """A failure with a known cause and way out; `str(e)` is the one line shown to the user."""

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code


class Interrupted(RunError):
  """SIGINT / SIGTERM stopped the run (after saving, when it was training)."""


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def writable_workdir(workdir: str) -> str:
  """Creates `workdir` (and parents) and checks a file can be written there; RunError if not."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise RunError(f"cannot write to workdir {workdir}: {e.strerror or e} "
                   "(choose a writable --workdir)") from None
  return workdir


class WorkdirLock:
  """Exclusive lock on <workdir>/.lock, held for the life of the object (or process).

  acquire() raises RunError naming the holder (pid, host, start time) when another live
  process holds it. The file's content is informational only; the lock is the flock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd = None

  def acquire(self):
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise RunError(f"cannot write to workdir {os.path.dirname(self.path)}: "
                     f"{e.strerror or e} (choose a writable --workdir)") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
      os.close(fd)
      raise RunError(f"workdir {os.path.dirname(self.path)} is in use by {holder}; wait for "
                     "that run to end or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n".encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the flock.
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


class StopSignals:
  """Context manager: SIGINT / SIGTERM set `requested` (the trainer stops at the next
  step boundary) while `deferred` is True; otherwise, or on a second signal, they stop
  the process at once (Interrupted raised in the main thread; os._exit for a second).

  No-op outside the main thread (signal handlers can only be installed there).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = None   # signal number of the first signal
    self.deferred = False   # True while training: finish the step, save, then stop.
    self._previous = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested is not None:
      print(f"{name} again: exiting now without saving", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.requested = signum
    if self.deferred:
      logging.warning("%s: finishing the current step and saving `latest` (send it again to "
                      "exit at once)", name)
      return
    raise Interrupted(f"stopped by {name} outside training (nothing to save); rerun the same "
                      "command to resume", exit_code=128 + signum)

  def __enter__(self):
    if not _main_thread():
      return self
    for signum in self.SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _chain(exc, seen=None):
  """exc and every exception reachable through __cause__, __context__ and groups."""
  seen = set() if seen is None else seen
  if exc is None or id(exc) in seen:
    return
  seen.add(id(exc))
  yield exc
  for inner in getattr(exc, "exceptions", ()) or ():
    yield from _chain(inner, seen)
  yield from _chain(exc.__cause__, seen)
  yield from _chain(exc.__context__, seen)


def _errno_in_text(exc):
  """errno named in an exception's text (tensorstore / orbax wrap OSErrors as strings)."""
  text = str(exc)
  for code in NO_SPACE + NO_ACCESS:
    if os.strerror(code) in text:
      return code
  return None


def storage_error(exc, doing: str):
  """RunError "<doing>: <cause> (<way out>)" if `exc` comes from a full or unwritable
  disk, anywhere in its chain; None otherwise."""
  for inner in _chain(exc):
    code = inner.errno if isinstance(inner, OSError) and inner.errno else _errno_in_text(inner)
    if code in NO_SPACE:
      where = getattr(inner, "filename", None)
      return RunError(f"{doing}: {os.strerror(code)}" + (f" ({where})" if where else "") +
                      "; free some space (or choose another --workdir) and rerun to resume")
    if code in NO_ACCESS:
      where = getattr(inner, "filename", None)
      return RunError(f"{doing}: {os.strerror(code)}" + (f" ({where})" if where else "") +
                      "; make the workdir writable (or choose another --workdir)")
  return None


class QuietFailures(logging_lib.Filter):
  """Drops the error records asyncio / orbax / tensorstore log while a save fails (the
  same traceback once per array); the trainer reports the cause itself in one line."""

  NOISY = ("asyncio", "orbax", "tensorstore", "absl")

  def filter(self, record):
    if record.levelno < logging_lib.ERROR:
      return True
    if record.name == "asyncio":
      return False
    return not (record.exc_info and any(part in record.pathname for part in
                                        ("/orbax/", "/asyncio/", "/tensorstore/")))


class FilteredStderr:
  """Wraps sys.stderr, dropping the traceback blocks tensorstore prints (PyErr_Print from
  its own threads, possibly interleaved) for each write still in flight when a failed save
  closed orbax's event loop: "RuntimeError: Event loop is closed", once per array. A
  block with any other exception, and everything outside blocks, passes through."""

  NOISE = ("RuntimeError: Event loop is closed",)
  _INSIDE = ("During handling of the above exception", "The above exception was")

  def __init__(self, stream):
    self._stream, self._pending = stream, ""
    self._block, self._open, self._errors = [], 0, []

  def write(self, text):
    self._pending += text
    while "\n" in self._pending:
      line, self._pending = self._pending.split("\n", 1)
      self._line(line + "\n")
    return len(text)

  def _line(self, line):
    if line.startswith("Traceback (most recent call last):"):
      self._block.append(line)
      self._open += 1
    elif not self._open:
      self._stream.write(line)
    else:
      self._block.append(line)
      if line.strip() and not line.startswith((" ", "\t", *self._INSIDE)):
        self._errors.append(line.strip())  # An exception line closes one traceback.
        self._open -= 1
        if not self._open:
          if any(error not in self.NOISE for error in self._errors):
            self._stream.write("".join(self._block))
          self._block, self._errors = [], []

  def flush(self):
    if self._pending and not self._open:
      self._stream.write(self._pending)
      self._pending = ""
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_failures():
  """Installs QuietFailures on the root and asyncio loggers (and absl's handler)."""
  quiet = QuietFailures()
  targets = [logging_lib.getLogger(), logging_lib.getLogger("asyncio")]
  handler = logging.get_absl_handler()
  for target in targets + [handler]:
    target.addFilter(quiet)
  try:
    yield
  finally:
    for target in targets + [handler]:
      target.removeFilter(quiet)


def fail(message: str, exit_code: int = 1):
  """Prints `message` as the command's last line on stderr and exits with `exit_code`."""
  logging.flush()
  print(f"dermjax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def dataset_message(error: DatasetError) -> str:
  """A DatasetError as the error text: one line for one problem; with several, the header
  line and one indented line per bad file (all of them: fix them in one pass)."""
  if len(error.problems) == 1:
    return f"{error.header}: {error.problems[0][0]}: {error.problems[0][1]}"
  return str(error)


def command(main, *, doing=lambda: "writing the results"):
  """absl `main` -> a main whose known failures end in one `dermjax: error:` line: a
  RunError (its exit status), a DatasetError (1), Ctrl-C (130), a full or read-only disk
  (1; `doing()` says what failed). Anything else is a bug and keeps its traceback."""

  def wrapped(argv):
    try:
      return main(argv)
    except RunError as e:
      fail(str(e), e.exit_code)
    except DatasetError as e:
      fail(dataset_message(e), 1)
    except KeyboardInterrupt:  # Ctrl-C in a command without StopSignals (evaluate, predict).
      fail("stopped by SIGINT; files are written whole or not at all: rerun the same command",
           128 + signal.SIGINT)
    except Exception as e:  # pylint: disable=broad-except
      error = storage_error(e, f"{doing()} failed")
      if error is None:
        raise
      fail(str(error), error.exit_code)

  return wrapped
