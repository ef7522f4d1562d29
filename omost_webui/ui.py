"""The Omost accordion: LLM chat, the editable canvas with its region preview, and the render options.

Built with basic components only so the same code runs on gradio 3.41 (A1111) and 4.40 (Forge). The script
receives (`OmostUI.inputs`) enabled, the canvas text, the options as JSON, then the image guidance values (`ui_guidance`); everything else
(chat, backend settings, preview) lives only in the browser session.

Handlers are plain module-level functions so they can be tested without a browser.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import threading
from typing import Callable

import gradio as gr

from lib_omost.canvas import CanvasError, extract_code, load_canvas
from lib_omost.options import RenderOptions, parse_options

log = logging.getLogger(__name__)

PREVIEW_SIDE = 384  # long side of the region preview; small so it renders on every keystroke
EXAMPLES = (  # Omost's own quick prompts
    'generate an image of the fierce battle of warriors and a dragon',
    'change the dragon to a dinosaur',
)
NO_CANVAS = 'No canvas yet: chat with the LLM, or paste Canvas code (or canvas JSON) under "Canvas code".'
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RenderOptions))  # order of the option controls


@dataclasses.dataclass
class OmostUI:
    inputs: list             # [enabled, canvas_text, options_text, guidance JSON, guide images...]: the script's args
    infotext_fields: list
    paste_field_names: list
    components: dict         # every named component, for the caller and for tests


class ChatSession:
    """Per browser session (kept in a gr.State): the conversation, the Stop flag, the edit mode."""

    def __init__(self):
        from lib_omost.llm import Conversation
        self.conversation = Conversation()
        self.stop = threading.Event()
        self.editing = False  # "Edit last" was pressed: the next Send replaces the last turn
        self.busy = False

    def __deepcopy__(self, memo):  # gr.State deep-copies its default for every new session
        return ChatSession()


# ---------------------------------------------------------------------------------------------------------------
# Status lines (HTML: server errors and canvas messages are untrusted text, so everything is escaped)


def status_html(text: str = '', kind: str = 'info') -> str:
    if not text:
        return ''
    return f'<div class="omost-status omost-{kind}">{html.escape(text)}</div>'


# ---------------------------------------------------------------------------------------------------------------
# Canvas preview


def render_preview(canvas_text: str, width=1024, height=1024):
    """(preview image or None, status HTML, canvas text update). Canvas JSON and whole replies become code.
    The preview has the image's aspect ratio (Omost stretches its 90x90 grid to the image)."""
    from lib_omost.sketch import overlay_preview
    text = canvas_text or ''
    if not text.strip():
        return None, status_html(NO_CANVAS), gr.update()
    try:
        result = load_canvas(text)
    except CanvasError as e:
        return None, status_html(f'Canvas error: {e}', 'error'), gr.update()
    canvas = result.canvas
    new_text = gr.update()
    if text.lstrip()[:1] in ('{', '[') or '```' in text:
        try:  # show pasted JSON / a pasted reply as code; ComfyUI JSON has no code form and stays JSON
            new_text = gr.update(value=canvas.to_code())
        except CanvasError:
            pass
    width, height = (int(v) if v and v > 0 else 1024 for v in (width, height))
    image = overlay_preview(canvas, width, height, max_side=PREVIEW_SIDE)
    n = len(canvas.local_regions)
    lines = [f'{n} region{"s" if n != 1 else ""} + background.']
    lines += [f'Warning: {w}' for w in result.warnings]
    kind = 'warning' if result.warnings else 'ok'
    return image, '\n'.join(status_html(line, kind if i else 'ok') for i, line in enumerate(lines)), new_text


# ---------------------------------------------------------------------------------------------------------------
# Render options <-> controls


def options_from_controls(*values):
    """(options JSON, status HTML) from the controls' values, in OPTION_NAMES order."""
    raw = dict(zip(OPTION_NAMES, values))
    raw['sketch_blur'] = int(round(raw['sketch_blur'] or 0))
    for name in ('strength', 'start', 'end', 'sketch_denoise'):
        raw[name] = float(raw[name] or 0)
    try:
        return parse_options(raw).to_json(), ''
    except CanvasError as e:  # still record the choice; generation reports the same message
        return json.dumps(raw, separators=(',', ':')), status_html(str(e), 'error')


def controls_from_options(options_text, *current):
    """Control updates for an options JSON (pasted infotext); unchanged controls are left alone (no flicker)."""
    try:
        options = parse_options(options_text)
    except CanvasError as e:
        return [gr.update() for _ in OPTION_NAMES] + [status_html(f'Omost options: {e}', 'error')]
    new = options.to_dict()
    return [gr.update() if cur == new[name] else gr.update(value=new[name])
            for name, cur in zip(OPTION_NAMES, current)] + ['']


# ---------------------------------------------------------------------------------------------------------------
# Chat

_local_backend = {'key': None, 'backend': None}
_local_lock = threading.Lock()


def make_backend(kind, server_url, server_model, api_key, local_model, models_dir, keep_loaded):
    from lib_omost.llm import ChatError, LocalBackend, ServerBackend
    if kind == 'local':
        if not local_model:
            raise ChatError('Choose a local Omost model in the LLM settings.')
        key = (local_model, models_dir, bool(keep_loaded))
        with _local_lock:  # one local model at a time, reused across replies while "keep loaded" holds it
            if _local_backend['key'] != key:
                if _local_backend['backend'] is not None:
                    _local_backend['backend'].unload()  # free the previous model's memory first
                _local_backend.update(key=key, backend=LocalBackend(local_model, models_dir,
                                                                    keep_loaded=bool(keep_loaded)))
            return _local_backend['backend']
    if not (server_url or '').strip():
        raise ChatError('Set the LLM server URL in the LLM settings (e.g. http://127.0.0.1:8080/v1).')
    return ServerBackend(server_url.strip(), (server_model or '').strip(), api_key=(api_key or None))


def _same_server(a: str, b: str) -> bool:
    def norm(url):
        url = (url or '').strip().rstrip('/')
        return url[:-3] if url.endswith('/v1') else url
    return bool(norm(a)) and norm(a) == norm(b)


def api_key_for(server_url, typed_key, saved=('', '')) -> str:
    """The key to send: the one typed in the box, else the saved key (`--omost-api-key` / OMOST_API_KEY), but the
    saved key only to the saved server URL, so a URL typed in the browser can never collect it."""
    if typed_key:
        return typed_key
    saved_key, saved_url = saved
    return saved_key if saved_key and _same_server(server_url, saved_url) else ''


def refresh_models(server_url, server_model, api_key, saved_api_key=('', '')):
    """(model dropdown update, status HTML) from the server's /v1/models."""
    from lib_omost.llm import ChatError, ServerBackend
    key = api_key_for(server_url, api_key, saved_api_key) or None
    try:
        models = ServerBackend((server_url or '').strip(), '', api_key=key).list_models()
    except ChatError as e:
        return gr.update(), status_html(str(e), 'error')
    value = server_model if server_model in models else (models[0] if models else server_model)
    return gr.update(choices=models, value=value), status_html(f'{len(models)} model(s) on the server.')


def _finished_status(upd) -> str:
    parts = []
    if upd.notice:
        parts.append(upd.notice)
    if upd.cached:
        parts.append('Answered from the response cache.')
    elif upd.tokens:
        parts.append(f'{upd.tokens} tokens, {upd.tokens_per_s:.1f} tokens/s.')
    return ' '.join(parts)  # the engine's notice already says when a reply was stopped or cut


def chat_stream(mode, session, message, kind, server_url, server_model, api_key, local_model, keep_loaded,
                seed, temperature, top_p, max_new_tokens, *, models_dir='', system_prompt='', cache=None,
                saved_api_key=('', '')):
    """Generator of (chatbot, input box, canvas text, status) for Send ('new'/'edit') and Retry ('retry').
    An empty API key box means the saved key, for the saved server URL only (`api_key_for`)."""
    from lib_omost.llm import ChatError, ChatParams, stream_reply
    keep = gr.update()
    conv = session.conversation
    if session.busy:
        yield keep, keep, keep, status_html('A reply is still being written: Stop it first.', 'warning')
        return
    if mode == 'new' and session.editing:
        mode = 'edit'
    if mode == 'retry':
        if not conv.turns:
            yield keep, keep, keep, status_html('Nothing to retry yet.', 'warning')
            return
        message = conv.turns[-1].user
    elif not (message or '').strip():
        yield keep, keep, keep, status_html('Type a message first.', 'warning')
        return
    base = conv.display_history()[:-1] if mode in ('retry', 'edit') else conv.display_history()
    box_on_error = keep if mode == 'retry' else message
    session.busy = True
    session.stop.clear()
    upd = None
    try:
        yield base + [(message, '')], ('' if mode != 'retry' else keep), keep, status_html('Waiting for the LLM...')
        backend = make_backend(kind, server_url, server_model, api_key_for(server_url, api_key, saved_api_key),
                               local_model, models_dir, keep_loaded)
        params = ChatParams(seed=int(seed), temperature=float(temperature), top_p=float(top_p),
                            max_new_tokens=int(max_new_tokens))
        for upd in stream_reply(backend, conv, message, params, session.stop, system_prompt=system_prompt or None,
                                cache=cache, mode=mode):
            if upd.done:
                break
            status = status_html(upd.notice) if upd.notice else keep
            yield base + [(message, upd.text)], keep, keep, status
    except ChatError as e:
        yield _unanswered(conv, mode), box_on_error, keep, status_html(str(e), 'error')
        return
    except Exception as e:  # a bug or an unexpected backend failure: say so, keep the user's text
        log.exception('Omost chat failed')
        yield _unanswered(conv, mode), box_on_error, keep, status_html(f'{type(e).__name__}: {e}', 'error')
        return
    finally:
        session.busy = False
    if session.conversation is not conv:  # "New chat" was pressed while this reply streamed (and stopped it)
        yield session.conversation.display_history(), keep, keep, status_html('')
        return
    if upd is None:
        yield _unanswered(conv, mode), box_on_error, keep, status_html('The LLM returned nothing.', 'error')
        return
    if upd.error and not upd.text:  # nothing came back: the message returns to the input box, no dead turn
        if mode == 'new' and conv.turns and conv.turns[-1].user == message and not conv.turns[-1].assistant:
            conv.turns.pop()
        yield _unanswered(conv, mode), box_on_error, keep, status_html(upd.error, 'error')
        return
    session.editing = False
    history = conv.display_history()
    if upd.error:  # cut by an error; the partial reply is kept in the chat with the message
        yield history, keep, keep, status_html(upd.error, 'error')
        return
    canvas = keep
    try:  # a stopped or cut reply may still hold a usable (repaired) canvas; the preview shows the repairs
        load_canvas(upd.text)
        canvas = extract_code(upd.text)
    except CanvasError:
        pass  # the engine's notice already says the reply has no canvas
    yield history, keep, canvas, status_html(_finished_status(upd), 'ok')


def _unanswered(conv, mode) -> list:
    """The chat after a reply failed before any text: an edit stays in progress (its old turn hidden)."""
    history = conv.display_history()
    return history[:-1] if mode == 'edit' else history


def stop_chat(session):
    # No output of its own: the streaming reply reports "Stopped" when it ends, and a "Stopping..." written
    # here could arrive after that final update and overwrite it.
    session.stop.set()


def edit_last(session):
    conv = session.conversation
    if session.busy or not conv.turns:
        return gr.update(), gr.update(), status_html('Nothing to edit yet.' if not conv.turns else
                                                     'A reply is still being written: Stop it first.', 'warning')
    session.editing = True
    return (conv.display_history()[:-1], conv.turns[-1].user,
            status_html('Editing the last message: change it and send (New chat cancels).'))


def new_chat(session):
    from lib_omost.llm import Conversation
    session.stop.set()
    session.conversation = Conversation()
    session.editing = False
    return [], status_html('')


# ---------------------------------------------------------------------------------------------------------------
# Layout


def build_ui(is_img2img: bool, elem_id: Callable[[str], str], accordion_cls, settings: dict,
             image_size=None) -> OmostUI:
    """The Omost accordion inside the current gr.Blocks context. Re-entrant (the WebUI calls ui() twice).

    image_size: optional (width, height) components of the tab (e.g. caught in Script.after_component); the
    preview then has the image's aspect ratio and follows them.
    """
    from lib_omost.llm import DEFAULT_MODEL, OMOST_MODELS
    c = {}
    defaults = RenderOptions()
    presets = ['none'] + [p for p in settings.get('presets') or [] if p != 'none']
    local_models = list(OMOST_MODELS)
    backend_kind = settings.get('backend') or 'server'

    with accordion_cls(False, label='Omost', elem_id=elem_id('omost')) as enabled:
        c['session'] = gr.State(ChatSession())
        with gr.Row(elem_id=elem_id('omost_main')):
            with gr.Column(scale=3, min_width=320, elem_id=elem_id('omost_chat_column')):
                c['chatbot'] = gr.Chatbot(value=[], label='Omost chat', height=360, elem_id=elem_id('omost_chat'),
                                          elem_classes=['omost-chatbot'])
                c['message'] = gr.Textbox(lines=2, max_lines=12, show_label=False, elem_id=elem_id('omost_input'),
                                          placeholder='Describe an image, or how to change it. '
                                                      'Enter sends, Shift+Enter starts a new line.',
                                          elem_classes=['omost-chat-input'])
                with gr.Row(elem_id=elem_id('omost_chat_buttons')):
                    c['send'] = gr.Button('Send', variant='primary', size='sm', elem_id=elem_id('omost_send'),
                                          elem_classes=['omost-send'])
                    c['stop'] = gr.Button('Stop', size='sm', elem_id=elem_id('omost_stop'))
                    c['retry'] = gr.Button('Retry', size='sm', elem_id=elem_id('omost_retry'))
                    c['edit'] = gr.Button('Edit last', size='sm', elem_id=elem_id('omost_edit'))
                    c['new'] = gr.Button('New chat', size='sm', elem_id=elem_id('omost_new'))
                with gr.Row(elem_id=elem_id('omost_examples')):
                    c['examples'] = [gr.Button(text, size='sm', elem_id=elem_id(f'omost_example_{i}'),
                                               elem_classes=['omost-example']) for i, text in enumerate(EXAMPLES)]
                c['chat_status'] = gr.HTML('', elem_id=elem_id('omost_chat_status'))
                with gr.Accordion('LLM settings', open=False, elem_id=elem_id('omost_llm_settings')):
                    c['backend'] = gr.Dropdown(['server', 'local'], value=backend_kind, label='Backend',
                                               elem_id=elem_id('omost_backend'))
                    with gr.Group(visible=backend_kind == 'server', elem_id=elem_id('omost_server_group')) as sg:
                        c['server_url'] = gr.Textbox(settings.get('server_url', ''), label='Server base URL',
                                                     placeholder='http://127.0.0.1:8080/v1',
                                                     elem_id=elem_id('omost_server_url'))
                        with gr.Row():
                            model = settings.get('server_model', '')
                            c['server_model'] = gr.Dropdown([model] if model else [], value=model or None,
                                                            allow_custom_value=True, label='Model',
                                                            elem_id=elem_id('omost_server_model'))
                            c['refresh_models'] = gr.Button('Refresh', size='sm',
                                                            elem_id=elem_id('omost_refresh_models'))
                        # Empty by default so the WebUI's ui-config.json never records the saved key.
                        c['api_key'] = gr.Textbox('', type='password', label='API key',
                                                  elem_id=elem_id('omost_api_key'),
                                                  placeholder='(--omost-api-key, for the default server URL)'
                                                  if settings.get('api_key') else 'none')
                        # Settings > Defaults must not write a typed key to ui-config.json
                        # (modules/ui_loadsave.py: UiLoadsave.add_component skips do_not_save_to_config).
                        c['api_key'].do_not_save_to_config = True
                    with gr.Group(visible=backend_kind == 'local', elem_id=elem_id('omost_local_group')) as lg:
                        local = settings.get('local_model') or DEFAULT_MODEL
                        c['local_model'] = gr.Dropdown(local_models, value=local, allow_custom_value=True,
                                                       label='Local model', elem_id=elem_id('omost_local_model'))
                        c['keep_loaded'] = gr.Checkbox(bool(settings.get('keep_loaded', True)),
                                                       label='Keep the model loaded between replies',
                                                       elem_id=elem_id('omost_keep_loaded'))
                    with gr.Row():
                        c['seed'] = gr.Number(12345, precision=0, label='Seed', elem_id=elem_id('omost_seed'))
                        c['temperature'] = gr.Slider(0.0, 2.0, 0.6, step=0.01, label='Temperature',
                                                     elem_id=elem_id('omost_temperature'))
                    with gr.Row():
                        c['top_p'] = gr.Slider(0.0, 1.0, 0.9, step=0.01, label='Top-p', elem_id=elem_id('omost_top_p'))
                        c['max_new_tokens'] = gr.Slider(128, 8192, 4096, step=1, label='Max new tokens',
                                                        elem_id=elem_id('omost_max_new_tokens'))
                    c['clear_cache'] = gr.Button('Clear response cache', size='sm',
                                                 elem_id=elem_id('omost_clear_cache'))
            with gr.Column(scale=2, min_width=280, elem_id=elem_id('omost_canvas_column')):
                c['preview'] = gr.Image(None, type='pil', interactive=False, label='Regions', height=PREVIEW_SIDE,
                                        elem_id=elem_id('omost_preview'))
                c['preview_status'] = gr.HTML(status_html(NO_CANVAS), elem_id=elem_id('omost_preview_status'))
                with gr.Accordion('Canvas code', open=False, elem_id=elem_id('omost_canvas_accordion')):
                    canvas_text = gr.Code('', language='python', interactive=True, lines=12, label='Canvas',
                                          elem_id=elem_id('omost_canvas'))
                with gr.Accordion('Render options', open=False, elem_id=elem_id('omost_options_accordion')):
                    o = {}
                    with gr.Row():
                        o['regions'] = gr.Checkbox(defaults.regions, label='Regional attention',
                                                   elem_id=elem_id('omost_opt_regions'))
                        o['hires'] = gr.Checkbox(defaults.hires, label='Regions in the hires pass',
                                                 elem_id=elem_id('omost_opt_hires'))
                    o['strength'] = gr.Slider(0.0, 2.0, defaults.strength, step=0.05, label='Region strength',
                                              elem_id=elem_id('omost_opt_strength'))
                    with gr.Row():
                        o['start'] = gr.Slider(0.0, 1.0, defaults.start, step=0.01, label='From step (fraction)',
                                               elem_id=elem_id('omost_opt_start'))
                        o['end'] = gr.Slider(0.0, 1.0, defaults.end, step=0.01, label='To step (fraction)',
                                             elem_id=elem_id('omost_opt_end'))
                    o['sketch'] = gr.Checkbox(defaults.sketch, label='Start from the sketch (first pass)',
                                              elem_id=elem_id('omost_opt_sketch'))
                    with gr.Row():
                        o['sketch_denoise'] = gr.Slider(0.05, 1.0, defaults.sketch_denoise, step=0.01,
                                                        label='Sketch denoise', elem_id=elem_id('omost_opt_denoise'))
                        o['sketch_blur'] = gr.Slider(0, 45, defaults.sketch_blur, step=1, label='Sketch blur',
                                                     elem_id=elem_id('omost_opt_blur'))
                    with gr.Row():
                        o['preset'] = gr.Dropdown(presets, value=defaults.preset, allow_custom_value=True,
                                                  label='Tag preset', elem_id=elem_id('omost_opt_preset'))
                        o['prompt_target'] = gr.Dropdown(['every', 'global'], value=defaults.prompt_target,
                                                         label='Prompt box text goes to (every region / global)',
                                                         elem_id=elem_id('omost_opt_prompt_target'))
                    c['options_status'] = gr.HTML('', elem_id=elem_id('omost_options_status'))
                    # The hidden JSON is what generation reads. Its value is computed at every page load from the
                    # controls, whose defaults the WebUI may have replaced from ui-config.json after ui() returned
                    # (modules/ui_loadsave.py: UiLoadsave.add_component sets `value` on labelled controls only).
                    options_text = gr.Textbox(lambda: options_from_controls(*(o[k].value for k in OPTION_NAMES))[0],
                                              visible=False, elem_id=elem_id('omost_options'))
                from omost_webui.ui_guidance import build_guidance_ui
                guidance = build_guidance_ui(elem_id, canvas_text)

    controls = [o[name] for name in OPTION_NAMES]
    c.update(enabled=enabled, canvas=canvas_text, options=options_text, **{f'opt_{k}': v for k, v in o.items()})

    # Preview follows the canvas text, whoever changed it (user, chat, pasted infotext).
    size = list(image_size or [])
    canvas_text.change(render_preview, [canvas_text] + size, [c['preview'], c['preview_status'], canvas_text])
    for component in size:
        component.change(lambda *args: render_preview(*args)[:2], [canvas_text] + size,
                         [c['preview'], c['preview_status']])

    # Options: user edits write the JSON; a changed JSON (paste) writes the controls back.
    for control in controls:
        control.input(options_from_controls, controls, [options_text, c['options_status']], queue=False)
    options_text.change(controls_from_options, [options_text] + controls, controls + [c['options_status']],
                        queue=False)

    # Chat
    saved_api_key = (settings.get('api_key') or '', settings.get('server_url') or '')

    def chat(mode):
        def run(*args):
            yield from chat_stream(mode, *args, models_dir=settings.get('models_dir') or '',
                                   system_prompt=settings.get('system_prompt') or '', cache=_chat_cache(settings),
                                   saved_api_key=saved_api_key)
        return run

    chat_inputs = [c['session'], c['message'], c['backend'], c['server_url'], c['server_model'], c['api_key'],
                   c['local_model'], c['keep_loaded'], c['seed'], c['temperature'], c['top_p'], c['max_new_tokens']]
    chat_outputs = [c['chatbot'], c['message'], canvas_text, c['chat_status']]
    c['send'].click(chat('new'), chat_inputs, chat_outputs)
    c['retry'].click(chat('retry'), chat_inputs, chat_outputs)
    c['stop'].click(stop_chat, [c['session']], None, queue=False)
    c['edit'].click(edit_last, [c['session']], [c['chatbot'], c['message'], c['chat_status']], queue=False)
    c['new'].click(new_chat, [c['session']], [c['chatbot'], c['chat_status']], queue=False)
    for button, text in zip(c['examples'], EXAMPLES):
        button.click(lambda t=text: t, None, [c['message']], queue=False)
    c['refresh_models'].click(lambda *args: refresh_models(*args, saved_api_key=saved_api_key),
                              [c['server_url'], c['server_model'], c['api_key']],
                              [c['server_model'], c['chat_status']])
    c['clear_cache'].click(lambda: clear_cache(settings), None, [c['chat_status']], queue=False)
    c['backend'].change(lambda kind: (gr.update(visible=kind == 'server'), gr.update(visible=kind == 'local')),
                        [c['backend']], [sg, lg], queue=False)

    c['guidance'] = guidance.components
    return OmostUI(
        inputs=[enabled, canvas_text, options_text] + guidance.inputs,
        infotext_fields=[(enabled, 'Omost'), (canvas_text, 'Omost canvas'),
                         (options_text, 'Omost options')] + guidance.infotext_fields,
        paste_field_names=['Omost', 'Omost canvas', 'Omost options'] + guidance.paste_field_names,
        components=c,
    )


def clear_cache(settings) -> str:
    cache = _chat_cache(settings)
    if cache is None:
        return status_html('The response cache is off (Settings > Omost).')
    removed = cache.clear()
    return status_html(f'Response cache cleared ({removed} stored repl{"y" if removed == 1 else "ies"} removed).')


def _chat_cache(settings):
    """The response cache in the data folder (none when no folder is configured)."""
    data_dir = settings.get('data_dir')
    if not data_dir:
        return None
    from lib_omost.llm import ResponseCache
    if settings.get('cache_bytes'):
        return ResponseCache(data_dir, max_bytes=settings['cache_bytes'])
    return ResponseCache(data_dir)
