"""Two users at once: two Chromium contexts (two browser sessions, no shared cookies or storage) on one Omost UI
(tests/ui_app.py under gradio 4.40 and 3.41), chatting at the same time with different requests.

Each must see only its own conversation, canvas, region editor, undo history and status; Stop in one leaves the
other streaming; with the in-process model (one reply at a time) the second reply says it waits, then runs. No
timing is asserted: the loopback LLM server holds each reply half-way until the test lets it go on."""

import json
import os
import time

import pytest
from conftest import FIXTURES, read_fixture

from lib_omost.canvas import load_canvas
from llm_helpers import LoopbackServer
from ui_helpers import (PYTHONS, ROOT, HeldReplies, OmostPage, browser_missing_reason, canvas_reply, chat_bodies,
                        chromium, ui_app)

MISSING = browser_missing_reason()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=str(MISSING)), pytest.mark.timeout(600)]

T = '#txt2img_omost_'
WAIT_MS = 120000  # a bound for a hung test only; nothing here is timed
DRAGON = read_fixture('dragon_battle.canvas.py')
DINOSAUR = read_fixture('dinosaur_edit.canvas.py')
ASK = {'dragon': 'generate an image of the fierce battle of warriors and a dragon',
       'dinosaur': 'the warriors fight a dinosaur instead'}
REPLIES = {'dragon': canvas_reply(DRAGON), 'dinosaur': canvas_reply(DINOSAUR)}  # by a word in the request


@pytest.fixture(scope='module')
def browser():
    with chromium() as browser:
        yield browser


def session_page(browser, url):
    """A new browser context (its own cookies and storage: another user) with the page loaded (an OmostPage)."""
    context = browser.new_context(viewport={'width': 1400, 'height': 1000})
    page = context.new_page()
    for script in ('omost.js', 'omost_editor.js'):  # the WebUI loads every file in javascript/
        page.add_init_script(path=os.path.join(ROOT, 'javascript', script))
    page.goto(url)
    page.wait_for_selector(f'{T}input textarea', timeout=WAIT_MS)
    return OmostPage(page, T, WAIT_MS)


def script_canvas(page, expected=None):
    """The canvas argument the script would receive from this page (the app's Echo button); with `expected` (a
    Canvas), asked again until it reads as that canvas or WAIT_MS passed (the echo box keeps its last value)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        page.click('#txt2img_echo')
        page.wait_for_timeout(200)
        value = page.locator('#txt2img_echoed textarea').first.input_value()
        code = json.loads(value)[1] if value else None
        if code is not None and (expected is None or load_canvas(code).canvas == expected):
            return code
        assert time.monotonic() < deadline, f'the script args stayed {code!r}'


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_two_sessions_chat_at_once_and_see_only_their_own(browser, version):
    if not os.path.exists(PYTHONS[version]):
        pytest.skip(f'no venv with gradio {version} at {PYTHONS[version]}')
    script = HeldReplies(REPLIES)
    with LoopbackServer(script) as llm, ui_app(version, llm.url + '/v1') as url:
        try:
            a, b = session_page(browser, url), session_page(browser, url)
            a.send(ASK['dragon'])
            a.wait_event(script.held['dragon'])
            b.send(ASK['dinosaur'])
            b.wait_event(script.held['dinosaur'])
            a.wait_text('chat', 'Here is the canvas')  # both replies half-written, at the same time
            b.wait_text('chat', 'Here is the canvas')
            for page, own, other in ((a, 'dragon', 'dinosaur'), (b, 'dinosaur', 'dragon')):
                assert ASK[own] in page.text('chat') and ASK[other] not in page.text('chat')

            # Stop in A: A's reply ends, B's goes on and finishes whole.
            a.click('stop')
            a.wait_text('chat_status', 'Stopped')
            assert 'Stopped' not in b.text('chat_status')
            script.gates['dinosaur'].set()
            b.wait_text('chat_status', 'tokens/s')
            dinosaur = load_canvas(DINOSAUR).canvas
            b.wait_boxes(len(dinosaur.local_regions))
            assert 'Stopped' not in b.text('chat_status')
            assert 'reply cut off' in a.text('chat') and 'reply cut off' not in b.text('chat')
            assert 'A debris-covered battlefield.' in b.text('chat')  # the dinosaur reply's last region
            for page, other in ((a, 'dinosaur'), (b, 'dragon')):
                assert ASK[other] not in page.text('chat')

            # The server saw two conversations, each with only its own message.
            bodies = chat_bodies(llm)
            assert sorted(body['messages'][-1]['content'] for body in bodies) == sorted(ASK.values())
            assert all(len(body['messages']) == 2 for body in bodies)  # system + that user's message

            # Canvas and editor: B has the dinosaur; A what its cut reply held, none of the dinosaur.
            assert b.editor_canvas() == dinosaur.to_json()
            script_canvas(b.page, dinosaur)
            a_canvas = load_canvas(script_canvas(a.page, load_canvas(a.editor_canvas()).canvas)).canvas
            a_json = json.dumps(a_canvas.to_json()).lower()
            assert 'dragon' in a_json and 'dinosaur' not in a_json

            # Editing and undo in A leave B alone.
            n_a, b_state = a.boxes(), b.editor_canvas()
            a.click('editor .omost-ed-add')
            a.wait_boxes(n_a + 1)
            assert b.boxes() == len(dinosaur.local_regions) and b.editor_canvas() == b_state
            a.click('editor .omost-ed-undo')
            a.wait_boxes(n_a)
            script_canvas(a.page, a_canvas)
            assert b.editor_canvas() == b_state and script_canvas(b.page, dinosaur)
            assert 'Stopped' in a.text('chat_status') and 'tokens/s' in b.text('chat_status')
        finally:
            script.open_all()


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    pytest.importorskip('transformers')
    from llm_helpers import build_tiny_llama, corpus_texts
    # eos off: a reply ends at its max new tokens or at Stop, never by chance
    return build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)


def test_the_second_reply_on_the_in_process_model_says_it_waits_then_runs(browser, tiny_model):
    """gradio 4.40 only: the in-process transformers backend needs transformers >= 4.40 (the A1111 venv has
    4.30.2, which the backend refuses); the waiting itself is in Python, the same under both gradio versions."""
    from lib_omost.llm.inprocess import WAITING_NOTICE
    with ui_app('4.40.0', 'http://127.0.0.1:9/v1') as url:
        a, b = session_page(browser, url), session_page(browser, url)
        a.use_local_model(tiny_model, 8192)  # ends only when stopped
        b.use_local_model(tiny_model, 128)
        a.send('a cat on a sofa')
        a.wait_reply_begun('a cat on a sofa')  # the model is A's now
        b.send('a dog in the snow')
        b.wait_text('chat_status', WAITING_NOTICE)
        assert WAITING_NOTICE not in a.text('chat_status')
        a.click('stop')
        a.wait_text('chat_status', 'Stopped')
        b.wait_text('chat_status', 'cut at 128 new tokens')
        assert 'Stopped' not in b.text('chat_status') and WAITING_NOTICE not in b.text('chat_status')
        assert 'a dog in the snow' not in a.text('chat') and 'a cat on a sofa' not in b.text('chat')
