"""SentencePiece encoding in worker processes, for the token-id cache build.

SentencePiece's own batch encode runs its threads without the GIL, but turns
their output into Python lists on one thread, and the cache build then
flattens those lists into arrays, also on one thread, while the encoding
threads wait. Here each worker process encodes one side of a chunk of pairs
on one core and flattens it itself, so that every part of the work runs on
every core, and the parent only reads the text and writes the arrays.

A worker is this file run as a script (``python -P encode_worker.py``), not a
``multiprocessing`` child: a spawned child re-imports the caller's
``__main__``, which a library cannot ask every caller to guard, and this way
a worker imports numpy and sentencepiece only. It reads pickled messages on
stdin and answers each on stdout: first the tokenizer's serialized model and
the id dtype, then one list of texts at a time (one side of a chunk of
pairs), answered by its ``(ids, lengths)`` arrays. It exits at the end of its
input, so a parent that dies (even by SIGKILL) takes its workers with it.
"""

import collections
import itertools
import os
import pickle
import signal
import subprocess
import sys

import numpy as np


def flatten(ids, dtype):
  """SentencePiece's list of id lists -> (concatenated ids, lengths)."""
  lengths = np.fromiter(map(len, ids), np.int64, len(ids))
  flat = np.fromiter(itertools.chain.from_iterable(ids), dtype, int(lengths.sum()))
  return flat, lengths


def usable_cores():
  """Cores this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


class Pool:
  """``workers`` encoding processes (default: one per usable core); a context
  manager that ends them on exit."""

  def __init__(self, tokenizer, dtype, workers=None):
    workers = workers or usable_cores()
    command = [sys.executable, "-P", os.path.abspath(__file__)]
    setup = pickle.dumps((tokenizer.serialized_model(), np.dtype(dtype).str))
    self._processes = []
    try:
      for _ in range(workers):
        self._processes.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
      for process in self._processes:  # Once all have started: they import in parallel.
        self._send(process, setup)
    except BaseException:
      self.close()
      raise

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def close(self):
    """Kills and reaps the workers: idle ones at the end of a build, busy ones
    when the build stops in the middle (an error, Ctrl-C)."""
    for process in self._processes:
      if process.poll() is None:
        process.kill()
      process.wait()
      for stream in (process.stdin, process.stdout):
        try:
          stream.close()
        except OSError:
          pass
    self._processes = []

  def imap(self, texts_lists):
    """Yields, in order, ``(ids, lengths)`` of each list of texts. At most one
    list per worker is in flight, and the next list is read while the
    workers encode."""
    idle = collections.deque(self._processes)
    busy = collections.deque()  # Oldest list first.
    for texts in texts_lists:
      message = pickle.dumps(texts, protocol=pickle.HIGHEST_PROTOCOL)
      result = None
      if not idle:
        process = busy.popleft()
        result = self._receive(process)
        idle.append(process)
      process = idle.popleft()
      self._send(process, message)
      busy.append(process)
      if result is not None:
        yield result
    while busy:
      yield self._receive(busy.popleft())

  def _send(self, process, message):
    try:
      process.stdin.write(message)
      process.stdin.flush()
    except BrokenPipeError:
      self._failed(process)

  def _receive(self, process):
    try:
      return pickle.load(process.stdout)
    except EOFError:
      self._failed(process)

  def _failed(self, process):
    code = process.wait()
    raise RuntimeError(
        f"A tokenization worker (pid {process.pid}) exited with code {code} before "
        "finishing its chunk (its error, if it printed one, is above). A killed worker "
        "is usually out of memory; the cache was not written.")


def _serve():
  """The worker's loop (see the module docstring)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  # Ctrl-C reaches the whole process group: the parent handles it and ends
  # its workers, so they ignore it rather than print tracebacks.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # Answers go to the original stdout; anything else printed there goes to
  # stderr, so that it cannot corrupt the answers.
  stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  try:
    model, dtype = pickle.load(stdin)
    processor = spm.SentencePieceProcessor(model_proto=model)
    while True:
      texts = pickle.load(stdin)
      answer = flatten(processor.encode(texts, out_type=int, num_threads=1), dtype)
      pickle.dump(answer, stdout, protocol=pickle.HIGHEST_PROTOCOL)
      stdout.flush()
  except EOFError:  # The parent is done, or gone.
    return
  except BrokenPipeError:  # The parent is gone.
    os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
  _serve()
