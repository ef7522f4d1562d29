"""What the two in-process backends (transformers, llama.cpp) share: loading on first use with its progress as
notices, one generation at a time per model, the generation thread feeding a token streamer, incremental decoding
in batched updates, Stop at the next token, and unloading (after each reply unless "keep loaded").

A subclass provides:
    loaded                                   whether the model is in memory
    _load(progress) / _release() -> bool     load; drop every reference (True when something was loaded)
    _tokenize(messages) -> [int]             the chat template's prompt ids
    _handle()                                the loaded objects one reply uses (kept while it streams)
    _decoder(handle) -> IncrementalDecoder
    _job(handle, ids, params, streamer, criterion, stats) -> callable
                                             run in the generation thread under the model's lock; it feeds
                                             `streamer.add(ids)`, ends when `criterion()` returns True and
                                             fills `stats` (new_stats())
    _failure(exception) -> ChatError         optional: the message for a failure inside the job

Both backends keep the model's state between replies when the model stays loaded (`reuse_prompt`): a reply
evaluates only the prompt tokens after the longest prefix shared with what the model evaluated last, so turn 2 of
a chat re-reads only the new user message. Greedy replies (temperature 0) may draft tokens by prompt lookup
(`draft`): the continuation of the latest earlier occurrence of the last 3 (else 2, else 1) tokens of the
conversation is verified in one forward pass, the longest prefix that agrees with the model's own greedy choices is
kept, and the rest is dropped from the model's state; the reply is token for token the greedy reply. Sampling
always decodes one token per forward pass.

Each stream ends with ('stats', {...}) before ('finish', ...): prompt_tokens, prompt_reused, model_calls (forward
passes after the prompt's evaluation), drafted, accepted, reply_tokens.

`logits_hook` (benchmarks and tests only, default None): `hook(ids, logits) -> logits`, applied to the logits
row that predicts the token after `ids` (the full id list so far) wherever the backend picks a token, drafted
positions included. The benchmark uses it to make a real-size random model replay a real transcript.
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


DRAFT_MODES = ('auto', 'on', 'off')
DRAFT_MAX = 10  # tokens drafted per forward pass at most


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptLookup:
    """Draft tokens from the conversation itself: the tokens that followed the latest earlier occurrence of the
    last 3 (else 2, else 1) ids. An index of n-grams by their latest end keeps each lookup O(1)."""

    ORDERS = (3, 2, 1)

    def __init__(self):
        self.index = {n: {} for n in self.ORDERS}
        self.done = 0  # n-grams ending before this position are indexed

    def _update(self, ids: list):
        for end in range(max(self.done, 1), len(ids)):  # an n-gram ending at `end` is followed by ids[end]
            for n in self.ORDERS:
                if end >= n:
                    self.index[n][tuple(ids[end - n:end])] = end
        self.done = max(self.done, len(ids))

    def draft(self, ids: list, k: int) -> list:
        if k <= 0:
            return []
        self._update(ids)
        for n in self.ORDERS:
            end = self.index[n].get(tuple(ids[-n:])) if len(ids) > n else None
            if end is not None:
                return ids[end:end + k]
        return []


class DraftLength:
    """How many tokens to draft next. 'on': always DRAFT_MAX. 'auto': transformers' heuristic schedule (2 more
    after a fully accepted draft, 1 fewer otherwise, between 1 and DRAFT_MAX), so a reply that drafts badly
    (a first canvas) spends little on verifying."""

    def __init__(self, mode: str):
        self.adaptive = mode == 'auto'
        self.k = DRAFT_MAX

    def update(self, drafted: int, accepted: int):
        if self.adaptive and drafted:
            self.k = min(DRAFT_MAX, self.k + 2) if accepted == drafted else max(1, self.k - 1)


def new_stats(prompt_tokens: int, reused: int) -> dict:
    return {'prompt_tokens': prompt_tokens, 'prompt_reused': reused, 'model_calls': 0, 'drafted': 0,
            'accepted': 0, 'reply_tokens': 0}


def decode_greedy(ids: list, first_logits, step, rollback, argmax, is_end, emit, stats: dict, *, limit: int,
                  n_ctx: int, criterion, draft: str, hook=None):
    """Greedy decoding with optional prompt-lookup drafts, over one backend's primitives:
    ids: the prompt ids (extended in place with the reply); first_logits: the row after the prompt;
    step(tokens) -> rows: evaluate `tokens` after the model's state, a logits row per token;
    rollback(n): keep the model's state for the first n ids only; argmax(row) -> int; is_end(token) -> bool;
    emit(tokens): stream reply tokens. Every picked token equals the plain greedy choice (a draft token is kept
    only where the model's own argmax agrees), so the reply is the plain greedy reply.
    Raises ChatError when the reply fills the context."""
    drafter = PromptLookup() if draft != 'off' else None
    length = DraftLength(draft)

    def pick(row):
        return argmax(hook(list(ids), row) if hook is not None else row)

    def done(n_reply):
        return n_reply >= limit or criterion()

    def full():
        n = stats['reply_tokens']
        raise ChatError(f"The reply filled the model's context ({n_ctx} tokens) after {n} new tokens; the partial "
                        'reply is kept. Start a new chat, or edit an earlier message.')

    token = pick(first_logits)
    while True:
        if is_end(token):
            return
        ids.append(token)
        stats['reply_tokens'] += 1
        emit([token])
        if done(stats['reply_tokens']):
            return  # checked before the next evaluation: Stop and the token limit cost no further forward pass
        if len(ids) >= n_ctx:
            full()
        room = min(length.k, limit - stats['reply_tokens'], n_ctx - len(ids) - 1)
        drafted = drafter.draft(ids, room) if drafter is not None else []
        rows = step([token] + drafted)  # the model's state now holds ids + drafted
        stats['model_calls'] += 1
        stats['drafted'] += len(drafted)
        token = pick(rows[0])
        accepted = 0
        while accepted < len(drafted) and token == drafted[accepted] and not is_end(token):
            ids.append(token)
            accepted += 1
            stats['accepted'] += 1
            stats['reply_tokens'] += 1
            emit([token])
            if done(stats['reply_tokens']):
                rollback(len(ids))
                return
            token = pick(rows[accepted])
        length.update(len(drafted), accepted)
        if accepted < len(drafted):
            rollback(len(ids))  # the rejected drafts leave the model's state; `token` is evaluated next


WAITING_NOTICE = 'Waiting for another reply to finish (the in-process model writes one reply at a time)...'


def one_line(e: Exception) -> str:
    return ' '.join(str(e).split())[:300] or type(e).__name__


class InProcessBackend:
    kind = 'in-process'
    update_interval = 0.05  # seconds between streamed updates; tokens arriving meanwhile are batched

    def __init__(self, name: str, models_dir: str | None, keep_loaded: bool, context_tokens: int = CONTEXT_TOKENS,
                 reuse_prompt: bool = True, draft: str = 'auto'):
        self.name = (name or '').strip()
        self.models_dir = models_dir or os.path.join('models', 'omost')
        self.keep_loaded = keep_loaded
        self.context_tokens = int(context_tokens)
        self.reuse_prompt = bool(reuse_prompt)  # keep the model's state between replies (only while it stays loaded)
        self.draft = draft
        self.logits_hook = None  # benchmarks and tests only, see the module docstring
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

    def draft_mode(self, params: ChatParams) -> str:
        """'off', 'auto' or 'on' for this reply: drafts only for greedy replies (sampling decodes plainly)."""
        mode = self.draft if self.draft in DRAFT_MODES else 'auto'
        return mode if params.temperature <= 0 else 'off'

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
        stats = {}
        job = self._job(handle, ids, params, streamer, criterion, stats)
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
            if stats:
                yield 'stats', dict(stats)
            if not criterion.cancelled:
                yield 'finish', 'length' if len(out) >= params.max_new_tokens else 'stop'
        finally:
            abort.set()  # the consumer went away (or finished): end the generation at the next token
            thread.join()
            del job, streamer, thread, handle, run
            if not self.keep_loaded:
                self.unload()
