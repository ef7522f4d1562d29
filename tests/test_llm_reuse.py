"""The conversation cache (prefix reuse) and prompt-lookup drafting of both in-process backends, on the tiny
random-weight Llama-3-style model (transformers) and its GGUF conversion (llama.cpp): greedy replies identical with
and without each technique, the cache cut where the conversation changed (retry, edit last, new chat, a hand-edited
canvas), the token limit and Stop in the middle of a draft, and the benchmark's logits hook at drafted positions."""

import os
import threading

import pytest

from conftest import FIXTURES, read_fixture
from lib_omost.llm import ChatParams, Conversation, LocalBackend, stream_reply
from lib_omost.llm.conversation import Turn
from lib_omost.llm.inprocess import PromptLookup, common_prefix
from llm_helpers import build_tiny_llama, corpus_texts

pytest.importorskip('torch')
pytest.importorskip('transformers')

DRAGON_REPLY = 'Sure. Here is the canvas:\n\n```python\n' + read_fixture('dragon_battle.canvas.py').strip() + '\n```'
EDITED = read_fixture('dinosaur_edit.canvas.py')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    # eos off: random weights would otherwise end some replies after a token or two
    return build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)


def make(kind, folder, tmp_path_factory, **kwargs):
    if kind == 'local':
        return LocalBackend(folder, **kwargs)
    if not os.environ.get('OMOST_REQUIRE_GGUF'):
        pytest.importorskip('gguf')
        pytest.importorskip('llama_cpp')
    from lib_omost.llm.gguf import GGUFBackend
    from lib_omost.llm.tiny import build_tiny_gguf
    path = os.path.join(folder, 'tiny-f32.gguf')
    if not os.path.exists(path):
        build_tiny_gguf(folder, path)
    return GGUFBackend(path, threads=1, **kwargs)


@pytest.fixture(scope='module', params=['local', 'gguf'])
def pair(request, folder, tmp_path_factory):
    """(the backend under test, a cold one: no cache, no drafts) on the same model."""
    warm = make(request.param, folder, tmp_path_factory)
    cold = make(request.param, folder, tmp_path_factory, reuse_prompt=False, draft='off')
    yield warm, cold
    warm.unload()
    cold.unload()


def ask(backend, conv, message, mode='new', n=40, stop=None, **params):
    params = ChatParams(**{'temperature': 0, 'max_new_tokens': n, **params})
    updates = list(stream_reply(backend, conv, message, params, stop or threading.Event(), mode=mode))
    last = updates[-1]
    assert last.error is None, last.error
    return last


def encode(backend, text):
    if backend.kind == 'local':
        return backend.tokenizer.encode(text, add_special_tokens=False)
    return backend.llm.tokenize(text.encode('utf-8'), add_bos=False, special=False)


def copy(conv):
    return Conversation([(t.user, t.assistant) for t in conv.turns])


def test_prompt_lookup_drafts_the_latest_continuation():
    look = PromptLookup()
    ids = [1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 8, 2, 3, 4]
    assert look.draft(ids, 10) == [6, 7, 8, 2, 3, 4]  # the latest earlier 3-gram (2, 3, 4), not the first
    assert look.draft(ids + [6, 7], 2) == [8, 2] and look.draft(ids + [6, 7, 0], 4) == []  # 0 never seen before
    assert PromptLookup().draft([7, 1, 2, 9, 7], 3) == [1, 2, 9] and look.draft(ids, 0) == []  # a 1-gram match
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0


@pytest.mark.parametrize('reuse,draft', [(True, 'off'), (False, 'on'), (True, 'on'), (True, 'auto')])
def test_greedy_replies_are_identical_with_each_technique(pair, reuse, draft):
    warm, cold = pair
    warm.reuse_prompt, warm.draft = reuse, draft
    expected, got = Conversation(), Conversation()
    for message in ('a dragon attacking a castle', 'change the dragon to a dinosaur', 'make it night'):
        a = ask(cold, expected, message)
        b = ask(warm, got, message)
        assert (b.text, b.tokens) == (a.text, a.tokens)
        assert b.stats['reply_tokens'] == b.tokens == 40 and a.stats['prompt_reused'] == 0
        # a forward pass per token after the first, less the accepted drafts (plus one where the limit fell
        # inside a draft: that pass's own token was not needed)
        assert b.tokens - b.stats['accepted'] - b.stats['model_calls'] in (0, 1)
        assert (b.stats['drafted'] > 0) == (draft != 'off')
    prompt = warm.prompt_ids(got.messages(upto=len(got.turns) - 1))
    assert b.stats['prompt_tokens'] == len(prompt)
    if reuse:  # the last turn re-read only what follows the turn before's prompt
        before = warm.prompt_ids(got.messages(upto=len(got.turns) - 2))
        assert len(before) <= b.stats['prompt_reused'] < len(prompt)
    else:
        assert b.stats['prompt_reused'] == 0


def test_the_cache_is_cut_where_the_conversation_changed(pair):
    warm, cold = pair
    warm.reuse_prompt, warm.draft = True, 'auto'

    def check(conv, message, mode='new'):
        """The warm reply equals a cold evaluation of the same conversation; (its stats, its prompt ids)."""
        reference = Conversation([Turn(t.user, t.assistant, t.partial, t.edited_canvas) for t in conv.turns])
        expected = ask(cold, reference, message, mode=mode)
        got = ask(warm, conv, message, mode=mode)
        assert got.text == expected.text
        return got.stats, warm.prompt_ids(conv.messages(upto=len(conv.turns) - 1))

    conv = Conversation()
    stats, p1 = check(conv, 'a dragon attacking a castle')
    stats, prompt = check(conv, '', mode='retry')  # Retry: the same prompt, all but its last token reused
    assert prompt == p1 and stats['prompt_reused'] == len(p1) - 1

    stats, p2 = check(conv, 'change the dragon to a dinosaur')  # the next turn re-reads only what is new
    assert p2[:len(p1)] == p1 and len(p1) <= stats['prompt_reused'] < len(p2)

    stats, p3 = check(conv, 'change the dragon to a unicorn', mode='edit')  # Edit last: cut at the edited message
    assert stats['prompt_reused'] == common_prefix(p2, p3) and p2[:len(p1)] == p3[:len(p1)]

    stats, p4 = check(Conversation(), 'a cat on a sofa')  # New chat: only the start they share (system prompt)
    assert stats['prompt_reused'] == common_prefix(p3, p4) < len(p1)

    # A hand-edited canvas: the cache is cut inside the canvas the user edited
    stats, p5 = check(Conversation([Turn('a dragon', DRAGON_REPLY)]), 'make it night')
    stats, p6 = check(Conversation([Turn('a dragon', DRAGON_REPLY, edited_canvas=EDITED)]), 'make it night')
    header = warm.prompt_ids(Conversation([Turn('a dragon', 'Sure. Here is the canvas:')]).messages())
    assert common_prefix(header, p5) < stats['prompt_reused'] == common_prefix(p5, p6) < len(p5) - 100


@pytest.mark.parametrize('n', [1, 7, 23])
def test_the_token_limit_holds_in_the_middle_of_a_draft(pair, n):
    warm, cold = pair
    warm.reuse_prompt, warm.draft = True, 'on'
    conv = Conversation()
    full = ask(cold, Conversation(), 'a dragon attacking a castle', n=30)
    last = ask(warm, conv, 'a dragon attacking a castle', n=n)
    assert (last.tokens, last.stats['reply_tokens'], last.finish, last.partial) == (n, n, 'length', True)
    assert full.text.startswith(last.text.rstrip('\ufffd'))
    again = ask(warm, copy(conv), 'change the dragon to a dinosaur', n=30)  # the cache after a cut stays usable
    assert again.text == ask(cold, copy(conv), 'change the dragon to a dinosaur', n=30).text


def forward_counter(backend, monkeypatch):
    calls = []
    if backend.kind == 'local':
        handle = backend.model.register_forward_hook(lambda *args: calls.append(1))
        return calls, handle.remove
    ctx = backend.llm._ctx
    real = ctx.decode
    monkeypatch.setattr(ctx, 'decode', lambda batch: (calls.append(1), real(batch))[1])
    return calls, lambda: None


def test_stop_in_the_middle_of_a_draft(pair, monkeypatch):
    warm, cold = pair
    warm.reuse_prompt, warm.draft = True, 'on'
    warm.load()
    monkeypatch.setattr(warm, 'update_interval', 0)
    calls, remove = forward_counter(warm, monkeypatch)
    stop, conv, at_stop, updates = threading.Event(), Conversation(), None, []
    try:
        for u in stream_reply(warm, conv, 'a dragon attacking a castle',
                              ChatParams(temperature=0, max_new_tokens=2000), stop):
            updates.append(u)
            if len(updates) == 4:
                at_stop = len(calls)
                stop.set()
    finally:
        remove()
    last = updates[-1]
    assert len(calls) - at_stop <= 1 and (last.finish, last.partial) == ('cancelled', True) and last.tokens < 2000
    follow = ask(warm, conv, 'change the dragon to a dinosaur', n=20)  # stopped mid-draft: the cache is still right
    assert follow.text == ask(cold, copy(conv), 'change the dragon to a dinosaur', n=20).text


def test_logits_hook_replays_a_transcript_through_drafts(pair):
    """The benchmark's hook: forcing the tokens of Omost's dinosaur edit after its dragon canvas makes the model
    write that edit, drafted positions included, and most of it is drafted from the canvas it edits."""
    warm, cold = pair
    warm.reuse_prompt, warm.draft = True, 'on'
    warm.load()
    conv = Conversation([Turn('a dragon', DRAGON_REPLY)])
    prompt = warm.prompt_ids(Conversation([Turn('a dragon', DRAGON_REPLY),
                                           Turn('change the dragon to a dinosaur')]).messages())
    text = EDITED[:800]
    script = encode(warm, text)
    seen = []

    def hook(ids, logits):
        assert ids[:len(prompt)] == prompt
        seen.append(len(ids))
        logits[:] = -1e30
        logits[script[len(ids) - len(prompt)]] = 0.0
        return logits

    warm.logits_hook = hook
    try:
        last = ask(warm, conv, 'change the dragon to a dinosaur', n=len(script))
    finally:
        warm.logits_hook = None
    stats = last.stats
    assert last.text == text and stats['reply_tokens'] == len(script) and stats['accepted'] > len(script) // 2
    assert len(script) - stats['accepted'] - stats['model_calls'] in (0, 1)
    assert sorted(set(seen)) == list(range(len(prompt), len(prompt) + len(script)))  # every picked position
    assert ask(warm, Conversation(), 'a cat', n=5).text == ask(cold, Conversation(), 'a cat', n=5).text  # unhooked
