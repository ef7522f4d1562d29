"""One chat engine over every backend: conversation bookkeeping, context budget, cache, failures as messages.

A backend offers:
    kind                       'server' or 'local'
    context_tokens             the budget the model is good for
    identity() -> dict         what, besides the conversation and parameters, decides a reply (for the cache)
    count_tokens(messages) -> (n, exact)
    stream(messages, params, stop) -> iterator of events:
        ('text', delta)  ('tokens', n_so_far)  ('notice', line)  ('usage', {'prompt_tokens': n})
        ('stats', {'prompt_tokens', 'prompt_reused', 'model_calls', 'drafted', 'accepted', 'reply_tokens'})
        ('finish', 'stop' | 'length')
    and raises ChatError with the user-facing message on failure. A stream that ends without 'finish' because
    `stop` was set counts as cancelled.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from lib_omost.llm.conversation import (BUDGET_FULL, TYPICAL_REPLY_TOKENS, ChatError, ChatParams, ChatUpdate, Conversation,
                                        Turn)

log = logging.getLogger('omost.llm')

NO_CODE_NOTICE = 'The model answered without Canvas code; ask again, or retry with another seed.'
BAD_CODE_NOTICE = "The reply's Canvas code cannot be read ({reason}); ask again, or retry with another seed."
BUDGET_NEAR = ('The conversation is about {n} of {limit} tokens; the next canvas (about {reply} tokens) may not '
               'fit. After this reply, start a new chat or edit an earlier message.')


def _one_line(text: str) -> str:
    line = ' '.join(str(text).split())
    return line[:1000]


def estimate_tokens(text: str) -> int:
    """Reply tokens from characters when the backend gives no count: ~4 characters per token for English and
    code, the same rule as the server backend's prompt estimate)."""
    return max(1, round(len(text) / 4)) if text else 0


def _rate(tokens: int, started) -> float:
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return tokens / elapsed if elapsed > 0 else 0.0


def _prepare_turn(conv: Conversation, message: str, mode: str):
    """Apply `mode` to the conversation; returns (index of the turn being answered, the turn as it was before)."""
    if mode in ('new', 'edit') and not (message or '').strip():
        raise ChatError('Type a message first.')
    if mode == 'new':
        conv.turns.append(Turn(message or ''))
        return len(conv.turns) - 1, None
    if mode not in ('retry', 'edit'):
        raise ChatError(f"unknown chat mode {mode!r}: use 'new', 'retry' or 'edit'")
    if not conv.turns:
        raise ChatError('There is no message to ' + ('retry.' if mode == 'retry' else 'edit.'))
    last = conv.turns[-1]
    before = Turn(last.user, last.assistant, last.partial)
    if mode == 'edit':
        last.user = message or ''
    last.assistant, last.partial = '', True
    return len(conv.turns) - 1, before


def _canvas_notice(text: str) -> str | None:
    from lib_omost.canvas import CanvasError, load_canvas
    try:
        load_canvas(text)
    except CanvasError as e:
        return BAD_CODE_NOTICE.format(reason=_one_line(e)) if 'canvas' in text.lower() else NO_CODE_NOTICE
    return None


def stream_reply(backend, conv: Conversation, message: str, params: ChatParams | None = None,
                 stop: threading.Event | None = None, system_prompt: str | None = None, cache=None,
                 mode: str = 'new'):
    """Stream the assistant's reply to `message`, updating `conv` as it goes. Yields ChatUpdate; the last has
    done=True. Never raises for backend failures: they arrive as `error` on the last update."""
    params = params or ChatParams()
    stop = stop or threading.Event()
    try:
        index, before = _prepare_turn(conv, message, mode)
    except ChatError as e:
        yield ChatUpdate(done=True, error=str(e), finish='error')
        return
    turn = conv.turns[index]
    turn.partial = True
    messages = conv.messages(system_prompt, upto=index)
    update = ChatUpdate()

    def finish(**kw):
        for k, v in kw.items():
            setattr(update, k, v)
        update.done = True
        turn.assistant, turn.partial = update.text, update.partial
        if before is not None and not update.text and update.error:
            # A failed retry/edit that produced nothing gives the old turn back rather than losing its reply.
            turn.user, turn.assistant, turn.partial = before.user, before.assistant, before.partial
        return update

    try:
        n_prompt, exact = backend.count_tokens(messages)
    except Exception as e:  # noqa: BLE001 - e.g. a tokenizer whose chat template rejects the messages
        yield finish(error=_one_line(e if isinstance(e, ChatError) else f'{type(e).__name__}: {e}'), partial=True,
                     finish='error')
        return
    update.prompt_tokens = n_prompt
    limit = backend.context_tokens
    if exact and n_prompt >= limit:  # the model would ramble past its context; never truncate the system prompt
        yield finish(error=BUDGET_FULL.format(n=n_prompt, limit=limit), partial=True, finish='error')
        return
    notices = []
    if n_prompt >= limit:
        notices.append(BUDGET_FULL.format(n=n_prompt, limit=limit))
    elif n_prompt + min(TYPICAL_REPLY_TOKENS, params.max_new_tokens) > limit:
        notices.append(BUDGET_NEAR.format(n=n_prompt, limit=limit,
                                          reply=min(TYPICAL_REPLY_TOKENS, params.max_new_tokens)))

    key = None
    if cache is not None:
        key = cache.key(backend.identity(), messages, params.cache_fields())
        hit = cache.get(key)
        if hit is not None:
            update.text = hit
            notices.append(_canvas_notice(hit))
            yield finish(cached=True, partial=False, finish='cached',
                         notice=' '.join(n for n in notices if n) or None)
            return

    if notices:
        update.notice = notices[0]
        yield dataclasses.replace(update)
    started = None  # the rate counts from the first token, not from loading or downloading
    reason, exact_tokens = None, False
    events = backend.stream(messages, params, stop)
    try:
        for kind, value in events:
            if kind in ('text', 'tokens') and started is None:
                started = time.perf_counter()
            if kind == 'text':
                if not value:
                    continue
                update.text += value
                turn.assistant = update.text
                if not exact_tokens:  # a server chunk may hold many tokens: estimate from the characters
                    update.tokens = estimate_tokens(update.text)
            elif kind == 'tokens':
                exact_tokens = update.tokens_exact = True
                update.tokens = value
                continue
            elif kind == 'notice':  # an empty one ends the backend's notice (e.g. its wait for another reply)
                update.notice = value or (notices[0] if notices else None)
            elif kind == 'usage':
                update.prompt_tokens = value.get('prompt_tokens') or update.prompt_tokens
                if isinstance(value.get('completion_tokens'), int) and value['completion_tokens'] > 0:
                    exact_tokens = update.tokens_exact = True  # the server's own count of the reply
                    update.tokens = value['completion_tokens']
                continue
            elif kind == 'stats':
                update.stats = dict(value)
                update.prompt_tokens = value.get('prompt_tokens') or update.prompt_tokens
                continue
            elif kind == 'finish':
                reason = value
                continue
            update.tokens_per_s = _rate(update.tokens, started)
            yield dataclasses.replace(update)
    except ChatError as e:
        yield finish(error=_one_line(e), partial=True, finish='error')
        return
    except Exception as e:  # noqa: BLE001 - a bug or an unexpected library error still reaches the user as a line
        log.exception('LLM backend failed')
        yield finish(error=_one_line(f'{type(e).__name__}: {e}'), partial=True, finish='error')
        return
    finally:
        close = getattr(events, 'close', None)
        if close is not None:
            close()  # closes the HTTP stream / stops the generate thread when the caller abandons us

    update.tokens_per_s = _rate(update.tokens, started)
    if reason is None:  # backends end without 'finish' only when `stop` cut them
        if stop.is_set():
            yield finish(partial=True, finish='cancelled', notice='Stopped; the partial reply is kept.')
        else:
            yield finish(partial=True, finish='error', error='The reply ended without finishing.')
        return
    if reason == 'length':
        notices.append(f'The reply was cut at {params.max_new_tokens} new tokens (max new tokens); '
                       'the partial reply is kept.')
        yield finish(partial=True, finish='length', notice=' '.join(notices))
        return
    notices.append(_canvas_notice(update.text))
    if cache is not None and key is not None:
        try:
            cache.put(key, update.text)
        except OSError as e:
            notices.append(f'The reply could not be cached: {_one_line(e)}')
    yield finish(partial=False, finish='stop', notice=' '.join(n for n in notices if n) or None)
