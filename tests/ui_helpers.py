"""Helpers for the UI tests: a loopback OpenAI-compatible SSE server, the test app as a subprocess, Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import urllib.request

from llm_helpers import LoopbackServer, free_port, stream_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage']
PYTHONS = {'4.40.0': os.path.join(ROOT, '.venv', 'bin', 'python'),
           '3.41.2': os.path.join(ROOT, '.venv-a1111', 'bin', 'python')}


def canvas_reply(code: str) -> str:
    """A reply shaped like Omost's: a sentence, then the code in a python fence."""
    return f'Sure. Here is the canvas:\n\n```python\n{code.strip()}\n```'


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f'Chromium not found at {CHROMIUM} (apt-get install chromium)'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'playwright is not installed in this venv'
    return None


class CanvasReplies:
    """A LoopbackServer script (tests/llm_helpers.py): GET /v1/models lists one model; every chat completion
    streams `reply` in `chunks` SSE pieces, `delay` seconds apart (tests may change `delay` between requests)."""

    def __init__(self, reply: str, chunks: int = 40, delay: float = 0.02, model: str = 'omost-test'):
        self.reply, self.chunks, self.delay, self.model = reply, chunks, delay, model

    def __call__(self, handler, body):
        if body is None:
            return handler.send_json(200, {'object': 'list', 'data': [{'id': self.model, 'object': 'model'}]})
        size = max(1, -(-len(self.reply) // self.chunks))
        pieces = [self.reply[i:i + size] for i in range(0, len(self.reply), size)]
        try:
            stream_text(pieces, self.delay)(handler, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped the reply


def canvas_server(reply: str, **kwargs) -> LoopbackServer:
    """`with canvas_server(reply) as srv:` srv.url is the server address, srv.requests what it received."""
    return LoopbackServer(CanvasReplies(reply, **kwargs))


def chat_bodies(server: LoopbackServer) -> list:
    """The JSON bodies of the chat completions the server received, oldest first."""
    return [body for method, path, headers, body in server.requests if method == 'POST']


@contextlib.contextmanager
def ui_app(gradio_version: str, server_url: str, timeout: float = 60.0, ui_config: dict | None = None):
    """Run tests/ui_app.py under the venv that has `gradio_version`; yields its base URL. ui_config: saved UI
    defaults (the WebUI's ui-config.json) to start with."""
    python = PYTHONS[gradio_version]
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED='False', PYTHONDONTWRITEBYTECODE='1', NO_PROXY='127.0.0.1')
    env.pop('PYTHONPATH', None)
    args = [python, os.path.join(ROOT, 'tests', 'ui_app.py'), '--port', str(port), '--server-url', server_url]
    config_dir = tempfile.TemporaryDirectory()
    if ui_config is not None:
        path = os.path.join(config_dir.name, 'ui-config.json')
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(ui_config, f)
        args += ['--ui-config', path]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        config_dir.cleanup()


def check_app(gradio_version: str) -> dict:
    """Build the test app without serving it and return its summary (see ui_app.py --check)."""
    out = subprocess.run([PYTHONS[gradio_version], os.path.join(ROOT, 'tests', 'ui_app.py'), '--check'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GRADIO_ANALYTICS_ENABLED='False'))
    if out.returncode:
        raise RuntimeError(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
