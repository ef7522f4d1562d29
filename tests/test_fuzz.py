"""Property tests over every parser of outside input: Canvas code, canvas JSON, the infotext's compressed canvas,
guide JSON (with its images), render options, the API's script args and the LLM server's SSE stream. For every
input: a result or the parser's documented error (CanvasError, OmostInputError, ChatError), nothing else, and
bounded memory (the peak of Python allocations while parsing); compression and image bombs are refused.

CI runs a few hundred examples per parser; OMOST_FUZZ_EXAMPLES=20000 runs that many per parser, and prints the
count and the slowest and largest example of each (the closing note's figures):
    OMOST_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q -s tests/test_fuzz.py
"""

import base64
import gzip
import io
import json
import os
import threading
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import read_fixture
from lib_omost.canvas import INFOTEXT_PREFIX, MAX_INPUT_CHARS, CanvasError, canvas_to_infotext, load_canvas
from test_canvas_hostile import _NOISE, mutated_fixture

EXAMPLES = int(os.environ.get('OMOST_FUZZ_EXAMPLES') or 0)
MEMORY_LIMIT = 64 << 20  # bytes of Python allocations one input may take while parsed (the inputs are < 1 MB)


def fuzz(ci_examples: int):
    return settings(max_examples=EXAMPLES or ci_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


class Tally:
    """Per parser: examples tried, how many were refused, the slowest (s) and the largest peak (bytes)."""
    figures = {}

    def __init__(self, name):
        self.name = name
        self.figures.setdefault(name, {'examples': 0, 'refused': 0, 'slowest_s': 0.0, 'peak_bytes': 0})

    def run(self, documented, parse, *args, measure=False):
        """parse(*args); returns (result, error); any error but `documented` fails. Every 16th input (and every
        one with `measure`) runs under tracemalloc (which slows allocation several times) for its peak."""
        f = self.figures[self.name]
        measure = measure or f['examples'] % 16 == 0
        if measure:
            tracemalloc.start()
        t0 = time.perf_counter()
        try:
            return parse(*args), None
        except documented as e:
            return None, e
        finally:
            elapsed = time.perf_counter() - t0
            f['examples'] += 1
            f['slowest_s'] = max(f['slowest_s'], elapsed)
            if measure:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                f['peak_bytes'] = max(f['peak_bytes'], peak)
                f['measured'] = f.get('measured', 0) + 1
                assert peak < MEMORY_LIMIT, (self.name, peak)

    def refused(self):
        self.figures[self.name]['refused'] += 1


@pytest.fixture(scope='module', autouse=True)
def report():
    yield
    if EXAMPLES:
        for name, f in sorted(Tally.figures.items()):
            print(f"\nfuzz {name}: {f['examples']} examples, {f['refused']} refused, slowest {f['slowest_s']:.3f} s, "
                  f"peak {f['peak_bytes'] / 2**20:.1f} MiB (of {f.get('measured', 0)} measured)")


def checked(tally, documented, parse, *args):
    result, error = tally.run(documented, parse, *args)
    if error is not None:
        tally.refused()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Canvas code, canvas JSON, the infotext's compressed canvas


CANVAS_KEYS = ['global', 'regions', 'location', 'offset', 'area', 'distance_to_viewer', 'description',
               'detailed_descriptions', 'tags', 'atmosphere', 'style', 'quality_meta', 'color', 'rect',
               'HTML_web_color_name', 'prefixes', 'suffixes', 'color_name', 'format', 'version', 'canvas']
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(['on the left', 'no offset', 'a small square area', 'red', '', 'omost-canvas']))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.one_of(st.sampled_from(CANVAS_KEYS), st.text(max_size=8)),
                                                 inner, max_size=8)), max_leaves=40)


def _real_json():
    return [load_canvas(read_fixture(name)).canvas.to_json()
            for name in ('dragon_battle.canvas.py', 'dinosaur_edit.canvas.py')]


def _paths(node, path=()):
    """Every key path into a JSON value."""
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, path + (key,))


_REAL = [(data, sorted(_paths(data), key=repr)[1:]) for data in _real_json()]


@st.composite
def mutated_json(draw):
    """A real canvas JSON with a few values replaced by anything (keeps most of the shape, so the checks past
    the first one are reached)."""
    original, paths = draw(st.sampled_from(_REAL))
    data = json.loads(json.dumps(original))
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement took that path away
    return data


@fuzz(150)
@given(st.one_of(mutated_fixture(), _NOISE, st.text(max_size=300)))
def test_canvas_code(text):
    result = checked(Tally('canvas code'), CanvasError, load_canvas, text)
    if result is not None:
        assert all(0 <= v <= 90 for r in result.canvas.local_regions for v in r.rect)


@fuzz(150)
@given(st.one_of(JSON, mutated_json()), st.booleans())
def test_canvas_json(data, as_text):
    source = json.dumps(data) if as_text else data
    result = checked(Tally('canvas JSON'), CanvasError, load_canvas, source)
    if result is not None:
        again = load_canvas(result.canvas.to_json()).canvas.to_json()  # what it parsed to is itself a canvas
        assert again == result.canvas.to_json()


@st.composite
def infotext(draw):
    kind = draw(st.sampled_from(['real', 'json', 'bytes', 'text', 'cut', 'flip']))
    if kind in ('real', 'cut', 'flip'):
        value = canvas_to_infotext(load_canvas(draw(st.sampled_from(_real_json()))).canvas)
        if kind == 'cut':
            value = value[:draw(st.integers(0, len(value)))]
        elif kind == 'flip':
            i = draw(st.integers(len(INFOTEXT_PREFIX), len(value) - 1))
            value = value[:i] + draw(st.sampled_from('A_-=+/ .\n')) + value[i + 1:]
        return value
    if kind == 'json':
        packed = zlib.compress(json.dumps(draw(st.one_of(JSON, mutated_json()))).encode(), draw(st.integers(0, 9)))
    elif kind == 'bytes':
        packed = draw(st.binary(max_size=200))
    else:
        packed = zlib.compress(draw(st.text(max_size=200)).encode())
    return INFOTEXT_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip('=' if draw(st.booleans()) else '')


@fuzz(150)
@given(infotext())
def test_infotext_compressed_canvas(value):
    from omost_webui.paste import on_infotext_pasted
    checked(Tally('infotext canvas'), CanvasError, load_canvas, value)
    params = {'Omost': 'True', 'Omost canvas': value}  # the paste hook never raises: it keeps what it cannot read
    Tally('infotext paste').run((), on_infotext_pasted, 'x', params)
    assert isinstance(params['Omost canvas'], str)


@pytest.mark.parametrize('content', [b' ' * (64 << 20), b'[' * (64 << 20), b'{"global": {"description": "' +
                                     b'a' * (64 << 20)])
def test_a_compression_bomb_is_refused_without_inflating_it(content):
    bomb = INFOTEXT_PREFIX + base64.urlsafe_b64encode(zlib.compress(content, 9)).decode()
    assert len(bomb) < 200_000  # 64 MiB in a few dozen KB
    result, error = Tally('infotext bomb').run(CanvasError, load_canvas, bomb, measure=True)
    assert result is None and 'larger than' in str(error)
    assert Tally.figures['infotext bomb']['peak_bytes'] < 4 * MAX_INPUT_CHARS + (8 << 20)  # the cap, not 64 MiB


# ---------------------------------------------------------------------------------------------------------------
# Guide JSON and its images; render options


def _png(size, colour=(200, 30, 30)):
    from PIL import Image
    out = io.BytesIO()
    Image.new('RGB', size, colour).save(out, format='PNG')
    return base64.b64encode(out.getvalue()).decode()


GUIDE_KEYS = ['target', 'image', 'slot', 'image_hash', 'method', 'linear_start', 'linear_end', 'clustered',
              'threshold_floor', 'threshold_mult', 'max_guidance', 'header_max', 'concepts', 'order', 'reuse']
IMAGES = st.sampled_from([_png((8, 8)), 'data:image/png;base64,' + _png((4, 2)), 'iVBORw0KGgo=', '', '%%%', 'AAAA'])
GUIDE_VALUES = st.one_of(SCALARS, IMAGES, st.sampled_from(['canvas', 'background', 'off', 1, 2, 0, -1, 'best_fit',
                                                           'linear', 'combined']))
GUIDES = st.one_of(
    JSON, st.lists(st.dictionaries(st.sampled_from(GUIDE_KEYS), GUIDE_VALUES, max_size=6), max_size=10),
    st.dictionaries(st.sampled_from(GUIDE_KEYS), GUIDE_VALUES, max_size=6))


@fuzz(150)
@given(GUIDES, st.booleans())
def test_guide_json(value, as_text):
    from lib_omost.guides import check_targets, parse_guides
    source = json.dumps(value) if as_text else value
    guides = checked(Tally('guide JSON'), CanvasError, parse_guides, source, (None,))
    if guides:
        checked(Tally('guide targets'), CanvasError, check_targets, guides, 3)


@pytest.mark.parametrize('side, refusal', [
    (8000, 'the image is 8000x8000 pixels; the limit is 40 megapixels'),  # ours
    (20000, 'the image is too large (Image size (400000000 pixels) exceeds limit')])  # PIL's own, at open
def test_an_image_bomb_is_refused_before_its_pixels_are_decoded(side, refusal):
    from PIL import Image
    from lib_omost.guides import parse_guides
    out = io.BytesIO()
    Image.new('1', (side, side)).save(out, format='PNG')  # 64 / 400 megapixels in a few hundred KB
    assert len(out.getvalue()) < 1 << 20
    result, error = Tally('guide image bomb').run(
        CanvasError, parse_guides, [{'target': 'canvas', 'image': base64.b64encode(out.getvalue()).decode()}],
        measure=True)
    assert result is None and str(error).startswith('Omost guide image 1: ' + refusal)
    assert Tally.figures['guide image bomb']['peak_bytes'] < 8 << 20  # the PNG, not its pixels


@fuzz(150)
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(['regions', 'strength', 'sketch', 'sketch_denoise', 'preset',
                                                         'prompt_target', 'hires', 'x']), GUIDE_VALUES, max_size=6)),
       st.booleans())
def test_render_options(value, as_text):
    from lib_omost.options import parse_options
    checked(Tally('render options'), CanvasError, parse_options, json.dumps(value) if as_text else value)


# ---------------------------------------------------------------------------------------------------------------
# The API's script args


ARG_NAMES = st.sampled_from(['enabled', 'canvas', 'options', 'guidance', 'Enabled', 'x', ''])
ARGS = st.one_of(JSON, st.dictionaries(ARG_NAMES, JSON, max_size=5), st.lists(JSON, max_size=5))


@fuzz(150)
@given(st.dictionaries(st.one_of(st.sampled_from(['Omost', 'omost', 'OMOST', 'ControlNet']), st.text(max_size=6)),
                       st.one_of(JSON, st.fixed_dictionaries({'args': ARGS}),
                                 st.dictionaries(st.sampled_from(['args', 'x']), ARGS, max_size=2)), max_size=4))
def test_api_script_args(scripts):
    from omost_webui.api_args import rewrite_scripts
    from omost_webui.generation import OmostInputError
    tally = Tally('API script args')
    changed, error = tally.run(OmostInputError, rewrite_scripts, scripts)
    if error is not None:
        tally.refused()
        return
    for name, entry in scripts.items():  # what the host then copies by index is a list
        if name.lower() == 'omost' and 'args' in entry:
            assert isinstance(entry['args'], list)


# ---------------------------------------------------------------------------------------------------------------
# The LLM server's SSE stream (plain and gzip-compressed)


class _Sock:
    def settimeout(self, t):
        pass


class _Body:
    """The response body as ServerBackend reads it: readline(limit), read(n) and read1(n)."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)

    def readline(self, limit):
        return self.f.readline(limit)

    def read(self, n):
        return self.f.read(n)

    def read1(self, n):
        return self.f.read1(n)


SSE_LINES = st.one_of(st.sampled_from([
    'data: {"choices":[{"delta":{"content":"canvas = Canvas()\\n"}}]}', 'data: {"choices":[{"delta":{}}]}',
    'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}', 'data: [DONE]', 'data: {}',
    'data: {"choices":[{"text":"y","finish_reason":"length"}]}', 'data: {"error":{"message":"boom"}}',
    'data: {"usage":{"prompt_tokens":3,"completion_tokens":"x"}}', 'data: null', 'data: [1,2]', 'data: {',
    'event: error', 'event: message', ': ping', 'id: 7', 'retry: 10', 'data:', '', 'nonsense', 'data: "text"',
    'data: {"choices":"x"}', 'data: {"choices":[{"delta":{"content":5}}]}', '\ufeffdata: x', 'data: \x00']),
    st.text(max_size=30), st.text(max_size=30).map(lambda t: 'data: ' + t))


@fuzz(150)
@given(st.lists(SSE_LINES, max_size=30), st.sampled_from(['\n', '\r\n', '\n\n']), st.booleans(), st.booleans())
def test_sse_stream(lines, newline, compressed, cut):
    from lib_omost.llm.conversation import ChatError
    from lib_omost.llm.server import ServerBackend, _Deadline, _Inflated
    raw = newline.join(lines).encode('utf-8', 'surrogatepass') + (b'' if cut else newline.encode())
    backend = ServerBackend('127.0.0.1:9', 'm')
    url = backend.base_url
    body = _Inflated(_Body(gzip.compress(raw)), url) if compressed else _Body(raw)

    def parse():
        return list(backend._events(body, threading.Event(), _Deadline(_Sock(), 60.0, url)))
    events = checked(Tally('SSE stream'), ChatError, parse)
    for kind, value in events or []:
        assert kind in ('text', 'usage', 'finish') and (kind != 'text' or isinstance(value, str) and value)


@pytest.mark.parametrize('line', [b'data: ' + b'x' * (64 << 20), b': ' + b'p' * (64 << 20)])
def test_a_compressed_stream_bomb_is_read_within_bounds(line):
    from lib_omost.llm.conversation import ChatError
    from lib_omost.llm.server import ServerBackend, _Deadline, _Inflated
    backend = ServerBackend('127.0.0.1:9', 'm')
    body = _Inflated(_Body(gzip.compress(line, 9)), backend.base_url)

    def parse():
        return list(backend._events(body, threading.Event(), _Deadline(_Sock(), 60.0, backend.base_url)))
    result, error = Tally('SSE bomb').run(ChatError, parse, measure=True)
    assert result is None and isinstance(error, ChatError)
