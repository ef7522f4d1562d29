"""What an API client and a WebUI admin meet: script args in the forms people send, refusals answered without a
traceback, canvas warnings in the answer, path settings out of the API's reach, the API key out of every dump, and
Settings > Defaults restoring what generation reads."""

import json
import os
import sys

import pytest

from api_host import client, host_app, post
from webui_helpers import SMALL, Rig, images_equal, omost


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
# Script args as an object of named args: the gate in front of the host's txt2img/img2img endpoints


@pytest.fixture(params=['a1111', 'forge'])
def host(request, rig):
    """(client, jobs): the host's API over `rig` as A1111 or Forge set it up, with the extension's gate."""
    app, jobs = host_app(rig, forge=request.param == 'forge')
    test_client = client(app)
    test_client.host_name = request.param
    return test_client, jobs


@pytest.mark.parametrize('forge', [False, True], ids=['a1111', 'forge'])
def test_without_the_gate_an_object_of_args_is_a_host_500(rig, forge):
    """What issue 12 item 14 reported: the host's init_script_args indexes the object (KeyError: 0)."""
    from modules import errors
    app, jobs = host_app(rig, forge, started=False)
    assert post(client(app), {'enabled': True, 'canvas': SMALL}).status_code == 500 and jobs == []
    if not forge:  # A1111 reports it with a traceback (Forge's server logs it)
        assert 'KeyError' in errors.reported[0][1]
        errors.reported.clear()


def test_named_args_render_like_the_list(host, with_omost, baseline):
    test_client, jobs = host
    for route, key, args in [('txt2img', 'Omost', {'enabled': True, 'canvas': SMALL, 'options': {}, 'guidance': []}),
                             ('img2img', 'omost', {'canvas': SMALL, 'enabled': 'true'}),
                             ('txt2img', 'OMOST', {'enabled': 1, 'canvas': SMALL, 'guidance': []}),  # a gap
                             ('txt2img', 'Omost', [True, SMALL])]:  # a list as before
        response = post(test_client, args, route, key)
        assert response.status_code == 200, response.text
        assert images_equal(jobs[-1][1], with_omost) and 'Omost: ' in response.json()['info']
    weaker = post(test_client, {'options': {'strength': 0.5}, 'canvas': SMALL, 'enabled': True}).json()
    assert weaker == post(test_client, [True, SMALL, {'strength': 0.5}]).json() and 'strength 0.5' in weaker['info']
    assert images_equal(jobs[-1][1], jobs[-2][1]) and not images_equal(jobs[-1][1], with_omost)
    response = post(test_client, {'enabled': False, 'canvas': SMALL})
    assert response.status_code == 200 and images_equal(jobs[-1][1], baseline)
    assert 'Omost' not in response.json()['info']


@pytest.mark.parametrize('args, detail', [
    ('true', ('Omost args must be a list [enabled, canvas, options, guidance] (options and guidance optional) or '
              'an object with those names, e.g. {"enabled": true, "canvas": "..."}; got a string')),
    (5, 'Omost args must be a list [enabled, canvas, options, guidance]'),
    (None, 'Omost args must be a list'),
    ({'canvas': SMALL}, 'Omost args by name need "enabled" (true or false)'),
    ({'enabled': True, 'canvass': SMALL},
     'unknown Omost arg name(s) canvass; known: enabled, canvas, options, guidance'),
])
def test_other_shapes_are_refused_with_422_and_one_console_line(host, capsys, args, detail):
    test_client, jobs = host
    response = post(test_client, args)
    assert response.status_code == 422 and jobs == []  # nothing was queued
    body = response.json()
    # the host's answer to an HTTPException: A1111's handle_exception names it, Forge's (FastAPI's) has the detail
    assert body.get('error') == {'a1111': 'OmostInputError', 'forge': None}[test_client.host_name]
    assert body['detail'].startswith(detail)
    assert capsys.readouterr().out.strip().splitlines() == [f'[Omost] {body["detail"]}']  # (no report: host_state)


@pytest.mark.parametrize('entry', [[True, SMALL], 'args'])
def test_an_omost_entry_that_is_not_an_object_is_refused(host, entry):
    """The host would ignore a list there (Omost silently off) and fail on a string."""
    test_client, jobs = host
    response = test_client.post('/sdapi/v1/txt2img', json={'alwayson_scripts': {'Omost': entry}})
    assert response.status_code == 422 and jobs == []
    assert response.json()['detail'].startswith('alwayson_scripts.Omost must be an object {"args": ...}')


def test_bad_named_values_are_refused_by_the_script_as_before(host):
    test_client, jobs = host
    response = post(test_client, {'enabled': 'yes', 'canvas': SMALL})
    assert response.status_code == 422 and jobs == []  # the job raised: the host answers our error
    assert response.json()['detail'].startswith('Omost script arg 0 (enabled)')


A1111_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.venv-a1111', 'bin',
                            'python')


@pytest.mark.skipif(not os.path.exists(A1111_PYTHON), reason='the A1111-like venv (fastapi 0.94) is not set up')
def test_the_gate_under_fastapi_0_94(tmp_path):
    """The same host shapes under A1111's fastapi 0.94 and pydantic 1 (run in the A1111-like venv)."""
    import subprocess
    tests = os.path.dirname(os.path.abspath(__file__))
    code = f'import sys; sys.path[:0] = [{tests!r}, {os.path.dirname(tests)!r}]\nimport api_host; api_host.main()'
    out = subprocess.run([A1111_PYTHON, '-c', code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    answers = {'list': [200, True], 'named': [200, True], 'named off': [200, False],
               'string': [422, 'OmostInputError'], 'no enabled': [422, 'OmostInputError'], 'no gate, named': 500,
               'no rights, string': [401, 'HTTPException'], 'no rights, named': [401, 'HTTPException']}
    forge = dict(answers, string=[422, None], **{'no enabled': [422, None], 'no rights, string': [401, None],
                                                 'no rights, named': [401, None]})  # FastAPI's answer: {"detail": ...}
    assert result == {'fastapi': '0.94.0', 'a1111': answers, 'forge': forge}


def test_positional_args_and_rewrite_scripts():
    from omost_webui.api_args import positional_args, rewrite_scripts
    assert positional_args([True]) == [True]
    assert positional_args({'guidance': [], 'enabled': True}) == [True, None, None, []]
    assert positional_args({'enabled': False}) == [False]
    for untouched in [None, [], 'alwayson_scripts', {}, {'Omost': {'args': [True, 'x']}}, {'Omost': {}},
                      {'ControlNet': {'args': {'enabled': True}}, 'omost': {'args': []}}, {1: 'x'}]:
        before = json.dumps(untouched, sort_keys=True)
        assert rewrite_scripts(untouched) is False and json.dumps(untouched, sort_keys=True) == before
    scripts = {'ControlNet': {'args': {'x': 1}}, 'oMost': {'args': {'enabled': 1}},
               'Omost': {'args': {'enabled': True, 'options': {'strength': 0.5}}}}
    assert rewrite_scripts(scripts) is True
    assert scripts == {'ControlNet': {'args': {'x': 1}}, 'oMost': {'args': [1]},
                       'Omost': {'args': [True, None, {'strength': 0.5}]}}


def test_the_checks_are_only_in_the_three_endpoints(rig):
    """The app's middleware stack, every route's ASGI app and every other endpoint are as the host left them; a
    second app_started (a UI reload on the same app) checks nothing twice."""
    from omost_webui.api_args import install
    app, _ = host_app(rig, started=False)
    app.add_api_route('/sdapi/v1/options', lambda: {'ok': 1}, methods=['GET'])
    client(app).get('/sdapi/v1/options')  # the stack is built on the first request, as after gradio's launch
    stack, middleware = app.middleware_stack, list(app.user_middleware)
    def endpoint(route):  # (the app's own /docs and /openapi.json routes have none)
        return getattr(getattr(route, 'dependant', None), 'call', None)
    before = {(route.path, tuple(route.methods)): (route.app, endpoint(route)) for route in app.router.routes}
    assert install(app) == 3 and install(app) == 3
    assert app.middleware_stack is stack and app.user_middleware == middleware
    for route in app.router.routes:
        asgi, call = before[(route.path, tuple(route.methods))]
        assert route.app is asgi
        if 'POST' in route.methods:
            assert endpoint(route).omost_checked is call  # wrapped once
        else:
            assert endpoint(route) is call
    assert install(type('NoApi', (), {})()) == 0  # a WebUI without --api


# ---------------------------------------------------------------------------------------------------------------
# Clients without rights (--api-auth): the host answers them, as without the extension


@pytest.fixture
def api_auth(monkeypatch):
    """`--api-auth alice:secret,bob:pw` (modules/api/api.py: Api.__init__ reads shared.cmd_opts.api_auth)."""
    from modules import shared
    monkeypatch.setattr(shared.cmd_opts, 'api_auth', 'alice:secret,bob:pw', raising=False)
    return ('alice', 'secret')


BAD_REQUESTS = {  # what would get our 422 (or a rewrite) from a client with rights
    'string args': {'prompt': 'a photo', 'alwayson_scripts': {'Omost': {'args': 'true'}}},
    'named args': {'prompt': 'a photo', 'alwayson_scripts': {'omost': {'args': {'enabled': True, 'canvas': 'x'}}}},
    'entry a string': {'alwayson_scripts': {'Omost': 'args'}},
    'unknown name': {'alwayson_scripts': {'OMOST': {'args': {'enabled': True, 'canvass': 1}}}},
}


@pytest.mark.parametrize('forge', [False, True], ids=['a1111', 'forge'])
@pytest.mark.parametrize('credentials', [None, ('alice', 'wrong'), ('mallory', 'secret'), 'Bearer x'],
                         ids=['none', 'wrong password', 'unknown user', 'not basic'])
def test_a_client_without_rights_gets_the_hosts_401_for_anything(rig, capsys, api_auth, forge, credentials):
    from modules import shared
    gated, jobs = host_app(rig, forge)
    bare, _ = host_app(rig, forge, started=False)  # the host without the extension's checks
    if isinstance(credentials, tuple):
        kwargs = {'auth': credentials}
    else:
        kwargs = {'headers': {'Authorization': credentials}} if credentials else {}
    before = dict(shared.opts.data)
    for name, request in [*BAD_REQUESTS.items(), ('options', {'omost_vision_url_768': 'http://10.0.0.1/x'})]:
        route = '/sdapi/v1/options' if name == 'options' else '/sdapi/v1/txt2img'
        answer = client(gated).post(route, json=request, **kwargs)
        unchecked = client(bare).post(route, json=request, **kwargs)
        assert answer.status_code == 401, (name, answer.text)
        assert (answer.json(), answer.headers.get('www-authenticate')) == \
            (unchecked.json(), unchecked.headers.get('www-authenticate')), name
    assert jobs == [] and shared.opts.data == before
    assert '[Omost]' not in capsys.readouterr().out  # nothing of ours looked at the request


@pytest.mark.parametrize('forge', [False, True], ids=['a1111', 'forge'])
def test_a_client_with_rights_gets_the_checks(rig, capsys, api_auth, forge, with_omost):
    gated, jobs = host_app(rig, forge)
    for name, request in BAD_REQUESTS.items():
        answer = client(gated).post('/sdapi/v1/txt2img', json=request, auth=api_auth)
        assert answer.status_code == 422 and jobs == [], (name, answer.text)
    assert len(capsys.readouterr().out.strip().splitlines()) == len(BAD_REQUESTS)
    answer = client(gated).post('/sdapi/v1/txt2img', auth=('bob', 'pw'), json={
        'prompt': 'a photo', 'alwayson_scripts': {'omost': {'args': {'enabled': True, 'canvas': SMALL}}}})
    assert answer.status_code == 200 and images_equal(jobs[-1][1], with_omost)


# ---------------------------------------------------------------------------------------------------------------
# Settings that make the server fetch or read something: out of both options APIs


@pytest.mark.parametrize('forge', [False, True], ids=['a1111', 'forge'])
def test_url_and_path_settings_are_out_of_both_options_apis(rig, omost_settings, capsys, forge):
    from omost_webui import settings
    assert set(settings.URL_SETTINGS) == {k for k in omost_settings.data_labels if 'url' in k}
    restricted = {key: ('http://10.0.0.1:8/x' if key in settings.URL_SETTINGS
                        else str(settings.allowed_roots()[0]) + '/webui-user.sh') for key in settings.API_RESTRICTED}
    before = {key: omost_settings.data[key] for key in restricted}
    request = dict(restricted, omost_cache_mb=5, omost_system_prompt='be brief')
    app, _ = host_app(rig, forge)
    assert client(app).post('/sdapi/v1/options', json=request).status_code == 200
    assert {key: omost_settings.data[key] for key in restricted} == before
    assert (omost_settings.data['omost_cache_mb'], omost_settings.data['omost_system_prompt']) == (5, 'be brief')
    assert capsys.readouterr().out.splitlines() == [
        f'[Omost] the options API cannot change {", ".join(settings.API_RESTRICTED)} (Settings > Omost can); ignored']
    for key in settings.URL_SETTINGS:  # A1111's options API and both hosts' override_settings skip them too
        assert omost_settings.data_labels[key].restrict_api is True
        assert not omost_settings.set(key, 'http://10.0.0.1:8/y', is_api=True)
        assert omost_settings.set(key, 'https://hf-mirror.com/x')  # Settings > Omost still can
    if forge:  # what the checks stop: Forge's own options API sets them (modules/sysinfo.py: set_config)
        bare, _ = host_app(rig, forge, started=False)
        assert client(bare).post('/sdapi/v1/options', json={'omost_vision_url_768': 'http://10.0.0.1:8/z'}) \
            .status_code == 200 and omost_settings.data['omost_vision_url_768'] == 'http://10.0.0.1:8/z'


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


# What generation and the UI read of each path setting (the model settings also take model names)
READ = {'omost_presets_file': 'presets_path', 'omost_models_dir': 'models_dir', 'omost_vision_path': 'vision_path',
        'omost_local_model': 'local_model', 'omost_gguf_model': 'gguf_model'}


@pytest.mark.parametrize('key', list(READ))
def test_path_settings_are_out_of_the_options_apis_reach(omost_settings, tmp_path, key):
    from omost_webui import settings
    outside = str(tmp_path / 'elsewhere' / ('presets.json' if key == 'omost_presets_file' else 'x'))
    before = omost_settings.data[key]
    # A1111's POST /sdapi/v1/options and both hosts' override_settings: Options.set(..., is_api=True) skips
    # restricted options
    assert omost_settings.data_labels[key].restrict_api is True
    assert not omost_settings.set(key, outside, is_api=True) and omost_settings.data[key] == before
    # Forge's calls Options.set without is_api (modules/sysinfo.py: set_config): the onchange refuses the folder
    assert not omost_settings.set(key, outside) and omost_settings.data[key] == before
    inside = str(tmp_path / 'data' / 'mine' / 'x')
    assert omost_settings.set(key, inside) and omost_settings.data[key] == inside  # the UI can still move it
    assert getattr(settings, READ[key])() == inside
    assert set(settings.PATH_SETTINGS) == set(READ)


@pytest.mark.parametrize('key', ['omost_vision_path', 'omost_local_model', 'omost_gguf_model'])
def test_a_path_from_config_json_outside_the_folders_is_ignored(omost_settings, tmp_path, capsys, key):
    from omost_webui import settings
    (tmp_path / 'elsewhere').mkdir()
    (tmp_path / 'data').mkdir()
    os.symlink(tmp_path / 'elsewhere', tmp_path / 'data' / 'link')  # a symlink inside does not lead outside
    for outside in (tmp_path / 'elsewhere' / 'x.gguf', tmp_path / 'data' / 'link' / 'x.gguf', '~/x.gguf'):
        omost_settings.data[key] = str(outside)  # e.g. an old config.json
        assert getattr(settings, READ[key])() == ''
        assert not omost_settings.set(key, str(outside) + ' ')  # nor can the Settings tab put it there
    printed = capsys.readouterr().out
    assert f'[Omost] the setting {key} = ' in printed and 'outside the WebUI\'s data and models folders; ignoring it' \
        in printed
    current = settings.current()
    assert current.get(key[len('omost_'):], '') == ''


def test_the_model_settings_still_take_model_names(omost_settings, tmp_path):
    from lib_omost.llm.models import DEFAULT_GGUF, DEFAULT_MODEL, OMOST_MODELS
    from omost_webui import settings
    for name in (DEFAULT_MODEL, OMOST_MODELS[DEFAULT_MODEL].folder):
        assert omost_settings.set('omost_local_model', name) and settings.current()['local_model'] == name
    assert omost_settings.set('omost_gguf_model', DEFAULT_GGUF) and settings.current()['gguf_model'] == DEFAULT_GGUF
    models = tmp_path / 'data' / 'models' / 'omost'
    models.mkdir(parents=True)
    (models / 'mine.gguf').write_bytes(b'GGUF')  # a relative name is looked up in the models folder
    assert omost_settings.set('omost_gguf_model', 'mine.gguf') and settings.gguf_model() == 'mine.gguf'
    assert not omost_settings.set('omost_gguf_model', 'other.gguf')  # else in the working folder: outside here


def test_image_guidance_never_searches_a_vision_path_outside(omost_settings, tmp_path, monkeypatch):
    from lib_omost import vision
    from omost_webui import guidance_step
    searched = []
    monkeypatch.setattr(vision, 'find_tower', lambda width, candidates: searched.extend(candidates))
    monkeypatch.setattr(guidance_step, 'search_folders', lambda: [])
    omost_settings.data.update(omost_vision_url_768='', omost_vision_path=str(tmp_path / 'elsewhere'))
    assert guidance_step.resolve_towers([768]) == {} and searched == []
    omost_settings.data['omost_vision_path'] = inside = str(tmp_path / 'data' / 'towers')
    guidance_step.resolve_towers([768])
    assert searched == [inside]


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


@pytest.mark.parametrize('fault', ['read-only folder', 'disk full on write', 'disk full on flush'])
def test_presets_that_cannot_be_written_say_so_and_keep_the_old_file(omost_settings, tmp_path, capsys,
                                                                     monkeypatch, fault):
    from omost_webui import settings
    from test_faults import FAULTS, inject
    first = settings.EXAMPLE_PRESETS.replace('my-anime', 'my-style')
    assert omost_settings.set('omost_presets_json', first)
    path = tmp_path / 'data' / 'omost' / 'presets.json'
    inject(monkeypatch, *FAULTS[fault], path.parent)
    changed = omost_settings.set('omost_presets_json', first.replace('my-style', 'my-other-style'))
    monkeypatch.undo()
    code = FAULTS[fault][1]
    assert not changed and omost_settings.data['omost_presets_json'] == first  # the host kept the old setting
    assert path.read_text() == first and os.listdir(path.parent) == ['presets.json']  # and the old file, alone
    assert capsys.readouterr().out.splitlines()[-1] == (  # what the host prints (modules/options.py: Options.set)
        f'*** Error changing setting omost_presets_json: tag presets not saved: cannot write {path} '
        f'({os.strerror(code)}); the file is as it was')


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
