"""What the two in-process backends (transformers, llama.cpp) share: loading on first use with its progress as
notices, one generation at a time per model, the generation thread feeding a token streamer, incremental decoding
in batched updates, Stop at the next token, and unloading (after each reply unless "keep loaded").

A subclass provides:
    loaded                                   whether the model is in memory
    _load(progress) / _release() -> bool     load; drop every reference (True when something was loaded)
    _tokenize(messages) -> [int]             the chat template's prompt ids
    _handle()                                the loaded objects one reply uses (kept while it streams)
    _decoder(handle) -> IncrementalDecoder
    _job(handle, ids, params, streamer, criterion) -> callable
                                             run in the generation thread under the model's lock; it feeds
                                             `streamer.add(ids)` and ends when `criterion()` returns True
    _failure(exception) -> ChatError         optional: the message for a failure inside the job
"""

from __future__ import annotations

import gc
import json
import os
import queue
import threading

from lib_omost.llm.conversation import BUDGET_FULL, CONTEXT_TOKENS, ChatError, ChatParams


class StopOnEvent:
    """Checked after every token: True (end the generation) once `stop` (or our own abort) is set."""

    def __init__(self, stop: threading.Event, abort: threading.Event):
        self.stop, self.abort = stop, abort
        self.cancelled = False

    def __call__(self, *args, **kwargs):  # transformers passes (input_ids, scores)
        if self.stop.is_set() or self.abort.is_set():
            self.cancelled = True
            return True
        return False


class TokenStreamer:
    """Collects token ids in the generation thread; the consumer decodes them incrementally, in batches.
    `put`/`end` make it a transformers streamer (TextIteratorStreamer decodes the whole line on every token inside
    generate()'s thread, which costs a quarter of a small model's throughput)."""

    def __init__(self):
        self.ids = []
        self.prompt_seen = False
        self.waiting = False  # the model is writing another chat's reply; this one starts after it
        self.ended = threading.Event()
        self._cond = threading.Condition()

    def set_waiting(self, waiting: bool):
        with self._cond:
            self.waiting = waiting
            self._cond.notify()

    def add(self, ids):
        with self._cond:
            self.ids.extend(ids)
            self._cond.notify()

    def put(self, value):
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.add(value.reshape(-1).tolist())

    def end(self):
        with self._cond:
            self.ended.set()
            self._cond.notify()

    def wait(self, seen: int, waiting: bool = False) -> tuple:
        """Block until there are more than `seen` ids, the end, or `waiting` changed; returns (ids so far, ended,
        waiting)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.ids) > seen or self.ended.is_set() or self.waiting != waiting)
            return list(self.ids), self.ended.is_set(), self.waiting


class IncrementalDecoder:
    """Text deltas from a growing id list, decoding only a short window each time (the offsets method of TGI and
    vLLM): a delta is released once it no longer ends in an incomplete UTF-8 character. `decode(ids) -> str`."""

    def __init__(self, decode):
        self.decode = decode
        self.prefix = 0  # start of the context window
        self.read = 0    # ids up to here have been released as text

    def delta(self, ids: list, final: bool = False) -> str:
        if len(ids) <= self.read:
            return ''
        before = self.decode(ids[self.prefix:self.read])
        after = self.decode(ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith('\ufffd')):
            self.prefix, self.read = self.read, len(ids)
            return after[len(before):]
        return ''


WAITING_NOTICE = 'Waiting for another reply to finish (the in-process model writes one reply at a time)...'


def one_line(e: Exception) -> str:
    return ' '.join(str(e).split())[:300] or type(e).__name__


class InProcessBackend:
    kind = 'in-process'
    update_interval = 0.05  # seconds between streamed updates; tokens arriving meanwhile are batched

    def __init__(self, name: str, models_dir: str | None, keep_loaded: bool, context_tokens: int = CONTEXT_TOKENS):
        self.name = (name or '').strip()
        self.models_dir = models_dir or os.path.join('models', 'omost')
        self.keep_loaded = keep_loaded
        self.context_tokens = int(context_tokens)
        self._encoded = None
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------------------

    def load(self, progress=None):
        with self._lock:
            if not self.loaded:
                self._encoded = None
                self._load(progress)

    def unload(self):
        """Drop the model so diffusion gets its memory back."""
        with self._lock:
            had = self._release()
            self._encoded = None
        if had:
            gc.collect()
        return had

    def _load_reporting(self):
        """Load (download first if needed) in a thread, passing its progress lines on as notices."""
        lines, failure = queue.Queue(), []

        def run():
            try:
                self.load(progress=lines.put)
            except BaseException as e:  # noqa: BLE001 - re-raised in the streaming thread
                failure.append(e)
            finally:
                lines.put(None)

        threading.Thread(target=run, name='omost-llm-load', daemon=True).start()
        for line in iter(lines.get, None):
            yield 'notice', line
        if failure:
            raise failure[0]

    # -- engine interface ----------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Loading, or writing a reply (another chat's reply waits for it)."""
        return self._lock.locked()

    def prompt_ids(self, messages: list) -> list:
        """The chat template's prompt ids; the last result is kept (the engine counts, then streams). Read once:
        another session's chat may replace it meanwhile, and must never hand this one its prompt."""
        key = json.dumps(messages, ensure_ascii=False)
        encoded = self._encoded
        if encoded is not None and encoded[0] == key:
            return encoded[1]
        ids = [int(i) for i in self._tokenize(messages)]
        self._encoded = (key, ids)
        return ids

    def count_tokens(self, messages: list):
        if not self.loaded:  # not loaded yet: estimate now, stream() checks exactly after loading
            return sum(len(m['content']) for m in messages) // 4 + 4 * len(messages), False
        return len(self.prompt_ids(messages)), True

    def _failure(self, e: Exception) -> ChatError:
        return e if isinstance(e, ChatError) else ChatError(f'The model failed while writing: '
                                                            f'{type(e).__name__}: {one_line(e)}')

    def stream(self, messages: list, params: ChatParams, stop: threading.Event):
        # No lock is held across a yield (a UI may abandon this generator in another thread): loading and the
        # generation take the lock in their own threads, so chats on one model queue up instead.
        if not self.loaded:
            yield from self._load_reporting()
        handle = self._handle()
        if handle is None:
            raise ChatError(f'{self.name} was unloaded before the chat could start; send the message again.')
        ids = self.prompt_ids(messages)
        if len(ids) >= self.context_tokens:
            raise ChatError(BUDGET_FULL.format(n=len(ids), limit=self.context_tokens))
        abort = threading.Event()
        criterion = StopOnEvent(stop, abort)
        streamer = TokenStreamer()
        job = self._job(handle, ids, params, streamer, criterion)
        failure = []

        def run():
            try:
                if not self._lock.acquire(blocking=False):  # another chat's reply: say so, then queue behind it
                    streamer.set_waiting(True)
                    while not self._lock.acquire(timeout=0.1):
                        if criterion():  # Stop while waiting (or the consumer left): never start
                            return
                try:
                    streamer.set_waiting(False)
                    if not abort.is_set():
                        job()
                finally:
                    self._lock.release()
            except Exception as e:  # noqa: BLE001 - reported to the user by the consuming thread
                failure.append(e)
            finally:
                streamer.end()

        thread = threading.Thread(target=run, name='omost-llm-generate', daemon=True)
        thread.start()
        try:
            decoder, ended, out, waiting = self._decoder(handle), False, [], False
            while not ended:
                was_waiting, seen = waiting, len(out)
                out, ended, waiting = streamer.wait(seen, waiting)
                if waiting != was_waiting:
                    yield 'notice', WAITING_NOTICE if waiting else ''
                if len(out) == seen and not ended:
                    continue  # only the wait began or ended (no token yet: the rate counts from the first)
                text = decoder.delta(out, final=ended)
                yield 'tokens', len(out)
                if text:
                    yield 'text', text
                if not ended:
                    streamer.ended.wait(self.update_interval)  # let tokens gather: fewer decodes and updates
            thread.join()
            if failure:
                raise self._failure(failure[0])
            if not criterion.cancelled:
                yield 'finish', 'length' if len(out) >= params.max_new_tokens else 'stop'
        finally:
            abort.set()  # the consumer went away (or finished): end the generation at the next token
            thread.join()
            del job, streamer, thread, handle, run
            if not self.keep_loaded:
                self.unload()
