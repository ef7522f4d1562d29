"""A standalone app with the Omost UI in a txt2img and an img2img "tab", for the browser tests.

Runs under either gradio (4.40 in .venv, 3.41 in .venv-a1111):
    python tests/ui_app.py --port 7861 --server-url http://127.0.0.1:8080/v1 [--ui-config FILE]
    python tests/ui_app.py --check      # build only; print a JSON summary of ids and script inputs
Built the way both hosts build it (modules/ui.py: create_ui): each tab its own gr.Blocks, rendered into the app,
then the saved UI defaults (`--ui-config`, a ui-config.json) applied to it by the stub of the hosts' UiLoadsave.
The page does not load javascript/omost.js by itself (the WebUI does); the tests inject it with playwright.
An "Echo" button shows, as JSON, exactly the values the script would receive (ui.inputs); "Paste" sets them
the way the WebUI pastes infotext.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gradio as gr  # noqa: E402

from omost_webui.ui import build_ui  # noqa: E402


class InputAccordion:
    """Minimal stand-in for the WebUI's modules.ui_components.InputAccordion: entering it opens an Accordion and
    gives the checkbox whose bool value is the script's `enabled` argument."""

    def __init__(self, value, label='', elem_id=None, **kwargs):
        self.checkbox = gr.Checkbox(value, label=f'Enable {label}', elem_id=elem_id)
        self.accordion = gr.Accordion(label, open=True, elem_id=f'{elem_id}-accordion' if elem_id else None)

    def __enter__(self):
        self.accordion.__enter__()
        return self.checkbox

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)


def _ui_loadsave():
    """tests/webui_stubs/modules/ui_loadsave.py (the hosts' UiLoadsave), loaded on its own."""
    import importlib.util
    path = os.path.join(ROOT, 'tests', 'webui_stubs', 'modules', 'ui_loadsave.py')
    spec = importlib.util.spec_from_file_location('omost_test_ui_loadsave', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UiLoadsave


def build_app(server_url: str, ui_config: dict | None = None):
    settings = {'server_url': server_url, 'server_model': '', 'api_key': '', 'backend': 'server',
                'local_model': '', 'models_dir': '', 'keep_loaded': True, 'system_prompt': '', 'data_dir': '',
                'presets': ['none']}
    with open(os.path.join(ROOT, 'style.css'), encoding='utf-8') as f:
        css = f.read()
    uis, tabs = {}, {}
    for tab in ('txt2img', 'img2img'):
        with gr.Blocks(analytics_enabled=False) as tabs[tab]:  # modules/ui.py: create_ui, txt2img_interface
            with gr.Column(elem_id=f'{tab}_column'):
                with gr.Row():  # the tab's own image size, which the preview follows
                    width = gr.Slider(64, 2048, 1024, step=8, label='Width', elem_id=f'{tab}_width')
                    height = gr.Slider(64, 2048, 1024, step=8, label='Height', elem_id=f'{tab}_height')
                uis[tab] = build_ui(tab == 'img2img', lambda name, tab=tab: f'{tab}_{name}', InputAccordion, settings,
                                    image_size=(width, height))
                for control in uis[tab].inputs:  # modules/scripts.py: ScriptRunner.create_script_ui_inner
                    control.custom_script_source = 'omost.py'
                echo = gr.Button('Echo script args', elem_id=f'{tab}_echo')
                echoed = gr.Textbox(label='Script args', lines=3, elem_id=f'{tab}_echoed')
                echo.click(lambda *args: json.dumps([a if not hasattr(a, 'size') else 'image' for a in args]),
                           uis[tab].inputs, [echoed])
                # Like the WebUI's infotext paste: set the script's inputs from [enabled, canvas, options] JSON.
                paste = gr.Button('Paste script args', elem_id=f'{tab}_paste')
                pasted = gr.Textbox(label='Args to paste', lines=3, elem_id=f'{tab}_pasted')
                paste.click(lambda text: tuple(json.loads(text)), [pasted], uis[tab].inputs[:3])
    loadsave = _ui_loadsave()(ui_config or {})
    with gr.Blocks(css=css, analytics_enabled=False) as demo:
        for tab, block in tabs.items():
            block.render()
            loadsave.add_block(block, tab)  # after the tab is in the app, as modules/ui.py: create_ui does
    return demo, uis


def summary(demo, uis) -> dict:
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, 'elem_id', None)]
    return {'gradio': gr.__version__, 'elem_ids': ids,
            'inputs': {tab: [type(c).__name__ for c in ui.inputs] for tab, ui in uis.items()},
            'infotext': [key for _, key in uis['txt2img'].infotext_fields],
            'paste': uis['txt2img'].paste_field_names}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, default=7861)
    parser.add_argument('--server-url', default='http://127.0.0.1:8080/v1')
    parser.add_argument('--ui-config', help="saved UI defaults (the WebUI's ui-config.json)")
    parser.add_argument('--check', action='store_true')
    args = parser.parse_args()
    ui_config = None
    if args.ui_config:
        with open(args.ui_config, encoding='utf-8') as f:
            ui_config = json.load(f)
    demo, uis = build_app(args.server_url, ui_config)
    if args.check:
        print(json.dumps(summary(demo, uis)))
        return
    demo.queue(64)  # webui.py: shared.demo.queue(64), under gradio 3 and 4 alike
    demo.launch(server_name='127.0.0.1', server_port=args.port, show_error=True, quiet=True)


if __name__ == '__main__':
    main()
