"""`python -m lib_omost chat` as a user runs it: stdout is the reply, failures are one line on stderr."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES, ROOT, read_fixture
from lib_omost.canvas import load_canvas
from llm_helpers import LoopbackServer, build_tiny_llama, corpus_texts, free_port, sse_chunk, stream_text


def chat_cli(*args, timeout=60):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, '-m', 'lib_omost', 'chat', *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT, 'HF_HUB_OFFLINE': '1'})
    return out, time.monotonic() - t0


def test_streams_writes_the_canvas_and_caches(tmp_path):
    reply = read_fixture('dragon_battle.canvas.py')
    with LoopbackServer(stream_text([reply[i:i + 50] for i in range(0, len(reply), 50)])) as srv:
        args = ['a dragon battle', '--base-url', srv.url, '--model', 'omost', '--seed', '3', '--temperature', '0.5',
                '--cache-dir', str(tmp_path / 'cache'), '-o', str(tmp_path / 'canvas.py')]
        out, _ = chat_cli(*args)
        assert (out.returncode, out.stdout, out.stderr) == (0, reply, '')
        assert srv.requests[0][3]['seed'] == 3 and srv.requests[0][3]['temperature'] == 0.5
        written = (tmp_path / 'canvas.py').read_text()
        assert load_canvas(written).canvas.to_json() == load_canvas(reply).canvas.to_json()
        again, _ = chat_cli(*args)
        assert (again.returncode, again.stdout, len(srv.requests)) == (0, reply, 1)  # from the cache
        assert again.stderr == 'note: answered from the response cache (--no-cache asks the model again)\n'


def test_refused_port_is_one_line():
    port = free_port()
    out, _ = chat_cli('a cat', '--base-url', f'127.0.0.1:{port}', '--model', 'm', '--no-cache')
    assert out.returncode == 1 and out.stdout == ''
    assert out.stderr == (f'error: Cannot connect to http://127.0.0.1:{port}/v1: connection refused. '
                          'Is the LLM server running there?\n')


def test_hanging_server_with_timeout_3_returns_within_seconds():
    # The server would hold the request for 90 s: returning well before that (and with the timeout's own message)
    # shows the 3 s timeout fired. Not a speed bound: the CLI's start-up on a loaded machine takes seconds too.
    with LoopbackServer(lambda h, b: h.server.release.wait(90)) as srv:
        out, elapsed = chat_cli('a cat', '--base-url', srv.url, '--model', 'm', '--no-cache', '--timeout', '3',
                                timeout=120)
    assert out.returncode == 1 and elapsed < 60
    assert out.stderr == f'error: The server at {srv.url}/v1 did not answer within 3 s (read timeout).\n'


def test_reply_without_canvas_and_output_file(tmp_path):
    with LoopbackServer(stream_text(['Sorry, ', 'no.'])) as srv:
        out, _ = chat_cli('a cat', '--base-url', srv.url, '--no-cache', '-o', str(tmp_path / 'c.py'))
    assert (out.returncode, out.stdout) == (3, 'Sorry, no.\n')
    assert out.stderr.splitlines() == [
        'note: The model answered without Canvas code; ask again, or retry with another seed.',
        'error: the reply has no usable Canvas code (no Canvas code found: the reply has no '
        '`canvas.set_global_description(...)` or `canvas.add_local_description(...)` calls); nothing written to '
        f'{tmp_path / "c.py"}']
    assert not (tmp_path / 'c.py').exists()


def test_local_model_reply_cut_at_max_tokens(tmp_path):
    pytest.importorskip('transformers')
    folder = build_tiny_llama(str(tmp_path / 'tiny'), corpus_texts(FIXTURES), eos=False)
    out, _ = chat_cli('a cat', '--local', folder, '--no-cache', '--max-new-tokens', '5')
    assert out.returncode == 1 and out.stdout.strip()
    assert out.stderr == 'error: The reply was cut at 5 new tokens (max new tokens); the partial reply is kept.\n'


def test_catalogue_model_download_failure_is_one_line(tmp_path):
    out, _ = chat_cli('a cat', '--local', 'omost-llama-3-8b', '--models-dir', str(tmp_path), '--no-cache')
    folder = tmp_path / 'omost-llama-3-8b'
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and out.stdout == '' and len(lines) == 1, out.stderr
    assert lines[0].startswith(f'error: Could not download lllyasviel/omost-llama-3-8b into {folder}: ')
    assert lines[0].endswith('. Run it again to resume, or download it by hand (huggingface-cli download '
                             f'lllyasviel/omost-llama-3-8b --local-dir {folder}).')


def test_http_500_reason_is_said_once():
    with LoopbackServer(lambda h, b: h.send_json(500, 'Internal Server Error')) as srv:
        out, _ = chat_cli('a cat', '--base-url', srv.url, '--no-cache')
    assert out.returncode == 1 and out.stderr == (f'error: The server at {srv.url}/v1 answered HTTP 500 Internal '
                                                  'Server Error.\n')


# The CLI started with SIGINT at its default, or ignored as a non-interactive shell starts every `cmd &` (a CI
# started in the background runs so): set here, so the test does not depend on how pytest itself was started.
def with_sigint(disposition: str) -> list:
    return [sys.executable, '-c', f'import os, signal, sys; signal.signal(signal.SIGINT, signal.{disposition}); '
                                  'os.execv(sys.executable, [sys.executable] + sys.argv[1:])']


@pytest.mark.parametrize('inherited', ['SIG_DFL', 'SIG_IGN'])
def test_ctrl_c_ends_the_reply_line_first(inherited):
    def endless(h, body):
        h.start_sse()
        for i in range(400):
            h.send_event(sse_chunk(f'w{i} '))
            if h.server.release.wait(0.02):
                return
    with LoopbackServer(endless) as srv:
        proc = subprocess.Popen([*with_sigint(inherited), '-m', 'lib_omost', 'chat', 'a cat', '--base-url', srv.url,
                                 '--no-cache'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                env={**os.environ, 'PYTHONPATH': ROOT})
        assert proc.stdout.read(6) == b'w0 w1 '  # streaming
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == b'error: interrupted\n'
    assert rest.endswith(b'\n') and rest.count(b'\n') == 1  # the reply's line is ended before the error is printed
