"""Faults: the LLM server dies in the middle of a reply and comes back; files that cannot be written (read-only
folder, full disk); a process killed while it writes. Real processes, killed by pid with SIGKILL."""

import errno
import http.server
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from lib_omost.atomic import write_atomic
from lib_omost.llm.cache import ResponseCache
from lib_omost.llm.conversation import PARTIAL_MARK, ChatParams, Conversation
from lib_omost.llm.engine import stream_reply
from lib_omost.llm.server import ServerBackend
from llm_helpers import LoopbackServer, free_port, stream_text

TESTS = os.path.dirname(os.path.abspath(__file__))
PIECES = ['canvas = Canvas()\n', 'canvas.set_global_description(\n', "    description='A cat on a sofa.',\n"]
REPLY = ''.join(PIECES) + "    detailed_descriptions=['A cat.'],\n    tags='cat',\n    HTML_web_color_name='gray',\n)\n"

# An OpenAI-compatible server in its own process (llm_helpers' handler on a fixed port); prints each request body.
SERVER = r'''
import json, sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from llm_helpers import Handler, _Server, sse_chunk, stream_text
port, mode = int(sys.argv[1]), sys.argv[2]
def script(h, body):
    print(json.dumps(body), flush=True)
    if mode == 'whole':
        return stream_text([{reply!r}])(h, body)
    h.start_sse()
    for piece in {pieces!r}:
        h.send_event(sse_chunk(piece))
    print('streamed', flush=True)
    time.sleep(600)  # until killed
server = _Server(('127.0.0.1', port), Handler)
server.script, server.requests = script, []
print('ready', flush=True)
server.serve_forever()
'''.format(tests=TESTS, root=ROOT, reply=REPLY, pieces=PIECES)


def start_server(port, mode):
    proc = subprocess.Popen([sys.executable, '-c', SERVER, str(port), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == 'ready\n'
    return proc


def test_the_server_dies_mid_reply_and_comes_back():
    port = free_port()
    backend = ServerBackend(f'127.0.0.1:{port}', 'omost', read_timeout=120)
    url = f'http://127.0.0.1:{port}/v1'
    conv, params = Conversation(), ChatParams(seed=1)
    server = start_server(port, 'hang')
    try:
        updates = []
        for update in stream_reply(backend, conv, 'a cat', params):
            updates.append(update)
            if update.text == ''.join(PIECES) and server.poll() is None:
                assert json.loads(server.stdout.readline())['messages'][-1]['content'] == 'a cat'
                assert server.stdout.readline() == 'streamed\n'
                os.kill(server.pid, signal.SIGKILL)  # the server process dies in the middle of the reply
                server.wait()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    last = updates[-1]
    assert last.error == f'The server at {url} closed the connection in the middle of the reply.'
    assert (last.text, last.partial, last.finish) == (''.join(PIECES), True, 'error')
    assert conv.history == [('a cat', ''.join(PIECES))] and conv.turns[0].partial  # kept, and marked as cut:
    assert conv.display_history() == [('a cat', ''.join(PIECES) + PARTIAL_MARK)]

    down = list(stream_reply(backend, conv, 'is it there?', params))[-1]  # while it is down: said so
    assert down.error == f'Cannot connect to {url}: connection refused. Is the LLM server running there?'

    server = start_server(port, 'whole')  # back, on the same port
    try:
        last = list(stream_reply(backend, conv, 'a cat, again', params))[-1]
        sent = json.loads(server.stdout.readline())['messages']
    finally:
        server.kill()
        server.wait()
    assert (last.error, last.text, last.partial, last.finish) == (None, REPLY, False, 'stop')
    # the cut reply went back to the model as the conversation's history (as Omost sends it); the refused turn not
    assert [(m['role'], m['content']) for m in sent[1:]] == [('user', 'a cat'), ('assistant', ''.join(PIECES)),
                                                           ('user', 'a cat, again')]


# ---------------------------------------------------------------------------------------------------------------
# Files that cannot be written. Tests may run as root, where a read-only mode bit stops nothing: the system's
# answer is simulated where it comes (creating the file, flushing it to disk, renaming it).


FAULTS = {
    'read-only folder': ('open', errno.EROFS),
    'disk full on flush': ('fsync', errno.ENOSPC),
    'disk full on write': ('write', errno.ENOSPC),
    'rename refused': ('replace', errno.EROFS),
}


def inject(monkeypatch, where, code, folder):
    """Make the system answer `code` at `where` for files in `folder` only."""
    import builtins
    fault = OSError(code, os.strerror(code))

    def inside(path):
        return os.path.dirname(os.path.abspath(os.fsdecode(path))) == os.path.abspath(folder)

    if where == 'open':
        real = os.open
        monkeypatch.setattr(os, 'open', lambda path, *a, **k: (_ for _ in ()).throw(fault) if inside(path)
                            else real(path, *a, **k))
    elif where == 'fsync':
        monkeypatch.setattr(os, 'fsync', lambda fd: (_ for _ in ()).throw(fault))
    elif where == 'replace':
        real_replace = os.replace
        monkeypatch.setattr(os, 'replace', lambda src, dst: (_ for _ in ()).throw(fault) if inside(dst)
                            else real_replace(src, dst))
    else:  # a file opened for writing there writes nothing and fails
        real_open = builtins.open

        class Full:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                raise fault

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fake_open(path, mode='r', *a, **k):
            f = real_open(path, mode, *a, **k)
            return Full(f) if isinstance(path, (str, bytes, os.PathLike)) and inside(path) and 'w' in mode else f
        monkeypatch.setattr(builtins, 'open', fake_open)


@pytest.mark.parametrize('fault', list(FAULTS))
def test_a_write_that_fails_leaves_the_old_file_and_nothing_else(tmp_path, monkeypatch, fault):
    path = tmp_path / 'presets.json'
    path.write_text('old')
    inject(monkeypatch, *FAULTS[fault], tmp_path)
    with pytest.raises(OSError) as info:
        write_atomic(str(path), 'new' * 1000)
    monkeypatch.undo()
    assert info.value.errno == FAULTS[fault][1]
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['presets.json']


@pytest.mark.parametrize('fault', ['disk full on flush', 'read-only folder'])
def test_a_reply_that_cannot_be_cached_is_still_answered(tmp_path, monkeypatch, fault):
    cache = ResponseCache(str(tmp_path / 'cache'))
    cache.put('0' * 64, 'an earlier reply')
    inject(monkeypatch, *FAULTS[fault], tmp_path / 'cache')
    with LoopbackServer(stream_text([REPLY])) as srv:
        last = list(stream_reply(ServerBackend(srv.url, 'm'), Conversation(), 'a cat', cache=cache))[-1]
    monkeypatch.undo()
    code = FAULTS[fault][1]
    assert (last.error, last.text) == (None, REPLY)
    assert last.notice == f'The reply could not be cached: [Errno {code}] {os.strerror(code)}'
    assert os.listdir(tmp_path / 'cache') == ['0' * 64 + '.json'] and cache.get('0' * 64) == 'an earlier reply'


def test_a_read_only_folder_for_real(tmp_path):
    if os.geteuid() == 0:
        pytest.skip('root writes into read-only folders (the simulated faults above stand for it)')
    path = tmp_path / 'presets.json'
    path.write_text('old')
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomic(str(path), 'new')
    finally:
        tmp_path.chmod(0o700)
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['presets.json']


# ---------------------------------------------------------------------------------------------------------------
# Killed while writing: a restarted WebUI finds whole files or none


WRITER = r'''
import sys
sys.path[:0] = [{root!r}]
from lib_omost.atomic import write_atomic
from lib_omost.llm.cache import ResponseCache
path, cache = sys.argv[1], ResponseCache(sys.argv[2])
versions = [('A' * 400_000), ('B' * 300_000)]
i = 0
while True:
    write_atomic(path, versions[i % 2])
    cache.put('%064d' % (i % 3), versions[(i + 1) % 2])
    i += 1
    if i == 3:
        print('writing', flush=True)
'''.format(root=ROOT)


def test_a_process_killed_mid_write_leaves_whole_files(tmp_path):
    path, folder = tmp_path / 'presets.json', tmp_path / 'cache'
    versions = {'A' * 400_000, 'B' * 300_000}
    for kill in range(6):
        proc = subprocess.Popen([sys.executable, '-c', WRITER, str(path), str(folder)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline() == 'writing\n'
        threading.Event().wait(0.007 * kill)  # a different moment of the writes each time
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert path.read_text() in versions
        cache = ResponseCache(str(folder))
        for name in os.listdir(folder):
            if name.endswith('.json'):
                assert cache.get(name[:-len('.json')]) in versions
    for name in os.listdir(folder):  # what killed writers left, as the next start finds it (minutes later)
        os.utime(folder / name, (0, 0)) if name.endswith('.tmp') else None
    cache.trim()  # takes it away
    assert all(name.endswith('.json') for name in os.listdir(folder))


class RangeFile(http.server.BaseHTTPRequestHandler):
    """A file served slowly (so a download can be killed mid-way), with HTTP Range, as the Hugging Face CDN."""
    data = bytes(range(256)) * 4096 * 3  # 3 MiB: the downloader writes 1 MiB blocks

    def log_message(self, *args):
        pass

    def do_GET(self):
        start = int(self.headers['Range'].split('=')[1].rstrip('-')) if self.headers.get('Range') else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(self.data) - 1}/{len(self.data)}')
        self.send_header('Content-Length', str(len(self.data) - start))
        self.end_headers()
        try:
            for i in range(start, len(self.data), 65536):
                self.wfile.write(self.data[i:i + 65536])
                self.wfile.flush()
                if not self.server.fast.is_set():
                    threading.Event().wait(0.05)
        except OSError:
            pass


def test_a_download_killed_mid_way_resumes_and_never_has_the_real_name(tmp_path):
    import hashlib
    from lib_omost.llm.models import download_file
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), RangeFile)
    server.fast = threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()
    url, dest = f'http://127.0.0.1:{server.server_address[1]}/model.gguf', tmp_path / 'model.gguf'
    code = (f'import sys; sys.path[:0] = [{ROOT!r}]\nfrom lib_omost.llm.models import download_file\n'
            f'download_file({url!r}, {str(dest)!r}, progress=lambda line: print(line, flush=True))')
    try:
        proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith('Downloading model.gguf')
        part = str(dest) + '.part'
        while (not os.path.exists(part) or os.path.getsize(part) == 0) and proc.poll() is None:
            threading.Event().wait(0.02)  # until the first block is on disk
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        have = os.path.getsize(part)
        assert not dest.exists() and 0 < have < len(RangeFile.data)
        server.fast.set()
        download_file(url, str(dest), sha256=hashlib.sha256(RangeFile.data).hexdigest())  # the restarted WebUI
    finally:
        server.shutdown()
        server.server_close()
    assert dest.read_bytes() == RangeFile.data and not os.path.exists(part)
