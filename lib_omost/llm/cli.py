"""`python -m lib_omost chat "PROMPT" (--base-url URL --model NAME | --local PATH | --gguf FILE)`: stream one reply
to stdout.

Exit 0 when a complete reply arrived (and, with -o, its canvas was written); otherwise a one-line message on
stderr and exit 1 (3 when the reply has no usable canvas for -o).
"""

from __future__ import annotations

import os
import sys
import threading

from lib_omost.llm.cache import ResponseCache
from lib_omost.llm.conversation import ChatError, ChatParams, Conversation
from lib_omost.llm.engine import stream_reply


def default_cache_dir() -> str:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'sd-webui-omost', 'llm-replies')


def make_backend(args):
    if getattr(args, 'gguf', None):
        from lib_omost.llm.gguf import GGUFBackend
        return GGUFBackend(args.gguf, getattr(args, 'models_dir', None), keep_loaded=False,
                           n_gpu_layers=getattr(args, 'n_gpu_layers', None), threads=getattr(args, 'threads', None))
    if getattr(args, 'local', None):
        from lib_omost.llm.local import LocalBackend
        return LocalBackend(args.local, getattr(args, 'models_dir', None), keep_loaded=False)
    from lib_omost.llm.server import ServerBackend
    return ServerBackend(args.base_url, args.model, api_key=args.api_key, connect_timeout=min(args.timeout, 10.0),
                         read_timeout=args.timeout)


def write_canvas(reply: str, path: str) -> int:
    from lib_omost.canvas import CanvasError, load_canvas
    try:
        result = load_canvas(reply)
    except CanvasError as e:
        print(f'error: the reply has no usable Canvas code ({e}); nothing written to {path}', file=sys.stderr)
        return 3
    for w in result.warnings:
        print(f'warning: {w}', file=sys.stderr)
    from lib_omost.atomic import write_atomic
    write_atomic(path, result.canvas.to_code())
    return 0


def cli_chat(args) -> int:
    try:
        backend = make_backend(args)
    except ChatError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    params = ChatParams(seed=args.seed, temperature=args.temperature, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens)
    cache = None if args.no_cache else ResponseCache(args.cache_dir or default_cache_dir())
    stop = threading.Event()
    shown = ''
    last = None
    progress = sys.stderr.isatty()  # download/load progress for people; scripts get one line on failure
    noted = None
    updates = stream_reply(backend, Conversation(), args.prompt, params, stop, cache=cache)
    try:
        for last in updates:
            if progress and last.notice and last.notice != noted and not last.done:
                noted = last.notice
                print(f'note: {noted}', file=sys.stderr)
            sys.stdout.write(last.text[len(shown):])
            sys.stdout.flush()
            shown = last.text
    except KeyboardInterrupt:
        stop.set()
        updates.close()  # closes the HTTP stream / ends generate() at the next token
        if shown and not shown.endswith('\n'):
            sys.stdout.write('\n')  # "error: interrupted" starts its own line, not the reply's
            sys.stdout.flush()
        raise
    if shown and not shown.endswith('\n'):
        sys.stdout.write('\n')
    if last.error:
        print(f'error: {last.error}', file=sys.stderr)
        return 1
    if last.partial:
        print(f'error: {last.notice}', file=sys.stderr)
        return 1
    if last.cached:
        print('note: answered from the response cache (--no-cache asks the model again)', file=sys.stderr)
    if last.notice:
        print(f'note: {last.notice}', file=sys.stderr)
    return write_canvas(last.text, args.output) if args.output else 0
