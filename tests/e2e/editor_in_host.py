"""The region editor in a real WebUI (any host tests/e2e/hosts/host.sh builds), in Chromium: chat with a loopback
LLM server streaming the dragon canvas (tests/ui_helpers.py: canvas_server), watch the regions arrive, edit them,
generate, then PNG Info -> Send to txt2img -> generate again. Screenshots and a JSON summary go to OUT (argument,
else OMOST_E2E_EVIDENCE). It reads OMOST_E2E_URL and OMOST_E2E_HOST (a name for the files):

    OMOST_E2E_URL=http://127.0.0.1:7873 OMOST_E2E_HOST=neo .venv/bin/python tests/e2e/editor_in_host.py OUT

With `--gguf FILE` the chat runs on the gguf backend in the WebUI's own process instead (llama-cpp-python in the
WebUI's venv: `host.sh HOST build gguf`), FILE being a .gguf inside the WebUI's models folder, e.g. the tests'
scripted tiny GGUF replying with the dragon canvas: `python -m tests.e2e.tiny_gguf FILE`. Files are then named
HOST_gguf_*.

Every wait lasts up to OMOST_E2E_WAIT_S seconds (default 600: a 64 px job behind other WebUIs on a loaded 2-core
machine took over 120 s). The summary records the step reached (`step`) and, if the run stops, why (`error`: the
traceback, or the signal that stopped it).

Not a pytest test (it drives the shared host's browser UI for a minute and writes evidence files).
"""

import hashlib
import io
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from PIL import Image  # noqa: E402

from lib_omost import layout  # noqa: E402
from lib_omost.canvas import load_canvas  # noqa: E402
from ui_helpers import CHROMIUM, CHROMIUM_ARGS, canvas_reply, canvas_server  # noqa: E402

URL = os.environ['OMOST_E2E_URL'].rstrip('/')
HOST = os.environ.get('OMOST_E2E_HOST', 'host')
ARGS = sys.argv[1:]
GGUF = ARGS.pop(ARGS.index('--gguf') + 1) if '--gguf' in ARGS else ''
ARGS = [a for a in ARGS if a != '--gguf']
OUT = ARGS[0] if ARGS else os.environ.get('OMOST_E2E_EVIDENCE', '')
TAG = f'{HOST}_gguf' if GGUF else HOST
P = '#script_txt2img_omost_omost_'  # Script.elem_id: script_{tab}_{title}_{name}
WAIT = int(float(os.environ.get('OMOST_E2E_WAIT_S', '600')) * 1000)


def stop_on_sigterm(signum, frame):
    # a plain SIGTERM ends Python without `finally`: raise instead, so the summary says why the run stopped
    raise SystemExit(f'stopped by signal {signal.Signals(signum).name}')


def shot(page, name, selector=None):
    path = os.path.join(OUT, f'{TAG}_{name}.png')
    (page.locator(selector).first.screenshot(path=path) if selector else page.screenshot(path=path))
    print('screenshot', path)


def pixels(png: bytes) -> str:
    return hashlib.sha256(Image.open(io.BytesIO(png)).convert('RGB').tobytes()).hexdigest()


def field(page, elem_id):
    return page.locator(f'#{elem_id} textarea, #{elem_id} input').first


def last_image(page, before):
    """Bytes of the newest gallery image (a new src than `before`), fetched the way the browser does."""
    sel = '#txt2img_gallery img'
    page.wait_for_function('([sel, before]) => { const i = document.querySelector(sel); return i && i.src &&'
                           ' i.src !== before; }', arg=[sel, before or ''], timeout=WAIT)
    src = page.evaluate('sel => document.querySelector(sel).src', sel)  # absolute
    return src, page.request.get(src).body()


def generate(page, before):
    page.click('#txt2img_generate')
    return last_image(page, before)


def main():
    if not OUT:
        sys.exit('usage: editor_in_host.py OUT (or set OMOST_E2E_EVIDENCE)')
    os.makedirs(OUT, exist_ok=True)
    from playwright.sync_api import sync_playwright
    with open(os.path.join(ROOT, 'tests', 'fixtures', 'dragon_battle.canvas.py'), encoding='utf-8') as f:
        reply = canvas_reply(f.read())
    summary = {'host': HOST, 'backend': 'gguf' if GGUF else 'server', 'step': 'start'}
    started = time.monotonic()

    def step(name):
        summary['step'] = name
        print(f'[{time.monotonic() - started:7.1f} s] {name}', flush=True)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # 40 pieces 1 s apart (a loaded machine takes seconds per screenshot): the regions arrive while the reply streams (the 'live' screenshot)
    llm = canvas_server(reply, chunks=40, delay=1.0).__enter__()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={'width': 1600, 'height': 1300})
            page.set_default_timeout(WAIT)
            errors = []
            page.on('pageerror', lambda e: errors.append(f'{e}\n{e.stack or ""}'.strip()))
            summary['page_errors'] = errors
            step('open the page')
            page.goto(URL)
            page.wait_for_selector('#txt2img_prompt textarea', timeout=WAIT)
            field(page, 'txt2img_prompt').fill('a photo')
            for name, value in (('steps', 2), ('width', 64), ('height', 64)):
                box = page.locator(f'#txt2img_{name} input[type=number]').first
                box.fill(str(value))
                box.press('Tab')
            step('open the accordion')
            page.locator('#script_txt2img_omost_omost .label-wrap').first.click()
            page.wait_for_selector(f'{P}editor .omost-ed-stage', timeout=WAIT)
            page.locator(f'{P}llm_settings .label-wrap').first.click()
            if GGUF:  # as tests/test_ui_browser_gguf.py picks it
                page.locator(f'{P}backend input').first.click()
                page.locator(f'{P}backend ul.options li', has_text='gguf').first.click()
                box = page.locator(f'{P}gguf_model input').first
                box.wait_for(state='visible', timeout=WAIT)
                box.click()
                box.fill(GGUF)
                box.press('Enter')
                box.press('Tab')
                page.locator(f'{P}gguf_threads input').first.fill('1')
                shot(page, 'llm_settings', f'{P}llm_settings')
            else:
                field(page, 'script_txt2img_omost_omost_server_url').fill(f'{llm.url}/v1')
            page.locator(f'{P}llm_settings .label-wrap').first.click()
            page.locator(f'{P}editor').first.scroll_into_view_if_needed()
            shot(page, 'empty', f'#script_txt2img_omost_omost')

            step('chat')
            message = field(page, 'script_txt2img_omost_omost_input')
            message.fill('generate an image of the fierce battle of warriors and a dragon')
            message.press('Enter')
            page.wait_for_function('sel => document.querySelectorAll(sel).length >= 2',
                                   arg=f'{P}editor .omost-ed-box', timeout=WAIT)
            summary['live_status'] = page.locator(f'{P}chat_status').first.inner_text()
            shot(page, 'live', f'#script_txt2img_omost_omost')
            page.wait_for_function('sel => document.querySelector(sel).innerText.includes("tokens/s")',
                                   arg=f'{P}chat_status', timeout=WAIT)
            page.wait_for_function('sel => document.querySelectorAll(sel).length === 4',
                                   arg=f'{P}editor .omost-ed-box', timeout=WAIT)
            summary['chat_status'] = page.locator(f'{P}chat_status').first.inner_text()
            summary['on_off'] = page.locator(f'{P}onoff').first.inner_text()

            step('edit')
            # edit: drag the nearest region two steps right, recolour it, send it back one place
            state = json.loads(page.evaluate('sel => document.querySelector(sel).value',
                                             f'{P}editor_state textarea, {P}editor_state input'))
            model = state['canvas']
            region = model['regions'][-1]
            page.locator(f'{P}editor .omost-ed-stage').scroll_into_view_if_needed()
            stage = page.locator(f'{P}editor .omost-ed-stage').bounding_box()
            r = page.locator(f'{P}editor .omost-ed-box[data-index="3"]').bounding_box()
            start = (r['x'] + r['width'] / 2, r['y'] + r['height'] / 2)
            page.mouse.move(*start)
            page.mouse.down()
            for k in range(1, 6):
                page.mouse.move(start[0] - 20 * stage['width'] / 90 * k / 5, start[1] - 20 * stage['height'] / 90 * k / 5)
            summary['phrase_while_dragging'] = page.inner_text(f'{P}editor .omost-ed-phrase')
            shot(page, 'dragging')  # the viewport: an element screenshot scrolls, which cancels the drag
            page.mouse.up()
            cx, cy = layout.centre(region['location'], region['offset'])
            region['location'], region['offset'] = layout.snap_move(cx - 20, cy - 20)
            page.wait_for_timeout(800)
            page.select_option(f'{P}editor select[data-field="HTML_web_color_name"]', 'crimson')
            region['HTML_web_color_name'] = 'crimson'
            page.wait_for_timeout(800)
            page.locator(f'{P}canvas_accordion .label-wrap').first.click()
            page.wait_for_timeout(800)
            edited = load_canvas(model).canvas
            state = json.loads(page.evaluate('sel => document.querySelector(sel).value',
                                             f'{P}editor_state textarea, {P}editor_state input'))
            summary['editor_matches_expected_edit'] = load_canvas(state['canvas']).canvas == edited
            page.locator(f'#script_txt2img_omost_omost').scroll_into_view_if_needed()
            shot(page, 'edited', f'#script_txt2img_omost_omost')
            shot(page, 'edited_page')

            step('generate')
            src, first = generate(page, None)
            info = Image.open(io.BytesIO(first)).info.get('parameters', '')
            summary['infotext'] = info
            summary['infotext_chars'] = len(info)
            canvas_value = info.split('Omost canvas: ')[1].split(',')[0] if 'Omost canvas: ' in info else ''
            summary['infotext_canvas_is_edited_canvas'] = bool(canvas_value) and \
                load_canvas(canvas_value).canvas == edited
            summary['first_pixels'] = pixels(first)
            shot(page, 'generated')

            step('PNG Info')
            # PNG Info -> Send to txt2img -> Generate: the same canvas and the same pixels
            page.locator('button', has_text='PNG Info').first.click()
            page.locator('#pnginfo_image input[type=file]').set_input_files(
                files=[{'name': 'edited.png', 'mimeType': 'image/png', 'buffer': first}])
            page.wait_for_function('() => document.querySelector("#tab_pnginfo").innerText.includes("Omost canvas")',
                                   timeout=WAIT)
            shot(page, 'pnginfo')
            page.locator('#tab_pnginfo #txt2img_tab').first.click()
            page.wait_for_timeout(3000)
            state = json.loads(page.evaluate('sel => document.querySelector(sel).value',
                                             f'{P}editor_state textarea, {P}editor_state input'))
            summary['pasted_canvas_is_edited_canvas'] = state['canvas'] is not None and \
                load_canvas(state['canvas']).canvas == edited
            summary['pasted_enabled'] = page.locator('#script_txt2img_omost_omost-checkbox input').first \
                .is_checked()
            _, second = generate(page, src)
            summary['second_pixels'] = pixels(second)
            summary['same_pixels'] = summary['first_pixels'] == summary['second_pixels']
            page.locator(f'#script_txt2img_omost_omost').scroll_into_view_if_needed()
            shot(page, 'after_paste', f'#script_txt2img_omost_omost')
            step('image guidance')
            # Image guidance: open the accordion, give guide 1 an image and region 2, look at it
            page.locator(f'{P}guidance .label-wrap').first.click()
            guide = io.BytesIO()
            Image.new('RGB', (96, 64), (200, 60, 30)).save(guide, 'PNG')
            page.locator(f'{P}guide_0_image input[type=file]').first.set_input_files(
                files=[{'name': 'guide.png', 'mimeType': 'image/png', 'buffer': guide.getvalue()}])
            page.wait_for_timeout(3000)
            page.locator(f'{P}guidance').first.scroll_into_view_if_needed()
            shot(page, 'guidance', f'{P}guidance')
            browser.close()
            step('done')
    except BaseException:  # Ctrl-C and SIGTERM too: the summary says why the run stopped
        import traceback
        summary['error'] = traceback.format_exc()  # kept with the evidence, then raised
        raise
    finally:
        llm.__exit__(None, None, None)
        with open(os.path.join(OUT, f'{TAG}_summary.json'), 'w') as f:
            json.dump(summary, f, indent=2)
        print(json.dumps({k: v for k, v in summary.items() if k != 'infotext'}, indent=2))


if __name__ == '__main__':
    main()
