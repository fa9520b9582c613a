"""The training iterator: shuffled, packed batches of one process's shard.

Each batch is a pure function of a small state (the epoch and the position in
its shuffled order), so that a checkpoint of ``get_state()`` resumes exactly.
Making a batch has two steps:

  plan      where the batch starts and ends in the epoch's order and where
            each pair goes (first-fit packing, numba, microseconds); plans
            follow each other, since a batch starts where the last ended;
  assemble  copying the planned pairs' ids from the mmapped token cache into
            the batch arrays (numba, without the GIL); batches are assembled
            in parallel by ``data.workers`` threads.

A background thread plans ``data.prefetch`` batches ahead and hands them to
the workers; the iterator returns them in order.
"""

import concurrent.futures
import json
import queue
import threading

import numpy as np
from absl import logging

from transformer.data import packing, token_cache
from transformer.data import sources as sources_lib

# Row lengths of data.batching="bucket" (capped at data.max_length).
_BUCKETS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def _bucket_length(n):
  for length in _BUCKETS:
    if n <= length:
      return length
  return int(2 ** np.ceil(np.log2(n)))


class _Batcher:
  """Plans and assembles one process's batches from the iterator state."""

  def __init__(self, data, pair_indices, *, batching, seed, process_index,
               shapes, bucket_weights=None):
    self.data = data
    # The shard in corpus order, and its lengths with EOS (int32: 12 bytes a
    # pair, 432 MB for a 36M-pair shard).
    self.pairs = np.asarray(pair_indices, np.int64)
    self.source_lengths = (data.source_lengths[self.pairs] + 1).astype(np.int32)
    self.target_lengths = (data.target_lengths[self.pairs] + 1).astype(np.int32)
    self.batching = batching
    self.seed = seed
    self.process_index = process_index
    self.shapes = list(shapes)  # (rows, length) per bucket; one for "pack".
    if batching == "bucket":
      longest = np.maximum(self.source_lengths, self.target_lengths)
      bucket_of = np.searchsorted([length for _, length in self.shapes],
                                  longest)
      self.bucket_members = [np.flatnonzero(bucket_of == b)
                             for b in range(len(self.shapes))]
      weights = np.asarray(bucket_weights, np.float64)
      self.bucket_probabilities = weights / weights.sum()
    self._orders = {}
    self._lock = threading.Lock()

  def order(self, epoch, bucket=-1):
    """The shuffled shard (or bucket of it) of an epoch, as (positions in the
    shard, their source lengths, their target lengths): a function of the
    seed, the epoch and the process."""
    key = (epoch, bucket)
    with self._lock:
      if key not in self._orders:
        # Keep this epoch and the one before (the prefetch may straddle them).
        for old in [k for k in self._orders
                    if k[1] == bucket and not epoch - 1 <= k[0] <= epoch]:
          del self._orders[old]
        rng = np.random.default_rng(
            [self.seed, epoch, self.process_index, bucket + 1])
        members = (np.arange(len(self.pairs), dtype=np.int32) if bucket < 0
                   else self.bucket_members[bucket])
        order = members[rng.permutation(len(members))]
        self._orders[key] = (order, self.source_lengths[order],
                             self.target_lengths[order])
      return self._orders[key]

  def plan(self, state):
    """Returns (plan of the next batch, state after it)."""
    state = json.loads(json.dumps(state))
    if self.batching == "pack":
      return self._plan_packed(state)
    return self._plan_bucketed(state)

  def assemble(self, plan):
    """The batch arrays of a plan (safe to call from several threads)."""
    pairs, rows, length, placement = plan
    if placement is None:
      return packing.fill_one_per_row(self.data, self.pairs[pairs], rows,
                                      length, length)
    return packing.fill(self.data, self.pairs[pairs], *placement, rows, length,
                        length)

  def next_batch(self, state):
    """Returns (batch, state after it)."""
    plan, state = self.plan(state)
    return self.assemble(plan), state

  def _plan_packed(self, state):
    """First-fit packing of the next pairs of the epoch's shuffled order.

    A batch is a contiguous run of the order: each pair goes to the first row
    with room on both sides, and the batch closes at the first pair that fits
    in no row, or at the end of the epoch (whose last batch may be part-full).
    """
    order, source_lengths, target_lengths = self.order(state["epoch"])
    (rows, length), = self.shapes
    start = state["position"]
    end, *placement = packing.first_fit(source_lengths, target_lengths, start,
                                        rows, length)
    if end == len(order):
      state["epoch"] += 1
      end = 0
    state["position"] = int(end)
    return (order[start:start + len(placement[0])], rows, length,
            placement), state

  def _plan_bucketed(self, state):
    """One length bucket per step, drawn from a schedule shared by all
    processes (so that their shapes agree), filled from this process's
    shuffled pairs of that bucket, one pair per row. Each bucket has its own
    epochs."""
    step = state["step"]
    bucket = int(np.random.default_rng([self.seed, step, 1 << 20]).choice(
        len(self.shapes), p=self.bucket_probabilities))
    rows, length = self.shapes[bucket]
    epoch, position = state["buckets"][bucket]
    taken = []
    needed = rows
    while needed:
      order = self.order(epoch, bucket)[0]
      if position >= len(order):
        epoch, position = epoch + 1, 0
        continue
      part = order[position:position + needed]
      taken.append(part)
      position += len(part)
      needed -= len(part)
    state["buckets"][bucket] = [epoch, position]
    state["step"] = step + 1
    return (np.concatenate(taken), rows, length, None), state


def _produce(batcher, state, out, stop, pool):
  """The prefetch thread: plans batches ahead, in order, into ``out`` (each a
  worker's future, or the batch itself without workers) until ``stop``."""
  try:
    while not stop.is_set():
      plan, state = batcher.plan(state)
      batch = (pool.submit(batcher.assemble, plan) if pool else
               batcher.assemble(plan))
      while not stop.is_set():
        try:
          out.put((batch, state), timeout=0.1)
          break
        except queue.Full:
          pass
  except Exception as e:  # pylint: disable=broad-except
    out.put((e, None))  # Raised in the consumer.


class TrainIterator:
  """Endless training batches of one process; see the package docstring.

  The state it reports is that of the batches already returned, not of those
  prefetched, so a checkpoint of ``get_state()`` resumes exactly.
  """

  def __init__(self, batcher, *, process_count, prefetch, workers):
    self._batcher = batcher
    self._process_count = process_count
    self._prefetch = prefetch
    self._workers = workers
    shapes = batcher.shapes
    self.batch_shape = shapes[0] if batcher.batching == "pack" else None
    self.batch_shapes = list(shapes)
    self.num_pairs = len(batcher.pairs)  # This process's shard.
    self._state = self._initial_state()
    self._real_tokens = self._slots = self._batches = 0
    self._thread = self._queue = self._stop = self._pool = None
    self._start()

  # -- State ------------------------------------------------------------------

  def _initial_state(self):
    b = self._batcher
    state = {"batching": b.batching, "seed": b.seed,
             "process_index": b.process_index,
             "process_count": self._process_count, "num_pairs": len(b.pairs)}
    if b.batching == "pack":
      state.update(epoch=0, position=0)
    else:
      state.update(step=0, buckets=[[0, 0] for _ in b.shapes])
    return state

  def get_state(self):
    """Where the next batch starts (JSON-serializable, this process only)."""
    return json.loads(json.dumps(self._state))

  def set_state(self, state):
    """Resumes so that the next batches are those that followed ``state``."""
    expected = self._initial_state()
    for key in ("batching", "seed", "process_index", "process_count",
                "num_pairs"):
      if state.get(key) != expected[key]:
        raise ValueError(
            f"Cannot restore the data iterator: its saved {key}="
            f"{state.get(key)!r} differs from this run's {expected[key]!r} "
            "(the data, data.seed, data.batching, data.max_length or the "
            "number of processes changed since the checkpoint).")
    if len(state.get("buckets", ())) != len(expected.get("buckets", ())):
      raise ValueError(
          "Cannot restore the data iterator: it was saved with "
          f"{len(state['buckets'])} length buckets, this run has "
          f"{len(expected['buckets'])} (data.max_length or the data changed).")
    self._stop_thread()
    self._state = json.loads(json.dumps(state))
    self._start()

  @property
  def epoch(self):
    """Epochs completed over this process's shard (the least-advanced bucket
    for "bucket")."""
    if self._batcher.batching == "pack":
      return self._state["epoch"]
    return min(epoch for epoch, _ in self._state["buckets"])

  @property
  def padding_efficiency(self):
    """Real tokens / slots over the batches returned so far."""
    return self._real_tokens / max(self._slots, 1)

  # -- Prefetch ---------------------------------------------------------------

  def _start(self):
    if self._prefetch <= 0:
      return
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    if self._workers > 0:
      self._pool = concurrent.futures.ThreadPoolExecutor(
          self._workers, thread_name_prefix="TrainIteratorWorker")
    # The thread holds the batcher, not the iterator, so that an iterator
    # dropped without close() is collected and its threads stopped.
    self._thread = threading.Thread(
        target=_produce, args=(self._batcher, self._state, self._queue,
                               self._stop, self._pool),
        daemon=True, name="TrainIteratorPrefetch")
    self._thread.start()

  def _stop_thread(self):
    if self._thread is None:
      return
    self._stop.set()
    while True:  # Unblock the producer.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()
    self._thread = None
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def close(self):
    """Stops the prefetch thread and the workers."""
    self._stop_thread()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  # -- Iteration ---------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self):
    if self._prefetch <= 0:
      batch, state = self._batcher.next_batch(self._state)
    else:
      if self._thread is None:
        self._start()
      batch, state = self._queue.get()
      if isinstance(batch, Exception):
        self._stop_thread()
        raise batch
      if isinstance(batch, concurrent.futures.Future):
        batch = batch.result()
    previous_epoch = self.epoch
    self._state = state
    self._batches += 1
    real, slots = packing.token_counts(batch)
    self._real_tokens += real
    self._slots += slots
    if self._batches == 100 or self.epoch != previous_epoch:
      logging.info(
          "Train data (process %d): %d batches, %d epochs done, padding "
          "efficiency %.1f%% (real tokens / slots).",
          self._batcher.process_index, self._batches, self.epoch,
          100 * self.padding_efficiency)
    return batch


def rows_for(budget, length, row_multiple, what="data.max_length"):
  """Rows of ``length`` tokens in a batch of ``budget`` tokens per side: a
  multiple of ``row_multiple`` (one error naming the fix when that is 0)."""
  rows = budget // length // row_multiple * row_multiple
  if rows < 1:
    raise ValueError(
        f"data.batch_tokens gives {budget} tokens per process, too few for "
        f"{row_multiple} row(s) of {length} tokens ({what}); raise "
        "data.batch_tokens or lower data.max_length.")
  return rows


def make_train_iterator(data_config, tokenizer, workdir, *, process_index=0,
                        process_count=1, row_multiple=1):
  """This process's endless training batches; see the package docstring."""
  sources_lib.check_config(data_config)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, {process_count}).")
  if data_config.workers < 0:
    raise ValueError(f"data.workers={data_config.workers} must be >= 0 (0: the prefetch "
                     "thread assembles the batches itself).")
  data = token_cache.tokenize_split(data_config, tokenizer, workdir, data_config.train_split)
  source_lengths = data.source_lengths
  target_lengths = data.target_lengths
  empty = (source_lengths == 0) | (target_lengths == 0)
  too_long = ~empty & ((source_lengths + 1 > data_config.max_length) |
                       (target_lengths + 1 > data_config.max_length))
  kept = np.flatnonzero(~empty & ~too_long)
  logging.info(
      "Training pairs of %s: %d kept, %d dropped as empty, %d dropped as "
      "longer than data.max_length=%d tokens.", sources_lib.dataset_name(data_config),
      len(kept), int(empty.sum()), int(too_long.sum()), data_config.max_length)
  if len(kept) < process_count:
    raise ValueError(
        f"Only {len(kept)} of {len(data)} training pairs of "
        f"{sources_lib.dataset_name(data_config)} remain after dropping "
        f"{int(empty.sum())} empty and {int(too_long.sum())} longer than "
        f"data.max_length={data_config.max_length}; need at least one per process "
        f"({process_count}).")
  shard = kept[process_index::process_count]
  budget = data_config.batch_tokens // process_count
  options = dict(seed=data_config.seed, process_index=process_index)
  if data_config.batching == "pack":
    rows = rows_for(budget, data_config.max_length, row_multiple, "data.max_length")
    batcher = _Batcher(data, shard, batching="pack",
                       shapes=[(rows, data_config.max_length)], **options)
  else:
    # "bucket": one set of length buckets for all processes, each weighted by
    # its share of the global batches. A bucket that some process's shard
    # lacks is merged into a neighbour, so that every process can fill every
    # shape.
    longest = np.maximum(source_lengths[kept], target_lengths[kept]) + 1
    lengths = sorted({min(_bucket_length(n), data_config.max_length) for n in longest})
    while True:
      bucket_of = np.searchsorted(lengths, longest)
      missing = [b for b in range(len(lengths)) if not all(
          np.any(bucket_of[p::process_count] == b)
          for p in range(process_count))]
      if not missing:
        break
      b = missing[0]
      del lengths[b if b < len(lengths) - 1 else b - 1]
    shapes, weights = [], []
    for b, length in enumerate(lengths):
      rows = rows_for(budget, length, row_multiple,
                       f"bucket of length {length}")
      shapes.append((rows, length))
      weights.append(np.count_nonzero(bucket_of == b) / rows)
    batcher = _Batcher(data, shard, batching="bucket", shapes=shapes,
                       bucket_weights=weights, **options)
  return TrainIterator(batcher, process_count=process_count,
                       prefetch=data_config.prefetch, workers=data_config.workers)
