"""The Omost UI in headless Chromium, built under gradio 4.40 (Forge) and 3.41 (A1111), chatting with a loopback
OpenAI-compatible server. One app and one page per gradio version; the tests run in file order on that page."""

import json
import os

import pytest
from conftest import read_fixture

from lib_omost.canvas import CanvasError, load_canvas
from lib_omost.options import RenderOptions, parse_options
from ui_helpers import (CHROMIUM, CHROMIUM_ARGS, PYTHONS, ROOT, browser_missing_reason, canvas_reply, canvas_server,
                        chat_bodies, free_port, ui_app)

MISSING = browser_missing_reason()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=str(MISSING)), pytest.mark.timeout(120)]

T = '#txt2img_omost_'
DRAGON = read_fixture('dragon_battle.canvas.py')
DINOSAUR = read_fixture('dinosaur_edit.canvas.py')
PROMPT = 'generate an image of the fierce battle of warriors and a dragon'
WAIT_MS = 20000


@pytest.fixture(scope='module')
def llm():
    with canvas_server(canvas_reply(DRAGON), chunks=40, delay=0.02) as server:
        yield server


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope='module', params=['4.40.0', '3.41.2'])
def page(request, llm, browser):
    version = request.param
    if not os.path.exists(PYTHONS[version]):
        pytest.skip(f'no venv with gradio {version} at {PYTHONS[version]}')
    with ui_app(version, llm.url) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.add_init_script(path=os.path.join(ROOT, 'javascript', 'omost.js'))
        page.goto(url)
        page.wait_for_selector(f'{T}input textarea', timeout=WAIT_MS)
        page.gradio_version = version
        yield page
        page.close()


def box(page, elem_id):
    return page.locator(f'#{elem_id} textarea, #{elem_id} input').first


def open_accordion(page, elem_id):
    """Open a closed gr.Accordion by its label (3.41: div.label-wrap, 4.40: button.label-wrap)."""
    label = page.locator(f'#{elem_id} .label-wrap').first
    if 'open' not in (label.get_attribute('class') or ''):
        label.click()


def script_args(page):
    """What the script would receive: [enabled, canvas_text, options_text] (the app's Echo button)."""
    before = box(page, 'txt2img_echoed').input_value()
    page.click('#txt2img_echo')
    page.wait_for_function('([sel, before]) => { const e = document.querySelector(sel);'
                           ' return e && e.value && e.value !== before; }',
                           arg=['#txt2img_echoed textarea', before], timeout=WAIT_MS)
    return json.loads(box(page, 'txt2img_echoed').input_value())[:3]  # (then the image guidance values)


def set_canvas(page, text):
    open_accordion(page, 'txt2img_omost_canvas_accordion')
    editor = page.locator(f'{T}canvas .cm-content')
    editor.click()
    page.keyboard.press('Control+A')
    page.keyboard.insert_text(text)


def preview_src(page):
    img = page.locator(f'{T}preview img')
    return img.first.get_attribute('src') if img.count() else None


def wait_preview_change(page, before):
    """Wait for a new preview image and for it to load (it loads lazily: scroll it into view)."""
    page.wait_for_function('([sel, before]) => { const i = document.querySelector(sel); return i && i.src && i.src !== before; }',
                           arg=[f'{T}preview img', before or ''], timeout=WAIT_MS)
    img = page.locator(f'{T}preview img').first
    img.scroll_into_view_if_needed()
    page.wait_for_function('sel => { const i = document.querySelector(sel); return i.complete && i.naturalWidth > 0; }',
                           arg=f'{T}preview img', timeout=WAIT_MS)


def test_enter_sends_and_the_reply_streams_into_chat_canvas_and_preview(page, llm):
    n_requests = len(chat_bodies(llm))
    # Record every text length the chatbot shows, to see the reply arrive in pieces.
    page.evaluate("""sel => { window.omostLengths = []; const chat = document.querySelector(sel);
        new MutationObserver(() => window.omostLengths.push(chat.innerText.length))
            .observe(chat, {childList: true, subtree: true, characterData: true}); }""", f'{T}chat')
    message = box(page, 'txt2img_omost_input')
    message.fill(PROMPT)
    message.press('Enter')
    last_line = 'The overall atmosphere is one of chaos and intensity'
    page.wait_for_function('([sel, text]) => document.querySelector(sel).innerText.includes(text)',
                           arg=[f'{T}chat', last_line],
                           timeout=WAIT_MS)
    page.wait_for_function('sel => document.querySelector(sel).innerText.includes("tokens/s")',
                           arg=f'{T}chat_status', timeout=WAIT_MS)
    assert len(chat_bodies(llm)) == n_requests + 1
    sent = chat_bodies(llm)[-1]['messages']
    assert sent[0]['role'] == 'system' and sent[-1] == {'role': 'user', 'content': PROMPT}
    lengths = page.evaluate('window.omostLengths')
    assert len(set(lengths)) >= 5, f'the reply did not stream: chat lengths seen {lengths}'
    assert message.input_value() == ''
    assert PROMPT in page.inner_text(f'{T}chat')
    wait_preview_change(page, None)
    enabled, canvas_text, options_text = script_args(page)
    assert canvas_text.strip() == DRAGON.strip()
    assert json.loads(options_text)['regions'] is True
    status = page.inner_text(f'{T}preview_status')
    assert f'{len(load_canvas(DRAGON).canvas.local_regions)} regions' in status


def wait_chat(page, js_condition):
    page.wait_for_function(f'sel => {{ const text = document.querySelector(sel).innerText; return {js_condition}; }}',
                           arg=f'{T}chat', timeout=WAIT_MS)


def watch_status(page):
    """Record every text the chat status line shows from now on (window.omostStatus)."""
    page.evaluate("""sel => { if (window.omostObserver) window.omostObserver.disconnect();
        window.omostStatus = []; const el = document.querySelector(sel);
        window.omostObserver = new MutationObserver(() => window.omostStatus.push(el.innerText));
        window.omostObserver.observe(el, {childList: true, subtree: true, characterData: true}); }""", f'{T}chat_status')


def wait_reply_done(page):
    """A reply started ('Waiting for the LLM...') and finished (the token rate) since watch_status()."""
    page.wait_for_function("""() => { const s = window.omostStatus, i = s.findIndex(t => t.includes('Waiting'));
        return i >= 0 && s.slice(i).some(t => t.includes('tokens/s')); }""", timeout=WAIT_MS)


def test_retry_and_edit_last(page, llm):
    last_description = [line for line in DRAGON.splitlines() if line.startswith('description=')][-1]
    n_requests = len(chat_bodies(llm))
    watch_status(page)
    page.click(f'{T}retry')
    wait_reply_done(page)
    wait_chat(page, f'text.split({json.dumps(PROMPT)}).length === 2 && text.includes({json.dumps(last_description)})')
    assert len(chat_bodies(llm)) == n_requests + 1
    assert chat_bodies(llm)[-1]['messages'][-1] == {'role': 'user', 'content': PROMPT}
    page.click(f'{T}edit')
    message = box(page, 'txt2img_omost_input')
    page.wait_for_function('([sel, text]) => document.querySelector(sel).value === text',
                           arg=[f'{T}input textarea', PROMPT], timeout=WAIT_MS)
    wait_chat(page, f'!text.includes({json.dumps(PROMPT)})')
    message.fill('a dragon battle at night')
    watch_status(page)
    message.press('Enter')
    wait_reply_done(page)
    wait_chat(page, f'text.includes("a dragon battle at night") && text.includes({json.dumps(last_description)})')
    assert PROMPT not in page.inner_text(f'{T}chat')
    sent = chat_bodies(llm)[-1]['messages']
    assert sent[-1] == {'role': 'user', 'content': 'a dragon battle at night'} and len(sent) == 2


def test_shift_enter_is_a_new_line_and_sends_nothing(page, llm):
    n_requests = len(chat_bodies(llm))
    message = box(page, 'txt2img_omost_input')
    message.click()
    message.fill('')
    page.keyboard.type('first line')
    page.keyboard.press('Shift+Enter')
    page.keyboard.type('second line')
    assert message.input_value() == 'first line\nsecond line'
    page.wait_for_timeout(400)
    assert len(chat_bodies(llm)) == n_requests
    message.fill('')


def test_server_down_shows_the_error_and_keeps_the_message(page, llm):
    open_accordion(page, 'txt2img_omost_llm_settings')
    url = box(page, 'txt2img_omost_server_url')
    dead = f'http://127.0.0.1:{free_port()}/v1'
    url.fill(dead)
    message = box(page, 'txt2img_omost_input')
    page.click(f'{T}example_1')  # a quick prompt fills the box
    page.wait_for_function('sel => document.querySelector(sel).value === "change the dragon to a dinosaur"',
                           arg=f'{T}input textarea', timeout=WAIT_MS)
    message.press('Enter')
    error = page.locator(f'{T}chat_status .omost-error')
    error.wait_for(timeout=WAIT_MS)
    assert '127.0.0.1' in error.inner_text()
    assert message.input_value() == 'change the dragon to a dinosaur'
    assert 'change the dragon to a dinosaur' not in page.inner_text(f'{T}chat')
    url.fill(llm.url)
    message.fill('')


def test_a_pasted_canvas_updates_preview_and_script_args(page):
    before = preview_src(page)
    set_canvas(page, DINOSAUR)
    wait_preview_change(page, before)
    status = page.inner_text(f'{T}preview_status')
    assert f'{len(load_canvas(DINOSAUR).canvas.local_regions)} regions' in status
    # a user edit of an option control reaches the options argument
    open_accordion(page, 'txt2img_omost_options_accordion')
    page.locator(f'{T}opt_regions input[type=checkbox]').uncheck()
    page.wait_for_timeout(300)
    enabled, canvas_text, options_text = script_args(page)
    assert canvas_text.strip() == DINOSAUR.strip()
    assert json.loads(options_text)['regions'] is False


def test_an_invalid_canvas_shows_the_parse_error(page):
    bad = "canvas = Canvas()\ncanvas.set_global_description(description='a cat', tags=open('x'))\n"
    with pytest.raises(CanvasError) as expected:
        load_canvas(bad)
    set_canvas(page, bad)
    page.wait_for_function('([sel, text]) => document.querySelector(sel).innerText.includes(text)',
                           arg=[f'{T}preview_status', str(expected.value)], timeout=WAIT_MS)
    assert page.locator(f'{T}preview_status .omost-error').count() == 1


def test_stop_keeps_the_partial_reply(page, llm):
    llm.httpd.script.delay = 0.25  # 40 pieces: 10 s unless stopped
    try:
        page.click(f'{T}new')  # New chat empties the chat
        page.wait_for_function('sel => !document.querySelector(sel).innerText.includes("Here is the canvas")',
                               arg=f'{T}chat', timeout=WAIT_MS)
        message = box(page, 'txt2img_omost_input')
        message.fill('change the dragon to a dinosaur')
        message.press('Enter')
        page.wait_for_function('sel => document.querySelector(sel).innerText.includes("Here is the canvas")',
                               arg=f'{T}chat', timeout=WAIT_MS)
        page.click(f'{T}stop')
        page.wait_for_function('sel => document.querySelector(sel).innerText.includes("Stopped")',
                               arg=f'{T}chat_status', timeout=8000)
        chat = page.inner_text(f'{T}chat')
        assert 'reply cut off' in chat
        last_description = [line for line in DRAGON.splitlines() if line.startswith('description=')][-1]
        assert last_description not in chat, 'the reply was not cut'
    finally:
        llm.httpd.script.delay = 0.02


def test_pasted_infotext_restores_canvas_as_code_and_the_option_controls(page):
    canvas = load_canvas(DRAGON).canvas
    options = RenderOptions(strength=0.5, sketch=True).to_json()
    before = preview_src(page)
    box(page, 'txt2img_pasted').fill(json.dumps([True, json.dumps(canvas.to_json()), options]))
    page.click('#txt2img_paste')
    wait_preview_change(page, before)
    open_accordion(page, 'txt2img_omost_options_accordion')
    strength = page.locator(f'{T}opt_strength input[type=number]')
    page.wait_for_function('sel => document.querySelector(sel).value == "0.5"', arg=f'{T}opt_strength input[type=number]',
                           timeout=WAIT_MS)
    assert page.locator(f'{T}opt_sketch input[type=checkbox]').is_checked()
    enabled, canvas_text, options_text = script_args(page)
    assert enabled is True and canvas_text.strip() == canvas.to_code().strip()
    assert parse_options(options_text) == parse_options(options)
    assert strength.input_value() == '0.5'


def test_preview_follows_the_image_size(page):
    before = preview_src(page)
    height = page.locator('#txt2img_height input[type=number]')
    height.fill('512')
    height.press('Tab')
    wait_preview_change(page, before)
    size = page.evaluate('sel => { const i = document.querySelector(sel); return [i.naturalWidth, i.naturalHeight]; }',
                         f'{T}preview img')
    assert size == [384, 192]
