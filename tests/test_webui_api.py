"""What an API client and a WebUI admin meet: script args in the forms people send, refusals answered without a
traceback, canvas warnings in the answer, path settings out of the API's reach, the API key out of every dump, and
Settings > Defaults restoring what generation reads."""

import json
import os
import sys

import pytest

from webui_helpers import SMALL, A1111Model, Rig, images_equal, omost, tiny_ldm_unet


@pytest.fixture(scope='module')
def rig():
    return Rig(A1111Model(tiny_ldm_unet()))


@pytest.fixture(scope='module')
def baseline(rig):
    return rig.generate(bare=True)[1]


@pytest.fixture(scope='module')
def with_omost(rig):
    return rig.generate(omost())[1]


@pytest.fixture(autouse=True)
def host_state():
    from modules import errors
    errors.reported.clear()
    yield
    assert errors.reported == []


# ---------------------------------------------------------------------------------------------------------------
# Script args


@pytest.mark.parametrize('off', ['false', 0])  # (the parser's own test has every form)
def test_every_form_of_off_leaves_the_image_untouched(rig, baseline, off):
    p, res = rig.generate([off, SMALL, ''])
    assert images_equal(res, baseline) and not hasattr(p, '_omost_job')
    assert 'Omost' not in res.infotexts[0]


@pytest.mark.parametrize('on', ['True', 1])
def test_every_form_of_on_renders_the_regions(rig, with_omost, on):
    p, res = rig.generate([on, SMALL, ''])
    assert images_equal(res, with_omost) and Rig.steps[0]['hooked'] == 7


@pytest.mark.parametrize('bad', ['yes', 'no', '', 2, None, {'enabled': True}, [True]])
def test_other_forms_are_refused_with_422_one_console_line_and_no_traceback(rig, capsys, bad):
    from modules.api.api import handle_exception
    Rig.steps = []
    with pytest.raises(Exception) as info:
        rig.generate([bad, SMALL, ''])
    status, body = handle_exception(info.value)  # what the host's API answers with this exception
    assert status == 422 and body['error'] == 'OmostInputError'
    assert body['detail'].startswith('Omost script arg 0 (enabled) must be true or false (also "true"/"false" '
                                     'or 0/1), got ') and body['detail'] == body['errors']
    assert Rig.steps == []  # refused before anything was sampled
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f'[Omost] {body["detail"]}']  # one line; handle_exception reported no traceback (host_state)


def test_bad_options_and_canvas_are_answered_without_a_traceback_too(rig):
    from modules.api.api import handle_exception
    for args in ([True, SMALL, {'regions': 'maybe'}], [True, 'canvas = Canvas()\nimport os', '']):
        with pytest.raises(Exception) as info:
            rig.generate(args)
        status, body = handle_exception(info.value)
        assert status == 422 and body['detail'] and 'Traceback' not in body['errors']


def test_a_refusal_reads_the_same_in_the_ui_error_box(rig):
    """The UI shows f'{type(e).__name__}: {e}' (modules/call_queue.py: wrap_gradio_call_no_job)."""
    with pytest.raises(Exception) as info:
        rig.generate(['yes', SMALL, ''])
    assert f'{type(info.value).__name__}: {info.value}'.startswith('OmostInputError: Omost script arg 0 (enabled)')


# ---------------------------------------------------------------------------------------------------------------
# Canvas warnings reach the caller


def test_ignored_statements_and_repairs_are_in_the_answer(rig, capsys):
    code = SMALL.replace("location='on the left'", "location='on the lefft'") + 'import os\nprint(canvas)\n'
    p, res = rig.generate([True, code, ''])
    notes = p.extra_generation_params['Omost notes']
    assert 'ignored' in notes and 'import' in notes and 'lefft' in notes
    assert f'Omost notes: {json.dumps(notes)}' in res.infotexts[0] or f'Omost notes: {notes}' in res.infotexts[0]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith('[Omost]')]
    assert len(printed) == notes.count('; ') + 1  # each note once in the console too
    p, res = rig.generate(omost())
    assert 'Omost notes' not in p.extra_generation_params and 'Omost notes' not in res.infotexts[0]


# ---------------------------------------------------------------------------------------------------------------
# Settings that are paths


@pytest.fixture
def omost_settings(tmp_path, monkeypatch):
    """The Omost settings registered in a WebUI whose data and models folders are under tmp_path."""
    from modules import paths, script_callbacks, shared
    Rig(None)
    monkeypatch.setattr(paths, 'data_path', str(tmp_path / 'data'))
    monkeypatch.setattr(paths, 'models_path', str(tmp_path / 'data' / 'models'))
    script_callbacks.ui_settings_callback()
    yield shared.opts
    for key in list(shared.opts.data_labels):
        if key.startswith('omost_'):
            shared.opts.data_labels.pop(key)
            shared.opts.data.pop(key, None)


@pytest.mark.parametrize('key', ['omost_presets_file', 'omost_models_dir'])
def test_path_settings_are_out_of_the_options_apis_reach(omost_settings, tmp_path, key):
    from omost_webui import settings
    outside = str(tmp_path / 'elsewhere' / ('presets.json' if key == 'omost_presets_file' else 'llms'))
    before = omost_settings.data[key]
    # A1111's POST /sdapi/v1/options: Options.set(..., is_api=True) skips restricted options
    assert omost_settings.data_labels[key].restrict_api is True
    assert not omost_settings.set(key, outside, is_api=True) and omost_settings.data[key] == before
    # Forge's calls Options.set without is_api (modules/sysinfo.py: set_config): the onchange refuses the folder
    assert not omost_settings.set(key, outside) and omost_settings.data[key] == before
    inside = str(tmp_path / 'data' / 'mine' / 'x')
    assert omost_settings.set(key, inside) and omost_settings.data[key] == inside  # the UI can still move it
    assert (settings.presets_path() if key == 'omost_presets_file' else settings.models_dir()) == inside


def test_the_presets_text_is_never_written_outside_the_data_folder(omost_settings, tmp_path, capsys):
    from omost_webui import settings
    outside = tmp_path / 'elsewhere' / 'presets.json'
    omost_settings.data['omost_presets_file'] = str(outside)  # e.g. an old config.json
    mine = settings.EXAMPLE_PRESETS.replace('my-anime', 'my-style')
    assert omost_settings.set('omost_presets_json', mine)
    assert not outside.exists() and not outside.parent.exists()
    default = tmp_path / 'data' / 'omost' / 'presets.json'
    assert default.read_text() == mine and settings.presets_path() == str(default)
    assert 'outside the WebUI\'s data and models folders' in capsys.readouterr().out
    link = tmp_path / 'data' / 'link'
    os.symlink(tmp_path / 'elsewhere', link)  # a symlink inside does not lead outside
    omost_settings.data['omost_presets_file'] = str(link / 'presets.json')
    assert settings.presets_path() == str(default)


def test_a_models_folder_from_the_command_line_stays_allowed(omost_settings, tmp_path):
    from modules import shared
    from omost_webui import settings
    shared.cmd_opts.omost_models_dir = str(tmp_path / 'srv')
    try:
        assert omost_settings.set('omost_models_dir', str(tmp_path / 'srv' / 'other'))
        assert settings.current()['models_dir'] == str(tmp_path / 'srv' / 'other')
    finally:
        del shared.cmd_opts.omost_models_dir


def test_the_api_key_flag_leaves_cmd_flags_and_argv(monkeypatch):
    from modules import shared
    from omost_webui import settings
    monkeypatch.setattr(sys, 'argv', ['launch.py', '--api', '--omost-api-key', 'sk-123', '--omost-api-key=sk-123'])
    monkeypatch.setattr(shared, 'cmd_opts', type(shared.cmd_opts)(omost_api_key='sk-123', api=True))
    monkeypatch.delenv('OMOST_API_KEY', raising=False)
    settings.hide_api_key()
    assert 'sk-123' not in json.dumps(vars(shared.cmd_opts)) and 'sk-123' not in ' '.join(sys.argv)
    assert sys.argv == ['launch.py', '--api', '--omost-api-key', '<hidden>', '--omost-api-key=<hidden>']
    assert os.environ['OMOST_API_KEY'] == 'sk-123'
    settings.hide_api_key()  # a script reload: nothing left to move, the key is kept
    assert os.environ['OMOST_API_KEY'] == 'sk-123'


# ---------------------------------------------------------------------------------------------------------------
# Settings > Defaults (ui-config.json)


def _build_tab(script_module, tab='txt2img'):
    """The tab as the host builds it: the script's ui() inside the tab's Blocks, the returned controls marked
    with their script (modules/scripts.py: create_script_ui_inner)."""
    import gradio as gr
    script = script_module.Script()
    script.is_img2img = tab == 'img2img'
    with gr.Blocks() as block:
        controls = script.ui(script.is_img2img)
    for control in controls:
        control.custom_script_source = 'omost.py'
    return block, controls


def _page_load(block, component):
    """What a page load gives `component` whose value is a function (gradio runs it on every load, after the
    host's ui_loadsave set the saved defaults): the load event the tab's Blocks attached for it."""
    fns = block.fns.values() if isinstance(block.fns, dict) else block.fns  # gradio 4.40 / 3.41
    loads = [f for f in fns if list(f.outputs) == [component] and not f.inputs]
    assert loads, 'no page-load event for the component'
    values = {f.fn() for f in loads}
    assert len(values) == 1
    return values.pop()


def test_saved_defaults_are_what_generation_reads(omost_settings):
    """Settings > Defaults > Apply after the user moved Region strength to 0.8 in the browser, then a restart: the
    slider says 0.8 and so does the JSON the script reads, without touching the slider."""
    from modules.ui_loadsave import UiLoadsave
    script_module = Rig._script_module
    first = UiLoadsave({})  # first start: every tracked default is recorded (the ui-config.json dump)
    block, controls = _build_tab(script_module)
    options = controls[2]
    first.add_block(block, 'txt2img')
    tracked = first.component_mapping
    strength_key = 'txt2img/Region strength/value'
    assert strength_key in tracked
    assert not any(c is options for c in tracked.values())  # the JSON is never saved apart from its controls
    in_browser = {key: (0.8 if key == strength_key else component.value) for key, component in tracked.items()}
    saved = first.ui_apply(*in_browser.values())
    restarted = UiLoadsave(saved)
    block, controls = _build_tab(script_module)
    options = controls[2]
    restarted.add_block(block, 'txt2img')  # after ui() returned, as modules/ui.py: create_ui does
    assert restarted.component_mapping[strength_key].value == 0.8
    loaded = json.loads(_page_load(block, options))
    assert loaded['strength'] == 0.8 and loaded['end'] == 1.0
    _, fresh = _build_tab(script_module)  # the API's default args (a fresh ui(), no saved defaults)
    assert json.loads(fresh[2].value)['strength'] == 1.0


def test_a_hand_written_ui_config_sets_what_generation_reads(omost_settings):
    """A ui-config.json edited by hand (or saved before the JSON followed the controls) names only some controls."""
    from modules.ui_loadsave import UiLoadsave
    loadsave = UiLoadsave({'txt2img/To step (fraction)/value': 0.6, 'txt2img/Sketch blur/value': 12,
                           'txt2img/Regional attention/value': False})
    block, controls = _build_tab(Rig._script_module)
    loadsave.add_block(block, 'txt2img')
    loaded = json.loads(_page_load(block, controls[2]))
    assert (loaded['end'], loaded['sketch_blur'], loaded['regions'], loaded['strength']) == (0.6, 12, False, 1.0)


def test_the_api_key_box_is_not_saved_to_ui_config(omost_settings):
    from modules.ui_loadsave import UiLoadsave
    loadsave = UiLoadsave({})
    block, _ = _build_tab(Rig._script_module)
    loadsave.add_block(block, 'txt2img')
    tracked = list(loadsave.component_mapping)  # what Apply writes (UiLoadsave.ui_apply)
    assert any('Server base URL' in key for key in tracked) and any('Region strength' in key for key in tracked)
    assert not any('API key' in key for key in tracked + list(loadsave.ui_settings))  # nor the defaults dump
