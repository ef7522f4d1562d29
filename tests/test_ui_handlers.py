"""The Omost UI's handlers and build contract, without a browser (gradio 4.40 in-process, 3.41 by subprocess)."""

import html
import json
import os
import re
import threading

import gradio as gr
import pytest
from conftest import read_fixture

from lib_omost.canvas import CanvasError, extract_code, load_canvas
from lib_omost.llm import Conversation
from lib_omost.options import RenderOptions, parse_options
from omost_webui import ui
from ui_helpers import PYTHONS, canvas_reply, canvas_server, chat_bodies, check_app, free_port

DRAGON = read_fixture('dragon_battle.canvas.py')
DINOSAUR = read_fixture('dinosaur_edit.canvas.py')


def is_noop(update):
    return isinstance(update, dict) and update.get('__type__') == 'update' and 'value' not in update


# ---------------------------------------------------------------------------------------------------------------
# Build contract


@pytest.mark.parametrize('version', ['4.40.0', '3.41.2'])
def test_build_contract_and_unique_ids_per_tab(version):
    if not os.path.exists(PYTHONS[version]):
        pytest.skip(f'no venv with gradio {version} at {PYTHONS[version]}')
    info = check_app(version)
    assert info['gradio'] == version
    script_values = ['Checkbox', 'Code', 'Textbox', 'Textbox', 'Image', 'Image', 'Image']  # + guidance JSON, images
    assert info['inputs'] == {'txt2img': script_values, 'img2img': script_values}
    assert info['infotext'] == info['paste'] == ['Omost', 'Omost canvas', 'Omost options', 'Omost guidance']
    ids = info['elem_ids']
    assert len(ids) == len(set(ids)), 'duplicate elem_ids'
    ours = [i for i in ids if '_omost' in i]
    assert len([i for i in ours if i.startswith('txt2img_')]) == len([i for i in ours if i.startswith('img2img_')]) > 30


def test_build_is_reentrant_and_defaults_are_the_render_defaults():
    from ui_app import InputAccordion
    settings = {'server_url': 'http://127.0.0.1:1/v1', 'presets': ['anime', 'none']}
    for _ in range(2):  # the WebUI calls ui() again for the API defaults, in a fresh Blocks
        with gr.Blocks():
            built = ui.build_ui(False, lambda name: f'x_{name}', InputAccordion, settings)
    enabled, canvas, options = built.inputs[:3]
    assert enabled.value is False and canvas.value == ''
    assert parse_options(options.value) == RenderOptions()
    assert built.infotext_fields[:3] == [(enabled, 'Omost'), (canvas, 'Omost canvas'), (options, 'Omost options')]
    assert built.inputs[3].value == '[]' and built.infotext_fields[3] == (built.inputs[3], 'Omost guidance')
    assert [c[0] for c in built.components['opt_preset'].choices] == ['none', 'anime']


# ---------------------------------------------------------------------------------------------------------------
# Canvas <-> region editor


def state_of(text, width=1024, height=1024, session=None):
    state, status, new_text = ui.canvas_changed(session or ui.ChatSession(), text, width, height)
    return json.loads(state), status, new_text


def test_the_editor_state_is_the_canvas_json_with_the_image_size():
    state, status, text = state_of(DRAGON, 1024, 512)
    assert state['canvas'] == load_canvas(DRAGON).canvas.to_json() and state['error'] is None
    assert (state['width'], state['height'], state['ack'], state['live']) == (1024, 512, 0, False)
    assert f'{len(load_canvas(DRAGON).canvas.local_regions)} regions' in status
    assert is_noop(text)
    assert state_of(DRAGON, None, 0)[0]['height'] == 1024


def test_pasted_canvas_json_infotext_and_replies_become_code():
    from lib_omost.canvas import canvas_to_infotext
    canvas = load_canvas(DRAGON).canvas
    for pasted in (json.dumps(canvas.to_json()), canvas_reply(DRAGON), canvas_to_infotext(canvas)):
        state, status, text = state_of(pasted)
        assert state['canvas'] is not None and 'error' not in status
        assert load_canvas(text['value']).canvas == canvas
        assert text['value'].startswith('# Initialize the canvas\ncanvas = Canvas()')


def test_comfyui_json_has_no_code_form_and_stays_json():
    state, status, text = state_of(read_fixture('comfyui_omost_conditioning.json'))
    assert state['canvas']['regions'] and 'location' not in state['canvas']['regions'][0] and is_noop(text)


@pytest.mark.parametrize('bad', ["canvas = Canvas()\ncanvas.set_global_description(description=f'{x}')\n",
                                 '{"format": "omost-canvas", "version": 99}', "import os\nos.system('true')\n"])
def test_bad_canvas_shows_the_parse_error_escaped(bad):
    with pytest.raises(CanvasError) as expected:
        load_canvas(bad)
    state, status, text = state_of(bad)
    assert state['canvas'] is None and state['error'] == str(expected.value) and is_noop(text)
    assert 'omost-error' in status
    assert html.escape(str(expected.value)) in status


def test_empty_canvas_is_a_hint_not_an_error():
    state, status, text = state_of('  \n')
    assert state['canvas'] is None and state['error'] is None and 'omost-error' not in status and status


def edit(seq, canvas):
    return json.dumps({'seq': seq, 'canvas': canvas})


def test_an_editor_edit_rewrites_the_code_in_the_llm_format():
    session = ui.ChatSession()
    data = load_canvas(DRAGON).canvas.to_json()
    data['regions'][0].update(location='on the right', offset='slightly to the lower', area='a small square area')
    code, state, status = ui.apply_editor_edit(session, edit(1, data), DRAGON, 1024, 1024)
    moved = load_canvas(code).canvas
    assert code == moved.to_code() and code.startswith('# Initialize the canvas\n')
    assert (moved.local_regions[0].location, moved.local_regions[0].offset) == ('on the right', 'slightly to the lower')
    assert json.loads(state)['ack'] == 1 and json.loads(state)['canvas'] == moved.to_json()
    # the code box's own change then yields the very same state: the editor sees nothing new
    assert ui.canvas_changed(session, code, 1024, 1024)[0] == state
    # an older edit arriving late is ignored
    assert all(is_noop(u) for u in ui.apply_editor_edit(session, edit(1, load_canvas(DRAGON).canvas.to_json()),
                                                         code, 1024, 1024))


def test_an_invalid_edit_keeps_the_code_and_says_why():
    session = ui.ChatSession()
    data = load_canvas(DRAGON).canvas.to_json()
    data['regions'][0]['distance_to_viewer'] = -1
    code, state, status = ui.apply_editor_edit(session, edit(3, data), DRAGON, 1024, 1024)
    assert is_noop(code) and 'Edit not applied' in status and 'distance_to_viewer' in status
    assert json.loads(state)['ack'] == 3 and json.loads(state)['canvas'] == load_canvas(DRAGON).canvas.to_json()
    assert all(is_noop(u) for u in ui.apply_editor_edit(session, 'not json', DRAGON, 1024, 1024))


def test_the_on_off_line_warns_when_a_canvas_would_be_ignored():
    assert 'ON' in ui.enabled_html(True, DRAGON) and 'omost-ok' in ui.enabled_html(True, DRAGON)
    off = ui.enabled_html(False, DRAGON)
    assert 'OFF' in off and 'ignores this canvas' in off and 'omost-warning' in off
    assert 'omost-warning' not in ui.enabled_html(False, '')


# ---------------------------------------------------------------------------------------------------------------
# Options


def control_values(options: RenderOptions):
    return [getattr(options, name) for name in ui.OPTION_NAMES]


def test_controls_write_the_options_json():
    wanted = RenderOptions(regions=False, strength=0.75, start=0.1, end=0.8, hires=False, sketch=True,
                           sketch_denoise=0.9, sketch_blur=12, preset='anime', prompt_target='global')
    values = control_values(wanted)
    values[ui.OPTION_NAMES.index('sketch_blur')] = 12.0  # sliders may hand back floats
    text, status = ui.options_from_controls(*values)
    assert parse_options(text) == wanted and status == ''


def test_an_empty_step_window_is_recorded_and_reported():
    values = control_values(RenderOptions(start=0.6, end=0.4))
    text, status = ui.options_from_controls(*values)
    assert json.loads(text)['start'] == 0.6 and 'omost-error' in status and 'step window' in status


def test_pasted_options_update_only_the_controls_that_differ():
    current = control_values(RenderOptions())
    pasted = RenderOptions(strength=0.5, sketch=True).to_json()
    *updates, status = ui.controls_from_options(pasted, *current)
    changed = {name: u['value'] for name, u in zip(ui.OPTION_NAMES, updates) if not is_noop(u)}
    assert changed == {'strength': 0.5, 'sketch': True} and status == ''


def test_bad_pasted_options_leave_the_controls_and_say_why():
    *updates, status = ui.controls_from_options('{"strength": "high"}', *control_values(RenderOptions()))
    assert all(is_noop(u) for u in updates) and 'strength' in status and 'omost-error' in status


# ---------------------------------------------------------------------------------------------------------------
# Chat (against a loopback OpenAI-compatible server)

REPLY = canvas_reply(DRAGON)


def run_chat(mode, session, message, url, cache=None, saved_api_key=('', ''), canvas_text=None, live_preview=True,
             reuse_prompt=True, draft='auto', **kw):
    args = dict(kind='server', server_url=url, server_model='', api_key='', local_model='', keep_loaded=True,
                seed=1, temperature=0.6, top_p=0.9, max_new_tokens=4096)
    args.update(kw)
    return list(ui.chat_stream(mode, session, message, *args.values(), cache=cache, saved_api_key=saved_api_key,
                               canvas_text=canvas_text, live_preview=live_preview, reuse_prompt=reuse_prompt,
                               draft=draft))


@pytest.fixture(scope='module')
def llm():
    with canvas_server(REPLY, chunks=8, delay=0.0) as server:
        yield server


def test_send_streams_then_fills_the_canvas(llm):
    session = ui.ChatSession()
    steps = run_chat('new', session, 'a dragon battle', llm.url)
    chat, box, canvas, status = steps[0]
    assert chat == [('a dragon battle', '')] and box == ''
    assert len(steps) >= 8  # one per streamed piece, plus start and end
    chat, box, canvas, status = steps[-1]
    assert chat == [('a dragon battle', REPLY)] and canvas == extract_code(REPLY)
    assert 'tokens/s' in status
    assert session.conversation.history == [('a dragon battle', REPLY)] and not session.busy


def test_retry_edit_and_new_chat(llm):
    session = ui.ChatSession()
    run_chat('new', session, 'first', llm.url)
    run_chat('retry', session, 'ignored', llm.url)
    assert chat_bodies(llm)[-1]['messages'][-1] == {'role': 'user', 'content': 'first'}
    assert session.conversation.history == [('first', REPLY)]
    chat, box, status = ui.edit_last(session)
    assert chat == [] and box == 'first' and session.editing
    steps = run_chat('new', session, 'first, edited', llm.url)  # Send while editing replaces the last turn
    assert steps[-1][0] == [('first, edited', REPLY)] and not session.editing
    assert chat_bodies(llm)[-1]['messages'][-1] == {'role': 'user', 'content': 'first, edited'}
    chat, status, canvas = ui.new_chat(session)
    assert chat == [] and session.conversation.history == [] and canvas == ''  # the canvas goes too...


def test_new_chat_keeps_the_canvas_when_asked_and_continues_from_it(llm):
    session = ui.ChatSession()
    run_chat('new', session, 'first', llm.url)
    chat, status, canvas = ui.new_chat(session, True, DINOSAUR)  # ...unless the user asks to keep it
    assert is_noop(canvas) and 'kept canvas' in status
    (user, kept), = chat
    assert load_canvas(kept).canvas == load_canvas(DINOSAUR).canvas
    run_chat('new', session, 'make it night', llm.url, canvas_text=DINOSAUR)
    sent = chat_bodies(llm)[-1]['messages']
    assert [m['role'] for m in sent] == ['system', 'user', 'assistant', 'user']
    assert load_canvas(sent[2]['content']).canvas == load_canvas(DINOSAUR).canvas
    assert sent[3] == {'role': 'user', 'content': 'make it night'}


def test_the_next_request_carries_the_edited_canvas(llm):
    session = ui.ChatSession()
    run_chat('new', session, 'a dragon battle', llm.url, canvas_text='')
    data = load_canvas(DRAGON).canvas.to_json()
    data['regions'][-1]['area'] = 'a small square area'
    edited = ui.apply_editor_edit(session, edit(1, data), DRAGON)[0]
    steps = run_chat('new', session, 'make the dragon bigger', llm.url, canvas_text=edited)
    sent = chat_bodies(llm)[-1]['messages']
    assert [m['role'] for m in sent] == ['system', 'user', 'assistant', 'user']
    assert sent[2]['content'].startswith('Sure. Here is the canvas:\n\n```python\n# Initialize the canvas')
    assert extract_code(sent[2]['content']).strip() == edited.strip()  # the model edits what the user made
    assert 'Continuing from your edited canvas' in steps[0][3] and 'Continuing from your edited canvas' in steps[-1][3]
    assert 'continues from your edited canvas' in steps[-1][0][0][1]  # and the chat shows it
    assert session.conversation.turns[0].assistant == REPLY  # the reply itself is kept as the model wrote it
    # an unchanged canvas (or its reformatted code) is not an edit
    run_chat('new', session, 'again', llm.url, canvas_text=load_canvas(REPLY).canvas.to_code())
    assert 'Continuing' not in run_chat('new', session, 'and again', llm.url, canvas_text=extract_code(REPLY))[-1][3]
    assert chat_bodies(llm)[-1]['messages'][4]['content'] == REPLY


def test_the_status_counts_tokens_not_stream_chunks(llm):
    chat, box, canvas, status = run_chat('new', ui.ChatSession(), 'a dragon battle', llm.url)[-1]
    assert f'about {round(len(REPLY) / 4)} tokens' in status  # 8 chunks were streamed


def test_the_canvas_follows_a_streaming_reply():
    with canvas_server(REPLY, chunks=60, delay=0.02) as slow:
        steps = run_chat('new', ui.ChatSession(), 'dragon', slow.url, canvas_text='')
        off = run_chat('new', ui.ChatSession(), 'dragon', slow.url, canvas_text='', live_preview=False)
    assert not any(isinstance(canvas, str) for chat, box, canvas, status in off[:-1])
    live = [(canvas, status) for chat, box, canvas, status in steps[1:-1] if isinstance(canvas, str)]
    counts = [len(load_canvas(canvas).canvas.local_regions) for canvas, _ in live]
    assert counts == sorted(counts) and counts[0] < 4 and len(set(counts)) >= 3, counts
    statuses = [status for chat, box, canvas, status in steps if isinstance(status, str)]
    assert any('The background so far' in s for s in statuses) and any('3 regions so far' in s for s in statuses)
    assert steps[-1][2] == extract_code(REPLY)


def test_a_late_change_event_of_a_streamed_canvas_leaves_the_final_editor_state():
    """Gradio 3.41 drops an unqueued event while the same event is still pending (js/app/src/Blocks.svelte:
    trigger_api_call), so the code box's change for an early streamed canvas can be the last one handled, after the
    reply ended. The browser sends the state it showed with that canvas: nothing may be written then."""
    session = ui.ChatSession()
    with canvas_server(REPLY, chunks=60, delay=0.02) as slow:
        args = dict(kind='server', server_url=slow.url, server_model='', api_key='', local_model='', keep_loaded=True,
                    seed=1, temperature=0.6, top_p=0.9, max_new_tokens=4096)
        steps = list(ui.chat_with_editor('new', session, 'dragon', *args.values(), canvas_text='',
                                         image_size=(1024, 1024)))
    shown = [(step[2], step[4]) for step in steps if isinstance(step[2], str)]  # (code, editor state) pairs sent
    early_code, early_state = shown[0]
    final_code, final_state = shown[-1]
    assert len(load_canvas(early_code).canvas.local_regions) < 4 == len(json.loads(final_state)['canvas']['regions'])
    assert not session.busy  # the reply ended; now the early canvas's change event is handled
    assert all(is_noop(u) for u in ui.canvas_changed(session, early_code.rstrip(), 1024, 1024, shown=early_state))
    assert all(is_noop(u) for u in ui.canvas_changed(session, final_code, 1024, 1024, shown=final_state))
    # a canvas the editor does not show yet (typed, pasted), or a new image size, is still drawn
    state, status, _ = ui.canvas_changed(session, DINOSAUR, 1024, 1024, shown=final_state)
    assert json.loads(state)['canvas'] == load_canvas(DINOSAUR).canvas.to_json() and 'regions' in status
    assert json.loads(ui.canvas_changed(session, final_code, 512, 1024, shown=final_state)[0])['width'] == 512


def test_server_down_keeps_the_message_and_the_conversation():
    session = ui.ChatSession()
    session.conversation = Conversation([('earlier', 'reply')])
    dead = f'http://127.0.0.1:{free_port()}/v1'
    chat, box, canvas, status = run_chat('new', session, 'my long message', dead)[-1]
    assert box == 'my long message' and is_noop(canvas)
    assert 'omost-error' in status and '127.0.0.1' in status
    assert chat == [('earlier', 'reply')] and session.conversation.history == [('earlier', 'reply')]


def test_empty_message_and_missing_url_are_told_not_sent(llm):
    session = ui.ChatSession()
    n = len(chat_bodies(llm))
    assert 'Type a message' in run_chat('new', session, '   ', llm.url)[-1][3]
    chat, box, canvas, status = run_chat('new', session, 'hello', '')[-1]
    assert box == 'hello' and 'server' in status.lower() and 'omost-error' in status
    assert len(chat_bodies(llm)) == n


def interrupted_chat(action):
    """Stream a slow reply (40 pieces, 2 s) and call action(session) once three pieces have arrived."""
    with canvas_server(REPLY, chunks=40, delay=0.05) as slow:
        session = ui.ChatSession()
        steps = []
        for step in ui.chat_stream('new', session, 'dragon', 'server', slow.url, '', '', '', True, 1, 0.6, 0.9, 4096):
            steps.append(step)
            if len(steps) == 4:
                action(session)
        assert len(steps) < 30, 'the reply was not interrupted'
        return session, steps


def test_stop_from_another_request_cuts_the_reply():
    session, steps = interrupted_chat(lambda s: threading.Thread(target=ui.stop_chat, args=(s,)).start())
    chat, box, canvas, status = steps[-1]
    assert 'Stopped' in status
    (user, reply), = session.conversation.turns
    assert user == 'dragon' and 0 < len(reply) < len(REPLY) and session.conversation.turns[0].partial


def test_model_refresh_lists_the_server_models(llm):
    dropdown, status = ui.refresh_models(llm.url, '', '')
    assert dropdown['choices'] in (['omost-test'], [('omost-test', 'omost-test')]) and dropdown['value'] == 'omost-test'
    dropdown, status = ui.refresh_models(f'http://127.0.0.1:{free_port()}/v1', 'm', '')
    assert is_noop(dropdown) and 'omost-error' in status


def test_new_chat_during_a_reply_stops_it_and_wins():
    session, steps = interrupted_chat(ui.new_chat)
    assert steps[-1][0] == [] and session.conversation.history == [] and not session.busy


def test_the_response_cache_in_the_data_folder_answers_a_repeat(llm, tmp_path):
    cache = ui._chat_cache({'data_dir': str(tmp_path), 'cache_bytes': 1 << 20})
    assert cache.max_bytes == 1 << 20
    first = run_chat('new', ui.ChatSession(), 'a dragon battle', llm.url, cache=cache)[-1]
    n = len(chat_bodies(llm))
    chat, box, canvas, status = run_chat('new', ui.ChatSession(), 'a dragon battle', llm.url, cache=cache)[-1]
    assert len(chat_bodies(llm)) == n and 'cache' in status
    assert chat == first[0] and canvas == first[2] == extract_code(REPLY)
    assert ui._chat_cache({'data_dir': ''}) is None
    settings = {'data_dir': str(tmp_path), 'cache_bytes': 1 << 20}
    assert '1 stored reply removed' in ui.clear_cache(settings)
    run_chat('new', ui.ChatSession(), 'a dragon battle', llm.url, cache=cache)
    assert len(chat_bodies(llm)) == n + 1  # asked the server again
    assert 'cache is off' in ui.clear_cache({'data_dir': ''})


def test_local_backend_streams_and_is_reused_until_the_model_changes(tmp_path):
    from conftest import FIXTURES
    from llm_helpers import build_tiny_llama, corpus_texts
    folder = build_tiny_llama(str(tmp_path / 'tiny'), corpus_texts(FIXTURES), eos=False)
    session = ui.ChatSession()
    steps = run_chat('new', session, 'a cat on a sofa', '', kind='local', local_model=folder, max_new_tokens=12)
    chat, box, canvas, status = steps[-1]
    (user, reply), = chat
    assert user == 'a cat on a sofa' and reply and len(steps) > 3
    assert is_noop(canvas) and 'cut at 12 new tokens' in status  # random weights write no canvas
    backend = ui.make_backend('local', '', '', '', folder, '', True)
    first = backend.prompt_ids(session.conversation.messages(upto=0))
    assert f'prompt {len(first):,} tokens (0 reused).' in status
    # the next turn re-reads only its new tokens; greedy replies draft (the LLM settings reach the kept backend)
    status = run_chat('new', session, 'and a dog', '', kind='local', local_model=folder, max_new_tokens=12,
                      temperature=0, draft='on')[-1][3]
    assert backend.draft == 'on' and backend.reuse_prompt
    found = re.search(r'prompt ([\d,]+) tokens \(([\d,]+) reused\) · drafted \d+, accepted \d+\.', status)
    total, reused = (int(g.replace(',', '')) for g in found.groups())
    assert len(first) <= reused < total
    status = run_chat('retry', session, '', '', kind='local', local_model=folder, max_new_tokens=12, temperature=0,
                      reuse_prompt=False, draft='off')[-1][3]
    assert not backend.reuse_prompt and backend.draft == 'off' and ' reused)' in status and 'drafted' not in status
    assert '(0 reused)' in status
    assert backend.model is not None  # kept loaded for the next reply, and reused
    assert ui.make_backend('local', '', '', '', folder, '', True) is backend
    other = ui.make_backend('local', '', '', '', str(tmp_path / 'elsewhere'), '', True)
    assert other is not backend and backend.model is None  # switching models frees the previous one
    chat, box, canvas, status = run_chat('new', session, 'again', '', kind='local', local_model='')[-1]
    assert box == 'again' and 'Choose a local Omost model' in status


def test_a_failed_edit_stays_an_edit(llm):
    session = ui.ChatSession()
    run_chat('new', session, 'first', llm.url)
    ui.edit_last(session)
    dead = f'http://127.0.0.1:{free_port()}/v1'
    chat, box, canvas, status = run_chat('new', session, 'first, edited', dead)[-1]
    assert box == 'first, edited' and chat == [] and session.editing and 'omost-error' in status
    assert session.conversation.history == [('first', REPLY)]  # the old turn is back in the conversation
    chat, box, canvas, status = run_chat('new', session, 'first, edited', llm.url)[-1]
    assert chat == [('first, edited', REPLY)] and not session.editing


def test_an_empty_key_box_uses_the_saved_key_and_a_typed_key_wins(llm):
    def last_auth():
        return [headers.get('Authorization') for method, path, headers, body in llm.requests][-1]
    saved = ('saved-key', llm.url.rstrip('/').removesuffix('/v1'))  # the saved URL, written without /v1
    run_chat('new', ui.ChatSession(), 'hi', llm.url, saved_api_key=saved)
    assert last_auth() == 'Bearer saved-key'
    run_chat('new', ui.ChatSession(), 'hi', llm.url, saved_api_key=saved, api_key='typed-key')
    assert last_auth() == 'Bearer typed-key'
    ui.refresh_models(llm.url, '', '', saved_api_key=saved)
    assert last_auth() == 'Bearer saved-key'


def test_the_saved_key_never_goes_to_another_url(llm):
    def last_auth():
        return [headers.get('Authorization') for method, path, headers, body in llm.requests][-1]
    elsewhere = ('saved-key', 'http://127.0.0.1:9/v1')  # the key belongs to another server
    run_chat('new', ui.ChatSession(), 'hi', llm.url, saved_api_key=elsewhere)
    assert last_auth() is None
    ui.refresh_models(llm.url, '', '', saved_api_key=elsewhere)
    assert last_auth() is None


def test_model_refresh_with_a_wrong_key_says_so():
    from llm_helpers import LoopbackServer
    with LoopbackServer(lambda h, b: h.send_json(401, {'error': {'message': 'Invalid API key'}},
                                                 reason='Unauthorized')) as srv:
        dropdown, status = ui.refresh_models(srv.url, 'm', 'wrong-key')
    assert is_noop(dropdown) and 'omost-error' in status and '0 model' not in status
    assert html.unescape(status).endswith('answered HTTP 401 Unauthorized: Invalid API key. Check the API key.</div>')
