"""Two users at once in a real WebUI (A1111 1.10.1 or Forge, with this extension and `--api`):

1. API: two Generates with different canvases sent at the same time give each the pixels of the same job run
   alone (and a plain job sent beside an Omost one stays plain).
2. Browser: two Chromium contexts (two users) chat at the same time with different requests through a loopback
   LLM server that holds each reply half-way. Each sees only its own conversation, canvas, editor and status;
   Stop in one leaves the other streaming; an edit and its undo in one leave the other alone. Then both click
   Generate at the same time: each image equals the one that session generated alone.
3. Optional (--local-model FOLDER, a transformers model folder; Forge's transformers only): both sessions on the
   in-process model: the second reply says it waits for the other, then runs.

Screenshots and a JSON summary go to OUT:

    OMOST_E2E_URL=http://127.0.0.1:7871 .venv/bin/python tests/e2e/two_sessions.py EVIDENCE_DIR/two-forge

Not a pytest test: it drives the shared host's browser UI for minutes and writes evidence files. Exit 0 when every
check passed.
"""

import hashlib
import io
import json
import os
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from PIL import Image  # noqa: E402

from conftest import read_fixture  # noqa: E402  (tests/conftest.py)
from lib_omost.canvas import load_canvas  # noqa: E402
from llm_helpers import LoopbackServer  # noqa: E402
from tests.e2e.client import WebUI, omost_args  # noqa: E402
from tests.e2e.conftest import make_job  # noqa: E402
from ui_helpers import HeldReplies, OmostPage, canvas_reply, chat_bodies, chromium  # noqa: E402

URL = os.environ.get('OMOST_E2E_URL', 'http://127.0.0.1:7860').rstrip('/')
HOST = os.environ.get('OMOST_E2E_HOST', '')
P = '#script_txt2img_omost_omost_'  # Script.elem_id: script_{tab}_{title}_{name}
ACCORDION = '#script_txt2img_omost_omost'
WAIT = 300_000
DRAGON, DINOSAUR = read_fixture('dragon_battle.canvas.py'), read_fixture('dinosaur_edit.canvas.py')
ASK = {'dragon': 'generate an image of the fierce battle of warriors and a dragon',
       'dinosaur': 'the warriors fight a dinosaur instead'}
REPLIES = {'dragon': canvas_reply(DRAGON), 'dinosaur': canvas_reply(DINOSAUR)}


class Checks:
    def __init__(self):
        self.results = {}

    def __call__(self, name, ok, detail=''):
        self.results[name] = bool(ok)
        print(('PASS ' if ok else 'FAIL ') + name + (f': {detail}' if detail and not ok else ''), flush=True)
        return ok


def pixels(png: bytes) -> str:
    return hashlib.sha1(Image.open(io.BytesIO(png)).convert('RGB').tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# 1. API


def api_part(webui: WebUI, check: Checks, summary: dict):
    ckpt = webui.options().get('sd_model_checkpoint')
    jobs = {'dragon': make_job(ckpt, alwayson_scripts=omost_args(DRAGON)),
            'dinosaur': make_job(ckpt, seed=77, alwayson_scripts=omost_args(DINOSAUR, {'strength': 0.8})),
            'plain': make_job(ckpt)}
    alone = {k: webui.txt2img(job).ok().pixels for k, job in jobs.items()}
    together = {}

    def run(k):
        together[k] = webui.txt2img(jobs[k]).ok().pixels
    for pair in (('dragon', 'dinosaur'), ('dragon', 'plain')):
        threads = [threading.Thread(target=run, args=(k,)) for k in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in pair:
            check(f'api: {k} sent beside {[o for o in pair if o != k][0]} = {k} alone', together[k] == alone[k],
                  f'{together[k]} != {alone[k]}')
    check('api: the two canvases give different images', alone['dragon'] != alone['dinosaur'])
    summary['api_pixels_alone'] = {k: v[0][:12] for k, v in alone.items()}


# ---------------------------------------------------------------------------------------------------------------
# 2. Browser


def open_session(browser, llm_url, out, name):
    """A new user (browser context) with txt2img at 64 px / 2 steps / seed 1234, Omost open (so on) and the LLM
    server set."""
    context = browser.new_context(viewport={'width': 1600, 'height': 1300})
    page = context.new_page()
    errors = []
    page.on('pageerror', lambda e: errors.append(f'{e} @ {(e.stack or "")[:400]}'))
    page.goto(URL)
    page.wait_for_selector('#txt2img_prompt textarea', timeout=WAIT)
    page.locator('#txt2img_prompt textarea').first.fill('a fierce battle')
    for elem, value in (('steps', 2), ('width', 64), ('height', 64), ('seed', 1234)):
        box = page.locator(f'#txt2img_{elem} input[type=number]').first
        box.fill(str(value))
        box.press('Tab')
    page.locator(f'{ACCORDION} .label-wrap').first.click()
    page.wait_for_selector(f'{P}editor .omost-ed-stage', timeout=WAIT)
    page.locator(f'{P}llm_settings .label-wrap').first.click()
    omost = OmostPage(page, P, WAIT)
    omost.errors = errors
    omost.field('server_url').fill(llm_url + '/v1')
    omost.field('server_url').press('Tab')
    omost.shot = lambda label: page.locator(ACCORDION).first.screenshot(
        path=os.path.join(out, f'{HOST}_{name}_{label}.png'))
    return omost


def start_generate(page):
    before = page.evaluate('() => { const i = document.querySelector("#txt2img_gallery img"); return i ? i.src : ""; }')
    page.click('#txt2img_generate')
    return before


def image_after(page, before):
    sel = '#txt2img_gallery img'
    page.wait_for_function('([sel, before]) => { const i = document.querySelector(sel); return i && i.src &&'
                           ' i.src !== before; }', arg=[sel, before], timeout=WAIT)
    return pixels(page.request.get(page.evaluate('sel => document.querySelector(sel).src', sel)).body())


def browser_part(browser, check: Checks, out: str, summary: dict):
    script = HeldReplies(REPLIES, wait_s=WAIT / 1000)
    with LoopbackServer(script) as llm:
        try:
            a = open_session(browser, llm.url, out, 'A')
            b = open_session(browser, llm.url, out, 'B')
            a.send(ASK['dragon'])
            a.wait_event(script.held['dragon'])
            b.send(ASK['dinosaur'])
            b.wait_event(script.held['dinosaur'])
            a.wait_text('chat', 'Here is the canvas')
            b.wait_text('chat', 'Here is the canvas')
            a.shot('both_streaming')
            b.shot('both_streaming')
            check('ui: both replies stream at the same time', True)
            for page, own, other in ((a, 'dragon', 'dinosaur'), (b, 'dinosaur', 'dragon')):
                chat = page.text('chat')
                check(f'ui: {own} session shows only its own message', ASK[own] in chat and ASK[other] not in chat)

            a.click('stop')
            a.wait_text('chat_status', 'Stopped')
            check('ui: Stop in A leaves B streaming', 'Stopped' not in b.text('chat_status'))
            script.gates['dinosaur'].set()
            b.wait_text('chat_status', 'tokens/s')
            dinosaur = load_canvas(DINOSAUR).canvas
            b.wait_boxes(len(dinosaur.local_regions))
            a.shot('a_stopped_b_done')
            b.shot('a_stopped_b_done')
            check('ui: B finished whole, never stopped', 'Stopped' not in b.text('chat_status')
                  and 'reply cut off' not in b.text('chat'))
            check('ui: A kept its cut reply', 'reply cut off' in a.text('chat'))
            bodies = chat_bodies(llm)
            check('ui: the LLM server got two conversations of one message each',
                  sorted(body['messages'][-1]['content'] for body in bodies) == sorted(ASK.values())
                  and all(len(body['messages']) == 2 for body in bodies), json.dumps(bodies)[:500])
            check('ui: B editor holds the dinosaur', b.editor_canvas() == dinosaur.to_json())
            a_canvas = json.dumps(a.editor_canvas()).lower()
            check('ui: A editor holds its own (cut) dragon, none of the dinosaur',
                  'dragon' in a_canvas and 'dinosaur' not in a_canvas)

            n_a, b_state = a.boxes(), b.editor_canvas()
            a.click('editor .omost-ed-add')
            a.wait_boxes(n_a + 1)
            check('ui: an edit in A leaves B alone', b.boxes() == len(dinosaur.local_regions)
                  and b.editor_canvas() == b_state)
            a.click('editor .omost-ed-undo')
            a.wait_boxes(n_a)
            check('ui: undo in A undoes A only', b.editor_canvas() == b_state)

            # A asks again and gets its whole dragon; then each generates alone, then both at once.
            script.gates['dragon'].set()
            a.click('retry')
            a.wait_text('chat_status', 'Stopped', present=False)  # (the stopped reply's status has a rate too)
            a.wait_text('chat_status', 'tokens/s')
            a.wait_boxes(len(load_canvas(DRAGON).canvas.local_regions))
            alone = {}
            for name, page in (('A', a.page), ('B', b.page)):
                alone[name] = image_after(page, start_generate(page))
            before = {name: start_generate(page) for name, page in (('A', a.page), ('B', b.page))}
            together = {name: image_after(page, before[name]) for name, page in (('A', a.page), ('B', b.page))}
            a.page.screenshot(path=os.path.join(out, f'{HOST}_A_generated.png'))
            b.page.screenshot(path=os.path.join(out, f'{HOST}_B_generated.png'))
            for name in ('A', 'B'):
                check(f'ui: {name} Generate beside the other = {name} alone', together[name] == alone[name],
                      f'{together[name]} != {alone[name]}')
            check('ui: the two sessions generate different images', alone['A'] != alone['B'])
            summary['ui_pixels_alone'] = {k: v[:12] for k, v in alone.items()}
            summary['page_errors'] = a.errors + b.errors
            # A1111 1.10.1 throws one of its own on every width/height change (javascript/hires_fix.js:
            # onCalcResolutionHires returns six values to an event with no outputs, modules/ui.py): recorded above,
            # only the extension's scripts count here.
            ours = [e for e in a.errors + b.errors if 'omost' in e.lower()]
            check('ui: no page errors from the extension', not ours, str(ours)[:500])
            a.page.context.close()
            b.page.context.close()
        finally:
            script.open_all()


def local_part(browser, folder, check: Checks, out: str):
    """Both sessions on the in-process model: the second says it waits, then runs once the first is stopped."""
    from lib_omost.llm.inprocess import WAITING_NOTICE
    pages = []
    for name, tokens in (('A', 8192), ('B', 128)):
        page = open_session(browser, 'http://127.0.0.1:9', out, f'local_{name}')
        page.use_local_model(folder, tokens)
        pages.append(page)
    a, b = pages
    a.send('a cat on a sofa')
    a.wait_reply_begun('a cat on a sofa')
    b.send('a dog in the snow')
    b.wait_text('chat_status', WAITING_NOTICE)
    b.shot('waiting')
    check('local: the second reply says it waits for the other', WAITING_NOTICE not in a.text('chat_status'))
    a.click('stop')
    a.wait_text('chat_status', 'Stopped')
    b.wait_text('chat_status', 'cut at 128 new tokens')
    b.shot('ran')
    check('local: then it runs, on its own message', 'Stopped' not in b.text('chat_status')
          and 'a cat on a sofa' not in b.text('chat') and 'a dog in the snow' not in a.text('chat'))
    a.page.context.close()
    b.page.context.close()


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('out', nargs='?', default='two_sessions_evidence')
    ap.add_argument('--local-model', default='', help='a transformers model folder for the in-process part')
    ap.add_argument('--skip-api', action='store_true')
    args = ap.parse_args()
    global HOST
    webui = WebUI(URL)
    HOST = HOST or ('forge' if 'forge_preset' in webui.options() else 'a1111')
    os.makedirs(args.out, exist_ok=True)
    check, summary = Checks(), {'host': HOST, 'url': URL}
    try:
        if not args.skip_api:
            api_part(webui, check, summary)
        with chromium() as browser:
            browser_part(browser, check, args.out, summary)
            if args.local_model:
                local_part(browser, args.local_model, check, args.out)
    finally:
        summary['checks'] = check.results
        with open(os.path.join(args.out, f'{HOST}_two_sessions.json'), 'w', encoding='utf-8') as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))
    return 0 if check.results and all(check.results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
