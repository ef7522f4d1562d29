"""Pasting infotext (PNG Info -> Send to txt2img, the paste button): restores the Omost fields."""

from __future__ import annotations

import json

from lib_omost.canvas import INFOTEXT_PREFIX, CanvasError, load_canvas
from omost_webui.generation import INFOTEXT_CANVAS, INFOTEXT_ENABLED
from omost_webui.guidance_step import INFOTEXT_GUIDANCE


def on_infotext_pasted(infotext: str, params: dict):
    """`script_callbacks.on_infotext_pasted`: the canvas (compressed, or plain JSON from earlier versions) back
    to editable Canvas code; Omost off for a full infotext written without it (so the pasted image is
    reproduced)."""
    if INFOTEXT_ENABLED not in params and 'Steps' in params:
        params[INFOTEXT_ENABLED] = 'False'
    elif params.get(INFOTEXT_ENABLED) not in (None, 'True', 'False', True, False):
        params[INFOTEXT_ENABLED] = 'True'  # the summary ('5 regions, strength 1.0') is written only when on
    if INFOTEXT_GUIDANCE not in params and 'Steps' in params:
        params[INFOTEXT_GUIDANCE] = '[]'  # an image made without guidance: no guide applies until one is set
    value = params.get(INFOTEXT_CANVAS)
    if not isinstance(value, str) or not value.lstrip().startswith(('{', '[', INFOTEXT_PREFIX)):
        return  # Canvas code (typed by hand) is kept as it is
    try:
        canvas = load_canvas(value).canvas
    except CanvasError:
        return  # keep the pasted text: the canvas box shows it and generation reports the problem
    try:
        code = canvas.to_code()
    except CanvasError:  # a ComfyUI rect-only canvas has no code form: its JSON
        params[INFOTEXT_CANVAS] = json.dumps(canvas.to_json(), ensure_ascii=False)
        return
    if load_canvas(code).canvas.to_json() == canvas.to_json():  # only when the code loses nothing
        params[INFOTEXT_CANVAS] = code
