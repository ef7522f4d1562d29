"""The Omost UI in headless Chromium, built under gradio 4.40 (Forge) and 3.41 (A1111), chatting with a loopback
OpenAI-compatible server. One app and one page per gradio version; the tests run in file order on that page."""

import copy
import json
import os
import time

import pytest
from conftest import read_fixture

from lib_omost.canvas import CanvasError, load_canvas
from lib_omost.options import RenderOptions, parse_options
from ui_helpers import (PYTHONS, ROOT, browser_missing_reason, canvas_reply, canvas_server, chat_bodies, chromium,
                        free_port, ui_app)

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
    with chromium() as browser:
        yield browser


@pytest.fixture(scope='module', params=['4.40.0', '3.41.2'])
def page(request, llm, browser):
    version = request.param
    if not os.path.exists(PYTHONS[version]):
        pytest.skip(f'no venv with gradio {version} at {PYTHONS[version]}')
    with ui_app(version, llm.url) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        for script in ('omost.js', 'omost_editor.js'):  # the WebUI loads every file in javascript/
            page.add_init_script(path=os.path.join(ROOT, 'javascript', script))
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


def editor_state(page):
    """The state the Python side last sent to the region editor (canvas JSON, image size, ack)."""
    return json.loads(page.evaluate('sel => document.querySelector(sel).value',
                                    f'{T}editor_state textarea, {T}editor_state input'))


def wait_boxes(page, n):
    """Wait until the region editor draws n region boxes."""
    page.wait_for_function('([sel, n]) => document.querySelectorAll(sel).length === n',
                           arg=[f'{T}editor .omost-ed-box', n], timeout=WAIT_MS)


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
    wait_boxes(page, len(load_canvas(DRAGON).canvas.local_regions))
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


def wait_reply_done(page, llm, n_requests):
    """A reply finished since watch_status(), the n_requests + 1-th the LLM server got. Either the status went from
    one without a token rate ('Waiting for the LLM...', 'N regions so far...') to one with it; or, where a loaded
    browser drew only the last of the updates (gradio renders once per tick), the server got the request, the
    status was redrawn since, and it now shows a token rate without gradio's progress line ('queue: 1/1 | 0.1s',
    'processing | 0.2s': the event is over)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        seen, text = page.evaluate('sel => [window.omostStatus, document.querySelector(sel).innerText]',
                                   f'{T}chat_status')
        first = next((i for i, t in enumerate(seen) if 'tokens/s' not in t), None)
        if first is not None and any('tokens/s' in t for t in seen[first:]):
            return
        lines = text.splitlines()
        if len(chat_bodies(llm)) > n_requests and seen and 'tokens/s' in text and \
                not any(line.startswith(('queue', 'processing')) for line in lines):
            return
        assert time.monotonic() < deadline, f'no reply finished in {WAIT_MS} ms: statuses {seen}, now {text!r}'
        page.wait_for_timeout(100)


def test_retry_and_edit_last(page, llm):
    last_description = [line for line in DRAGON.splitlines() if line.startswith('description=')][-1]
    n_requests = len(chat_bodies(llm))
    watch_status(page)
    page.click(f'{T}retry')
    wait_reply_done(page, llm, n_requests)
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
    wait_reply_done(page, llm, n_requests + 1)
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


def test_a_pasted_canvas_updates_the_editor_and_script_args(page):
    set_canvas(page, DINOSAUR)
    page.wait_for_function('sel => document.querySelector(sel).innerText.includes("A mighty dinosaur")',
                           arg=f'{T}editor .omost-ed-list', timeout=WAIT_MS)
    assert editor_state(page)['canvas'] == load_canvas(DINOSAUR).canvas.to_json()
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
    box(page, 'txt2img_pasted').fill(json.dumps([True, json.dumps(canvas.to_json()), options]))
    page.click('#txt2img_paste')
    wait_boxes(page, len(canvas.local_regions))
    open_accordion(page, 'txt2img_omost_options_accordion')
    strength = page.locator(f'{T}opt_strength input[type=number]')
    page.wait_for_function('sel => document.querySelector(sel).value == "0.5"', arg=f'{T}opt_strength input[type=number]',
                           timeout=WAIT_MS)
    assert page.locator(f'{T}opt_sketch input[type=checkbox]').is_checked()
    enabled, canvas_text, options_text = script_args(page)
    assert enabled is True and canvas_text.strip() == canvas.to_code().strip()
    assert parse_options(options_text) == parse_options(options)
    assert strength.input_value() == '0.5'


def test_the_editor_follows_the_image_size(page):
    height = page.locator('#txt2img_height input[type=number]')
    height.fill('512')
    height.press('Tab')
    page.wait_for_function('sel => { const r = document.querySelector(sel).getBoundingClientRect();'
                           ' return Math.abs(r.width / r.height - 2) < 0.02; }', arg=f'{T}editor .omost-ed-stage',
                           timeout=WAIT_MS)
    assert (editor_state(page)['width'], editor_state(page)['height']) == (1024, 512)


# ---------------------------------------------------------------------------------------------------------------
# The region editor: every edit checked against the Canvas code the Python side writes for the same canvas


def test_the_javascript_geometry_agrees_with_lib_omost_on_every_box(browser):
    from lib_omost import layout
    from lib_omost.canvas import AREAS, LOCATIONS, OFFSETS
    from lib_omost.colors import HTML_COLORS
    page = browser.new_page()
    page.add_script_tag(path=os.path.join(ROOT, 'javascript', 'omost_editor.js'))
    js = page.evaluate('() => ({locations: omostEditor.locations, offsets: omostEditor.offsets,'
                       ' areas: omostEditor.areas, colors: omostEditor.colors, boxes: omostEditor.boxes})')
    assert [[n, *xy] for n, xy in LOCATIONS.items()] == js['locations']
    assert [[n, *xy] for n, xy in OFFSETS.items()] == js['offsets']
    assert [[n, *wh] for n, wh in AREAS.items()] == js['areas']
    assert {k: list(v) for k, v in HTML_COLORS.items()} == js['colors']
    assert [[loc, off, area, list(rect)] for loc, off, area, rect in layout.boxes()] == js['boxes']
    rects = [rect for *_, rect in layout.boxes()]
    drawn = rects + [(t + 2.7, b - 1.3, l - 3.1, r + 4.9) for t, b, l, r in rects[::7]] + \
        [(t + 5, b + 5, l + 5, r + 5) for t, b, l, r in rects[::5]]  # exact ties between neighbours too
    for width, height in [(1024, 1024), (1344, 768), (768, 1344), (1536, 640), (640, 1536)]:
        got = page.evaluate('([rects, w, h]) => rects.map(r => omostEditor.snapResize(r, w, h))',
                            [[list(r) for r in drawn], width, height])
        assert got == [list(layout.snap_resize(r, width, height)) for r in drawn], (width, height)
    points = [(x / 2, y / 3) for x in range(-20, 200, 3) for y in range(-30, 300, 7)]
    assert page.evaluate('ps => ps.map(p => omostEditor.snapMove(p[0], p[1]))', points) == \
        [list(layout.snap_move(*p)) for p in points]
    steps = [(loc, off, dx, dy) for loc in LOCATIONS for off in OFFSETS for dx in (-1, 0, 1) for dy in (-1, 1)]
    assert page.evaluate('ss => ss.map(s => omostEditor.nudge(s[0], s[1], s[2], s[3]))', steps) == \
        [list(layout.nudge(*s)) for s in steps]
    assert page.evaluate('() => omostEditor.phrase("on the left", "slightly to the upper", "a large vertical area")') \
        == layout.phrase('on the left', 'slightly to the upper', 'a large vertical area')
    page.close()


def wait_code(page, canvas_json, timeout=WAIT_MS / 1000):
    """Wait until the script's canvas argument is exactly the code lib_omost writes for `canvas_json` (but for
    the final newline, which gr.Code drops)."""
    import time
    expected = load_canvas(canvas_json).canvas.to_code().rstrip('\n')
    deadline = time.monotonic() + timeout
    while True:
        page.click('#txt2img_echo')
        page.wait_for_timeout(150)
        value = box(page, 'txt2img_echoed').input_value()
        code = json.loads(value)[1].rstrip('\n') if value else None
        if code == expected:
            return code
        if time.monotonic() > deadline:
            assert code == expected  # shows the difference
        page.wait_for_timeout(150)


def stage_box(page):
    return page.locator(f'{T}editor .omost-ed-stage').bounding_box()


def region_box(page, i, part=''):
    """Viewport coordinates of region i's box (or of a resize handle of the selected box), scrolled into view."""
    page.locator(f'{T}editor .omost-ed-stage').scroll_into_view_if_needed()
    selector = f'{T}editor .omost-ed-handles {part}' if part else f'{T}editor .omost-ed-box[data-index="{i}"]'
    return page.locator(selector).bounding_box()


def drag(page, start, delta, check_phrase=None):
    page.mouse.move(*start)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(start[0] + delta[0] * k / 5, start[1] + delta[1] * k / 5)
    if check_phrase is not None:  # the snapped phrase follows the pointer, before the release
        assert page.inner_text(f'{T}editor .omost-ed-phrase') == 'Snaps to: ' + check_phrase
    page.mouse.up()


def test_drag_resize_nudge_reorder_recolour_add_delete_undo_redo(page):
    from lib_omost import layout
    from lib_omost.canvas import omost_rect
    state = editor_state(page)
    width, height = state['width'], state['height']
    model = copy.deepcopy(state['canvas'])
    regions = model['regions']
    n = len(regions)
    assert n == 4 and load_canvas(model).canvas == load_canvas(DRAGON).canvas
    stage = stage_box(page)
    px = stage['width'] / 90  # CSS pixels per grid unit across (the stage has the image's aspect ratio)
    py = stage['height'] / 90
    i = n - 1  # the nearest region: drawn on top, so a click in it is a click on it

    # drag to move: +20 grid units right, -10 up; the area stays, the centre snaps to the 9 x 9 grid
    r = region_box(page, i)
    start = (r['x'] + r['width'] / 2, r['y'] + r['height'] / 2)
    cx, cy = layout.centre(regions[i]['location'], regions[i]['offset'])
    loc, off = layout.snap_move(cx + 20, cy - 10)
    assert (loc, off) != (regions[i]['location'], regions[i]['offset'])
    drag(page, start, (20 * px, -10 * py), check_phrase=layout.phrase(loc, off, regions[i]['area']))
    regions[i].update(location=loc, offset=off)
    wait_code(page, model)

    # drag the bottom-right corner to resize: the box snaps to the nearest of the 729 (in pixels of this image)
    handle = region_box(page, i, '.omost-ed-handle-se')  # the selected region's handles
    top, bottom, left, right = omost_rect(regions[i]['location'], regions[i]['offset'], regions[i]['area'])
    d = (-22, -14)
    raw = (top, max(top + 1, min(90, bottom + d[1])), left, max(left + 1, min(90, right + d[0])))
    snapped = layout.snap_resize(raw, width, height)
    for jitter in (-0.6, 0.6):  # the outcome must not hang on sub-pixel rounding of the pointer
        assert layout.snap_resize((raw[0], raw[1] + jitter, raw[2], raw[3] + jitter), width, height) == snapped
    drag(page, (handle['x'] + handle['width'] / 2, handle['y'] + handle['height'] / 2), (d[0] * px, d[1] * py),
         check_phrase=layout.phrase(*snapped))
    regions[i].update(location=snapped[0], offset=snapped[1], area=snapped[2])
    wait_code(page, model)

    # the keyboard: an arrow key nudges by one grid step
    page.focus(f'{T}editor .omost-ed-stage')
    page.keyboard.press('ArrowUp')
    loc, off = layout.nudge(regions[i]['location'], regions[i]['offset'], 0, -1)
    regions[i].update(location=loc, offset=off)
    wait_code(page, model)
    # Shift+arrow: resize by moving the right edge one step (10 grid units), then snap
    top, bottom, left, right = omost_rect(regions[i]['location'], regions[i]['offset'], regions[i]['area'])
    wider = layout.snap_resize((top, bottom, left, min(90, right + 10)), width, height)
    assert omost_rect(*wider) != (top, bottom, left, right)
    page.focus(f'{T}editor .omost-ed-stage')
    page.keyboard.press('Shift+ArrowRight')
    regions[i].update(location=wider[0], offset=wider[1], area=wider[2])
    wait_code(page, model)

    # send back one place: it swaps order and distance_to_viewer with the region behind it
    page.click(f'{T}editor .omost-ed-back')
    regions[i]['distance_to_viewer'], regions[i - 1]['distance_to_viewer'] = \
        regions[i - 1]['distance_to_viewer'], regions[i]['distance_to_viewer']
    regions[i], regions[i - 1] = regions[i - 1], regions[i]
    wait_code(page, model)
    i -= 1  # the selection follows the region

    # recolour from the swatch list, and a new description from the form
    page.select_option(f'{T}editor select[data-field="HTML_web_color_name"]', 'crimson')
    regions[i]['HTML_web_color_name'] = 'crimson'
    wait_code(page, model)
    swatch = page.locator(f'{T}editor .omost-ed-colour-swatch')
    assert swatch.evaluate('e => getComputedStyle(e).backgroundColor') == 'rgb(220, 20, 60)'  # crimson's swatch
    field = page.locator(f'{T}editor input[data-field="description"]')
    field.fill('A huge red dragon.')
    field.press('Tab')
    regions[i]['description'] = 'A huge red dragon.'
    wait_code(page, model)

    # add a region (nearest to the viewer), then delete it with the keyboard
    page.click(f'{T}editor .omost-ed-add')
    nearest = min(r['distance_to_viewer'] for r in regions)
    added = dict(location='in the center', offset='no offset', area='a small square area',
                 distance_to_viewer=nearest - 1 if nearest > 1 else nearest / 2, description='A new region.',
                 detailed_descriptions=[], tags='', atmosphere='', style='', quality_meta='',
                 HTML_web_color_name='gold')
    with_added = copy.deepcopy(model)
    with_added['regions'].append(added)
    wait_code(page, with_added)
    page.focus(f'{T}editor .omost-ed-stage')
    page.keyboard.press('Delete')
    wait_code(page, model)

    # undo brings the added region back, redo deletes it again (the Echo button took the focus: give it back)
    page.focus(f'{T}editor .omost-ed-stage')
    page.keyboard.press('Control+z')
    wait_code(page, with_added)
    page.focus(f'{T}editor .omost-ed-stage')
    page.keyboard.press('Control+y')
    wait_code(page, model)
    page.edited_model = model  # for the next test


def test_the_next_llm_request_carries_the_edited_canvas(page, llm):
    model = page.edited_model
    message = box(page, 'txt2img_omost_input')
    message.fill('make the dragon bigger')
    n_requests = len(chat_bodies(llm))
    watch_status(page)
    message.press('Enter')
    wait_reply_done(page, llm, n_requests)
    assert 'Continuing from your edited canvas' in page.inner_text(f'{T}chat_status')
    assert 'continues from your edited canvas' in page.inner_text(f'{T}chat')
    sent = chat_bodies(llm)[-1]['messages']
    assert sent[-1] == {'role': 'user', 'content': 'make the dragon bigger'}
    assert sent[-2]['role'] == 'assistant'
    assert load_canvas(sent[-2]['content']).canvas == load_canvas(model).canvas  # what the user made


def test_the_live_preview_shows_regions_before_the_reply_ends(page, llm):
    llm.httpd.script.delay = 0.25  # 40 pieces: 10 s
    try:
        page.click(f'{T}new')
        wait_boxes(page, 0)
        message = box(page, 'txt2img_omost_input')
        message.fill(PROMPT)
        message.press('Enter')
        wait_boxes(page, 2)  # region 2 drawn...
        last_description = [line for line in DRAGON.splitlines() if line.startswith('description=')][-1]
        assert last_description not in page.inner_text(f'{T}chat')  # ...while the reply is still being written
        assert 'tokens/s' not in page.inner_text(f'{T}chat_status')
        assert 'regions so far' in page.inner_text(f'{T}chat_status')
        labels = page.inner_text(f'{T}editor .omost-ed-list')
        assert 'A group of fierce warriors' in labels and 'A mighty dragon' in labels
        wait_boxes(page, 4)
        page.wait_for_function('sel => document.querySelector(sel).innerText.includes("tokens/s")',
                               arg=f'{T}chat_status', timeout=WAIT_MS)
    finally:
        llm.httpd.script.delay = 0.02


# ---------------------------------------------------------------------------------------------------------------
# Settings > Defaults: the app started with a saved ui-config.json (tests/ui_app.py --ui-config)


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_saved_ui_defaults_are_what_the_script_receives(browser, version):
    """Region strength 0.8 and To step 0.6 saved as defaults, applied by the hosts' UiLoadsave after the tab was
    built: the sliders show them and the options the script receives say the same, with no control touched; a
    pasted infotext still sets the options."""
    if not os.path.exists(PYTHONS[version]):
        pytest.skip(f'no venv with gradio {version} at {PYTHONS[version]}')
    saved = {'txt2img/Region strength/value': 0.8, 'txt2img/To step (fraction)/value': 0.6}
    with ui_app(version, 'http://127.0.0.1:9/v1', ui_config=saved) as url:
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        try:
            page.goto(url)
            page.wait_for_selector('#txt2img_echo', timeout=WAIT_MS)
            open_accordion(page, 'txt2img_omost_options_accordion')
            assert page.locator(f'{T}opt_strength input[type=number]').input_value() == '0.8'
            assert page.locator(f'{T}opt_end input[type=number]').input_value() == '0.6'
            wanted = RenderOptions(strength=0.8, end=0.6)
            assert echoed_options(page, wanted) == wanted
            pasted = RenderOptions(strength=0.5, sketch=True)
            box(page, 'txt2img_pasted').fill(json.dumps([True, '', pasted.to_json()]))
            page.click('#txt2img_paste')
            page.wait_for_function('sel => document.querySelector(sel).value == "0.5"',
                                   arg=f'{T}opt_strength input[type=number]', timeout=WAIT_MS)
            assert echoed_options(page, pasted) == pasted
        finally:
            page.close()


def echoed_options(page, wanted):
    """The options the script would receive (the Echo button), once they are `wanted` or after WAIT_MS (the page's
    load event writes them: the test waits for it, and touches no control)."""
    options, waited = None, 0
    while options != wanted and waited < WAIT_MS:
        page.click('#txt2img_echo')
        page.wait_for_timeout(250)
        waited += 250
        text = box(page, 'txt2img_echoed').input_value()
        options = parse_options(json.loads(text)[2]) if text else None
    return options
