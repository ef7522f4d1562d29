"""The response cache: what makes a hit, what never gets stored, LRU size bound, clear."""

import os
import threading

from lib_omost.llm import ChatParams, Conversation, ResponseCache, ServerBackend, stream_reply
from llm_helpers import LoopbackServer, sse_chunk, stream_text

CANVAS = "canvas = Canvas()\ncanvas.set_global_description(description='a cat', detailed_descriptions=[], " \
         "tags='cat', HTML_web_color_name='white')\n"


def ask(backend, cache, message='a cat', conv=None, system_prompt=None, **params):
    conv = conv if conv is not None else Conversation()
    return list(stream_reply(backend, conv, message, ChatParams(**params), threading.Event(),
                             system_prompt=system_prompt, cache=cache))[-1], conv


def test_hit_needs_same_backend_model_conversation_and_params(tmp_path):
    cache = ResponseCache(str(tmp_path))
    with LoopbackServer(stream_text([CANVAS[:30], CANVAS[30:]])) as srv:
        backend = ServerBackend(srv.url, 'omost')
        first, _ = ask(backend, cache)
        hit, conv = ask(backend, cache)
        assert (first.cached, hit.cached, hit.finish, hit.text, hit.notice) == (False, True, 'cached', CANVAS, None)
        assert conv.history == [('a cat', CANVAS)] and len(srv.requests) == 1
        misses = [ask(backend, cache, seed=1), ask(backend, cache, temperature=0.1), ask(backend, cache, top_p=0.5),
                  ask(backend, cache, max_new_tokens=100), ask(backend, cache, 'a dog'),
                  ask(ServerBackend(srv.url, 'other'), cache), ask(backend, cache, system_prompt='You draw.'),
                  ask(backend, cache, conv=Conversation([('a dragon', 'canvas = Canvas()')]))]
        assert not any(u.cached for u, _ in misses) and len(srv.requests) == 1 + len(misses)
        assert ask(backend, cache, seed=1)[0].cached and len(srv.requests) == 1 + len(misses)


def test_only_complete_replies_are_stored(tmp_path):
    cache = ResponseCache(str(tmp_path))

    def broken(h, body):
        h.start_sse()
        h.send_event(sse_chunk('canvas'))
        h.drop()
    with LoopbackServer(broken) as srv:
        backend = ServerBackend(srv.url, 'm')
        assert ask(backend, cache)[0].error
        srv.set_script(stream_text(['canvas'], finish='length'))
        assert ask(backend, cache)[0].finish == 'length'
        stop = threading.Event()
        stop.set()
        srv.set_script(stream_text(['canvas'] * 5, delay=0.05))
        last = list(stream_reply(backend, Conversation(), 'a cat', ChatParams(), stop, cache=cache))[-1]
        assert last.finish == 'cancelled'
    assert len(cache) == 0 and os.listdir(tmp_path) == []


def test_size_bound_drops_least_recently_used(tmp_path):
    cache = ResponseCache(str(tmp_path), max_bytes=10 ** 9)
    keys = [cache.key({'kind': 'x'}, [{'role': 'user', 'content': str(i)}], {}) for i in range(4)]
    for i, k in enumerate(keys[:3]):
        cache.put(k, 'x' * 1000)
        os.utime(os.path.join(tmp_path, k + '.json'), (1000 + i, 1000 + i))  # put order, distinct mtimes
    assert cache.get(keys[0]) == 'x' * 1000  # a hit makes keys[0] the newest
    one = max(os.path.getsize(os.path.join(tmp_path, k + '.json')) for k in keys[:3])
    cache.max_bytes = 3 * one + 10  # room for three entries, not four (sizes differ by a digit or two)
    cache.put(keys[3], 'x' * 1000)
    assert [cache.get(k) is not None for k in keys] == [True, False, True, True]
    assert cache.size() <= cache.max_bytes


def test_clear_and_damaged_entries(tmp_path):
    cache = ResponseCache(str(tmp_path))
    cache.put('a' * 64, 'reply')
    with open(os.path.join(tmp_path, 'b' * 64 + '.json'), 'w') as f:
        f.write('{"format": "omost-llm-reply", "reply": ')  # cut short
    assert cache.get('b' * 64) is None and cache.get('c' * 64) is None
    assert cache.clear() == 2 and len(cache) == 0 and cache.get('a' * 64) is None
