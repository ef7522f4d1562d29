"""The llama.cpp (GGUF) backend on tiny GGUFs built here with the `gguf` package: the tiny random Llama-3-style
model converted from the transformers one (same tokenizer, same weights), and a scripted one that writes the dragon
canvas. Omost's prompt ids in both backends, streaming, seeds, Stop within one token, the cache, unloading with RSS
measured, every failure's message, the known-model download from a loopback server, the CLI and the UI handler."""

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import FIXTURES, ROOT, read_fixture
from lib_omost.canvas import load_canvas
from lib_omost.llm import SYSTEM_PROMPT, ChatParams, Conversation, LocalBackend, ResponseCache, stream_reply
from lib_omost.llm.conversation import BUDGET_FULL, Turn
from llm_helpers import LoopbackServer, build_tiny_llama, corpus_texts

if os.environ.get('OMOST_REQUIRE_GGUF'):  # CI installs both: a missing one is a failure there, not a skip
    import gguf  # noqa: F401
    import llama_cpp
else:
    pytest.importorskip('gguf')
    llama_cpp = pytest.importorskip('llama_cpp')
pytest.importorskip('transformers')

from lib_omost.llm.gguf import GGUFBackend, install_hint  # noqa: E402
from lib_omost.llm.tiny import build_scripted_gguf, build_tiny_gguf  # noqa: E402

DRAGON_REPLY = 'Sure. Here is the canvas:\n\n```python\n' + read_fixture('dragon_battle.canvas.py').strip() + '\n```'


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)


@pytest.fixture(scope='module')
def tiny_gguf(folder, tmp_path_factory):
    return build_tiny_gguf(folder, str(tmp_path_factory.mktemp('gguf') / 'tiny-f32.gguf'))


@pytest.fixture(scope='module')
def scripted(tmp_path_factory):
    return build_scripted_gguf(str(tmp_path_factory.mktemp('scripted') / 'dragon.gguf'), DRAGON_REPLY)


@pytest.fixture(scope='module')
def backend(tiny_gguf):
    b = GGUFBackend(tiny_gguf, threads=1)
    b.load()
    yield b
    b.unload()


def chat(backend, conv, message, stop=None, cache=None, **params):
    return list(stream_reply(backend, conv, message, ChatParams(**params), stop or threading.Event(), cache=cache))


# ---------------------------------------------------------------------------------------------------------------
# Omost's conversation, token for token


def test_prompt_ids_equal_the_transformers_backends(folder, backend):
    local = LocalBackend(folder)
    local.load()
    conv = Conversation([Turn('a dragon over a café — 猫', 'canvas = Canvas()\n# émoji 🐉'),
                         Turn('', 'dropped: no user side'), Turn('a cat', '')])
    for messages in (conv.messages(), conv.messages(upto=0), Conversation().messages(),
                     conv.messages(system_prompt='  custom system prompt\n')):
        assert backend.prompt_ids(messages) == local.prompt_ids(messages)
    ids = backend.prompt_ids(conv.messages())
    assert ids[0] == local.tokenizer.bos_token_id and len(ids) > 300  # one BOS, written by the template
    assert backend.count_tokens(conv.messages()) == (len(ids), True)
    local.unload()


def test_greedy_reply_equals_llama_cpp_s_own_loop(backend, monkeypatch):
    monkeypatch.setattr(backend, 'update_interval', 0)  # an update per token batch, so the cumulative stream shows
    conv = Conversation()
    updates = chat(backend, conv, 'a cat on a sofa', temperature=0, max_new_tokens=40)
    last = updates[-1]
    prompt = backend.prompt_ids(Conversation([('a cat on a sofa', '')]).messages())
    llm = backend.llm
    llm.reset()
    bare = []
    for token in llm.generate(prompt, temp=0.0, top_k=50, top_p=0.9, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(bare) == 40:
            break
        bare.append(token)
    assert last.text == llm.detokenize(bare).decode('utf-8', 'replace') and last.tokens == len(bare)
    assert last.prompt_tokens == len(prompt) and conv.history == [('a cat on a sofa', last.text)]
    assert len(updates) > 3 and all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:]))
    assert last.finish == ('length' if len(bare) == 40 else 'stop')


def test_same_seed_same_reply(backend):
    def reply(seed):
        return chat(backend, Conversation(), 'a cat', seed=seed, temperature=1.0, top_p=1.0, max_new_tokens=30)[-1]
    a, b, c = reply(1), reply(1), reply(2)
    assert a.text == b.text and a.tokens == b.tokens and a.text != c.text
    greedy = [chat(backend, Conversation(), 'a cat', seed=s, temperature=0, max_new_tokens=30)[-1].text for s in (1, 2)]
    assert greedy[0] == greedy[1]  # temperature 0 is greedy: the seed does not matter


def test_stop_within_one_token(backend, monkeypatch):
    evals = []  # every forward pass: the prompt's, each plain step and each verified draft go through decode
    ctx = backend.llm._ctx
    real_decode = ctx.decode
    monkeypatch.setattr(ctx, 'decode', lambda batch: (evals.append(1), real_decode(batch))[1])
    monkeypatch.setattr(llama_cpp, 'llama_vocab_is_eog', lambda vocab, token: False)  # random weights: no early end
    stop, conv = threading.Event(), Conversation([Turn('a dragon', 'canvas = Canvas()')])
    monkeypatch.setattr(backend, 'update_interval', 0)
    updates, at_stop = [], None
    for u in stream_reply(backend, conv, 'a cat', ChatParams(max_new_tokens=2000, temperature=0), stop):
        updates.append(u)
        if len(updates) == 4 and at_stop is None:
            at_stop = len(evals)
            stop.set()
    last = updates[-1]
    assert len(evals) - at_stop <= 1
    assert (last.finish, last.partial, last.error) == ('cancelled', True, None) and last.tokens < 2000
    assert conv.history[-1] == ('a cat', last.text) and conv.turns[-1].partial


def test_the_cache_answers_a_repeat(backend, tmp_path):
    cache = ResponseCache(str(tmp_path))
    first = chat(backend, Conversation(), 'a cat', cache=cache, temperature=0, max_new_tokens=8)[-1]
    if first.finish != 'stop':  # only complete replies are stored: store this one as if it had finished
        messages = Conversation([('a cat', '')]).messages()
        cache.put(cache.key(backend.identity(), messages, ChatParams(temperature=0, max_new_tokens=8).cache_fields()),
                  first.text)
    again = chat(backend, Conversation(), 'a cat', cache=cache, temperature=0, max_new_tokens=8)[-1]
    assert (again.cached, again.text, again.finish) == (True, first.text, 'cached')
    assert backend.identity() == {'kind': 'gguf', 'model': os.path.abspath(backend.name),
                                  'size': os.path.getsize(backend.name)}


def test_the_scripted_model_writes_the_dragon_canvas(scripted):
    b = GGUFBackend(scripted, threads=1, keep_loaded=False)
    conv = Conversation()
    last = chat(b, conv, 'generate an image of the fierce battle of warriors and a dragon', seed=7,
                temperature=0.6, top_p=0.9)[-1]
    assert (last.text, last.finish, last.error, last.notice) == (DRAGON_REPLY, 'stop', None, None)
    assert load_canvas(last.text).canvas.to_json() == load_canvas(DRAGON_REPLY).canvas.to_json()
    assert conv.history == [('generate an image of the fierce battle of warriors and a dragon', DRAGON_REPLY)]
    assert b.llm is None  # not kept loaded


# ---------------------------------------------------------------------------------------------------------------
# Context and failures


def test_context_budget_and_a_reply_that_fills_the_context(tiny_gguf):
    conv = Conversation([Turn('a dragon', 'canvas = Canvas()\n' * 60)])
    b = GGUFBackend(tiny_gguf, threads=1)
    b.load()
    n = len(b.prompt_ids(conv.messages(upto=0) + [{'role': 'assistant', 'content': conv.turns[0].assistant},
                                                  {'role': 'user', 'content': 'a cat'}]))
    b.unload()
    b = GGUFBackend(tiny_gguf, threads=1, context_tokens=n)  # the exact budget, counted after loading
    last = chat(b, Conversation(conv.turns[:1]), 'a cat')[-1]
    assert last.error == BUDGET_FULL.format(n=n, limit=n)
    b.unload()
    b = GGUFBackend(tiny_gguf, threads=1, context_tokens=n + 16)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(llama_cpp, 'llama_vocab_is_eog', lambda vocab, token: False)  # random weights: no early end
    try:
        c = Conversation(conv.turns[:1])
        last = chat(b, c, 'a cat', max_new_tokens=100, temperature=0)[-1]
    finally:
        monkey.undo()
        b.unload()
    assert last.error == ("The reply filled the model's context (" + str(n + 16) + ' tokens) after 16 new tokens; '
                          'the partial reply is kept. Start a new chat, or edit an earlier message.')
    assert last.text and c.history[-1] == ('a cat', last.text) and c.turns[-1].partial


def failure(backend) -> str:
    conv = Conversation([Turn('earlier', 'reply')])
    last = chat(backend, conv, 'a cat')[-1]
    assert conv.history == [('earlier', 'reply'), ('a cat', '')] and last.finish == 'error'
    return last.error


def test_missing_file_folder_and_not_a_gguf(tmp_path, folder):
    assert failure(GGUFBackend(str(tmp_path / 'nope.gguf'))) == f'GGUF file not found: {tmp_path / "nope.gguf"}'
    assert failure(GGUFBackend(folder)) == (f'{folder} is a folder; the GGUF backend needs a .gguf file (for a '
                                            'transformers model folder choose the Local backend).')
    text = tmp_path / 'model.gguf'
    text.write_text('<html>Sign in to download</html>')
    assert failure(GGUFBackend(str(text))) == (f'{text} is not a GGUF file (it does not start with the GGUF '
                                               'signature); choose a .gguf model file.')
    assert failure(GGUFBackend('omost-gpt-9')) == ("GGUF model 'omost-gpt-9' not found: not a file, and not one of "
                                                   'the known GGUF models (omost-llama-3-8b-Q8_0, '
                                                   'omost-llama-3-8b-Q5_K_M, omost-llama-3-8b-Q4_K_M).')


def test_a_truncated_gguf(tmp_path, tiny_gguf):
    cut = tmp_path / 'cut.gguf'
    cut.write_bytes(open(tiny_gguf, 'rb').read()[:100_000])
    error = failure(GGUFBackend(str(cut)))
    assert error.startswith(f'llama.cpp could not load {cut} (ValueError: Failed to load model from file')
    assert error.endswith('A download cut short or a GGUF made for a newer llama.cpp fails like this: download it '
                          'again, or update llama-cpp-python.')


OOM_SCRIPT = r'''
import resource, sys, threading
from lib_omost.llm import Conversation, ChatParams, stream_reply
from lib_omost.llm.gguf import GGUFBackend
import llama_cpp
with open('/proc/self/status') as f:
    vm = [int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize')][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.RLIM_INFINITY))  # 400 MB more address space
b = GGUFBackend(sys.argv[1], threads=1, context_tokens=int(sys.argv[2]))
print(list(stream_reply(b, Conversation(), 'a cat', ChatParams(), threading.Event()))[-1].error)
'''


def test_out_of_memory_is_said_with_what_to_do(tiny_gguf):
    # A context of 4M tokens needs a KV cache of about 1 GB: more than the 400 MB the process may still take.
    out = subprocess.run([sys.executable, '-c', OOM_SCRIPT, tiny_gguf, str(1 << 22)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    error = out.stdout.strip()
    assert error.startswith('Out of memory loading tiny-f32.gguf (0.0 GB, context 4194304 tokens): '), error
    assert error.endswith('Free memory (unload the image model, close other programs), or choose a smaller quant, '
                          'fewer GPU layers or a smaller context.')


def test_without_llama_cpp_python_the_install_lines_are_given(tiny_gguf):
    script = ('import sys, threading; sys.modules["llama_cpp"] = None\n'
              'from lib_omost.llm import Conversation, ChatParams, stream_reply\n'
              'from lib_omost.llm.gguf import GGUFBackend\n'
              'print(list(stream_reply(GGUFBackend(sys.argv[1]), Conversation(), "a cat", ChatParams(), '
              'threading.Event()))[-1].error)')
    out = subprocess.run([sys.executable, '-c', script, tiny_gguf], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    py = sys.executable
    assert out.stdout.strip() == (
        f'The GGUF backend needs llama-cpp-python, which is not installed in this Python ({py}). Install it there, '
        f'then restart: CPU: {py} -m pip install llama-cpp-python ; NVIDIA GPU: CMAKE_ARGS="-DGGML_CUDA=on" {py} -m '
        f'pip install llama-cpp-python ; Apple GPU: CMAKE_ARGS="-DGGML_METAL=on" {py} -m pip install '
        'llama-cpp-python . Or use the Server backend.'), out.stderr
    assert install_hint().startswith('The GGUF backend needs llama-cpp-python')


RSS_SCRIPT = r'''
import sys, threading
from lib_omost.llm import Conversation, ChatParams, stream_reply
from lib_omost.llm.gguf import GGUFBackend
import llama_cpp

def rss():
    with open('/proc/self/status') as f:
        return [int(l.split()[1]) // 1024 for l in f if l.startswith('VmRSS')][0]

b = GGUFBackend(sys.argv[1], threads=1, context_tokens=16384)
before = rss()
last = list(stream_reply(b, Conversation(), 'a cat', ChatParams(max_new_tokens=4), threading.Event()))[-1]
loaded = rss()
b.unload()
print(before, loaded, rss(), last.error)
'''


def test_unload_gives_the_memory_back(tmp_path):
    # ~150 MB of f32 weights (mapped and read) plus a 16k-token KV cache
    path = build_scripted_gguf(str(tmp_path / 'big.gguf'), 'x' * 64, hidden=512, layers=4, ff=4096)
    out = subprocess.run([sys.executable, '-c', RSS_SCRIPT, path], capture_output=True, text=True, timeout=180,
                         cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    before, loaded, after, error = out.stdout.split(maxsplit=3)
    before, loaded, after = int(before), int(loaded), int(after)
    print(f'RSS MB: before {before}, loaded {loaded}, after unload {after}')
    assert error.strip() == 'None'
    assert loaded - before > 100 and after - before < (loaded - before) * 0.2


# ---------------------------------------------------------------------------------------------------------------
# Known models: resumable, checked download from a loopback "hub"


class Hub:
    """Serves one file like the hub: /<repo>/resolve/main/<file> redirects (with X-Linked-Size / X-Linked-Etag) to
    /cdn/<file>, which honours Range. `cut_at` drops the connection after that many bytes of a response."""

    def __init__(self, data: bytes, published: bytes | None = None):
        self.data, self.cut_at, self.honour_range = data, None, True
        self.sha = hashlib.sha256(published or data).hexdigest()

    def __call__(self, h, body):
        if '/resolve/main/' in h.path:
            h.send_response(302)
            h.send_header('Location', '/cdn/' + h.path.rsplit('/', 1)[1])
            h.send_header('X-Linked-Size', str(len(self.data)))
            h.send_header('X-Linked-Etag', f'"{self.sha}"')
            h.send_header('Content-Length', '0')
            h.end_headers()
            return
        start = 0
        rng = h.headers.get('Range')
        if rng and self.honour_range:
            start = int(rng.split('=')[1].rstrip('-'))
            h.send_response(206)
            h.send_header('Content-Range', f'bytes {start}-{len(self.data) - 1}/{len(self.data)}')
        else:
            h.send_response(200)
        body = self.data[start:]
        h.send_header('Content-Length', str(len(body)))
        h.end_headers()
        if self.cut_at is not None:
            h.wfile.write(body[:self.cut_at])
            h.wfile.flush()
            h.drop()
            return
        h.wfile.write(body)


@pytest.fixture
def known(monkeypatch, scripted):
    from lib_omost.llm import models
    info = models.GGUFInfo('omost-tiny-Q8_0', 'someone/omost-tiny-GGUF', 'omost-tiny-q8_0.gguf', 'Q8_0', 0.01,
                           None, 'test')
    monkeypatch.setitem(models.GGUF_MODELS, info.name, info)
    return info, open(scripted, 'rb').read()


def hub_chat(srv, models_dir, monkeypatch):
    monkeypatch.setenv('HF_ENDPOINT', srv.url)
    conv = Conversation()
    updates = chat(GGUFBackend('omost-tiny-Q8_0', str(models_dir), threads=1, keep_loaded=False), conv, 'a dragon')
    return updates, conv


def test_a_known_model_downloads_resumes_and_is_checked(known, tmp_path, monkeypatch):
    info, data = known
    hub = Hub(data)
    hub.cut_at = len(data) // 3
    dest = tmp_path / 'omost-tiny-q8_0.gguf'
    with LoopbackServer(hub) as srv:
        updates, conv = hub_chat(srv, tmp_path, monkeypatch)
        size = f'{len(data) / 1e9:.2f} GB'
        assert updates[0].notice == f'Downloading omost-tiny-q8_0.gguf (someone/omost-tiny-GGUF) ({size}) into {tmp_path}'
        assert updates[-1].error.startswith('The download of omost-tiny-q8_0.gguf (someone/omost-tiny-GGUF) ')
        assert updates[-1].error.endswith('Run it again to resume.') and conv.history == [('a dragon', '')]
        assert os.path.getsize(str(dest) + '.part') == len(data) // 3 and not dest.exists()
        hub.cut_at = None
        updates, conv = hub_chat(srv, tmp_path, monkeypatch)
        ranges = [headers.get('Range') for method, path, headers, body in srv.requests]
    notices = [u.notice for u in updates if u.notice]
    assert notices[:2] == [f'Downloading omost-tiny-q8_0.gguf (someone/omost-tiny-GGUF) ({len(data) / 1e9:.2f} GB) '
                           f'into {tmp_path} (resuming)',
                           'Checking omost-tiny-q8_0.gguf (someone/omost-tiny-GGUF) (sha256)']
    assert ranges == [None, None, f'bytes={len(data) // 3}-', f'bytes={len(data) // 3}-']
    assert dest.read_bytes() == data and not os.path.exists(str(dest) + '.part')
    assert (updates[-1].text, updates[-1].error) == (DRAGON_REPLY, None)


def test_a_corrupt_download_is_deleted_and_a_server_ignoring_range_restarts(known, tmp_path, monkeypatch):
    info, data = known
    hub = Hub(data[:-1] + bytes([data[-1] ^ 1]), published=data)  # right size, wrong last byte
    dest = tmp_path / 'omost-tiny-q8_0.gguf'
    with LoopbackServer(hub) as srv:
        updates, conv = hub_chat(srv, tmp_path, monkeypatch)
        assert updates[-1].error == ('The download of omost-tiny-q8_0.gguf (someone/omost-tiny-GGUF) is corrupt (its '
                                     'sha256 differs from the one the source publishes); it was deleted. Run it again '
                                     'to download it anew.')
        assert not dest.exists() and not os.path.exists(str(dest) + '.part')
        hub.data, hub.honour_range = data, False
        with open(str(dest) + '.part', 'wb') as f:
            f.write(b'stale')
        updates, conv = hub_chat(srv, tmp_path, monkeypatch)  # asks to resume, gets the whole file: starts over
    assert dest.read_bytes() == data and updates[-1].text == DRAGON_REPLY


# ---------------------------------------------------------------------------------------------------------------
# Command line, WebUI handler, A1111's environment


def test_cli_writes_the_canvas_of_a_gguf_reply(scripted, tmp_path):
    out = subprocess.run([sys.executable, '-m', 'lib_omost', 'chat', 'a dragon', '--gguf', scripted, '--threads', '1',
                          '--n-gpu-layers', '0', '--no-cache', '-o', str(tmp_path / 'canvas.py')],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert (out.returncode, out.stdout, out.stderr) == (0, DRAGON_REPLY + '\n', '')
    assert load_canvas((tmp_path / 'canvas.py').read_text()).canvas.to_json() == \
        load_canvas(DRAGON_REPLY).canvas.to_json()


def test_the_ui_chat_fills_the_canvas(scripted):
    pytest.importorskip('gradio')
    from lib_omost.canvas import extract_code
    from omost_webui import ui
    session = ui.ChatSession()
    steps = list(ui.chat_stream('new', session, 'a dragon', 'gguf', '', '', '', '', True, 1, 0.6, 0.9, 4096,
                                scripted, -1, 1))
    chat_history, box, canvas, status = steps[-1]
    assert chat_history == [('a dragon', DRAGON_REPLY)] and canvas == extract_code(DRAGON_REPLY)
    assert 'tokens/s' in status
    ui.make_backend('gguf', '', '', '', '', '', True, scripted, -1, 1).unload()


A1111_PY = os.path.join(ROOT, '.venv-a1111', 'bin', 'python')


@pytest.mark.skipif(not os.path.exists(A1111_PY), reason='no A1111-like venv')
def test_runs_in_a1111_s_environment(scripted):
    script = ('import sys, threading\n'
              'from lib_omost.llm import Conversation, ChatParams, stream_reply\n'
              'from lib_omost.llm.gguf import GGUFBackend\n'
              'import transformers; print(transformers.__version__)\n'
              'last = list(stream_reply(GGUFBackend(sys.argv[1], threads=1), Conversation(), "a dragon", ChatParams(), '
              'threading.Event()))[-1]\n'
              'print(last.error, last.finish, len(last.text))')
    out = subprocess.run([A1111_PY, '-c', script, scripted], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, 'PYTHONPATH': ROOT})
    if 'needs llama-cpp-python' in out.stdout and not os.environ.get('OMOST_REQUIRE_GGUF'):
        pytest.skip('llama-cpp-python is not installed in the A1111-like venv')
    assert out.stdout.split('\n')[:2] == ['4.30.2', f'None stop {len(DRAGON_REPLY)}'], out.stderr[-2000:]
