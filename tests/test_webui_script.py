"""The script's wiring outside sampling: ui() for the tabs and for API defaults, settings, preload flags,
install.py, and cleanup from the global callbacks."""

import argparse
import importlib.util
import os
import sys
import types

import pytest

from webui_helpers import ROOT, SMALL, A1111Model, Rig, forward_attributes, tiny_ldm_unet


def load_file(name):
    spec = importlib.util.spec_from_file_location(f'omost_{name}_under_test', os.path.join(ROOT, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def script_module():
    Rig(None)  # loads scripts/omost.py once, as the WebUI does
    return Rig._script_module


def test_ui_is_built_per_tab_and_again_for_api_defaults(script_module):
    import gradio as gr
    ids = []
    for is_img2img in (False, True, False):  # txt2img, img2img, then the API's default-args pass
        script = script_module.Script()
        script.is_img2img = is_img2img
        assert script.title() == 'Omost' and script.show(is_img2img) is script_module.scripts.AlwaysVisible
        with gr.Blocks():
            inputs = script.ui(is_img2img)
        assert len(inputs) == 4 + 3 and inputs[0].value is False  # + guidance JSON and 3 guide image slots
        assert isinstance(inputs[4], gr.Image) and inputs[3].value == '[]'
        names = ['Omost', 'Omost canvas', 'Omost options', 'Omost guidance']
        assert [key for _, key in script.infotext_fields] == names
        assert script.paste_field_names == names
        ids.append(inputs[1].elem_id)
    assert ids[0] != ids[1] and ids[0] == ids[2]  # unique per tab, stable across rebuilds


def test_preview_follows_the_tabs_image_size_sliders(script_module):
    import gradio as gr
    script = script_module.Script()
    script.is_img2img = False
    with gr.Blocks() as demo:
        width = gr.Slider(64, 2048, 896, elem_id='txt2img_width')
        height = gr.Slider(64, 2048, 1152, elem_id='txt2img_height')
        other = gr.Slider(1, 150, 20, elem_id='txt2img_steps')
        for component in (width, height, other):
            script.after_component(component, elem_id=component.elem_id)
        inputs = script.ui(False)
    canvas_id = inputs[1]._id
    deps = demo.config['dependencies']
    # the canvas box and both sliders re-render the region editor with the canvas text and the image size
    following = [d for d in deps if d['inputs'][-3:] == [canvas_id, width._id, height._id]]
    triggers = {target[0] for d in following for target in d['targets']}
    assert {canvas_id, width._id, height._id} <= triggers
    assert not any(other._id in d['inputs'] for d in demo.config['dependencies'])


def test_settings_section_with_command_line_defaults(script_module):
    from modules import script_callbacks, shared
    from omost_webui import settings
    parser = argparse.ArgumentParser()
    load_file('preload').preload(parser)
    args = parser.parse_args(['--omost-server-url', 'http://127.0.0.1:9/v1', '--omost-model', 'omost-llama',
                              '--omost-models-dir', '/srv/llms'])
    try:
        vars(shared.cmd_opts).update(vars(args))
        script_callbacks.ui_settings_callback()
        labels = {k: v for k, v in shared.opts.data_labels.items() if k.startswith('omost_')}
        assert {'omost_models_dir', 'omost_backend', 'omost_server_url', 'omost_server_model', 'omost_keep_loaded',
                'omost_presets_file', 'omost_system_prompt', 'omost_cache_mb', 'omost_llm_reuse_prompt',
                'omost_llm_draft'} <= set(labels)
        assert all(info.section == ('omost', 'Omost') for info in labels.values())
        assert 'omost_api_key' not in labels  # GET /sdapi/v1/options would show it
        current = settings.current()
        assert current['server_url'] == 'http://127.0.0.1:9/v1' and current['server_model'] == 'omost-llama'
        assert current['models_dir'] == '/srv/llms' and current['backend'] == 'server'
        assert current['presets'] and all(isinstance(name, str) for name in current['presets'])
        shared.opts.omost_cache_mb = 0
        assert settings.current()['data_dir'] == ''
        assert (current['reuse_prompt'], current['draft']) == (True, 'auto')  # the LLM's conversation cache, drafts
        shared.opts.omost_llm_reuse_prompt, shared.opts.omost_llm_draft = False, 'off'
        assert (settings.current()['reuse_prompt'], settings.current()['draft']) == (False, 'off')
        shared.opts.omost_llm_draft = 'sometimes'  # an unknown value from an old config
        assert settings.current()['draft'] == 'auto'
    finally:
        for key in list(shared.opts.data_labels):
            if key.startswith('omost_'):
                shared.opts.data_labels.pop(key)
                shared.opts.data.pop(key, None)
        for key in vars(args):
            delattr(shared.cmd_opts, key)
    from modules import paths
    assert settings.default_models_dir() == os.path.join(paths.models_path, 'omost')


def test_tag_presets_are_edited_in_the_settings_and_kept_in_the_data_folder(script_module, tmp_path, monkeypatch):
    from modules import paths, script_callbacks, shared
    from omost_webui import settings
    monkeypatch.setattr(paths, 'data_path', str(tmp_path))
    path = tmp_path / 'omost' / 'presets.json'
    script_callbacks.ui_settings_callback()
    try:
        shared.opts.omost_presets_file = str(path)
        mine = settings.EXAMPLE_PRESETS.replace('my-anime', 'my-style')
        assert shared.opts.set('omost_presets_json', mine)
        assert path.read_text() == mine and 'my-style' in settings.current()['presets']
        assert 'pony' in settings.current()['presets']  # the built-in ones stay
        assert not shared.opts.set('omost_presets_json', '{"format": "omost-presets", "version": 1, "presets": 5}')
        assert path.read_text() == mine and shared.opts.omost_presets_json == mine  # refused: nothing changed
    finally:
        for key in list(shared.opts.data_labels):
            if key.startswith('omost_'):
                shared.opts.data_labels.pop(key)
                shared.opts.data.pop(key, None)


def test_install_only_adds_what_is_missing_and_never_the_pinned_packages(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, 'launch', types.SimpleNamespace(
        run_pip=lambda command, desc=None: calls.append(command)))
    install = load_file('install')
    assert calls == []  # imported, not run as __main__: installs nothing
    for pinned in ('torch', 'gradio', 'transformers', 'bitsandbytes'):
        assert pinned not in install.REQUIREMENTS
    install.main()
    assert calls == []  # everything is present in this environment
    monkeypatch.setitem(install.REQUIREMENTS, 'omost-surely-absent-package', 'omost-surely-absent-package>=1')
    install.main()
    assert calls == ['install "omost-surely-absent-package>=1"']


def test_model_load_and_script_unload_remove_stale_hooks(script_module):
    from lib_omost.attention import RegionalAttention
    from modules import script_callbacks
    from omost_webui.hosts.a1111 import A1111RegionalHooks
    unet = tiny_ldm_unet()
    for fire in (lambda: script_callbacks.model_loaded_callback(A1111Model(unet)),
                 script_callbacks.script_unloaded_callback):
        A1111RegionalHooks(RegionalAttention([(0, 90, 0, 90)], [0] * 77, (8, 8))).install(unet)
        assert len(forward_attributes(unet)) == 7
        fire()
        assert forward_attributes(unet) == []


def test_disabled_process_leaves_p_alone(script_module):
    from omost_webui import generation
    rig = Rig(A1111Model(tiny_ldm_unet()))
    p = rig.p([False, SMALL, '{"bogus": 1}'])
    before = dict(vars(p))
    generation.before_process(p, False, SMALL, '')
    generation.process(p, False, SMALL, '{"bogus": 1}')
    assert vars(p) == before  # not even the bad options are looked at


A1111_PYTHON = os.path.join(ROOT, '.venv-a1111', 'bin', 'python')


@pytest.mark.skipif(not os.path.exists(A1111_PYTHON), reason='the A1111-like venv (gradio 3.41.2) is not set up')
def test_ui_under_gradio_3_41(tmp_path):
    """A1111 pins gradio 3.41.2: the same script builds its accordion there (run in the A1111-like venv)."""
    import subprocess
    code = (
        "import sys; sys.path[:0] = [%r, %r]\n"
        "import gradio as gr, webui_helpers as wh\n"
        "m = wh.load_script()\n"
        "for tab in (False, True, False):\n"
        "    s = m.Script(); s.is_img2img = tab\n"
        "    with gr.Blocks():\n"
        "        inputs = s.ui(tab)\n"
        "    print(gr.__version__, [type(i).__name__ for i in inputs], inputs[1].elem_id)\n"
    ) % (os.path.join(ROOT, 'tests'), ROOT)
    out = subprocess.run([A1111_PYTHON, '-c', code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith('3.41.2 ') for line in lines)
    assert 'script_txt2img_omost' in lines[0] and 'script_img2img_omost' in lines[1] and lines[0] == lines[2]
