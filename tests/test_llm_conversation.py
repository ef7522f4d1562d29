"""Omost's conversation format, and the incremental decoding that turns streamed token ids into text."""

import hashlib
import random

import pytest

from conftest import FIXTURES
from lib_omost.llm import SYSTEM_PROMPT, Conversation
from lib_omost.llm.conversation import Turn


def test_system_prompt_is_omosts_verbatim():
    assert SYSTEM_PROMPT.startswith('You are a helpful AI assistant to compose images using the below python class '
                                    '`Canvas`:\n\n```python\nclass Canvas:\n')
    assert SYSTEM_PROMPT.endswith('        assert distance_to_viewer > 0\n        pass\n```')
    # sha256 of `system_prompt` in lllyasviel/Omost@731e749 lib_omost/canvas.py, read with ast.literal_eval
    digest = 'b698e3e5039330be6a3173957191048d89e2aefd09c52fccc6e21d764f03736a'
    assert hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest() == digest and len(SYSTEM_PROMPT) == 1269


def test_messages_follow_omost_chat_fn():
    conv = Conversation([Turn('a dragon', 'canvas A'), Turn('oops', ''), Turn('', 'image only'),
                         Turn('bigger dragon', 'canvas B', partial=True), Turn('now a dinosaur')])
    assert conv.messages() == [
        {'role': 'system', 'content': SYSTEM_PROMPT},
        {'role': 'user', 'content': 'a dragon'}, {'role': 'assistant', 'content': 'canvas A'},
        # turns with an empty side are left out, as Omost's chat_fn does; cut-off replies are sent back as they are
        {'role': 'user', 'content': 'bigger dragon'}, {'role': 'assistant', 'content': 'canvas B'},
        {'role': 'user', 'content': 'now a dinosaur'}]
    assert conv.messages('custom', upto=0) == [{'role': 'system', 'content': 'custom'},
                                               {'role': 'user', 'content': 'a dragon'}]
    assert [tuple(t) for t in conv.turns][:1] == [('a dragon', 'canvas A')]


def test_chatbot_round_trip_drops_images_and_keeps_marks():
    conv = Conversation([Turn('a', 'reply'), Turn('b', 'cut', partial=True)])
    shown = conv.display_history() + [(('image.png',), None)]
    back = Conversation.from_history(shown)
    assert back.history == conv.history and [t.partial for t in back.turns] == [False, True]


def test_reply_cut_inside_its_code_block_is_closed_before_the_mark():
    cut = 'Here:\n```python\ncanvas = Canvas()\ncanvas.set_global_'
    conv = Conversation([Turn('a', cut, partial=True)])
    shown = conv.display_history()[0][1]
    assert shown.count('```') % 2 == 0 and shown.endswith('```\n\n*(reply cut off)*')
    back = Conversation.from_history(conv.display_history())
    assert back.turns[0].assistant == cut and back.turns[0].partial


def test_incremental_decoding_equals_whole_decoding():
    pytest.importorskip('transformers')
    from lib_omost.llm.inprocess import IncrementalDecoder
    from lib_omost.llm.tiny import build_tokenizer
    from llm_helpers import corpus_texts
    tok = build_tokenizer(corpus_texts(FIXTURES))
    text = 'Ein Drache 🐉 über der Burg — 城の上の龍, naïve café\n  canvas = Canvas()\n<|eot_id|>done'
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2  # small vocabulary: multi-byte characters span several tokens
    rng = random.Random(0)
    for _ in range(20):
        decoder, seen, out = IncrementalDecoder(lambda ids: tok.decode(ids, skip_special_tokens=True)), 0, []
        while seen < len(ids):
            seen = min(len(ids), seen + rng.randint(1, 4))  # tokens arrive in batches of any size
            piece = decoder.delta(ids[:seen], final=seen == len(ids))
            assert '\ufffd' not in piece
            out.append(piece)
        assert ''.join(out) == tok.decode(ids, skip_special_tokens=True)
