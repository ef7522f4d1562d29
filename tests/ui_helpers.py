"""Helpers for the UI tests: a loopback OpenAI-compatible SSE server, the test app as a subprocess, Chromium."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage']
PYTHONS = {'4.40.0': os.path.join(ROOT, '.venv', 'bin', 'python'),
           '3.41.2': os.path.join(ROOT, '.venv-a1111', 'bin', 'python')}


def read_fixture(name: str) -> str:
    with open(os.path.join(ROOT, 'tests', 'fixtures', name), encoding='utf-8') as f:
        return f.read()


def canvas_reply(code: str) -> str:
    """A reply shaped like Omost's: a sentence, then the code in a python fence."""
    return f'Sure. Here is the canvas:\n\n```python\n{code.strip()}\n```'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f'Chromium not found at {CHROMIUM} (apt-get install chromium)'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'playwright is not installed in this venv'
    return None


class FakeLLMServer:
    """OpenAI-compatible `/v1/models` and streaming `/v1/chat/completions` on loopback.

    Every completion streams `reply` in `chunks` pieces, `delay` seconds apart, and records the request body.
    """

    def __init__(self, reply: str, chunks: int = 40, delay: float = 0.02, model: str = 'omost-test'):
        self.reply, self.chunks, self.delay, self.model = reply, chunks, delay, model
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _json(self, status, data):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == '/v1/models':
                    return self._json(200, {'object': 'list', 'data': [{'id': server.model, 'object': 'model'}]})
                self._json(404, {'error': {'message': f'no route {self.path}'}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))) or b'{}')
                server.requests.append(body)
                if self.path != '/v1/chat/completions':
                    return self._json(404, {'error': {'message': f'no route {self.path}'}})
                self.send_response(200)
                self.send_header('Content-Type', 'text/event-stream')
                self.send_header('Connection', 'close')
                self.end_headers()
                text = server.reply
                size = max(1, -(-len(text) // server.chunks))
                try:
                    for i in range(0, len(text), size):
                        self._event({'choices': [{'index': 0, 'delta': {'content': text[i:i + size]}}]})
                        time.sleep(server.delay)
                    self._event({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})
                    self.wfile.write(b'data: [DONE]\n\n')
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped the reply
                self.close_connection = True

            def _event(self, data):
                self.wfile.write(b'data: ' + json.dumps(data).encode() + b'\n\n')
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def ui_app(gradio_version: str, server_url: str, timeout: float = 60.0):
    """Run tests/ui_app.py under the venv that has `gradio_version`; yields its base URL."""
    python = PYTHONS[gradio_version]
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED='False', PYTHONDONTWRITEBYTECODE='1', NO_PROXY='127.0.0.1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.Popen([python, os.path.join(ROOT, 'tests', 'ui_app.py'), '--port', str(port),
                             '--server-url', server_url], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f'ui_app.py ({gradio_version}) exited:\n{proc.stdout.read()}')
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'ui_app.py ({gradio_version}) did not start within {timeout} s')
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def have_python(gradio_version: str) -> bool:
    return os.path.exists(PYTHONS[gradio_version]) or shutil.which(PYTHONS[gradio_version]) is not None


def check_app(gradio_version: str) -> dict:
    """Build the test app without serving it and return its summary (see ui_app.py --check)."""
    out = subprocess.run([PYTHONS[gradio_version], os.path.join(ROOT, 'tests', 'ui_app.py'), '--check'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GRADIO_ANALYTICS_ENABLED='False'))
    if out.returncode:
        raise RuntimeError(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
