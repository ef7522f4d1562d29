"""The server backend against a real loopback OpenAI-compatible HTTP server: streaming, the Omost conversation
format on the wire, cancel, and every failure as the exact line the user sees, with the history intact."""

import gzip
import json
import threading
import time
import zlib

import pytest

from conftest import read_fixture
from lib_omost.llm import (SYSTEM_PROMPT, ChatError, ChatParams, Conversation, ServerBackend, normalize_base_url,
                           stream_reply)
from lib_omost.llm.conversation import Turn
from llm_helpers import LoopbackServer, free_port, sse_chunk, stream_text

EARLIER = [Turn('a dragon over a castle', 'canvas = Canvas()\n# earlier reply')]


def run(backend, conv, message, mode='new', stop=None, params=None, cache=None):
    updates = list(stream_reply(backend, conv, message, params or ChatParams(), stop or threading.Event(),
                                cache=cache, mode=mode))
    assert updates and updates[-1].done and not any(u.done for u in updates[:-1])
    return updates


def conversation():
    return Conversation([Turn(t.user, t.assistant) for t in EARLIER])


def test_base_url_forms():
    assert normalize_base_url('127.0.0.1:8080') == 'http://127.0.0.1:8080/v1'
    assert normalize_base_url('http://127.0.0.1:8080/') == 'http://127.0.0.1:8080/v1'
    assert normalize_base_url('http://127.0.0.1:8080/v1/') == 'http://127.0.0.1:8080/v1'
    assert normalize_base_url('https://h.example/proxy/v1/chat/completions') == 'https://h.example/proxy/v1'


def test_streams_a_canvas_with_omost_format_and_params():
    reply = read_fixture('dragon_battle.canvas.py')
    pieces = [reply[i:i + 40] for i in range(0, len(reply), 40)]
    with LoopbackServer(stream_text(pieces)) as srv:
        conv = conversation()
        backend = ServerBackend(srv.url + '/v1/', 'omost-llama-3-8b', api_key='sk-test')
        updates = run(backend, conv, 'change the dragon to a dinosaur',
                      params=ChatParams(seed=7, temperature=0.3, top_p=0.8, max_new_tokens=999))
        method, path, headers, body = srv.requests[0]
    texts = [u.text for u in updates[:-1]]
    assert texts == [''.join(pieces[:i + 1]) for i in range(len(pieces))]  # cumulative, one update per delta
    last = updates[-1]
    assert (last.text, last.error, last.partial, last.finish, last.notice) == (reply, None, False, 'stop', None)
    assert conv.history == [(EARLIER[0].user, EARLIER[0].assistant), ('change the dragon to a dinosaur', reply)]
    assert (method, path) == ('POST', '/v1/chat/completions')
    assert headers['Authorization'] == 'Bearer sk-test'
    assert body == {'model': 'omost-llama-3-8b', 'stream': True, 'seed': 7, 'temperature': 0.3, 'top_p': 0.8,
                    'max_tokens': 999, 'cache_prompt': True, 'messages': [
                        {'role': 'system', 'content': SYSTEM_PROMPT},
                        {'role': 'user', 'content': EARLIER[0].user},
                        {'role': 'assistant', 'content': EARLIER[0].assistant},
                        {'role': 'user', 'content': 'change the dragon to a dinosaur'}]}


def test_retry_and_edit_replace_the_last_turn():
    with LoopbackServer(stream_text(['second ', 'try'])) as srv:
        conv = conversation()
        conv.turns.append(Turn('a cat', 'first try'))
        backend = ServerBackend(srv.url, 'm')
        run(backend, conv, '', mode='retry')
        assert conv.history[-1] == ('a cat', 'second try') and len(conv.turns) == 2
        run(backend, conv, 'a dog', mode='edit')
        assert conv.history[-1] == ('a dog', 'second try') and len(conv.turns) == 2
        sent = [r[3]['messages'] for r in srv.requests]
    assert sent[0][-1] == {'role': 'user', 'content': 'a cat'} and len(sent[0]) == 4  # old reply not sent back
    assert sent[1][-1] == {'role': 'user', 'content': 'a dog'} and len(sent[1]) == 4


@pytest.mark.parametrize('mode,message', [('new', '  '), ('edit', ''), ('retry', '')])
def test_nothing_to_send_changes_nothing(mode, message):
    backend = ServerBackend('127.0.0.1:9', 'm')  # never contacted
    conv = Conversation() if mode == 'retry' else conversation()
    before = conv.history
    last = run(backend, conv, message, mode=mode)
    assert last[-1].error == ('There is no message to retry.' if mode == 'retry' else 'Type a message first.')
    assert conv.history == before


def test_reply_without_code_gets_a_notice():
    with LoopbackServer(stream_text(['I would rather ', 'chat.'])) as srv:
        last = run(ServerBackend(srv.url, 'm'), Conversation(), 'hello')[-1]
    assert last.notice == 'The model answered without Canvas code; ask again, or retry with another seed.'
    assert last.error is None and last.text == 'I would rather chat.'


def test_cancel_closes_the_stream_and_keeps_the_partial_reply():
    def endless(h, body):
        h.start_sse()
        try:
            for i in range(400):
                h.send_event(sse_chunk(f'w{i} '))
                time.sleep(0.02)
        except OSError:
            h.server.client_gone.set()  # the client closed the stream
    with LoopbackServer(endless) as srv:
        conv, stop = conversation(), threading.Event()
        updates = []
        for u in stream_reply(ServerBackend(srv.url, 'm'), conv, 'a cat', ChatParams(), stop):
            updates.append(u)
            if len(updates) == 3:
                stop.set()
        assert srv.httpd.client_gone.wait(3)
    last = updates[-1]
    assert (last.text, last.partial, last.finish, last.error) == ('w0 w1 w2 ', True, 'cancelled', None)
    assert last.notice == 'Stopped; the partial reply is kept.'
    assert conv.history[-1] == ('a cat', 'w0 w1 w2 ') and conv.turns[-1].partial and len(conv.turns) == 2
    assert conv.display_history()[-1][1] == 'w0 w1 w2 \n\n*(reply cut off)*'
    assert Conversation.from_history(conv.display_history()).history == conv.history


def test_cancel_while_the_server_is_silent_returns_at_once():
    def silent(h, body):
        h.start_sse()
        h.send_event(sse_chunk('hello'))
        h.server.release.wait(10)
    with LoopbackServer(silent) as srv:
        conv, stop = Conversation(), threading.Event()
        gen = stream_reply(ServerBackend(srv.url, 'm', read_timeout=30), conv, 'a cat', ChatParams(), stop)
        assert next(gen).text == 'hello'
        threading.Timer(0.2, stop.set).start()
        t0 = time.monotonic()
        last = list(gen)[-1]
        assert time.monotonic() - t0 < 2
    assert (last.text, last.finish, conv.history) == ('hello', 'cancelled', [('a cat', 'hello')])


def failure(script, message='a cat', **backend_kw):
    with LoopbackServer(script) as srv:
        conv = conversation()
        t0 = time.monotonic()
        updates = run(ServerBackend(srv.url, 'm', **backend_kw), conv, message)
        elapsed = time.monotonic() - t0
        return updates[-1], conv, srv.url + '/v1', elapsed


def assert_history_intact(conv, partial_text=''):
    assert conv.history[0] == (EARLIER[0].user, EARLIER[0].assistant)
    assert conv.history[1] == ('a cat', partial_text) and len(conv.turns) == 2


def test_refused_port():
    port = free_port()
    conv = conversation()
    last = run(ServerBackend(f'http://127.0.0.1:{port}', 'm'), conv, 'a cat')[-1]
    assert last.error == (f'Cannot connect to http://127.0.0.1:{port}/v1: connection refused. '
                          'Is the LLM server running there?')
    assert (last.partial, last.finish) == (True, 'error')
    assert_history_intact(conv)


def test_http_500_with_openai_error_json():
    last, conv, url, _ = failure(lambda h, b: h.send_json(500, {'error': {'message': 'CUDA out of memory.',
                                                                          'type': 'server_error'}}))
    assert last.error == f'The server at {url} answered HTTP 500 Internal Server Error: CUDA out of memory.'
    assert_history_intact(conv)


def test_http_404_ollama_style_and_plain_text_errors():
    last, conv, url, _ = failure(lambda h, b: h.send_json(404, {'error': "model 'm' not found"}))
    assert last.error == (f"The server at {url} answered HTTP 404 Not Found: model 'm' not found. "
                          'Check the base URL and the model name.')
    assert_history_intact(conv)
    last, conv, url, _ = failure(lambda h, b: h.send_json(503, 'Loading model\nplease wait'))
    assert last.error == f'The server at {url} answered HTTP 503 Service Unavailable: Loading model please wait.'


def test_malformed_sse_keeps_the_text_so_far():
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('canvas = '))
        h.send_event('{"choices": [oops')
        h.end_sse()
    last, conv, url, _ = failure(script)
    assert last.error == (f'The server at {url} sent a malformed stream (not OpenAI-compatible SSE): '
                          "'{\"choices\": [oops'")
    assert (last.text, last.partial) == ('canvas = ', True)
    assert_history_intact(conv, 'canvas = ')


def test_error_event_inside_the_stream():
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('abc'))
        h.send_event({'error': {'message': 'context window exceeded'}})
        h.end_sse()
    last, conv, url, _ = failure(script)
    assert last.error == f'The server at {url} reported an error: context window exceeded'
    assert_history_intact(conv, 'abc')


@pytest.mark.parametrize('clean_end', [False, True])
def test_drop_mid_stream(clean_end):
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('canvas = Canvas()\n'))
        if clean_end:
            h.end_sse()  # a well-formed end of body, but no finish_reason and no [DONE]
        h.drop()
    last, conv, url, _ = failure(script)
    assert last.error == f'The server at {url} closed the connection in the middle of the reply.'
    assert (last.text, last.partial, last.finish) == ('canvas = Canvas()\n', True, 'error')
    assert_history_intact(conv, 'canvas = Canvas()\n')


def test_hanging_server_times_out():
    last, conv, url, elapsed = failure(lambda h, b: h.server.release.wait(10), read_timeout=1.0)
    assert last.error == f'The server at {url} did not answer within 1 s (read timeout).'
    assert elapsed < 3
    assert_history_intact(conv)


def test_server_stalling_mid_reply_times_out():
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('canvas'))
        h.server.release.wait(10)
    last, conv, url, elapsed = failure(script, read_timeout=1.0)
    assert last.error == f'The server at {url} sent nothing for 1 s (read timeout).'
    assert elapsed < 3
    assert_history_intact(conv, 'canvas')


def test_max_tokens_cut_is_partial_and_not_cached(tmp_path):
    from lib_omost.llm import ResponseCache
    cache = ResponseCache(str(tmp_path))
    with LoopbackServer(stream_text(['canvas = Canvas()'], finish='length')) as srv:
        last = run(ServerBackend(srv.url, 'm'), Conversation(), 'a cat', params=ChatParams(max_new_tokens=5),
                   cache=cache)[-1]
    assert (last.partial, last.finish, last.error) == (True, 'length', None)
    assert last.notice == 'The reply was cut at 5 new tokens (max new tokens); the partial reply is kept.'
    assert len(cache) == 0


def test_non_streaming_json_answer_is_accepted():
    completion = {'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': 'whole reply'},
                               'finish_reason': 'stop'}]}
    with LoopbackServer(lambda h, b: h.send_json(200, completion)) as srv:
        last = run(ServerBackend(srv.url, 'm'), Conversation(), 'a cat')[-1]
    assert (last.text, last.finish, last.error) == ('whole reply', 'stop', None)


def test_list_models():
    models = {'object': 'list', 'data': [{'id': 'omost-llama-3-8b'}, {'id': 'omost-phi-3'}]}
    with LoopbackServer(lambda h, b: h.send_json(200, models)) as srv:
        assert ServerBackend(srv.url, '').list_models() == ['omost-llama-3-8b', 'omost-phi-3']
        assert srv.requests[0][:2] == ('GET', '/v1/models')
        srv.set_script(lambda h, b: h.send_json(404, {'error': 'not found'}))
        assert ServerBackend(srv.url, '').list_models() == []


# ---------------------------------------------------------------------------------------------------------------
# Found against real servers (transformers serve, llama-cpp-python's server, LiteLLM)


def test_list_models_says_what_the_server_said():
    with LoopbackServer(lambda h, b: h.send_json(401, {'error': {'message': 'Invalid API key', 'code': 401}},
                                                 reason='Unauthorized')) as srv:
        with pytest.raises(ChatError) as e:
            ServerBackend(srv.url, '', api_key='wrong').list_models()
    assert str(e.value) == (f'The server at {srv.url}/v1 answered HTTP 401 Unauthorized: Invalid API key. '
                            'Check the API key.')
    with LoopbackServer(lambda h, b: h.send_json(500, 'Internal Server Error')) as srv:
        with pytest.raises(ChatError) as e:
            ServerBackend(srv.url, '').list_models()
    assert str(e.value) == f'The server at {srv.url}/v1 answered HTTP 500 Internal Server Error.'  # said once


def keepalive_script(text_first: bool):
    def script(h, body):
        h.start_sse()
        if text_first:
            h.send_event(sse_chunk('canvas'))
        h.send_event({'choices': [{'index': 0, 'delta': {'role': 'assistant'}, 'finish_reason': None}]})
        for _ in range(100):  # a server busy with another request: keep-alives, never text
            h.write_chunk(b': ping\n\n')
            if h.server.release.wait(0.2):
                return
    return script


@pytest.mark.parametrize('text_first', [False, True])
def test_keepalives_do_not_extend_the_timeout(text_first):
    last, conv, url, elapsed = failure(keepalive_script(text_first), read_timeout=1.0)
    if text_first:
        assert last.error == f'The server at {url} sent no reply text for 1 s, only keep-alives (timeout).'
        assert_history_intact(conv, 'canvas')
    else:
        assert last.error == (f'The server at {url} sent no reply text within 1 s, only keep-alives (timeout); '
                              'it may be busy with another request.')
        assert_history_intact(conv)
    assert 0.9 < elapsed < 2.5  # pings every 0.2 s would have kept a silence timeout waiting for 20 s


def test_the_timeout_counts_between_text_pieces_not_for_the_whole_reply():
    pieces = [f'w{i} ' for i in range(8)]
    with LoopbackServer(stream_text(pieces, delay=0.3)) as srv:  # 2.4 s in all, 0.3 s apart
        last = run(ServerBackend(srv.url, 'm', read_timeout=1.0), Conversation(), 'a cat')[-1]
    assert (last.text, last.error) == (''.join(pieces), None)


@pytest.mark.parametrize('data,message', [
    ({'message': 'model overloaded'}, 'model overloaded'),
    ({'detail': 'rate limit reached'}, 'rate limit reached'),
    ('upstream timed out', 'upstream timed out'),
    ({'error': {'message': 'context window exceeded'}}, 'context window exceeded'),
])
def test_sse_error_event_keeps_the_servers_message(data, message):
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('abc'))
        payload = data if isinstance(data, str) else json.dumps(data)
        h.write_chunk(b'event: error\ndata: ' + payload.encode() + b'\n\n')
        h.end_sse()
    last, conv, url, _ = failure(script)
    assert last.error == f'The server at {url} reported an error: {message}'
    assert_history_intact(conv, 'abc')


def start_encoded(h, status, ctype, encoding, data=None):
    """Headers of a compressed answer; `data` is the whole body, else the body is chunked."""
    h.send_response(status)
    h.send_header('Content-Type', ctype)
    h.send_header('Content-Encoding', encoding)
    if data is None:
        h.send_header('Transfer-Encoding', 'chunked')
    else:
        h.send_header('Content-Length', str(len(data)))
    h.end_headers()
    if data is not None:
        h.wfile.write(data)


def gzip_sse(pieces):
    def script(h, body):
        start_encoded(h, 200, 'text/event-stream', 'gzip')
        z = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        events = [sse_chunk(p) for p in pieces] + [sse_chunk(None, 'stop'), '[DONE]']
        for event in events:
            payload = event if isinstance(event, str) else json.dumps(event)
            h.write_chunk(z.compress(b'data: ' + payload.encode() + b'\n\n') + z.flush(zlib.Z_SYNC_FLUSH))
        h.write_chunk(z.flush())
        h.end_sse()
    return script


def test_a_gzip_stream_is_read_and_identity_is_asked_for():
    with LoopbackServer(gzip_sse(['canvas ', '= ', 'Canvas()'])) as srv:
        last = run(ServerBackend(srv.url, 'm'), Conversation(), 'a cat')[-1]
        assert srv.requests[0][2]['Accept-Encoding'] == 'identity'
    assert (last.text, last.error, last.finish) == ('canvas = Canvas()', None, 'stop')


def test_a_compressed_error_body_and_an_unreadable_encoding_are_told():
    data = gzip.compress(json.dumps({'error': {'message': 'no such model'}}).encode())
    last, conv, url, _ = failure(lambda h, b: start_encoded(h, 404, 'application/json', 'gzip', data))
    assert last.error == (f'The server at {url} answered HTTP 404 Not Found: no such model. '
                          'Check the base URL and the model name.')

    last, conv, url, _ = failure(lambda h, b: start_encoded(h, 200, 'text/event-stream', 'br', b'\x8b\x02\x80\x00'))
    assert last.error == (f'The server at {url} sent a br-compressed reply although an uncompressed one was asked '
                          'for; turn compression off in the server (or the proxy in front of it).')
    assert_history_intact(conv)


def strict_server(status, message):
    """A server that refuses fields it does not know, like OpenAI's API (400 'Unrecognized request argument') or a
    validating one (422); `cache_prompt` is llama.cpp's."""
    def script(h, body):
        if 'cache_prompt' in body:
            h.send_json(status, {'error': {'message': message, 'type': 'invalid_request_error'}})
        else:
            stream_text(['canvas = ', 'Canvas()'])(h, body)
    return script


@pytest.mark.parametrize('status', [400, 422])
def test_cache_prompt_is_dropped_for_a_server_that_refuses_it(status):
    with LoopbackServer(strict_server(status, 'Unrecognized request argument supplied: cache_prompt')) as srv:
        backend = ServerBackend(srv.url, 'm')
        first = run(backend, conversation(), 'a cat')[-1]
        again = run(ServerBackend(srv.url, 'm'), conversation(), 'a dog')[-1]  # the UI makes a backend per reply
        sent = [r[3] for r in srv.requests]
    assert (first.text, first.error, again.text, again.error) == ('canvas = Canvas()', None, 'canvas = Canvas()', None)
    assert [('cache_prompt' in b) for b in sent] == [True, False, False]  # refused once, then never sent again
    assert sent[0]['messages'] == sent[1]['messages'] and sent[2]['messages'][-1]['content'] == 'a dog'


def test_cache_prompt_stays_for_a_server_that_takes_it_and_a_real_400_is_reported():
    with LoopbackServer(stream_text(['canvas'])) as srv:
        run(ServerBackend(srv.url, 'm'), conversation(), 'a cat')
        run(ServerBackend(srv.url, 'm'), conversation(), 'a dog')
        assert [r[3].get('cache_prompt') for r in srv.requests] == [True, True]
    too_long = {'error': {'message': 'the request exceeds the available context size'}}
    with LoopbackServer(lambda h, b: h.send_json(400, too_long, reason='Bad Request')) as srv:
        last = run(ServerBackend(srv.url, 'm'), conversation(), 'a cat')[-1]
        again = run(ServerBackend(srv.url, 'm'), conversation(), 'a cat')[-1]
        sent = [r[3].get('cache_prompt') for r in srv.requests]
    assert last.error == (f'The server at {srv.url}/v1 answered HTTP 400 Bad Request: the request exceeds the '
                          'available context size.')
    assert again.error == last.error
    assert sent == [True, None, True, None]  # a 400 that was not about the field is not remembered as a refusal


@pytest.mark.parametrize('extra,expected', [
    # llama.cpp's server (tools/server/server-task.cpp: usage_json with prompt_tokens_details; timings with cache_n)
    ({'usage': {'prompt_tokens': 1746, 'completion_tokens': 2, 'prompt_tokens_details': {'cached_tokens': 1730}},
      'timings': {'cache_n': 1730, 'prompt_n': 16}}, {'prompt_tokens': 1746, 'prompt_reused': 1730}),
    # an older llama-server: timings only (prompt_n counts the tokens it evaluated)
    ({'timings': {'cache_n': 300, 'prompt_n': 38}}, {'prompt_tokens': 338, 'prompt_reused': 300}),
    # a server that says nothing of its cache, or says it in a shape we do not know
    ({'usage': {'prompt_tokens': 40, 'completion_tokens': 2}}, None),
    ({'usage': {'prompt_tokens': 40, 'prompt_tokens_details': {'cached_tokens': '7'}}, 'timings': []}, None),
])
def test_the_servers_prompt_cache_count_reaches_the_status(extra, expected):
    def script(h, body):
        h.start_sse()
        h.send_event(sse_chunk('canvas'))
        h.send_event(dict(sse_chunk(None, 'stop'), **extra))
        h.send_event('[DONE]')
        h.end_sse()
    with LoopbackServer(script) as srv:
        last = run(ServerBackend(srv.url, 'm'), conversation(), 'a cat')[-1]
    assert (last.text, last.error) == ('canvas', None)
    assert last.stats == expected
    if expected:
        from omost_webui.ui import stats_text
        assert stats_text(last.stats) == (f"prompt {expected['prompt_tokens']:,} tokens "
                                          f"({expected['prompt_reused']:,} reused).")
