"""OpenAI-compatible chat servers (llama.cpp `llama-server`, Ollama, vLLM, LM Studio, TGI): `/v1/chat/completions`
with SSE streaming, over the stdlib `http.client` so timeouts are exact and nothing else is needed.

Only the configured address is ever contacted (no redirects are followed). Every failure becomes a ChatError whose
text names the address and what went wrong, with the server's own message where it sent one.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
import zlib

from lib_omost.llm.conversation import CONTEXT_TOKENS, ChatError, ChatParams

MAX_LINE = 1 << 20        # one SSE line; Omost replies are ~10 KB in total
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 8 << 20
CANCEL_POLL_S = 0.05
_REFUSES_CACHE_PROMPT = set()  # base URLs that answered 400/422 to `cache_prompt` and then accepted the request


def normalize_base_url(url: str) -> str:
    """'host:8080', 'http://host:8080', '.../v1/' -> 'http://host:8080/v1' (a path prefix is kept)."""
    url = (url or '').strip()
    if not url:
        raise ChatError('No server address: enter the base URL, e.g. http://127.0.0.1:8080/v1')
    if '://' not in url:
        url = 'http://' + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        raise ChatError(f'Not an http(s) server address: {url}')
    try:
        parts.port
    except ValueError:
        raise ChatError(f'Bad port in the server address: {url}') from None
    path = parts.path.rstrip('/')
    for suffix in ('/chat/completions', '/models'):  # a pasted endpoint URL
        if path.endswith(suffix):
            path = path[:-len(suffix)]
    if not path.endswith('/v1'):
        path += '/v1'
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, '', ''))


def _error_text(body: bytes) -> str:
    """The server's own message from an error body: OpenAI `{"error": {"message"}}`, Ollama `{"error": "..."}`,
    FastAPI `{"detail": ...}`, `{"message": ...}`, or the text's first line."""
    text = body.decode('utf-8', 'replace').strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ('error', 'detail', 'message'):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get('message') or value.get('msg') or json.dumps(value)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get('msg') or json.dumps(value[0])
            if value:
                text = str(value)
                break
    line = ' '.join(text.split())
    return line[:300] + ('...' if len(line) > 300 else '')


class _Inflated:
    """A gzip/deflate-encoded body read as plain bytes (some proxies compress an SSE stream although the request
    asks for identity encoding); offers the `readline`/`read` the reply parsers use."""

    def __init__(self, response, url: str):
        self.response, self.url = response, url
        self.z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
        self.buf, self.eof = b'', False

    def _fill(self):
        chunk = self.response.read1(16384)
        try:
            self.buf += self.z.decompress(chunk) if chunk else self.z.flush()
        except zlib.error:
            raise ChatError(f'The server at {self.url} sent a corrupt compressed reply.') from None
        self.eof = not chunk

    def readline(self, limit: int) -> bytes:
        while b'\n' not in self.buf and len(self.buf) < limit and not self.eof:
            self._fill()
        end = self.buf.find(b'\n')
        end = end + 1 if 0 <= end < limit else min(len(self.buf), limit)
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def read(self, limit: int) -> bytes:
        while len(self.buf) < limit and not self.eof:
            self._fill()
        data, self.buf = self.buf[:limit], self.buf[limit:]
        return data


def _prompt_reuse(usage: dict, timings) -> dict | None:
    """{'prompt_tokens', 'prompt_reused'} where the server says how much of the prompt it took from its cache:
    OpenAI's `usage.prompt_tokens_details.cached_tokens` (llama.cpp's server sends it, tools/server/server-task.cpp
    usage_json, as do vLLM with prefix caching and OpenAI), else llama.cpp's `timings` (`cache_n` reused, `prompt_n`
    evaluated; older llama-server builds); None where it says nothing."""
    def count(value):
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
    details = usage.get('prompt_tokens_details')
    cached = count(details.get('cached_tokens')) if isinstance(details, dict) else None
    total = count(usage.get('prompt_tokens'))
    if cached is not None and total:
        return {'prompt_tokens': total, 'prompt_reused': min(cached, total)}
    timings = timings if isinstance(timings, dict) else {}
    reused, evaluated = count(timings.get('cache_n')), count(timings.get('prompt_n'))
    if reused is not None and evaluated is not None and reused + evaluated:
        return {'prompt_tokens': reused + evaluated, 'prompt_reused': reused}
    return None


def _body_reader(response, url: str):
    """The response itself, or a decompressing reader; an encoding we cannot read is said plainly."""
    encoding = (response.getheader('Content-Encoding') or 'identity').strip().lower()
    if encoding in ('', 'identity'):
        return response
    if encoding in ('gzip', 'x-gzip', 'deflate'):
        return _Inflated(response, url)
    raise ChatError(f'The server at {url} sent a {encoding}-compressed reply although an uncompressed one was '
                    'asked for; turn compression off in the server (or the proxy in front of it).')


class _Deadline:
    """The read timeout as the user means it: the time to the first piece of reply text, then the time between
    pieces. SSE comments (`: ping` keep-alives) and chunks without text do not extend it."""

    def __init__(self, sock, timeout: float, url: str):
        self.sock, self.timeout, self.url = sock, timeout, url
        self.until = time.monotonic() + timeout
        self.got_text = False  # some reply text has arrived
        self.heard = False     # something arrived since the last text (keep-alives, role-only chunks)

    def arm(self):
        """Before a read: the socket may wait only as long as is left."""
        self.sock.settimeout(max(self.until - time.monotonic(), 0.001))

    def text(self):
        self.got_text, self.heard = True, False
        self.until = time.monotonic() + self.timeout

    def other(self):
        self.heard = True
        if time.monotonic() >= self.until:
            raise self.error()

    def error(self) -> ChatError:
        t = f'{self.timeout:g} s'
        if self.got_text:
            if self.heard:
                return ChatError(f'The server at {self.url} sent no reply text for {t}, only keep-alives (timeout).')
            return ChatError(f'The server at {self.url} sent nothing for {t} (read timeout).')
        if self.heard:
            return ChatError(f'The server at {self.url} sent no reply text within {t}, only keep-alives (timeout); '
                             'it may be busy with another request.')
        return ChatError(f'The server at {self.url} sent no reply text within {t} (read timeout).')


class _Cancel:
    """Shuts the socket down when `stop` is set, so a read blocked on a silent server returns at once."""

    def __init__(self, stop: threading.Event, sock):
        self.stop, self.sock, self.done = stop, sock, threading.Event()
        threading.Thread(target=self._watch, name='omost-llm-cancel', daemon=True).start()

    def _watch(self):
        while not self.done.wait(CANCEL_POLL_S):
            if self.stop.is_set():
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return

    def close(self):
        self.done.set()


class ServerBackend:
    kind = 'server'

    def __init__(self, base_url: str, model: str | None, api_key: str | None = None, connect_timeout: float = 10.0,
                 read_timeout: float = 120.0, context_tokens: int = CONTEXT_TOKENS):
        self.base_url = normalize_base_url(base_url)
        self.model = (model or '').strip()
        self.api_key = (api_key or '').strip() or None
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.context_tokens = int(context_tokens)
        parts = urllib.parse.urlsplit(self.base_url)
        self._https = parts.scheme == 'https'
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path

    # -- engine interface ------------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {'kind': self.kind, 'base_url': self.base_url, 'model': self.model}

    def count_tokens(self, messages: list):
        # No tokenizer here: ~4 characters per token for English and code, plus a few per message header.
        return sum(len(m['content']) for m in messages) // 4 + 4 * len(messages), False

    def stream(self, messages: list, params: ChatParams, stop: threading.Event):
        body = {'messages': messages, 'stream': True, 'temperature': float(params.temperature),
                'top_p': float(params.top_p), 'max_tokens': int(params.max_new_tokens), 'seed': int(params.seed)}
        if self.model:
            body['model'] = self.model
        # llama.cpp's server keeps the conversation's evaluated prompt for the next turn with `cache_prompt`; a strict
        # OpenAI server may refuse a field it does not know (400, or 422 from a validating one): then the request
        # goes once more without it, and this server is not sent it again.
        extra = self.base_url not in _REFUSES_CACHE_PROMPT
        for retry in (False, True):
            conn = self._connect()
            deadline = _Deadline(conn.sock, self.read_timeout, self.base_url)  # counts from sending the request
            cancel = _Cancel(stop, conn.sock)
            try:
                response = self._request(conn, 'POST', '/chat/completions',
                                         dict(body, cache_prompt=True) if extra else body, stop, raise_status=False)
                if response is None:
                    return
                if response.status >= 300:
                    error = self._status_error(response)
                    if extra and response.status in (400, 422) and not retry:
                        extra = False
                        continue
                    raise error
                if retry:
                    _REFUSES_CACHE_PROMPT.add(self.base_url)
                ctype = (response.getheader('Content-Type') or '').lower()
                reader = _body_reader(response, self.base_url)
                if 'text/event-stream' in ctype or 'json' not in ctype:
                    yield from self._events(reader, stop, deadline)
                else:  # a server that ignores `stream: true` and answers with one JSON completion
                    yield from self._whole(reader, stop, deadline)
                return
            finally:
                cancel.close()
                conn.close()

    # -- models ------------------------------------------------------------------------------------------------

    def list_models(self) -> list:
        """Model ids from GET /v1/models; [] when the server does not offer the list. Unreachable, or an HTTP
        error (a wrong API key): ChatError with the server's message."""
        conn = self._connect()
        try:
            response = self._request(conn, 'GET', '/models', None, threading.Event(), raise_status=False)
            if response.status in (404, 405, 501):
                return []  # no model list on this server; the model name is typed instead
            if response.status >= 300:
                raise self._status_error(response)
            try:
                data = json.loads(_body_reader(response, self.base_url).read(MAX_JSON_BODY))
            except (ValueError, OSError, http.client.HTTPException):
                return []
        finally:
            conn.close()
        items = data.get('data') if isinstance(data, dict) else None
        if not isinstance(items, list):
            items = data.get('models', []) if isinstance(data, dict) else []  # Ollama's native /api/tags shape
        names = [m.get('id') or m.get('name') for m in items if isinstance(m, dict)]
        return [n for n in names if isinstance(n, str) and n]

    # -- HTTP ----------------------------------------------------------------------------------------------------

    def _connect(self):
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout)
        where = self.base_url
        try:
            conn.connect()
        except ConnectionRefusedError:
            raise ChatError(f'Cannot connect to {where}: connection refused. Is the LLM server running there?') \
                from None
        except socket.timeout:
            raise ChatError(f'Cannot connect to {where}: no answer within {self.connect_timeout:g} s.') from None
        except socket.gaierror:
            raise ChatError(f'Cannot connect to {where}: unknown host {self._host!r}.') from None
        except ssl.SSLError as e:
            raise ChatError(f'Cannot connect to {where}: TLS failed ({e.reason or e}).') from None
        except OSError as e:
            raise ChatError(f'Cannot connect to {where}: {e.strerror or e}.') from None
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _read_failure(self, e: Exception, stop: threading.Event, deadline: _Deadline):
        if stop.is_set():
            return None  # our own shutdown of the socket
        if isinstance(e, socket.timeout):
            return deadline.error()
        return ChatError(f'The server at {self.base_url} closed the connection in the middle of the reply.')

    def _request(self, conn, method: str, path: str, body, stop: threading.Event, raise_status: bool = True):
        headers = {'Accept': 'text/event-stream' if body is not None else 'application/json',
                   'Accept-Encoding': 'identity'}  # a compressed stream cannot be shown as it arrives
        data = None
        if body is not None:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        if self.api_key:
            headers['Authorization'] = f'Bearer {self.api_key}'
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if stop.is_set():
                return None
            if isinstance(e, socket.timeout):
                raise ChatError(f'The server at {self.base_url} did not answer within {self.read_timeout:g} s '
                                '(read timeout).') from None
            raise ChatError(f'The server at {self.base_url} closed the connection without answering.') from None
        if raise_status and response.status >= 300:
            raise self._status_error(response)
        return response

    def _status_error(self, response) -> ChatError:
        """'The server at URL answered HTTP 401 Unauthorized: <its message>. Check the API key.'"""
        try:
            detail = _error_text(_body_reader(response, self.base_url).read(MAX_ERROR_BODY))
        except (OSError, http.client.HTTPException, ChatError):
            detail = ''
        reason = (response.reason or '').strip()
        status = f'HTTP {response.status}' + (f' {reason}' if reason else '')
        hint = {401: ' Check the API key.', 403: ' Check the API key.',
                404: ' Check the base URL and the model name.'}.get(response.status, '')
        if 300 <= response.status < 400:
            detail = detail or f"a redirect to {response.getheader('Location')}, which is not followed"
        detail = detail.rstrip('.')
        if detail.lower() == reason.lower().rstrip('.'):
            detail = ''  # "HTTP 500 Internal Server Error: Internal Server Error." says nothing twice
        return ChatError(f'The server at {self.base_url} answered {status}' + (f': {detail}.' if detail else '.')
                         + hint)

    # -- replies ---------------------------------------------------------------------------------------------------

    def _chunk_events(self, data: str):
        if data.strip() == '[DONE]':
            return [('done', None)]
        try:
            chunk = json.loads(data)
        except ValueError:
            snippet = ' '.join(data.split())[:80]
            raise ChatError(f'The server at {self.base_url} sent a malformed stream (not OpenAI-compatible SSE): '
                            f'{snippet!r}') from None
        if not isinstance(chunk, dict):
            raise ChatError(f'The server at {self.base_url} sent a malformed stream (not OpenAI-compatible SSE): '
                            f'{" ".join(data.split())[:80]!r}')
        if chunk.get('error'):
            raise ChatError(f'The server at {self.base_url} reported an error: '
                            f'{_error_text(json.dumps(chunk).encode())}')
        events = []
        usage = chunk.get('usage')
        if isinstance(usage, dict) and usage.get('prompt_tokens'):
            events.append(('usage', usage))
        reuse = _prompt_reuse(usage if isinstance(usage, dict) else {}, chunk.get('timings'))
        if reuse is not None:
            events.append(('stats', reuse))
        choices = chunk.get('choices')
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get('delta') if isinstance(choice.get('delta'), dict) else choice.get('message')
            text = delta.get('content') if isinstance(delta, dict) else choice.get('text')
            if isinstance(text, str) and text:
                events.append(('text', text))
            if choice.get('finish_reason'):
                events.append(('finish', 'length' if choice['finish_reason'] == 'length' else 'stop'))
        return events

    def _events(self, response, stop: threading.Event, deadline: _Deadline):
        finished = False
        data_lines, event = [], ''
        while True:
            if stop.is_set():
                return
            deadline.arm()
            try:
                raw = response.readline(MAX_LINE)
            except (OSError, http.client.HTTPException, ValueError) as e:
                failure = self._read_failure(e, stop, deadline)
                if failure is None:
                    return
                raise failure from None
            if stop.is_set():
                return
            line = raw.decode('utf-8', 'replace').rstrip('\r\n')
            if raw and line:
                field, _, value = line.partition(':')
                value = value[1:] if value.startswith(' ') else value
                if line.startswith(':'):
                    pass  # SSE comment / keep-alive
                elif field == 'data':
                    data_lines.append(value)
                elif field == 'event':
                    event = value.strip()
                elif field not in ('id', 'retry'):
                    raise ChatError(f'The server at {self.base_url} sent a malformed stream (not OpenAI-compatible '
                                    f'SSE): {" ".join(line.split())[:80]!r}')
                deadline.other()
                continue
            if data_lines:  # a blank line (or the end) dispatches the event
                data = '\n'.join(data_lines)
                if event == 'error':  # its data may be {"error": ...}, {"message": ...}, {"detail": ...} or text
                    raise ChatError(f'The server at {self.base_url} reported an error: '
                                    f'{_error_text(data.encode()) or "(no message)"}')
                for kind, value in self._chunk_events(data):
                    if kind == 'done':
                        if not finished:
                            yield 'finish', 'stop'
                        return
                    finished = finished or kind == 'finish'
                    if kind == 'text':
                        deadline.text()
                    yield kind, value
                data_lines, event = [], ''
            if not raw:
                if finished:
                    return  # some servers close after the finish_reason chunk without [DONE]
                raise ChatError(f'The server at {self.base_url} closed the connection in the middle of the reply.')

    def _whole(self, response, stop: threading.Event, deadline: _Deadline):
        deadline.arm()
        try:
            body = response.read(MAX_JSON_BODY)
        except (OSError, http.client.HTTPException) as e:
            failure = self._read_failure(e, stop, deadline)
            if failure is None:
                return
            raise failure from None
        events = self._chunk_events(body.decode('utf-8', 'replace'))
        yield from events
        if not any(kind == 'finish' for kind, _ in events):
            yield 'finish', 'stop'
