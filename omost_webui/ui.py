"""The Omost accordion: LLM chat, the editable canvas with its region preview, and the render options.

Built with basic components only so the same code runs on gradio 3.41 (A1111) and 4.40 (Forge). The script
receives (`OmostUI.inputs`) enabled, the canvas text, the options as JSON, then the image guidance values (`ui_guidance`); everything else
(chat, backend settings, preview) lives only in the browser session.

Handlers are plain module-level functions so they can be tested without a browser.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import json
import logging
import threading
import time
from typing import Callable

import gradio as gr

from lib_omost.canvas import INFOTEXT_PREFIX, CanvasError, extract_code, load_canvas
from lib_omost.canvas_stream import CanvasStream
from lib_omost.options import RenderOptions, parse_options

log = logging.getLogger(__name__)

LIVE_INTERVAL_S = 0.25  # while a reply streams, the canvas (and so the editor) updates at most this often
KEPT_CANVAS_MESSAGE = 'Start from this canvas.'  # New chat with "keep the canvas": the first turn's user side
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
        self.editor_seq = 0   # the last region-editor edit applied (the editor ignores states older than its edits)
        self.state_rev = 0    # editor states started; only the newest may write (gradio 3 runs them in parallel)

    def __deepcopy__(self, memo):  # gr.State deep-copies its default for every new session
        return ChatSession()


# ---------------------------------------------------------------------------------------------------------------
# Status lines (HTML: server errors and canvas messages are untrusted text, so everything is escaped)


def status_html(text: str = '', kind: str = 'info', extra_class: str = '') -> str:
    if not text:
        return ''
    classes = f'omost-status omost-{kind}' + (f' {extra_class}' if extra_class else '')
    return f'<div class="{classes}">{html.escape(text)}</div>'


# ---------------------------------------------------------------------------------------------------------------
# Canvas -> region editor (javascript/omost_editor.js draws the state and sends edits back as canvas JSON)


def _size(width, height) -> tuple:
    return tuple(int(v) if v and v > 0 else 1024 for v in (width, height))


def canvas_summary(result) -> str:
    """The status lines under the editor for a parsed canvas."""
    n = len(result.canvas.local_regions)
    lines = [status_html(f'{n} region{"s" if n != 1 else ""} + background.', 'ok')]
    lines += [status_html(f'Warning: {w}', 'warning') for w in result.warnings]
    return '\n'.join(lines)


def editor_state(session, canvas_text: str, width=1024, height=1024) -> tuple:
    """(editor state JSON, status HTML, parse result or None) for the canvas text."""
    width, height = _size(width, height)
    state = {'ack': session.editor_seq if session else 0, 'live': bool(session and session.busy),
             'width': width, 'height': height, 'canvas': None, 'error': None}
    text = canvas_text or ''
    if not text.strip():
        return json.dumps(state), status_html(NO_CANVAS), None
    try:
        result = load_canvas(text)
    except CanvasError as e:
        state['error'] = str(e)
        return json.dumps(state), status_html(f'Canvas error: {e}', 'error'), None
    state['canvas'] = result.canvas.to_json()
    return json.dumps(state), canvas_summary(result), result


def _same_view(state_a, state_b) -> bool:
    """Whether two editor states draw the same thing (canvas or error, image size); `ack` and `live` aside."""
    try:
        a, b = json.loads(state_a or 'null'), json.loads(state_b or 'null')
    except ValueError:
        return False
    keys = ('canvas', 'error', 'width', 'height')
    return isinstance(a, dict) and isinstance(b, dict) and all(a.get(k) == b.get(k) for k in keys)


def canvas_changed(session, canvas_text, width=1024, height=1024, shown=None):
    """The code box changed (user, chat, pasted infotext, the editor): (editor state, status, code update).
    Canvas JSON and whole replies become code.

    shown: the editor state the browser had when the change fired. When it already draws this canvas (the chat
    and the editor send the state along with the code), nothing is written. On gradio 3 the change of a canvas
    streamed early in a reply can be handled after the reply ended; writing its (then stale) state would
    overwrite the final one for good, as gradio 3.41 drops the final canvas's own change event while that one is
    still pending (js/app/src/Blocks.svelte: trigger_api_call returns on a pending or generating status)."""
    new_text = gr.update()
    if session.busy:  # a reply is streaming: the chat writes the editor state itself, in order
        return new_text, new_text, new_text
    rev = session.state_rev = session.state_rev + 1
    state, status, result = editor_state(session, canvas_text, width, height)
    if session.state_rev != rev:  # a newer canvas is being read: let it write, or an old state could win
        return new_text, new_text, new_text
    if shown is not None and _same_view(shown, state):
        state = status = gr.update()
    text = (canvas_text or '').lstrip()
    if result is not None and (text[:1] in ('{', '[') or '```' in text or text.startswith(INFOTEXT_PREFIX)):
        try:  # show pasted JSON / a pasted reply as code; ComfyUI JSON has no code form and stays JSON
            new_text = gr.update(value=result.canvas.to_code())
        except CanvasError:
            pass
    return state, status, new_text


def apply_editor_edit(session, edit_text, canvas_text, width=1024, height=1024):
    """An edit from the region editor ({seq, canvas JSON}): (code update, editor state, status). The code is
    rewritten in the LLM's format; an invalid edit keeps the code and says why."""
    keep = gr.update()
    try:
        edit = json.loads(edit_text or 'null')
        seq, data = int(edit['seq']), edit['canvas']
    except (ValueError, TypeError, KeyError):
        return keep, keep, keep
    if seq <= session.editor_seq:
        return keep, keep, keep  # an older edit that arrived late
    session.editor_seq = seq
    session.state_rev += 1
    try:
        code = load_canvas(data).canvas.to_code()
    except CanvasError as e:  # the editor only builds valid canvases; still, never lose the code for it
        state, _, _ = editor_state(session, canvas_text, width, height)
        return keep, state, status_html(f'Edit not applied: {e}', 'error')
    state, status, _ = editor_state(session, code, width, height)
    return code, state, status


def enabled_html(enabled, canvas_text='') -> str:
    """The on/off line at the top of the accordion: Generate with a canvas but Omost off is easy to miss."""
    has_canvas = bool((canvas_text or '').strip())
    if enabled:
        return status_html('Omost is ON: Generate uses the canvas regions.' if has_canvas else
                           'Omost is ON, but there is no canvas yet: chat or paste one before Generate.',
                           'ok' if has_canvas else 'warning', 'omost-onoff omost-on')
    return status_html('Omost is OFF: Generate ignores this canvas and renders a plain image. Tick "Omost" in the '
                       'header to use it.' if has_canvas else 'Omost is OFF (tick "Omost" in the header to use it).',
                       'warning' if has_canvas else 'info', 'omost-onoff omost-off')


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

# Several browser sessions chat at once. gradio 4 runs each event for one session at a time unless told otherwise
# (Forge's `demo.queue(64)` is gradio 3's concurrency count, which gradio 4 takes as its status update rate), so a
# second user's Send would wait, unexplained, for the first user's whole reply; gradio 3 (A1111) runs 64 at once.
# An in-process model still writes one reply at a time and says so (`_local_waiting_notice`).
_click = getattr(gr.Button, 'click', None)  # gradio 3 sets it on each instance
CHAT_CONCURRENCY = {'concurrency_limit': 16} if _click and 'concurrency_limit' in inspect.signature(_click).parameters \
    else {}

_local_backend = {'key': None, 'backend': None}
_local_lock = threading.Lock()


def make_backend(kind, server_url, server_model, api_key, local_model, models_dir, keep_loaded, gguf_model='',
                 gguf_gpu_layers=-1, gguf_threads=0, reuse_prompt=True, draft='auto'):
    """The backend for a reply; an in-process one is kept across replies (its model and conversation cache), with
    `reuse_prompt` and `draft` (the LLM settings) set for this reply."""
    from lib_omost.llm import ChatError, LocalBackend, ServerBackend
    if kind in ('local', 'gguf'):
        if kind == 'local' and not local_model:
            raise ChatError('Choose a local Omost model in the LLM settings.')
        if kind == 'gguf' and not (gguf_model or '').strip():
            raise ChatError('Choose a GGUF model (a known name or the path of a .gguf file) in the LLM settings.')
        if kind == 'gguf':
            from lib_omost.llm.gguf import GGUFBackend
            layers, threads = int(gguf_gpu_layers if gguf_gpu_layers is not None else -1), int(gguf_threads or 0)
            key = (kind, gguf_model.strip(), models_dir, bool(keep_loaded), layers, threads)
            make = lambda: GGUFBackend(gguf_model.strip(), models_dir, keep_loaded=bool(keep_loaded),  # noqa: E731
                                       n_gpu_layers=layers, threads=threads)
        else:
            key = (local_model, models_dir, bool(keep_loaded))
            make = lambda: LocalBackend(local_model, models_dir, keep_loaded=bool(keep_loaded))  # noqa: E731
        with _local_lock:  # one in-process model at a time, reused across replies while "keep loaded" holds it
            if _local_backend['key'] != key:
                if _local_backend['backend'] is not None:
                    _local_backend['backend'].unload()  # free the previous model's memory first
                _local_backend.update(key=key, backend=make())
            backend = _local_backend['backend']
            backend.reuse_prompt, backend.draft = bool(reuse_prompt), draft
            return backend
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


def _finished_status(upd, prefix: str = '') -> str:
    parts = [prefix] if prefix else []
    if upd.notice:
        parts.append(upd.notice)
    if upd.cached:
        parts.append('Answered from the response cache.')
    elif upd.tokens:
        about = '' if upd.tokens_exact else 'about '  # a server that sends no usage: estimated from characters
        parts.append(f'{about}{upd.tokens} tokens, {upd.tokens_per_s:.1f} tokens/s.')
        if upd.stats:
            parts.append(stats_text(upd.stats))
    return ' '.join(parts)  # the engine's notice already says when a reply was stopped or cut


def stats_text(stats: dict) -> str:
    """'prompt 1,733 tokens (1,717 reused) · drafted 1,100, accepted 1,050.' for an in-process reply."""
    text = f"prompt {stats.get('prompt_tokens', 0):,} tokens ({stats.get('prompt_reused', 0):,} reused)"
    if stats.get('drafted'):
        text += f" · drafted {stats['drafted']:,}, accepted {stats.get('accepted', 0):,}"
    return text + '.'


CONTINUING = 'Continuing from your edited canvas.'
WAITING_FOR_LLM = 'Waiting for the LLM...'


def _local_waiting_notice(kind) -> str:
    """The in-process model is busy with another session's reply (it writes one at a time; `make_backend` and the
    backend queue this one behind it): the line that says so, else ''."""
    backend = _local_backend['backend'] if kind in ('local', 'gguf') else None
    if backend is None or not getattr(backend, 'busy', False):
        return ''
    from lib_omost.llm.inprocess import WAITING_NOTICE
    return WAITING_NOTICE


def _canvas_json(text):
    try:
        return load_canvas(text).canvas.to_json()
    except CanvasError:
        return None


def mark_edited_canvas(conv, canvas_text) -> bool:
    """Before a new message: when the canvas in the code box differs from the last reply's, the model is sent the
    edited canvas as its last canvas (Omost's format: the model edits the code it sees). True when it is."""
    if not conv.turns or not conv.turns[-1].assistant or canvas_text is None:
        return False
    last = conv.turns[-1]
    current = _canvas_json(canvas_text)
    if current is None or current == _canvas_json(last.assistant):
        last.edited_canvas = None
        return False
    last.edited_canvas = load_canvas(canvas_text).canvas.to_code()
    return True


def chat_stream(mode, session, message, kind, server_url, server_model, api_key, local_model, keep_loaded,
                seed, temperature, top_p, max_new_tokens, gguf_model='', gguf_gpu_layers=-1, gguf_threads=0, *,
                models_dir='', system_prompt='', cache=None, saved_api_key=('', ''), canvas_text=None,
                live_preview=True, reuse_prompt=True, draft='auto'):
    """Generator of (chatbot, input box, canvas text, status) for Send ('new'/'edit') and Retry ('retry').
    An empty API key box means the saved key, for the saved server URL only (`api_key_for`).
    canvas_text: the code box; when it was edited after the last reply, the model continues from the edit.
    live_preview: while the reply streams, each complete Canvas call goes to the code box (and so the editor),
    at most every LIVE_INTERVAL_S. reuse_prompt, draft: the in-process backends' conversation cache and prompt-lookup
    drafting (the LLM settings)."""
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
    continuing = CONTINUING if mode == 'new' and mark_edited_canvas(conv, canvas_text) else ''
    base = conv.display_history()[:-1] if mode in ('retry', 'edit') else conv.display_history()
    box_on_error = keep if mode == 'retry' else message
    session.busy = True
    session.stop.clear()
    upd = None
    live = CanvasStream() if live_preview else None
    live_due, live_pending, shown_status = 0.0, False, None
    try:
        shown_status = ' '.join(filter(None, [continuing, _local_waiting_notice(kind) or WAITING_FOR_LLM]))
        yield base + [(message, '')], ('' if mode != 'retry' else keep), keep, status_html(shown_status)
        backend = make_backend(kind, server_url, server_model, api_key_for(server_url, api_key, saved_api_key),
                               local_model, models_dir, keep_loaded, gguf_model, gguf_gpu_layers, gguf_threads,
                               reuse_prompt, draft)
        params = ChatParams(seed=int(seed), temperature=float(temperature), top_p=float(top_p),
                            max_new_tokens=int(max_new_tokens))
        for upd in stream_reply(backend, conv, message, params, session.stop, system_prompt=system_prompt or None,
                                cache=cache, mode=mode):
            if upd.done:
                break
            canvas_now = keep
            if live is not None:
                live_pending = live.feed(upd.text) or live_pending
                now = time.monotonic()
                if live_pending and now >= live_due:  # a few updates a second, never one per token
                    canvas_now, live_pending, live_due = live.code, False, now + LIVE_INTERVAL_S
            regions = _so_far(live.result.canvas) if live is not None and live.result is not None else ''
            text = ' '.join(filter(None, [continuing, upd.notice, regions]))
            if not text and shown_status:  # a notice went away (the wait for another chat's reply ended)
                text = WAITING_FOR_LLM
            status = status_html(text) if text and text != shown_status else keep
            shown_status = text or shown_status
            yield base + [(message, upd.text)], keep, canvas_now, status
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
    yield history, keep, canvas, status_html(_finished_status(upd, continuing), 'ok')


def _so_far(canvas) -> str:
    n = len(canvas.local_regions)
    return f'{n} region{"s" if n != 1 else ""} so far...' if n else 'The background so far...'


def chat_with_editor(mode, session, *args, image_size=(), **kwargs):
    """`chat_stream`'s updates plus the region editor's state and status whenever the canvas text changes: a
    streaming reply draws its regions as they come (gradio 3 drops the code box's change events meanwhile)."""
    for step in chat_stream(mode, session, *args, **kwargs):
        code = step[2]
        shown = editor_state(session, code, *image_size)[:2] if isinstance(code, str) else (gr.update(), gr.update())
        yield (*step, *shown)


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


def new_chat(session, keep_canvas=False, canvas_text=''):
    """(chatbot, status, canvas update). The canvas is cleared unless `keep_canvas`: then the new chat starts
    from it (one turn holding it as the assistant's canvas, so the next message edits it)."""
    from lib_omost.llm import Conversation, Turn
    session.stop.set()
    session.conversation = Conversation()
    session.editing = False
    if not keep_canvas:
        return [], status_html(''), ''
    try:
        code = load_canvas(canvas_text or '').canvas.to_code()
    except CanvasError:
        return [], status_html('New chat; there was no readable canvas to keep.'), gr.update()
    session.conversation.turns.append(Turn(KEPT_CANVAS_MESSAGE, f'```python\n{code}```'))
    return session.conversation.display_history(), status_html('New chat, starting from the kept canvas.'), \
        gr.update()


# ---------------------------------------------------------------------------------------------------------------
# Layout


def build_ui(is_img2img: bool, elem_id: Callable[[str], str], accordion_cls, settings: dict,
             image_size=None) -> OmostUI:
    """The Omost accordion inside the current gr.Blocks context. Re-entrant (the WebUI calls ui() twice).

    image_size: optional (width, height) components of the tab (e.g. caught in Script.after_component); the
    preview then has the image's aspect ratio and follows them.
    """
    from lib_omost.llm import DEFAULT_MODEL, OMOST_MODELS
    from lib_omost.llm.models import DEFAULT_GGUF, GGUF_MODELS
    c = {}
    defaults = RenderOptions()
    presets = ['none'] + [p for p in settings.get('presets') or [] if p != 'none']
    local_models = list(OMOST_MODELS)
    backend_kind = settings.get('backend') or 'server'

    with accordion_cls(False, label='Omost', elem_id=elem_id('omost')) as enabled:
        c['session'] = gr.State(ChatSession())
        c['onoff'] = gr.HTML(enabled_html(False), elem_id=elem_id('omost_onoff'))
        with gr.Row(elem_id=elem_id('omost_main'), equal_height=False):
            # The region editor first and widest: it is where the canvas is looked at and shaped.
            with gr.Column(scale=3, min_width=360, elem_id=elem_id('omost_canvas_column')):
                c['editor'] = gr.HTML('<div class="omost-editor-mount"></div>', elem_id=elem_id('omost_editor'))
                # Python <-> javascript/omost_editor.js: the canvas to draw, and the edited canvas coming back.
                c['editor_state'] = gr.Textbox(editor_state(None, '')[0], show_label=False, lines=1, max_lines=1,
                                               elem_id=elem_id('omost_editor_state'), elem_classes=['omost-hidden'])
                c['editor_edit'] = gr.Textbox('', show_label=False, lines=1, max_lines=1,
                                              elem_id=elem_id('omost_editor_edit'), elem_classes=['omost-hidden'])
                c['preview_status'] = gr.HTML(status_html(NO_CANVAS), elem_id=elem_id('omost_preview_status'))
            with gr.Column(scale=2, min_width=320, elem_id=elem_id('omost_chat_column')):
                c['chatbot'] = gr.Chatbot(value=[], show_label=False, height=360, elem_id=elem_id('omost_chat'),
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
                c['keep_canvas'] = gr.Checkbox(False, label='New chat keeps the canvas (and continues from it)',
                                               elem_id=elem_id('omost_keep_canvas'))
                with gr.Row(elem_id=elem_id('omost_examples')):
                    c['examples'] = [gr.Button(text, size='sm', elem_id=elem_id(f'omost_example_{i}'),
                                               elem_classes=['omost-example']) for i, text in enumerate(EXAMPLES)]
                c['chat_status'] = gr.HTML('', elem_id=elem_id('omost_chat_status'))
                with gr.Accordion('LLM settings', open=False, elem_id=elem_id('omost_llm_settings')):
                    c['backend'] = gr.Dropdown(['server', 'local', 'gguf'], value=backend_kind, label='Backend',
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
                    with gr.Group(visible=backend_kind == 'gguf', elem_id=elem_id('omost_gguf_group')) as gg:
                        gguf = settings.get('gguf_model') or DEFAULT_GGUF
                        c['gguf_model'] = gr.Dropdown(list(GGUF_MODELS), value=gguf, allow_custom_value=True,
                                                      label='GGUF model (a known name, downloaded on first use, or '
                                                      'a .gguf path)', elem_id=elem_id('omost_gguf_model'))
                        with gr.Row():
                            c['gguf_gpu_layers'] = gr.Number(-1, precision=0, label='GPU layers (-1: all with a GPU '
                                                             'build, 0: CPU)', elem_id=elem_id('omost_gguf_gpu_layers'))
                            c['gguf_threads'] = gr.Number(0, precision=0, label='CPU threads (0: automatic)',
                                                          elem_id=elem_id('omost_gguf_threads'))
                    c['keep_loaded'] = gr.Checkbox(bool(settings.get('keep_loaded', True)),
                                                   label='Keep the in-process model loaded between replies',
                                                   visible=backend_kind != 'server',
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
        with gr.Accordion('Canvas code', open=False, elem_id=elem_id('omost_canvas_accordion')):
            canvas_text = gr.Code('', language='python', interactive=True, lines=12, label='Canvas',
                                  elem_id=elem_id('omost_canvas'))
        with gr.Row(elem_id=elem_id('omost_options_row')):
            with gr.Column():
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
                    # The hidden JSON is what generation reads. Its value is a function, run by gradio on every page
                    # load, that reads the option controls: Settings > Defaults sets the saved values on these
                    # labelled controls after ui() returned (modules/ui.py: create_ui calls UiLoadsave.add_block
                    # on the built tab), so the page's JSON says what its controls show. Unlabelled, the JSON is
                    # never saved on its own; a fresh ui() (the API's default args) gives RenderOptions().
                    options_text = gr.Textbox(lambda: options_from_controls(*(o[n].value for n in OPTION_NAMES))[0],
                                              visible=False, elem_id=elem_id('omost_options'))
                from omost_webui.ui_guidance import build_guidance_ui
                guidance = build_guidance_ui(elem_id, canvas_text)

    controls = [o[name] for name in OPTION_NAMES]
    c.update(enabled=enabled, canvas=canvas_text, options=options_text, **{f'opt_{k}': v for k, v in o.items()})

    # The editor follows the canvas text, whoever changed it (user, chat, pasted infotext, the editor itself), and
    # the image size; an editor edit rewrites the code. Unqueued: they must not wait behind a streaming reply.
    size = list(image_size or [])
    session, state, edit = c['session'], c['editor_state'], c['editor_edit']
    # The code box's change also sends the editor state the browser shows (canvas_changed: `shown`).
    canvas_text.change(lambda s, shown, text, *wh: canvas_changed(s, text, *wh, shown=shown),
                       [session, state, canvas_text] + size, [state, c['preview_status'], canvas_text], queue=False)
    for component in size:
        component.change(lambda *args: canvas_changed(*args)[:2], [session, canvas_text] + size,
                         [state, c['preview_status']], queue=False)
    edit.change(apply_editor_edit, [session, edit, canvas_text] + size, [canvas_text, state, c['preview_status']],
                queue=False)
    for component in (enabled, canvas_text):
        component.change(enabled_html, [enabled, canvas_text], [c['onoff']], queue=False)

    # Options: user edits write the JSON; a changed JSON (paste) writes the controls back.
    for control in controls:
        control.input(options_from_controls, controls, [options_text, c['options_status']], queue=False)
    options_text.change(controls_from_options, [options_text] + controls, controls + [c['options_status']],
                        queue=False)

    # Chat
    saved_api_key = (settings.get('api_key') or '', settings.get('server_url') or '')

    # After the chat's own inputs: the code box (the model continues from an edited canvas) and the image size;
    # after its outputs, the editor state and status (`chat_with_editor`).
    chat_extra = [canvas_text] + size

    def chat(mode):
        def run(*args):
            args, (canvas, *image_size) = args[:-len(chat_extra)], args[-len(chat_extra):]
            yield from chat_with_editor(mode, *args, models_dir=settings.get('models_dir') or '',
                                        system_prompt=settings.get('system_prompt') or '', cache=_chat_cache(settings),
                                        saved_api_key=saved_api_key, canvas_text=canvas, image_size=image_size,
                                        reuse_prompt=settings.get('reuse_prompt', True),
                                        draft=settings.get('draft', 'auto'))
        return run

    chat_inputs = [c['session'], c['message'], c['backend'], c['server_url'], c['server_model'], c['api_key'],
                   c['local_model'], c['keep_loaded'], c['seed'], c['temperature'], c['top_p'], c['max_new_tokens'],
                   c['gguf_model'], c['gguf_gpu_layers'], c['gguf_threads']]
    chat_outputs = [c['chatbot'], c['message'], canvas_text, c['chat_status'], state, c['preview_status']]
    c['send'].click(chat('new'), chat_inputs + chat_extra, chat_outputs, **CHAT_CONCURRENCY)
    c['retry'].click(chat('retry'), chat_inputs + chat_extra, chat_outputs, **CHAT_CONCURRENCY)
    c['stop'].click(stop_chat, [c['session']], None, queue=False)
    c['edit'].click(edit_last, [c['session']], [c['chatbot'], c['message'], c['chat_status']], queue=False)
    c['new'].click(new_chat, [c['session'], c['keep_canvas'], canvas_text], [c['chatbot'], c['chat_status'], canvas_text],
                   queue=False)
    for button, text in zip(c['examples'], EXAMPLES):
        button.click(lambda t=text: t, None, [c['message']], queue=False)
    c['refresh_models'].click(lambda *args: refresh_models(*args, saved_api_key=saved_api_key),
                              [c['server_url'], c['server_model'], c['api_key']],
                              [c['server_model'], c['chat_status']])
    c['clear_cache'].click(lambda: clear_cache(settings), None, [c['chat_status']], queue=False)
    c['backend'].change(lambda kind: tuple(gr.update(visible=kind == k) for k in ('server', 'local', 'gguf'))
                        + (gr.update(visible=kind != 'server'),), [c['backend']], [sg, lg, gg, c['keep_loaded']],
                        queue=False)

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
