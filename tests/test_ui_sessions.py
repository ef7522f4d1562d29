"""Two users at once: two Chromium contexts (two browser sessions, no shared cookies or storage) on one Omost UI
(tests/ui_app.py under gradio 4.40 and 3.41), chatting at the same time with different requests.

Each must see only its own conversation, canvas, region editor, undo history and status; Stop in one leaves the
other streaming; with the in-process model (one reply at a time) the second reply says it waits, then runs. No
timing is asserted: the loopback LLM server holds each reply half-way until the test lets it go on."""

import json
import os
import threading
import time

import pytest
from conftest import FIXTURES, read_fixture

from lib_omost.canvas import load_canvas
from llm_helpers import sse_chunk
from llm_helpers import LoopbackServer
from ui_helpers import (CHROMIUM, CHROMIUM_ARGS, PYTHONS, ROOT, browser_missing_reason, canvas_reply, chat_bodies,
                        ui_app)

MISSING = browser_missing_reason()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=str(MISSING)), pytest.mark.timeout(600)]

T = '#txt2img_omost_'
WAIT_MS = 120000  # a bound for a hung test only; nothing here is timed
DRAGON = read_fixture('dragon_battle.canvas.py')
DINOSAUR = read_fixture('dinosaur_edit.canvas.py')
ASK = {'dragon': 'generate an image of the fierce battle of warriors and a dragon',
       'dinosaur': 'the warriors fight a dinosaur instead'}
REPLIES = {'dragon': canvas_reply(DRAGON), 'dinosaur': canvas_reply(DINOSAUR)}
PIECES, HOLD_AT = 40, 20  # each reply streams in 40 pieces and waits after 20 until its gate opens


class HeldReplies:
    """A LoopbackServer script (tests/llm_helpers.py): the reply follows the request's last user message (the dragon
    or the dinosaur canvas); after HOLD_AT pieces it waits until the test opens that reply's gate."""

    def __init__(self):
        self.held = {k: threading.Event() for k in REPLIES}
        self.gates = {k: threading.Event() for k in REPLIES}

    def __call__(self, handler, body):
        if body is None:
            return handler.send_json(200, {'object': 'list', 'data': [{'id': 'omost-test', 'object': 'model'}]})
        which = 'dinosaur' if 'dinosaur' in body['messages'][-1]['content'] else 'dragon'
        reply = REPLIES[which]
        size = -(-len(reply) // PIECES)
        try:
            handler.start_sse()
            for i in range(0, len(reply), size):
                if i == HOLD_AT * size:
                    self.held[which].set()
                    self.gates[which].wait(WAIT_MS / 1000)
                handler.send_event(sse_chunk(reply[i:i + size]))
                time.sleep(0.01)
            handler.send_event(sse_chunk(None, 'stop'))
            handler.send_event('[DONE]')
            handler.end_sse()
        except (BrokenPipeError, ConnectionResetError):
            pass  # Stop closed the stream

    def open_all(self):
        for gate in self.gates.values():
            gate.set()


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def session_page(browser, url):
    """A new browser context (its own cookies and storage: another user) with the page loaded."""
    context = browser.new_context(viewport={'width': 1400, 'height': 1000})
    page = context.new_page()
    for script in ('omost.js', 'omost_editor.js'):  # the WebUI loads every file in javascript/
        page.add_init_script(path=os.path.join(ROOT, 'javascript', script))
    page.goto(url)
    page.wait_for_selector(f'{T}input textarea', timeout=WAIT_MS)
    return page


def text_of(page, name):
    return page.inner_text(f'{T}{name}')


def wait_text(page, name, text, present=True):
    page.wait_for_function('([sel, text, present]) => document.querySelector(sel).innerText.includes(text) === present',
                           arg=[f'{T}{name}', text, present], timeout=WAIT_MS)


def wait_event(event, page):
    """Wait for a server-side event, letting the page run meanwhile."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not event.is_set():
        assert time.monotonic() < deadline, 'the LLM server never got that far'
        page.wait_for_timeout(100)


def send(page, message):
    box = page.locator(f'{T}input textarea').first
    box.fill(message)
    box.press('Enter')


def editor_canvas(page):
    """The canvas the Python side last sent to this page's region editor."""
    state = page.evaluate('sel => document.querySelector(sel).value', f'{T}editor_state textarea, {T}editor_state input')
    return json.loads(state)['canvas']


def boxes(page):
    return page.locator(f'{T}editor .omost-ed-box').count()


def wait_boxes(page, n):
    page.wait_for_function('([sel, n]) => document.querySelectorAll(sel).length === n',
                           arg=[f'{T}editor .omost-ed-box', n], timeout=WAIT_MS)


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
    script = HeldReplies()
    with LoopbackServer(script) as llm, ui_app(version, llm.url + '/v1') as url:
        try:
            a, b = session_page(browser, url), session_page(browser, url)
            send(a, ASK['dragon'])
            wait_event(script.held['dragon'], a)
            send(b, ASK['dinosaur'])
            wait_event(script.held['dinosaur'], b)
            wait_text(a, 'chat', 'Here is the canvas')  # both replies half-written, at the same time
            wait_text(b, 'chat', 'Here is the canvas')
            for page, own, other in ((a, 'dragon', 'dinosaur'), (b, 'dinosaur', 'dragon')):
                assert ASK[own] in text_of(page, 'chat') and ASK[other] not in text_of(page, 'chat')

            # Stop in A: A's reply ends, B's goes on and finishes whole.
            a.click(f'{T}stop')
            wait_text(a, 'chat_status', 'Stopped')
            assert 'Stopped' not in text_of(b, 'chat_status')
            script.gates['dinosaur'].set()
            wait_text(b, 'chat_status', 'tokens/s')
            dinosaur = load_canvas(DINOSAUR).canvas
            wait_boxes(b, len(dinosaur.local_regions))
            assert 'Stopped' not in text_of(b, 'chat_status')
            assert 'reply cut off' in text_of(a, 'chat') and 'reply cut off' not in text_of(b, 'chat')
            assert 'A debris-covered battlefield.' in text_of(b, 'chat')  # the dinosaur reply's last region
            for page, other in ((a, 'dinosaur'), (b, 'dragon')):
                assert ASK[other] not in text_of(page, 'chat')

            # The server saw two conversations, each with only its own message.
            bodies = chat_bodies(llm)
            assert sorted(body['messages'][-1]['content'] for body in bodies) == sorted(ASK.values())
            assert all(len(body['messages']) == 2 for body in bodies)  # system + that user's message

            # Canvas and editor: B has the dinosaur; A what its cut reply held, none of the dinosaur.
            assert editor_canvas(b) == dinosaur.to_json()
            script_canvas(b, dinosaur)
            a_canvas = load_canvas(script_canvas(a, load_canvas(editor_canvas(a)).canvas)).canvas
            a_json = json.dumps(a_canvas.to_json()).lower()
            assert 'dragon' in a_json and 'dinosaur' not in a_json

            # Editing and undo in A leave B alone.
            n_a, b_state = boxes(a), editor_canvas(b)
            a.click(f'{T}editor .omost-ed-add')
            wait_boxes(a, n_a + 1)
            assert boxes(b) == len(dinosaur.local_regions) and editor_canvas(b) == b_state
            a.click(f'{T}editor .omost-ed-undo')
            wait_boxes(a, n_a)
            script_canvas(a, a_canvas)
            assert editor_canvas(b) == b_state and script_canvas(b, dinosaur)
            assert 'Stopped' in text_of(a, 'chat_status') and 'tokens/s' in text_of(b, 'chat_status')
        finally:
            script.open_all()


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    pytest.importorskip('transformers')
    from llm_helpers import build_tiny_llama, corpus_texts
    # eos off: a reply ends at its max new tokens or at Stop, never by chance
    return build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)


def use_local_model(page, folder, max_new_tokens):
    """LLM settings: the in-process (transformers) backend with the model in `folder`."""
    label = page.locator(f'{T}llm_settings .label-wrap').first
    if 'open' not in (label.get_attribute('class') or ''):
        label.click()
    page.locator(f'{T}backend input').first.click()
    page.locator(f'{T}backend ul.options li', has_text='local').first.click()
    field = page.locator(f'{T}local_model input').first
    field.wait_for(state='visible', timeout=WAIT_MS)
    field.click()
    field.fill(folder)
    field.press('Enter')
    field.press('Tab')
    tokens = page.locator(f'{T}max_new_tokens input[type=number]').first
    tokens.fill(str(max_new_tokens))
    tokens.press('Tab')


def test_the_second_reply_on_the_in_process_model_says_it_waits_then_runs(browser, tiny_model):
    """gradio 4.40 only: the in-process transformers backend needs transformers >= 4.40 (the A1111 venv has
    4.30.2, which the backend refuses); the waiting itself is in Python, the same under both gradio versions."""
    from lib_omost.llm.inprocess import WAITING_NOTICE
    with ui_app('4.40.0', 'http://127.0.0.1:9/v1') as url:
        a, b = session_page(browser, url), session_page(browser, url)
        use_local_model(a, tiny_model, 8192)  # ends only when stopped
        use_local_model(b, tiny_model, 128)
        send(a, 'a cat on a sofa')
        a.wait_for_function('sel => document.querySelector(sel).innerText.length > "a cat on a sofa".length + 5',
                            arg=f'{T}chat', timeout=WAIT_MS)  # the reply has begun: the model is A's
        send(b, 'a dog in the snow')
        wait_text(b, 'chat_status', WAITING_NOTICE)
        assert WAITING_NOTICE not in text_of(a, 'chat_status')
        a.click(f'{T}stop')
        wait_text(a, 'chat_status', 'Stopped')
        wait_text(b, 'chat_status', 'cut at 128 new tokens')
        assert 'Stopped' not in text_of(b, 'chat_status') and WAITING_NOTICE not in text_of(b, 'chat_status')
        assert 'a dog in the snow' not in text_of(a, 'chat') and 'a cat on a sofa' not in text_of(b, 'chat')
