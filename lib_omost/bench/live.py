"""`python -m lib_omost bench live`: the chat's speed with and without the live region preview.

A loopback OpenAI-compatible server streams Omost's dragon reply (tests/fixtures/dragon_battle.canvas.py in a
```python block) at a fixed rate, one ~4-character token per SSE event (50 tokens/s by default, a fast local 8B).
The UI's own chat path (`omost_webui.ui.chat_with_editor`: the engine, the chat updates and, with the live preview,
the incremental canvas reader and the editor state for every canvas update) consumes it, alternating runs without
and with the live preview. Printed per mode: the tokens/s the chat status reports, wall seconds, the process CPU
seconds (what the preview costs) and the number of editor updates. Goal: live >= 0.95x of the plain chat's tokens/s.
Needs gradio (the UI module) but no WebUI.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOAL = 0.95
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tests',
                       'fixtures', 'dragon_battle.canvas.py')


def _reply() -> str:
    with open(FIXTURE, encoding='utf-8') as f:
        return 'Sure, here is the canvas:\n\n```python\n' + f.read().strip() + '\n```'


def _server(tokens: list, rate: float):
    """A ThreadingHTTPServer on 127.0.0.1 streaming `tokens` at `rate` per second (on an absolute schedule)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get('Content-Length') or 0))
            self.send_response(200)
            self.send_header('Content-Type', 'text/event-stream')
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()

            def send(obj):
                data = b'data: ' + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b'\n\n'
                self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data))
                self.wfile.flush()

            start = time.perf_counter()
            for i, token in enumerate(tokens):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                send({'choices': [{'index': 0, 'delta': {'content': token}, 'finish_reason': None}]})
            send({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})
            send('[DONE]')
            self.wfile.write(b'0\r\n\r\n')
            self.wfile.flush()

    httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _run(url: str, live: bool) -> dict:
    from omost_webui import ui
    session = ui.ChatSession()
    wall, cpu = time.perf_counter(), time.process_time()
    updates = 0
    step = None
    for step in ui.chat_with_editor('new', session, 'generate an image of the fierce battle of warriors and a dragon',
                                    'server', url, '', '', '', True, 1, 0.6, 0.9, 4096, canvas_text='',
                                    image_size=(1024, 1024), live_preview=live):
        updates += isinstance(step[4], str)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    status = step[3]
    rate = re.search(r'([\d.]+) tokens/s', status)
    if not rate:
        raise RuntimeError(f'the chat did not finish: {status}')
    return {'tokens_per_s': float(rate.group(1)), 'wall': wall, 'cpu': cpu, 'updates': updates,
            'status': re.sub('<[^>]+>', '', status)}


def main(args) -> int:
    reply = _reply()
    rate = float(getattr(args, 'rate', None) or 50.0)
    tokens = [reply[i:i + 4] for i in range(0, len(reply), 4)]  # the engine's estimate: ~4 characters a token
    if args.quick:
        tokens = tokens[:len(tokens) // 3]  # the global description and the first region
    repeats = getattr(args, 'repeats', None) or (1 if args.quick else 2)
    httpd = _server(tokens, rate)
    url = f'http://127.0.0.1:{httpd.server_address[1]}/v1'
    runs = {False: [], True: []}
    try:
        for _ in range(repeats):
            for live in (False, True):
                runs[live].append(_run(url, live))
    finally:
        httpd.shutdown()
    print(f'Chat over a loopback server: {len(tokens)} tokens at {rate:g} tokens/s, {repeats} run(s) each, median')
    print(f'{"live preview":<14}{"chat tokens/s":>15}{"wall s":>9}{"CPU s":>8}{"editor updates":>16}')
    med = {}
    for live in (False, True):
        rs = runs[live]
        med[live] = {k: statistics.median(r[k] for r in rs) for k in ('tokens_per_s', 'wall', 'cpu', 'updates')}
        m = med[live]
        print(f'{"on" if live else "off":<14}{m["tokens_per_s"]:>15.1f}{m["wall"]:>9.2f}{m["cpu"]:>8.2f}'
              f'{m["updates"]:>16.0f}')
    ratio = med[True]['tokens_per_s'] / med[False]['tokens_per_s']
    extra = (med[True]['cpu'] - med[False]['cpu']) / med[True]['wall'] * 100
    print(f'live/plain chat tokens/s: {ratio:.3f}x (goal >= {GOAL}x: {"met" if ratio >= GOAL else "NOT met"}); '
          f'the live preview costs {extra:.1f}% of one core')
    return 0 if ratio >= GOAL else 1
