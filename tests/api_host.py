"""The host's HTTP API around a Rig (the modules.api.api stub: its txt2img/img2img routes, init_script_args and
error answers, set up as A1111 or Forge do), for tests/test_webui_api.py and for its run under the A1111-like
venv (fastapi 0.94, pydantic 1), where `summary` is called in a subprocess."""

import json
import sys


def host_app(rig, forge=False, started=True):
    """(app, jobs): a FastAPI app with the host's endpoints over `rig`, after the host's app_started callbacks
    (where the extension's gate is installed) unless `started` is False; `jobs` gets each (p, Processed) that ran."""
    from fastapi import FastAPI
    from modules import script_callbacks
    from modules.api.api import Api, forge_handle_exception
    app = FastAPI(exception_handlers={Exception: forge_handle_exception}) if forge else FastAPI()
    jobs = []

    def run(script_args):
        p, res = rig.generate(script_args)
        jobs.append((p, res))
        return {'images': [], 'info': res.info}
    Api(app, rig.runner, list(rig.p().script_args), run, forge=forge)
    if started:
        script_callbacks.app_started_callback(None, app)  # webui.py, after create_api
    return app, jobs


def client(app):
    from fastapi.testclient import TestClient
    return TestClient(app, raise_server_exceptions=False)  # a server error is answered (500), not raised


def post(test_client, args, route='txt2img', key='Omost'):
    return test_client.post(f'/sdapi/v1/{route}', json={'prompt': 'a photo', 'alwayson_scripts': {key: {'args': args}}})


def summary() -> dict:
    """What each host shape answers to the forms of Omost args, with and without the gate (for the A1111-like
    venv's run: {host: {case: [status, error name or 'Omost' in the infotext]}})."""
    import fastapi
    from webui_helpers import SMALL, ForgeModel, ForgeTinyUNet, Rig  # (puts the host stubs on sys.path)
    from modules import errors, shared
    rig = Rig(ForgeModel(ForgeTinyUNet()))  # (the A1111-like venv has no ldm for A1111's UNet)
    cases = {'list': [True, SMALL], 'named': {'enabled': True, 'canvas': SMALL, 'guidance': []},
             'named off': {'enabled': 'false', 'canvas': SMALL}, 'string': 'true', 'no enabled': {'canvas': SMALL}}
    result = {'fastapi': fastapi.__version__}
    for forge in (False, True):
        gated = client(host_app(rig, forge)[0])
        answers = {}
        for case, args in cases.items():
            response = post(gated, args, key='omost' if case == 'named' else 'Omost')
            body = response.json()
            answers[case] = [response.status_code, body.get('error') if response.status_code != 200
                             else 'Omost: ' in body['info']]
        answers['no gate, named'] = post(client(host_app(rig, forge, started=False)[0]), cases['named']).status_code
        shared.cmd_opts.api_auth = 'alice:secret'  # --api-auth: a client without rights meets the host only
        try:
            locked = client(host_app(rig, forge)[0])
            for case in ('string', 'named'):
                response = post(locked, cases[case])
                answers[f'no rights, {case}'] = [response.status_code, response.json().get('error')]
        finally:
            del shared.cmd_opts.api_auth
        result['forge' if forge else 'a1111'] = answers
    errors.reported.clear()  # A1111's report of the ungated 500
    return result


def main():
    """`summary` as the last line of stdout (the script's console lines come before it)."""
    result = summary()
    sys.stdout.write(json.dumps(result) + '\n')
