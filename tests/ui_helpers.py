"""Helpers for the UI tests: a loopback OpenAI-compatible SSE server, the test app as a subprocess, Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request

from llm_helpers import LoopbackServer, free_port, sse_chunk, stream_text

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


class HeldReplies:
    """A LoopbackServer script for several users at once: the reply is `replies[word]` for the first `word` in the
    request's last user message (else the first reply), streamed in `pieces` SSE pieces; after `hold_at` pieces
    it sets `held[word]` and waits until the test sets `gates[word]` (`open_all()` at the end)."""

    def __init__(self, replies: dict, pieces: int = 40, hold_at: int = 20, wait_s: float = 600):
        self.replies, self.pieces, self.hold_at, self.wait_s = replies, pieces, hold_at, wait_s
        self.held = {k: threading.Event() for k in replies}
        self.gates = {k: threading.Event() for k in replies}

    def __call__(self, handler, body):
        if body is None:
            return handler.send_json(200, {'object': 'list', 'data': [{'id': 'omost-test', 'object': 'model'}]})
        asked = body['messages'][-1]['content']
        which = next((k for k in self.replies if k in asked), next(iter(self.replies)))
        reply = self.replies[which]
        size = -(-len(reply) // self.pieces)
        try:
            handler.start_sse()
            for i in range(0, len(reply), size):
                if i == self.hold_at * size:
                    self.held[which].set()
                    self.gates[which].wait(self.wait_s)
                handler.send_event(sse_chunk(reply[i:i + size]))
                time.sleep(0.01)
            handler.send_event(sse_chunk(None, 'stop'))
            handler.send_event('[DONE]')
            handler.end_sse()
        except (BrokenPipeError, ConnectionResetError):
            pass  # Stop closed the stream

    def open_all(self):
        for gate in self.gates.values():
            gate.set()


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


@contextlib.contextmanager
def chromium():
    """Headless Chromium through playwright (the browser tests' module-wide browser)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class OmostPage:
    """The Omost accordion on one page (one user), by its elements' id prefix: '#txt2img_omost_' in tests/ui_app.py,
    '#script_txt2img_omost_omost_' in a WebUI (Script.elem_id). Waits end after `wait_ms` (a hung test only)."""

    def __init__(self, page, prefix: str = '#txt2img_omost_', wait_ms: int = 120000):
        self.page, self.prefix, self.wait_ms = page, prefix, wait_ms

    def field(self, name):
        return self.page.locator(f'{self.prefix}{name} textarea, {self.prefix}{name} input').first

    def text(self, name) -> str:
        return self.page.locator(f'{self.prefix}{name}').first.inner_text()

    def click(self, name):
        self.page.click(f'{self.prefix}{name}')

    def wait_text(self, name, text, present=True):
        self.page.wait_for_function('([sel, text, present]) => document.querySelector(sel).innerText.includes(text)'
                                    ' === present', arg=[f'{self.prefix}{name}', text, present], timeout=self.wait_ms)

    def wait_event(self, event):
        """Wait for a server-side threading.Event, letting the page run meanwhile."""
        deadline = time.monotonic() + self.wait_ms / 1000
        while not event.is_set():
            assert time.monotonic() < deadline, 'the LLM server never got that far'
            self.page.wait_for_timeout(100)

    def send(self, message):
        box = self.field('input')
        box.fill(message)
        box.press('Enter')

    def wait_reply_begun(self, message):
        """After sending `message` to a fresh chat: wait until the chat shows some of the reply as well."""
        self.page.wait_for_function('([sel, n]) => document.querySelector(sel).innerText.length > n',
                                    arg=[f'{self.prefix}chat', len(message) + 5], timeout=self.wait_ms)

    def editor_canvas(self):
        """The canvas the Python side last sent to the region editor."""
        state = self.page.evaluate('sel => document.querySelector(sel).value',
                                   f'{self.prefix}editor_state textarea, {self.prefix}editor_state input')
        return json.loads(state)['canvas']

    def boxes(self) -> int:
        return self.page.locator(f'{self.prefix}editor .omost-ed-box').count()

    def wait_boxes(self, n):
        self.page.wait_for_function('([sel, n]) => document.querySelectorAll(sel).length === n',
                                    arg=[f'{self.prefix}editor .omost-ed-box', n], timeout=self.wait_ms)

    def use_local_model(self, folder, max_new_tokens):
        """LLM settings: the in-process (transformers) backend with the model in `folder`."""
        choose_backend(self.page, 'local', self.prefix)
        box = self.field('local_model')
        box.wait_for(state='visible', timeout=self.wait_ms)
        box.click()
        box.fill(folder)
        box.press('Enter')
        box.press('Tab')
        box = self.page.locator(f'{self.prefix}max_new_tokens input[type=number]').first
        box.fill(str(max_new_tokens))
        box.press('Tab')


def choose_backend(page, kind: str, prefix: str = '#txt2img_omost_'):
    """Open the LLM settings and pick the backend `kind` ('server', 'local', 'gguf') from the dropdown."""
    label = page.locator(f'{prefix}llm_settings .label-wrap').first
    if 'open' not in (label.get_attribute('class') or ''):
        label.click()
    page.locator(f'{prefix}backend input').first.click()
    page.locator(f'{prefix}backend ul.options li', has_text=kind).first.click()


def check_app(gradio_version: str) -> dict:
    """Build the test app without serving it and return its summary (see ui_app.py --check)."""
    out = subprocess.run([PYTHONS[gradio_version], os.path.join(ROOT, 'tests', 'ui_app.py'), '--check'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GRADIO_ANALYTICS_ENABLED='False'))
    if out.returncode:
        raise RuntimeError(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
