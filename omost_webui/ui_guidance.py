"""The "Image guidance" part of the Omost accordion: guide image slots, each with a target and FlexDiffuse's
parameters (lib_omost.guidance), written as the guidance JSON the script receives (lib_omost.guides).

Script values: the guidance JSON, then one image per slot. The JSON's entries name their slot; a pasted infotext
gives entries with an image hash instead, which generation refuses until the image is uploaded again (the status
line says so). Handlers are module-level functions, tested without a browser.
"""

from __future__ import annotations

import dataclasses
import html
import json

import gradio as gr

from lib_omost.canvas import CanvasError, load_canvas
from lib_omost.guidance import METHODS, ORDERS, GuideParams
from lib_omost.guides import PARAM_NAMES, check_entry

SLOTS = 3
FIXED_TARGETS = ['off', 'canvas', 'background']
CONTROL_NAMES = ('target',) + PARAM_NAMES  # per slot, in this order
SLIDERS = {  # name: (minimum, maximum, label)
    'linear_start': (-1.0, 1.0, 'Linear: first token'),
    'linear_end': (-1.0, 1.0, 'Linear: last token'),
    'clustered': (-1.0, 1.0, 'Clustered: weight at the peaks'),
    'threshold_floor': (0.0, 1.0, 'Threshold: floor (similarity)'),
    'threshold_mult': (-1.0, 1.0, 'Threshold: weight'),
    'max_guidance': (0.0, 1.0, 'Max image guidance (0 = off)'),
    'header_max': (0.0, 1.0, 'Header token cap'),
}


@dataclasses.dataclass
class GuidanceUI:
    inputs: list          # [guidance JSON, image of slot 1, ...]: the script values after the options
    infotext_fields: list
    paste_field_names: list
    components: dict


def _status(text: str, kind: str = 'info') -> str:
    return f'<div class="omost-status omost-{kind}">{html.escape(text)}</div>' if text else ''


def _target_value(value):
    value = str(value or 'canvas')
    return int(value) if value.isdigit() else value


def target_choices(canvas_text) -> list:
    """'off', 'canvas', 'background', then the region numbers of the canvas (as in the region preview)."""
    try:
        n = len(load_canvas(canvas_text or '').canvas.local_regions)
    except CanvasError:
        n = 0
    return FIXED_TARGETS + [str(i) for i in range(1, n + 1)]


def update_targets(canvas_text, *targets):
    choices = target_choices(canvas_text)
    return [gr.update(choices=choices + ([t] if str(t) not in choices else [])) for t in targets]


def guidance_from_controls(current_json, *values):
    """The guidance JSON of the slots' controls (SLOTS x CONTROL_NAMES values); a pasted image hash stays on its
    slot until an image is uploaded there."""
    try:
        previous = json.loads(current_json or '[]')
    except ValueError:
        previous = []
    previous = previous if isinstance(previous, list) else []
    entries = []
    n = len(CONTROL_NAMES)
    for slot in range(SLOTS):
        raw = dict(zip(CONTROL_NAMES, values[slot * n:(slot + 1) * n]))
        entry = {'slot': slot, 'target': _target_value(raw.pop('target'))}
        defaults = GuideParams()
        for name in PARAM_NAMES:
            value = raw[name]
            default = getattr(defaults, name)
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, float):
                value = float(value if value is not None else default)
            else:
                value = value if value is not None else default
            entry[name] = value
        old = previous[slot] if slot < len(previous) and isinstance(previous[slot], dict) else {}
        if old.get('image_hash'):
            entry['image_hash'] = old['image_hash']
        entries.append(entry)
    return json.dumps(entries, separators=(',', ':'))


def on_image(slot: int, current_json, image, *values):
    """An image uploaded into `slot` replaces the pasted hash there; the JSON is written from the controls."""
    try:
        entries = json.loads(current_json or '[]')
    except ValueError:
        entries = []
    if image is not None and isinstance(entries, list) and slot < len(entries) and isinstance(entries[slot], dict):
        entries[slot].pop('image_hash', None)
    return guidance_from_controls(json.dumps(entries), *values)


def controls_from_guidance(guidance_json, *current):
    """Control updates (then the status HTML) for a guidance JSON that changed, e.g. a pasted infotext."""
    n = len(CONTROL_NAMES)
    keep = [gr.update() for _ in range(SLOTS * n)]
    try:
        value = json.loads(guidance_json or '[]')
        value = value if isinstance(value, list) else [value]
        for i, entry in enumerate(value, 1):  # the same checks as generation, so a bad paste says why now
            if isinstance(entry, dict):
                check_entry(entry, f'Omost guide image {i}')
    except CanvasError as e:
        return keep + [_status(str(e), 'error')]
    except ValueError as e:  # not JSON
        return keep + [_status(f'Omost guidance: {e}', 'error')]
    updates, missing = list(keep), []
    for i, entry in enumerate(value[:SLOTS]):
        if not isinstance(entry, dict):
            continue
        slot = entry.get('slot', i)
        if not isinstance(slot, int) or not 0 <= slot < SLOTS:
            continue
        new = {'target': str(entry.get('target', 'canvas')),
               **{k: entry.get(k, getattr(GuideParams(), k)) for k in PARAM_NAMES}}
        for j, name in enumerate(CONTROL_NAMES):
            cur = current[slot * n + j] if slot * n + j < len(current) else None
            if cur != new[name]:
                updates[slot * n + j] = gr.update(value=new[name])
        if entry.get('image_hash') and new['target'] != 'off':
            missing.append(f'{slot + 1} ({entry["image_hash"]})')
    status = ''
    if missing:
        status = _status(f'Guide image {", ".join(missing)}: parameters restored from the infotext; upload the '
                         'image again (the infotext keeps only its hash), or set the target to off.', 'warning')
    return updates + [status]


def build_guidance_ui(elem_id, canvas_text) -> GuidanceUI:
    """The accordion inside the current gr.Blocks context; `canvas_text` is the canvas code component (the
    region targets follow it)."""
    c = {}
    defaults = GuideParams()
    slots = []
    with gr.Accordion('Image guidance', open=False, elem_id=elem_id('omost_guidance')):
        gr.HTML('<div class="omost-help">A guide image per region (or for the whole canvas): its CLIP image '
                'features are mapped onto the target\'s prompt embeddings (FlexDiffuse). Needs a CLIP vision '
                'tower (see Settings &gt; Omost).</div>')
        with gr.Tabs(elem_id=elem_id('omost_guidance_tabs')):
            for slot in range(SLOTS):
                s = {}
                with gr.Tab(f'Guide {slot + 1}', elem_id=elem_id(f'omost_guide_{slot}')):
                    s['image'] = gr.Image(None, type='pil', label='Guide image', height=200,
                                          elem_id=elem_id(f'omost_guide_{slot}_image'))
                    with gr.Row():
                        s['target'] = gr.Dropdown(FIXED_TARGETS, value='canvas', allow_custom_value=True,
                                                  label='Target (region number as in the preview)',
                                                  elem_id=elem_id(f'omost_guide_{slot}_target'))
                        s['method'] = gr.Dropdown(list(METHODS), value=defaults.method, label='Method',
                                                  elem_id=elem_id(f'omost_guide_{slot}_method'))
                    for name, (low, high, label) in SLIDERS.items():
                        s[name] = gr.Slider(low, high, getattr(defaults, name), step=0.01, label=label,
                                            elem_id=elem_id(f'omost_guide_{slot}_{name}'))
                    s['concepts'] = gr.Textbox(defaults.concepts, label='Concept-mapping prompt (optional)',
                                               placeholder='e.g. creepy tree: the image features these words '
                                                           'match map onto the prompt',
                                               elem_id=elem_id(f'omost_guide_{slot}_concepts'))
                    with gr.Row():
                        s['order'] = gr.Dropdown(list(ORDERS), value=defaults.order, label='Mapping priority',
                                                 elem_id=elem_id(f'omost_guide_{slot}_order'))
                        s['reuse'] = gr.Checkbox(defaults.reuse, label='Reuse image features',
                                                 elem_id=elem_id(f'omost_guide_{slot}_reuse'))
                slots.append(s)
        c['status'] = gr.HTML('', elem_id=elem_id('omost_guidance_status'))
        guidance_text = gr.Textbox('[]', visible=False, elem_id=elem_id('omost_guidance_json'))

    controls = [s[name] for s in slots for name in CONTROL_NAMES]
    images = [s['image'] for s in slots]
    for control in controls:
        control.input(guidance_from_controls, [guidance_text] + controls, [guidance_text], queue=False)
    for slot, image in enumerate(images):
        image.change(lambda *args, slot=slot: on_image(slot, *args), [guidance_text, image] + controls,
                     [guidance_text], queue=False)
    guidance_text.change(controls_from_guidance, [guidance_text] + controls, controls + [c['status']],
                         queue=False)
    targets = [s['target'] for s in slots]
    canvas_text.change(update_targets, [canvas_text] + targets, targets, queue=False)
    c.update(guidance=guidance_text, slots=slots)
    return GuidanceUI(inputs=[guidance_text] + images,
                      infotext_fields=[(guidance_text, 'Omost guidance')],
                      paste_field_names=['Omost guidance'], components=c)
