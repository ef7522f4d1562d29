"""The gguf backend through the Omost UI in headless Chromium (gradio 4.40 and 3.41): pick it in the LLM settings,
give a .gguf path, chat with the scripted tiny GGUF in process, Stop, Retry, and the canvas fills the editor."""

import os
import re
import subprocess

import pytest
from conftest import read_fixture

from ui_helpers import (CHROMIUM, CHROMIUM_ARGS, PYTHONS, ROOT, browser_missing_reason, canvas_reply, choose_backend,
                        ui_app)

MISSING = browser_missing_reason()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=str(MISSING)), pytest.mark.timeout(180)]
pytest.importorskip('gguf')

T = '#txt2img_omost_'
WAIT_MS = 60000
REPLY = canvas_reply(read_fixture('dragon_battle.canvas.py'))


def has_llama_cpp(python: str) -> bool:
    return subprocess.run([python, '-c', 'import llama_cpp'], capture_output=True).returncode == 0


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    from lib_omost.llm.tiny import build_scripted_gguf
    # 4 blocks of h256/ff2048: ~100 tokens/s here, so the 832-token reply streams for seconds and Stop lands in it
    return build_scripted_gguf(str(tmp_path_factory.mktemp('gguf') / 'dragon.gguf'), REPLY, layers=4, ff=2048)


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_chat_stop_retry_fill_the_canvas(version, model):
    from playwright.sync_api import sync_playwright
    python = PYTHONS[version]
    if not os.path.exists(python):
        pytest.skip(f'no venv with gradio {version}')
    if not has_llama_cpp(python):
        if os.environ.get('OMOST_REQUIRE_GGUF'):
            pytest.fail(f'llama-cpp-python is not installed in {python}')
        pytest.skip(f'llama-cpp-python is not installed in {python}')
    with ui_app(version, 'http://127.0.0.1:9/v1') as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1200})
        for script in ('omost.js', 'omost_editor.js'):
            page.add_init_script(path=os.path.join(ROOT, 'javascript', script))
        page.goto(url)
        page.wait_for_selector(f'{T}input textarea', timeout=WAIT_MS)
        choose_backend(page, 'gguf')
        field = page.locator(f'{T}gguf_model input').first
        field.wait_for(state='visible', timeout=WAIT_MS)  # the gguf fields appear with the choice
        assert not page.locator(f'{T}server_url').first.is_visible()
        field.click()
        field.fill(model)
        field.press('Enter')
        field.press('Tab')
        page.locator(f'{T}gguf_threads input').first.fill('1')
        message = page.locator(f'{T}input textarea').first
        message.fill('generate an image of the fierce battle of warriors and a dragon')
        message.press('Enter')
        page.wait_for_function("sel => document.querySelector(sel).innerText.includes('Canvas()')", arg=f'{T}chat',
                               timeout=WAIT_MS)
        page.click(f'{T}stop')
        page.wait_for_function("sel => document.querySelector(sel).innerText.includes('Stopped')",
                               arg=f'{T}chat_status', timeout=WAIT_MS)
        chat = page.inner_text(f'{T}chat')
        assert '(reply cut off)' in chat and 'darkolivegreen' not in chat  # cut before the reply's end
        page.click(f'{T}retry')
        page.wait_for_function("sel => { const t = document.querySelector(sel).innerText; "
                               "return t.includes('832 tokens') && !t.includes('Stopped'); }",
                               arg=f'{T}chat_status', timeout=WAIT_MS)
        page.wait_for_function("sel => document.querySelectorAll(sel).length == 4", arg=f'{T}editor .omost-ed-box',
                               timeout=WAIT_MS)  # the dragon canvas's four regions in the region editor
        assert '4 regions + background.' in page.inner_text(f'{T}preview_status')
        assert 'darkolivegreen' in page.inner_text(f'{T}chat')
        # the retry re-read nothing but the prompt's last token: the model kept the conversation it had read
        found = re.search(r'prompt ([\d,]+) tokens \(([\d,]+) reused\)', page.inner_text(f'{T}chat_status'))
        assert found and int(found[2].replace(',', '')) == int(found[1].replace(',', '')) - 1
        browser.close()
