"""End-to-end tests against a running WebUI (A1111 1.10.1, Forge, Forge Neo, Forge Classic, reForge) over its HTTP API.

Skipped unless OMOST_E2E_URL names the WebUI (started with --api and this checkout as its sd-webui-omost
extension), so the main test run stays self-contained:

    OMOST_E2E_URL=http://127.0.0.1:7860 .venv/bin/python -m pytest -q tests/e2e

OMOST_E2E_HOST (a1111, forge, neo, classic or reforge) and OMOST_E2E_CKPT (the checkpoint file the WebUI runs,
default random-sd15.safetensors) say what is on the other end; `tests/e2e/hosts/host.sh HOST test` runs the
suite with these and the optional ones the tests name. OMOST_E2E_SIZE
(default 64) is the image side of the small jobs, OMOST_E2E_LOG a file that gets one JSON line per request
(status, seconds, pixel hashes: evidence for a report).

The client is .client (stdlib plus Pillow); tests import it relatively: `from .client import omost_args`
(tests/e2e is a package so that its conftest does not shadow tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest

from .client import CKPT, HOST, SIZE, URL, WebUI

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not str(item.fspath).startswith(HERE + os.sep):
            continue
        if not URL:
            item.add_marker(pytest.mark.skip(reason='end-to-end: set OMOST_E2E_URL to a running WebUI'))
        else:  # a real WebUI on a shared CPU: minutes per test, not the unit tests' 300 s
            item.add_marker(pytest.mark.timeout(3600))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope='session')
def webui() -> WebUI:
    return WebUI(URL)


@pytest.fixture(scope='session')
def host() -> str:
    """OMOST_E2E_HOST, else 'forge' or 'a1111' guessed from the settings (Forge adds its `forge_*` ones). Tests that
    differ per host ask the host what it has (its API schema, its lists), not this name."""
    return HOST or ('forge' if 'forge_preset' in WebUI(URL).options() else 'a1111')


@pytest.fixture(scope='session')
def ckpt(webui) -> str:
    """The title of the checkpoint under test (OMOST_E2E_CKPT), loaded before the first test."""
    return webui.switch_checkpoint(CKPT)


@pytest.fixture(scope='session')
def sdxl() -> bool:
    return 'xl' in CKPT.lower()


@pytest.fixture
def canvas(dragon_code) -> str:
    """The canvas most tests render: Omost's dragon battle (a global region and 6 local ones)."""
    return dragon_code


def make_job(ckpt: str, **changes) -> dict:
    """The small deterministic txt2img payload every test starts from, with `changes`."""
    payload = {'prompt': 'a fierce battle', 'negative_prompt': 'lowres', 'steps': 2, 'width': SIZE,
               'height': SIZE, 'cfg_scale': 5, 'seed': 1234, 'sampler_name': 'Euler', 'scheduler': 'Automatic',
               'override_settings': {'sd_model_checkpoint': ckpt},
               'override_settings_restore_afterwards': True}
    scripts = changes.pop('alwayson_scripts', None)
    payload.update(changes)
    if scripts:
        payload['alwayson_scripts'] = scripts
    return payload


@pytest.fixture
def job(ckpt):
    """`job(**changes)`: `make_job` for the checkpoint under test."""
    return lambda **changes: make_job(ckpt, **changes)


@pytest.fixture(scope='session')
def reference(webui, ckpt):
    """`reference('plain')` / `reference('omost')`: the default job without / with Omost on the dragon canvas,
    rendered once per session, for tests that only compare other renders with them (a test about no trace renders
    its own before and after)."""
    from conftest import read_fixture  # tests/conftest.py (this one is e2e.conftest)
    from .client import omost_args
    done = {}

    def get(kind):
        if kind not in done:
            scripts = omost_args(read_fixture('dragon_battle.canvas.py')) if kind == 'omost' else None
            done[kind] = webui.txt2img(make_job(ckpt, alwayson_scripts=scripts)).ok()
        return done[kind]
    return get
