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
    # 4 blocks of h256/ff2048: ~100 tokens/s here, so the 541-token reply streams for seconds and Stop lands in it
    return build_scripted_gguf(str(tmp_path_factory.mktemp('gguf') / 'dragon.gguf'), REPLY, layers=4, ff=2048)


def check_python(version):
    python = PYTHONS[version]
    if not os.path.exists(python):
        pytest.skip(f'no venv with gradio {version}')
    if not has_llama_cpp(python):
        if os.environ.get('OMOST_REQUIRE_GGUF'):
            pytest.fail(f'llama-cpp-python is not installed in {python}')
        pytest.skip(f'llama-cpp-python is not installed in {python}')


def open_gguf_chat(browser, url, model, slowdown=None):
    """A page of the app with the gguf backend chosen and `model` set (one CPU thread); `slowdown`: Chromium's CPU
    throttled that many times (DevTools protocol), a browser on a busy machine."""
    page = browser.new_page(viewport={'width': 1400, 'height': 1200})
    if slowdown:
        page.context.new_cdp_session(page).send('Emulation.setCPUThrottlingRate', {'rate': slowdown})
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
    return page


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_chat_stop_retry_fill_the_canvas(version, model):
    from playwright.sync_api import sync_playwright
    check_python(version)
    with ui_app(version, 'http://127.0.0.1:9/v1', timeout=180) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_gguf_chat(browser, url, model)
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
                               "return t.includes('tokens/s') && !t.includes('Stopped'); }",
                               arg=f'{T}chat_status', timeout=WAIT_MS)
        page.wait_for_function("sel => document.querySelectorAll(sel).length == 4", arg=f'{T}editor .omost-ed-box',
                               timeout=WAIT_MS)  # the dragon canvas's four regions in the region editor
        assert '4 regions + background.' in page.inner_text(f'{T}preview_status')
        assert 'darkolivegreen' in page.inner_text(f'{T}chat')
        # the retry re-read nothing but the prompt's last token: the model kept the conversation it had read
        found = re.search(r'prompt ([\d,]+) tokens \(([\d,]+) reused\)', page.inner_text(f'{T}chat_status'))
        assert found and int(found[2].replace(',', '')) == int(found[1].replace(',', '')) - 1
        browser.close()


STATS = re.compile(r'(\d+) tokens, [\d.]+ tokens/s\. prompt ([\d,]+) tokens \(([\d,]+) reused\)(?: · drafted ([\d,]+), '
                   r'accepted ([\d,]+))?')


def wait_stats(page, before):
    """The finished reply's figures (reply tokens, prompt, reused, drafted, accepted) once the status line differs
    from `before` and has them."""
    page.wait_for_function("([sel, before]) => { const e = document.querySelector(sel); const t = e ? e.innerText : '';"
                           " return t !== before && t.includes('tokens/s'); }",
                           arg=[f'{T}chat_status .omost-status', before], timeout=WAIT_MS)
    text = page.inner_text(f'{T}chat_status .omost-status')
    found = STATS.search(text.replace('\n', ' '))
    assert found, text
    return text, [int((g or '0').replace(',', '')) for g in found.groups()]


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_two_turns_in_a_slow_browser_reuse_the_conversation_and_draft_the_edit(version, model):
    """Turn 2 of a greedy chat in a browser whose CPU is throttled (a busy machine's): it runs to its end (gradio
    3.41 dropped such a page mid-reply when every token sent the whole chat), re-reads only the new part of the
    conversation, and drafts from the canvas it repeats; Edit last re-reads only the edited message."""
    from playwright.sync_api import sync_playwright
    check_python(version)
    with ui_app(version, 'http://127.0.0.1:9/v1', timeout=180) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_gguf_chat(browser, url, model, slowdown=6)
        box = page.locator(f'{T}temperature input[type=number]').first
        box.fill('0')
        box.press('Tab')
        message = page.locator(f'{T}input textarea').first
        message.fill('generate an image of the fierce battle of warriors and a dragon')
        message.press('Enter')
        first, (reply1, prompt1, _, _, _) = wait_stats(page, '')
        message.fill('change the dragon to a dinosaur')
        message.press('Enter')
        second, (reply2, prompt2, reused2, drafted2, accepted2) = wait_stats(page, first)
        assert reply2 == reply1 and prompt2 > prompt1 + reply1  # the scripted model repeats its canvas
        assert prompt1 <= reused2 < prompt2 and 0 < accepted2 <= drafted2  # turn 1's prompt was not read again
        assert accepted2 > reply2 // 2  # most of the repeated canvas came from drafts
        assert page.inner_text(f'{T}chat').count('darkolivegreen') == 2  # both replies whole in the chat
        page.click(f'{T}edit')
        page.wait_for_function("sel => document.querySelector(sel).innerText.includes('Editing')",
                               arg=f'{T}chat_status', timeout=WAIT_MS)
        message.fill('change the dragon to a big dinosaur')
        message.press('Enter')
        _, (_, prompt3, reused3, _, _) = wait_stats(page, page.inner_text(f'{T}chat_status .omost-status'))
        assert prompt3 - 20 < reused3 < prompt3  # only the edited end of the last message (and the template's tail)
        browser.close()
