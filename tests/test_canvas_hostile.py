"""Hostile and broken input: nothing is ever executed, nothing but CanvasError escapes, every input ends (a hang fails the test through pytest-timeout)."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, read_fixture
from lib_omost.canvas import MAX_INPUT_CHARS, CanvasError, load_canvas, parse_canvas

GLOBAL = "canvas.set_global_description('g', [], 't', 'black')\n"
LOCAL = ("canvas.add_local_description('on the left', 'no offset', 'a small square area', 1.0, 'd', [], 't', 'a', "
         "'s', 'q', 'red')\n")


def hostile_corpus(marker):
    touch = f"open({marker!r}, 'w').write('pwned')"
    nested = 'canvas.set_global_description(' + '[' * 5000 + ']' * 5000 + ", [], 't', 'black')"
    return {
        'import': f"import os\nos.system('touch {marker}')\ncanvas = Canvas()\n" + GLOBAL,
        '__import__': f"canvas = Canvas()\n__import__('os').system('touch {marker}')\n" + GLOBAL,
        'import in argument': f"canvas = Canvas()\ncanvas.set_global_description(__import__('os').system('touch "
                              f"{marker}'), [], 't', 'black')\n",
        'dunder walk': "canvas = Canvas()\n().__class__.__bases__[0].__subclasses__()[0]\n"
                       "canvas.set_global_description(().__class__.__name__, [], 't', 'black')\n",
        'exec call': f"canvas = Canvas()\nexec({touch!r})\neval({touch!r})\n" + GLOBAL,
        'f-string': "canvas = Canvas()\ncanvas.set_global_description(f\"{" + touch + "}\", [], 't', 'black')\n",
        'class redefinition': f"class Canvas:\n    def set_global_description(self, *a):\n        {touch}\n"
                              "canvas = Canvas()\n" + GLOBAL,
        'attribute assignment': f"canvas = Canvas()\ncanvas.set_global_description = lambda *a: {touch}\n" + GLOBAL,
        'method via getattr': f"canvas = Canvas()\ngetattr(canvas, 'set_global_description')({touch}, [], 't', "
                              "'black')\n" + GLOBAL,
        'lambda argument': f"canvas = Canvas()\ncanvas.set_global_description((lambda: {touch})(), [], 't', 'b')\n",
        'decorator': f"@(lambda f: {touch})\ndef f(): pass\ncanvas = Canvas()\n" + GLOBAL,
        'infinite loop': "canvas = Canvas()\nwhile True:\n    pass\nfor i in iter(int, 1):\n    pass\n" + GLOBAL,
        'homoglyph canvas': "c\u0430nvas = Canvas()\nc\u0430nvas.set_global_description('g', [], 't', 'black')\n",
        'homoglyph Canvas': "canvas = C\u0430nvas()\n" + GLOBAL,
        'nan distance': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', "float('nan')"),
        'inf distance': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', '1e999'),
        'negative inf distance': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', '-1e999'),
        'huge int literal': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', '9' * 10000),
        'power bomb': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', '10**10**10'),
        '10 MB string': "canvas = Canvas()\ncanvas.set_global_description('" + 'A' * 10_000_000 + "', [], 't', 'b')\n",
        '20,000 regions': "canvas = Canvas()\n" + GLOBAL + LOCAL * 20000,
        '65 regions': "canvas = Canvas()\n" + GLOBAL + LOCAL * 65,
        'long field': "canvas = Canvas()\ncanvas.set_global_description('" + 'A' * 20000 + "', [], 't', 'b')\n",
        'deep brackets': nested,
        'deep parentheses': 'canvas.set_global_description(' + '(' * 100000 + '1' + ')' * 100000 + ')',
        'deep unary': "canvas = Canvas()\n" + GLOBAL + LOCAL.replace('1.0', '-' * 200000 + '1'),
        'deep not': 'canvas.x = ' + 'not ' * 100000 + 'canvas',
        'star kwargs': "canvas = Canvas()\ncanvas.set_global_description(**{'description': 'g'})\n",
        'binary garbage': bytes(range(256)).decode('latin-1') * 50,
        'nul bytes': 'canvas = Canvas()\x00' + GLOBAL,
        'empty': '',
        'whitespace': ' \n\t\n',
        'prose only': 'I am sorry, I cannot draw that.',
        'json bomb': '[' * 100000 + ']' * 100000,
        'json huge': json.dumps({'format': 'omost-canvas', 'version': 1, 'global': {'description': 'x' * 900000}}),
        'walrus': f"canvas = Canvas()\n(x := {touch})\n" + GLOBAL,
        'with statement': f"with open({marker!r}, 'w') as f:\n    pass\ncanvas = Canvas()\n" + GLOBAL,
        'del builtins': "del __builtins__\ncanvas = Canvas()\n" + GLOBAL,
        'global keyword': f"canvas = Canvas()\ncanvas.set_global_description(description={touch}, "
                          "detailed_descriptions=[], tags='t', HTML_web_color_name='red')\n",
    }


def test_hostile_corpus_never_executes(tmp_path):
    marker = str(tmp_path / 'MARKER')
    outcomes = {}
    # Work that never ends (a power bomb, a loop that ran) would hang here until pytest-timeout fails the test;
    # how fast parsing is, is measured by `python -m lib_omost bench canvas`, not asserted.
    for name, text in hostile_corpus(marker).items():
        try:
            result = load_canvas(text)
            outcomes[name] = ('parsed', result.warnings)
        except CanvasError as e:
            outcomes[name] = ('rejected', str(e))
        assert not os.path.exists(marker), name
    # statements outside the whitelist are ignored with a warning; bad arguments are rejected with a reason
    assert outcomes['import'][0] == 'parsed' and 'ignored an import' in outcomes['import'][1][0]
    assert outcomes['class redefinition'][0] == 'parsed'
    assert outcomes['homoglyph canvas'] == ('rejected', outcomes['homoglyph canvas'][1])
    for name, reason in [('import in argument', 'calls are not allowed'), ('f-string', 'f-strings are not allowed'),
                         ('nan distance', 'calls are not allowed'), ('inf distance', 'positive finite number'),
                         ('10 MB string', 'the limit is'), ('20,000 regions', 'the limit is'),
                         ('65 regions', 'more than 64 local regions'), ('long field', 'longer than'),
                         ('deep brackets', 'nested deeper'), ('deep parentheses', 'nested deeper'),
                         ('power bomb', 'expressions are not allowed'), ('star kwargs', '** arguments'),
                         ('nul bytes', 'NUL'), ('empty', 'empty'), ('prose only', 'no Canvas code'),
                         ('json bomb', 'JSON')]:
        assert outcomes[name][0] == 'rejected' and reason in outcomes[name][1], (name, outcomes[name])


@pytest.mark.parametrize('name', ['import in argument', 'deep unary', 'binary garbage', 'empty', '20,000 regions'])
def test_cli_gives_one_line_and_exit_2(tmp_path, name):
    marker = str(tmp_path / 'MARKER')
    proc = subprocess.run([sys.executable, '-m', 'lib_omost', 'parse', '-'], input=hostile_corpus(marker)[name],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith('error: ')
    assert 'Traceback' not in proc.stderr and not os.path.exists(marker)


def test_cli_parse_stdout_is_only_json(tmp_path, dragon_code):
    text = dragon_code.replace("'on the left'", "'on the lft'") + "\nimport os\n"
    proc = subprocess.run([sys.executable, '-m', 'lib_omost', 'parse', '-'], input=text, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert len(data['regions']) == 4 and data['regions'][0]['rect'] == [0, 45, 0, 90]
    assert set(data['regions'][0]) >= {'rect', 'prefixes', 'suffixes', 'color', 'distance_to_viewer'}
    assert proc.stderr.splitlines() == [
        'warning: line 102: ignored an import (never executed)',
        "warning: region 1 ('A group of fierce warriors.'): corrected location 'on the lft' -> 'on the left'"]


def test_cli_sketch_writes_png(tmp_path):
    out = tmp_path / 'o.png'
    for extra in ([], ['--overlay'], ['--blur', '40']):
        proc = subprocess.run([sys.executable, '-m', 'lib_omost', 'sketch', os.path.join(ROOT, 'tests', 'fixtures',
                              'dragon_battle.canvas.py'), '-o', str(out), '--width', '96', '--height', '64'] + extra,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


_FIXTURES = [read_fixture('dragon_battle.canvas.py'), read_fixture('dinosaur_edit.canvas.py')]
_TOKENS = list("()[]{}'\",.=:\\\n #_-+*/<>@!?%&|^~`0123456789aeiouxyzAZ\t\u0430\u00e9\x00\ufeff") + [
    'canvas', 'Canvas()', 'import ', 'lambda', 'f"', '"""', '1e999', 'nan', '**', ' = ', '\\x', ')\n(']
_NOISE = st.lists(st.sampled_from(_TOKENS), max_size=12).map(''.join)


@st.composite
def mutated_fixture(draw):
    text = draw(st.sampled_from(_FIXTURES))
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 200)))
        op = draw(st.sampled_from(['delete', 'insert', 'replace', 'duplicate', 'truncate', 'swapcase']))
        if op == 'delete':
            text = text[:i] + text[j:]
        elif op == 'insert':
            text = text[:i] + draw(_NOISE) + text[i:]
        elif op == 'replace':
            text = text[:i] + draw(_NOISE) + text[j:]
        elif op == 'duplicate':
            text = text[:j] + text[i:j] + text[j:]
        elif op == 'truncate':
            text = text[:i]
        else:
            text = text[:i] + text[i:j].swapcase() + text[j:]
    return text


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(mutated_fixture())
def test_mutations_raise_only_canvas_error(text):
    try:
        result = parse_canvas(text)
    except CanvasError:
        return
    assert result.canvas.global_region.rect == (0, 90, 0, 90)
    assert all(0 <= v <= 90 for r in result.canvas.local_regions for v in r.rect)


def test_input_limit_is_checked_before_parsing():
    with pytest.raises(CanvasError, match='the limit is'):
        parse_canvas('#' * (MAX_INPUT_CHARS + 1))
