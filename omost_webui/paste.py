"""Pasting infotext (PNG Info -> Send to txt2img, the paste button): restores the Omost fields."""

from __future__ import annotations

from lib_omost.canvas import CanvasError, load_canvas
from omost_webui.generation import INFOTEXT_CANVAS, INFOTEXT_ENABLED
from omost_webui.guidance_step import INFOTEXT_GUIDANCE


def on_infotext_pasted(infotext: str, params: dict):
    """`script_callbacks.on_infotext_pasted`: the canvas JSON back to editable Canvas code; Omost off for a
    full infotext written without it (so the pasted image is reproduced)."""
    if INFOTEXT_ENABLED not in params and 'Steps' in params:
        params[INFOTEXT_ENABLED] = 'False'
    if INFOTEXT_GUIDANCE not in params and 'Steps' in params:
        params[INFOTEXT_GUIDANCE] = '[]'  # an image made without guidance: no guide applies until one is set
    value = params.get(INFOTEXT_CANVAS)
    if not isinstance(value, str) or not value.lstrip().startswith(('{', '[')):
        return
    try:
        canvas = load_canvas(value).canvas
        code = canvas.to_code()
        if load_canvas(code).canvas.to_json() == canvas.to_json():  # only when the code loses nothing
            params[INFOTEXT_CANVAS] = code
    except CanvasError:
        pass  # keep the pasted text: the canvas box shows it and generation reports the problem
