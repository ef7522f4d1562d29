import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def read_fixture(name: str) -> str:
    with open(fixture_path(name), encoding='utf-8') as f:
        return f.read()


@pytest.fixture
def dragon_code() -> str:
    return read_fixture('dragon_battle.canvas.py')


@pytest.fixture
def dinosaur_code() -> str:
    return read_fixture('dinosaur_edit.canvas.py')


# The rig of the WebUI tests (tests/webui_helpers.py; imported when a test asks for it, as it puts the fake host
# on sys.path): the A1111 one, unless the module defines its own `rig` (test_webui_forge.py: the Forge rig), which
# `baseline` then takes.


@pytest.fixture(scope='module')
def rig():
    """The A1111 rig: the extension's script on the tiny real ldm UNet."""
    from webui_helpers import A1111Model, Rig, tiny_ldm_unet
    return Rig(A1111Model(tiny_ldm_unet()))


@pytest.fixture(scope='module')
def baseline(rig):
    """A plain generation in a WebUI that never loaded the extension."""
    return rig.generate(bare=True)[1]
