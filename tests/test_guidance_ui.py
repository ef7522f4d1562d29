"""The image guidance controls' handlers (omost_webui.ui_guidance), without a browser, and the accordion built
on this venv's gradio."""

import json

import gradio as gr

from lib_omost.guidance import GuideParams
from omost_webui import ui_guidance as U
from webui_helpers import SMALL


def _values(**slot0):
    """Control values of every slot (defaults, slot 0 changed by `slot0`)."""
    values = []
    for slot in range(U.SLOTS):
        entry = {'target': 'canvas', **{k: getattr(GuideParams(), k) for k in U.PARAM_NAMES}}
        if slot == 0:
            entry.update(slot0)
        values += [entry[name] for name in U.CONTROL_NAMES]
    return values


def test_controls_write_one_entry_per_slot():
    text = U.guidance_from_controls('[]', *_values(target='2', method='linear', linear_end=0.9))
    entries = json.loads(text)
    assert [e['slot'] for e in entries] == list(range(U.SLOTS))
    assert entries[0]['target'] == 2 and entries[0]['method'] == 'linear' and entries[0]['linear_end'] == 0.9
    assert entries[1]['target'] == 'canvas' and entries[1]['max_guidance'] == 0.5


def test_a_pasted_hash_stays_until_an_image_is_uploaded_into_its_slot():
    pasted = json.dumps([{'target': 1, 'image_hash': 'abc123abc123', 'clustered': 0.2}])
    kept = json.loads(U.guidance_from_controls(pasted, *_values(target='1', clustered=0.2)))
    assert kept[0]['image_hash'] == 'abc123abc123'
    cleared = json.loads(U.on_image(0, pasted, object(), *_values(target='1', clustered=0.2)))
    assert 'image_hash' not in cleared[0] and cleared[0]['clustered'] == 0.2
    untouched = json.loads(U.on_image(0, pasted, None, *_values(target='1')))  # image removed: the hash stays
    assert untouched[0]['image_hash'] == 'abc123abc123'


def test_a_bad_pasted_guidance_says_why():
    updates = U.controls_from_guidance(json.dumps([{'target': 1, 'max_guidance': 7}]), *_values())
    assert 'Omost guide image 1: &#x27;max_guidance&#x27; must be between 0.0 and 1.0' in updates[-1]
    assert all(u == gr.update() for u in updates[:-1])


def test_targets_follow_the_canvas():
    assert U.target_choices(SMALL) == ['off', 'canvas', 'background', '1', '2']
    assert U.target_choices('not a canvas (') == ['off', 'canvas', 'background']
    updates = U.update_targets('', '2', 'canvas', 'off')
    assert '2' in updates[0]['choices']  # a pasted target is kept while the canvas is empty


def test_the_accordion_builds_with_its_script_values():
    with gr.Blocks():
        canvas = gr.Code('', language='python')
        ui = U.build_guidance_ui(lambda name: name, canvas)
    assert len(ui.inputs) == 1 + U.SLOTS and ui.inputs[0].value == '[]'
    assert all(isinstance(i, gr.Image) for i in ui.inputs[1:])
    assert ui.paste_field_names == ['Omost guidance']
