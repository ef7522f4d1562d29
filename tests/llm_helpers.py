"""Test substrate for the LLM chat: a tiny random-weight Llama-3-style model with a tokenizer trained in memory,
and a loopback OpenAI-compatible server whose behaviour each test scripts."""

import http.server
import json
import os
import socket
import threading
import time

from lib_omost.llm.tiny import build_tiny_llama, build_tokenizer  # noqa: F401 - re-exported for the tests


# ---------------------------------------------------------------------------------------------------------------
# Loopback OpenAI-compatible server


def sse_chunk(content=None, finish=None, model='tiny') -> dict:
    delta = {} if content is None else {'content': content}
    return {'id': 'x', 'object': 'chat.completion.chunk', 'model': model,
            'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.command, self.path, dict(self.headers), None))
        self.server.script(self, None)

    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length) or b'null')
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        self.server.script(self, body)

    # -- building blocks for scripts --

    def send_json(self, status: int, obj, reason=None):
        data = json.dumps(obj).encode() if not isinstance(obj, (bytes, str)) else (
            obj.encode() if isinstance(obj, str) else obj)
        self.send_response(status, reason)
        self.send_header('Content-Type', 'application/json' if not isinstance(obj, str) else 'text/plain')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()

    def write_chunk(self, data: bytes):
        self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data))
        self.wfile.flush()

    def send_event(self, obj):
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self.write_chunk(b'data: ' + payload.encode() + b'\n\n')

    def end_sse(self):
        self.wfile.write(b'0\r\n\r\n')
        self.wfile.flush()

    def drop(self):
        """Close the connection abruptly, mid-response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def stream_text(pieces, delay: float = 0.0, finish: str = 'stop'):
    """A script: stream `pieces` as OpenAI SSE chunks, then finish_reason and [DONE]."""
    def script(h, body):
        h.start_sse()
        for piece in pieces:
            h.send_event(sse_chunk(piece))
            if delay:
                time.sleep(delay)
        h.send_event(sse_chunk(None, finish))
        h.send_event('[DONE]')
        h.end_sse()
    return script


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-response are what several tests do on purpose


class LoopbackServer:
    """`with LoopbackServer(script) as srv:`, srv.url is 'http://127.0.0.1:PORT' and srv.requests records
    (method, path, headers, json body)."""

    def __init__(self, script):
        self.httpd = _Server(('127.0.0.1', 0), Handler)
        self.httpd.script = script
        self.httpd.requests = []
        self.httpd.release = threading.Event()  # hanging scripts wait on it
        self.httpd.client_gone = threading.Event()
        self.port = self.httpd.server_address[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)

    @property
    def requests(self):
        return self.httpd.requests

    def set_script(self, script):
        self.httpd.script = script

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def corpus_texts(fixtures_dir: str) -> list:
    from lib_omost.llm.tiny import default_corpus
    texts = default_corpus()
    for name in sorted(os.listdir(fixtures_dir)):
        if name.endswith('.canvas.py'):
            with open(os.path.join(fixtures_dir, name), encoding='utf-8') as f:
                texts.append(f.read())
    return texts
