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
