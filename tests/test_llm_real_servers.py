"""The server backend against real OpenAI-compatible servers started here on tiny models: two turns of Omost's chat
(a new canvas, then an edit), with llama.cpp's `cache_prompt` in the request.

- llama-cpp-python's server (`python -m llama_cpp.server`, its [server] extra; in CI's .venv): it takes the field.
- llama.cpp's own `llama-server`, the server Omost's README runs: set OMOST_LLAMA_SERVER to the binary. It takes the
  field, keeps the conversation, and says so (prompt tokens reused on turn 2, shown in the chat status).
- transformers' `transformers serve` (a strict server: it refuses fields it does not know): set
  OMOST_TRANSFORMERS_SERVE to the `transformers` command of an environment with transformers[serving]. The request
  goes once more without the field, and the server is not sent it again.

A server that is not available here is skipped with the reason. The GGUF servers run the tests' scripted GGUF, which
answers every conversation with the dragon canvas, token by token (greedy or not)."""

import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from lib_omost.llm import ChatParams, Conversation, ServerBackend, stream_reply
from lib_omost.llm import server as server_module
from llm_helpers import free_port
from ui_helpers import canvas_reply

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
EDIT = 'change the dragon to a dinosaur'


@pytest.fixture(scope='module')
def dragon_reply():
    with open(os.path.join(FIXTURES, 'dragon_battle.canvas.py'), encoding='utf-8') as f:
        return canvas_reply(f.read())


@pytest.fixture(scope='module')
def scripted_gguf(tmp_path_factory, dragon_reply):
    pytest.importorskip('gguf')
    from lib_omost.llm.tiny import build_scripted_gguf
    return build_scripted_gguf(str(tmp_path_factory.mktemp('scripted') / 'dragon.gguf'), dragon_reply)


class Served:
    """A server process on a free loopback port, stopped (and its log kept for a failure) at the end."""

    def __init__(self, argv: list, port: int, log_path: str, env=None):
        self.port, self.log_path = port, log_path
        self.log = open(log_path, 'wb')
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f'http://127.0.0.1:{port}'

    def wait(self, path: str, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f'the server exited with {self.proc.returncode}: {self.tail()}')
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        pytest.fail(f'the server did not answer {path} within {timeout} s: {self.tail()}')

    def tail(self) -> str:
        self.log.flush()
        with open(self.log_path, 'rb') as f:
            return f.read()[-3000:].decode('utf-8', 'replace')

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def two_turns(url: str, model: str, max_new_tokens: int = 2048):
    """Turn 1 (a new canvas) and turn 2 (the edit), each from a fresh backend as the UI makes one per reply; the
    requests' bodies are recorded as sent."""
    sent = []
    real_request = ServerBackend._request

    def recording(self, conn, method, path, body, *args, **kwargs):
        if method == 'POST':
            sent.append(dict(body))
        return real_request(self, conn, method, path, body, *args, **kwargs)

    conv, last = Conversation(), []
    params = ChatParams(temperature=0, max_new_tokens=max_new_tokens, seed=1)
    ServerBackend._request = recording
    try:
        for message in ('a dragon fighting a knight over a castle', EDIT):
            updates = list(stream_reply(ServerBackend(url, model), conv, message, params, threading.Event()))
            last.append(updates[-1])
    finally:
        ServerBackend._request = real_request
    return last, sent, conv


def served_two_turns(srv: Served, ready_path: str, model: str, **kwargs):
    try:
        srv.wait(ready_path)
        return two_turns(srv.url, model, **kwargs)
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def forget_refusals():
    server_module._REFUSES_CACHE_PROMPT.clear()
    yield
    server_module._REFUSES_CACHE_PROMPT.clear()


def test_llama_cpp_python_server_takes_cache_prompt(scripted_gguf, dragon_reply, tmp_path):
    missing = [m for m in ('llama_cpp', 'sse_starlette', 'starlette_context', 'pydantic_settings', 'uvicorn')
               if __import__('importlib').util.find_spec(m) is None]
    if missing:
        pytest.skip(f'llama-cpp-python[server] is not installed here ({", ".join(missing)})')
    port = free_port()
    srv = Served([sys.executable, '-m', 'llama_cpp.server', '--model', scripted_gguf, '--host', '127.0.0.1',
                  '--port', str(port), '--n_ctx', '8192', '--n_threads', '1', '--model_alias', 'omost'],
                 port, str(tmp_path / 'server.log'))
    last, sent, conv = served_two_turns(srv, '/v1/models', 'omost')
    assert [(u.error, u.text) for u in last] == [(None, dragon_reply)] * 2, srv.tail()
    assert [b.get('cache_prompt') for b in sent] == [True, True]  # taken, never refused
    assert not server_module._REFUSES_CACHE_PROMPT
    assert [len(b['messages']) for b in sent] == [2, 4] and conv.history[-1] == (EDIT, dragon_reply)


def test_llama_server_keeps_the_conversation_with_cache_prompt(scripted_gguf, dragon_reply, tmp_path):
    binary = os.environ.get('OMOST_LLAMA_SERVER')
    if not binary:
        pytest.skip("set OMOST_LLAMA_SERVER to llama.cpp's llama-server binary")
    port = free_port()
    srv = Served([binary, '-m', scripted_gguf, '--host', '127.0.0.1', '--port', str(port), '-c', '8192', '-t', '1',
                  '-np', '1', '--jinja'], port, str(tmp_path / 'server.log'))
    last, sent, conv = served_two_turns(srv, '/health', 'omost')
    assert [(u.error, u.text) for u in last] == [(None, dragon_reply)] * 2, srv.tail()
    assert [b.get('cache_prompt') for b in sent] == [True, True] and not server_module._REFUSES_CACHE_PROMPT
    first, second = last
    # turn 2's prompt starts with turn 1's: the server reads it from its cache, and the count reaches the chat
    # status. (How much of turn 1's reply is reused too depends on the reply reading back as the tokens generated,
    # which a real model's BPE does; the scripted model's pieces need not.)
    assert first.stats['prompt_reused'] == 0
    assert first.stats['prompt_tokens'] - 2 <= second.stats['prompt_reused'] < second.stats['prompt_tokens']


def test_transformers_serve_refuses_cache_prompt_and_the_chat_goes_on(tmp_path):
    command = os.environ.get('OMOST_TRANSFORMERS_SERVE')
    if not command:
        pytest.skip("set OMOST_TRANSFORMERS_SERVE to the `transformers` command of an environment with "
                    "transformers[serving]")
    from lib_omost.llm.tiny import build_tiny_llama
    model = build_tiny_llama(str(tmp_path / 'tiny-llama3'))
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    srv = Served([command, 'serve', '--host', '127.0.0.1', '--port', str(port)], port, str(tmp_path / 'server.log'),
                 env=env)
    last, sent, conv = served_two_turns(srv, '/v1/models', model, max_new_tokens=8)
    assert [u.error for u in last] == [None, None], srv.tail()
    assert all(u.text for u in last)
    # refused once (HTTP 400/422), asked again without it, and not sent it again
    assert [b.get('cache_prompt') for b in sent] == [True, None, None]
    assert server_module._REFUSES_CACHE_PROMPT
