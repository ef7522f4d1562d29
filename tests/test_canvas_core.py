"""The canvas core against Omost's formulas, computed here independently of lib_omost."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import read_fixture
from lib_omost.canvas import CanvasError, canvas_from_json, load_canvas, parse_canvas, region_masks
from lib_omost.sketch import overlay_preview, sketch_array, sketch_grid

# Omost's grid, as its README and peers.md describe it: 9 location centres, +-10 offsets, 9 box sizes (w, h).
CENTRES = {'in the center': (45, 45), 'on the left': (15, 45), 'on the right': (75, 45), 'on the top': (45, 15),
           'on the bottom': (45, 75), 'on the top-left': (15, 15), 'on the top-right': (75, 15),
           'on the bottom-left': (15, 75), 'on the bottom-right': (75, 75)}
OFFS = {'no offset': (0, 0), 'slightly to the left': (-10, 0), 'slightly to the right': (10, 0),
        'slightly to the upper': (0, -10), 'slightly to the lower': (0, 10), 'slightly to the upper-left': (-10, -10),
        'slightly to the upper-right': (10, -10), 'slightly to the lower-left': (-10, 10),
        'slightly to the lower-right': (10, 10)}
SIZES = {'a small square area': (50, 50), 'a small vertical area': (40, 60), 'a small horizontal area': (60, 40),
         'a medium-sized square area': (60, 60), 'a medium-sized vertical area': (50, 80),
         'a medium-sized horizontal area': (80, 50), 'a large square area': (70, 70), 'a large vertical area': (60, 90),
         'a large horizontal area': (90, 60)}
COLORS = {'darkslategray': (47, 79, 79), 'darkgoldenrod': (184, 134, 11), 'firebrick': (178, 34, 34),
          'midnightblue': (25, 25, 112), 'darkolivegreen': (85, 107, 47)}


def expected_rect(location, offset, area):
    (x, y), (dx, dy), (w, h) = CENTRES[location], OFFS[offset], SIZES[area]
    cy, cx = y + dy, x + dx
    return tuple(min(90, max(0, v)) for v in (cy - h // 2, cy + h // 2, cx - w // 2, cx + w // 2))


class RecordingCanvas:
    """A from-the-README re-implementation of Omost's Canvas, used only on the trusted fixtures."""

    def __init__(self):
        self.glob = None
        self.items = []

    def set_global_description(self, description, detailed_descriptions, tags, HTML_web_color_name):
        self.glob = dict(prefixes=[description], suffixes=detailed_descriptions + [tags], color=HTML_web_color_name)

    def add_local_description(self, location, offset, area, distance_to_viewer, description, detailed_descriptions,
                              tags, atmosphere, style, quality_meta, HTML_web_color_name):
        self.items.append(dict(rect=expected_rect(location, offset, area), distance=distance_to_viewer,
                               prefixes=self.glob['prefixes'] + [description],
                               suffixes=detailed_descriptions + [tags, atmosphere, style, quality_meta],
                               color=HTML_web_color_name))


def omost_reference(code):
    env = {'Canvas': RecordingCanvas}
    exec(code, {}, env)  # trusted test fixture only: this is the reference, not the code under test
    ref = env['canvas']
    clean = lambda xs: [x.strip(',. ') + '.' for x in xs]  # noqa: E731  (Omost's safe_str)
    items = sorted(ref.items, key=lambda d: d['distance'], reverse=True)
    return ref.glob, items, clean


@pytest.mark.parametrize('name', ['dragon_battle.canvas.py', 'dinosaur_edit.canvas.py'])
def test_fixture_matches_omost(name):
    code = read_fixture(name)
    glob, items, clean = omost_reference(code)
    result = parse_canvas(code)
    assert result.warnings == []
    canvas = result.canvas
    assert len(canvas.regions) == 5 and len(canvas.local_regions) == 4
    g = canvas.global_region
    assert g.rect == (0, 90, 0, 90) and g.is_global
    assert g.prefixes == clean(glob['prefixes']) and g.suffixes == clean(glob['suffixes'])
    assert g.color == COLORS[glob['color']]
    for region, item in zip(canvas.local_regions, items):
        assert region.rect == item['rect']
        assert region.distance_to_viewer == item['distance']
        assert region.prefixes == clean(item['prefixes'])
        assert region.suffixes == clean(item['suffixes'])
        assert region.color == COLORS[item['color']]


def test_dragon_order_and_rects_by_hand(dragon_code):
    canvas = parse_canvas(dragon_code).canvas
    # far to near; the two regions at distance 5.0 keep their code order (stable sort)
    assert [r.description for r in canvas.local_regions] == [
        'A stormy sky with flashes of lightning.', 'A mighty dragon.', 'A group of fierce warriors.',
        'A debris-covered battlefield.']
    assert [r.rect for r in canvas.local_regions] == [(0, 45, 0, 90), (10, 80, 10, 80), (15, 75, 0, 60),
                                                      (45, 90, 0, 90)]


def test_all_729_boxes():
    for loc in CENTRES:
        for off in OFFS:
            for area in SIZES:
                code = ("canvas = Canvas()\ncanvas.set_global_description('g', [], 't', 'black')\n"
                        f"canvas.add_local_description({loc!r}, {off!r}, {area!r}, 1.0, 'd', [], 't', 'a', 's', 'q', "
                        "'red')\n")
                assert parse_canvas(code).canvas.local_regions[0].rect == expected_rect(loc, off, area)


def test_whole_reply_with_prose_and_fence(dragon_code):
    reply = 'Sure! Here is the canvas:\n\n```python\n' + dragon_code + '\n```\n\nEnjoy the image.'
    assert parse_canvas(reply).canvas == parse_canvas(dragon_code).canvas


def test_positional_arguments_and_implicit_concatenation():
    code = ("canvas = Canvas()\ncanvas.set_global_description('A ' 'cat.', ['x'], 'tags', 'white')\n"
            "canvas.add_local_description('on the left', 'no offset', 'a small square area', 2, 'Left' ' thing', "
            "['d1', 'd2'], 'tg', 'atm', 'sty', 'qm', 'blue')\n")
    canvas = parse_canvas(code).canvas
    assert canvas.global_region.prefixes == ['A cat.']
    r = canvas.local_regions[0]
    assert r.prefixes == ['A cat.', 'Left thing.'] and r.suffixes == ['d1.', 'd2.', 'tg.', 'atm.', 'sty.', 'qm.']
    assert r.distance_to_viewer == 2.0 and r.color == (0, 0, 255)


def test_repairs_are_warnings():
    code = ("canvas = Canvas()\ncanvas.set_global_description(description='g', detailed_descriptions=[], tags='t', "
            "HTML_web_color_name='Dark Slate Gray')\n"
            "canvas.add_local_description(location='On the lef', offset='slightly to the uper', "
            "area='a larg square area', distance_to_viewer=1.5, description='d', detailed_descriptions=[], tags='t', "
            "atmosphere='a', style='s', quality_meta='q', HTML_web_color_name='fire brick')\n")
    result = parse_canvas(code)
    r = result.canvas.local_regions[0]
    assert (r.location, r.offset, r.area, r.color_name) == ('on the left', 'slightly to the upper',
                                                           'a large square area', 'firebrick')
    assert result.canvas.global_region.color_name == 'darkslategray'
    assert len(result.warnings) == 5 and all('corrected' in w for w in result.warnings)


@pytest.mark.parametrize('args, field', [
    ("distance_to_viewer=-1.0", 'distance_to_viewer'),
    ("distance_to_viewer=0", 'distance_to_viewer'),
    ("distance_to_viewer=1e999", 'distance_to_viewer'),
    ("distance_to_viewer='far'", 'distance_to_viewer'),
    ("distance_to_viewer=True", 'distance_to_viewer'),
])
def test_bad_distance_names_region_and_field(args, field):
    code = ("canvas = Canvas()\ncanvas.set_global_description('g', [], 't', 'black')\n"
            f"canvas.add_local_description(location='in the center', offset='no offset', area='a small square area', "
            f"{args}, description='The cat.', detailed_descriptions=[], tags='t', atmosphere='a', style='s', "
            "quality_meta='q', HTML_web_color_name='red')\n")
    with pytest.raises(CanvasError) as e:
        parse_canvas(code)
    assert 'region 1' in str(e.value) and "'The cat.'" in str(e.value) and field in str(e.value)
    assert e.value.line == 3


def test_wrong_type_names_field():
    code = "canvas = Canvas()\ncanvas.set_global_description('g', 'not a list', 't', 'black')\n"
    with pytest.raises(CanvasError, match="global description: field 'detailed_descriptions' must be a list"):
        parse_canvas(code)


def test_unknown_location_is_error():
    code = ("canvas = Canvas()\ncanvas.set_global_description('g', [], 't', 'black')\n"
            "canvas.add_local_description('zzzz qqqq', 'no offset', 'a small square area', 1.0, 'd', [], 't', 'a', "
            "'s', 'q', 'red')\n")
    with pytest.raises(CanvasError, match="location 'zzzz qqqq' is not a valid value"):
        parse_canvas(code)


def test_cut_off_reply_keeps_complete_calls(dragon_code):
    cut = dragon_code[:dragon_code.index("distance_to_viewer=10.0") + 10]  # inside the 4th local call
    result = parse_canvas('```python\n' + cut)
    assert [r.description for r in result.canvas.local_regions] == ['A mighty dragon.', 'A group of fierce warriors.']
    assert any('cut off' in w and 'dropped' in w for w in result.warnings)


def test_cut_off_inside_a_string(dragon_code):
    cut = dragon_code[:dragon_code.index("'The dragon is a massive") + 12]
    result = parse_canvas(cut)
    assert len(result.canvas.local_regions) == 1 and any('cut off' in w for w in result.warnings)


def test_ignored_statements_are_reported():
    code = ("import os\ncanvas = Canvas()\nprint('hi')\ncanvas.set_global_description('g', [], 't', 'black')\n"
            "canvas.color = 5\n")
    result = parse_canvas(code)
    assert result.canvas.global_region.description == 'g'
    assert result.warnings == ['line 1: ignored an import (never executed)',
                               'line 3: ignored a call that is not a Canvas method (never executed)',
                               'line 5: ignored an assignment (never executed)']


def test_masks_equal_torch_nearest_exact(dragon_code):
    canvas = parse_canvas(dragon_code).canvas
    for h, w in [(64, 64), (13, 21), (1, 1), (96, 72), (7, 160)]:
        expected = []
        for r in canvas.regions:
            m = torch.zeros(90, 90)
            top, bottom, left, right = r.rect
            m[top:bottom, left:right] = 1
            expected.append(torch.nn.functional.interpolate(m[None, None], (h, w), mode='nearest-exact')[0, 0] > 0.5)
        assert np.array_equal(canvas.masks(h, w), torch.stack(expected).numpy())
    assert canvas.masks(5, 9)[0].all()


def test_masks_equal_torch_nearest_exact_at_every_size_to_512(dragon_code):
    # Every height with a fixed width and every width with a fixed height (the resize is separable, so this
    # covers every (h, w) pair); torch rounds its scale to float32, which float64 arithmetic gets wrong at
    # 33 of these sizes (33, 39, 73, ...). Nearest-exact is a gather: interpolating a 90x90 map of pixel numbers
    # gives the source pixel of every output pixel, and each 90x90 mask resized by torch is that mask gathered
    # there (one interpolation per size instead of one per region).
    rects = [r.rect for r in parse_canvas(dragon_code).canvas.regions]
    rects += [(0, 90, k, k + 1) for k in range(90)] + [(k, k + 1, 0, 90) for k in range(90)]  # every grid line
    grid = np.zeros((len(rects), 90 * 90), dtype=bool)
    for i, (top, bottom, left, right) in enumerate(rects):
        grid[i].reshape(90, 90)[top:bottom, left:right] = True
    numbers = torch.arange(90 * 90, dtype=torch.float32).reshape(1, 1, 90, 90)

    def torch_masks(h, w):
        source = torch.nn.functional.interpolate(numbers, (h, w), mode='nearest-exact')[0, 0].long().numpy()
        return grid[:, source]

    wrong = [n for n in range(1, 513)
             if not (np.array_equal(region_masks(rects, n, 3), torch_masks(n, 3))
                     and np.array_equal(region_masks(rects, 3, n), torch_masks(3, n)))]
    assert wrong == []


def test_sketch_is_omost_initial_latent(dragon_code):
    canvas = parse_canvas(dragon_code).canvas
    # Omost: global colour, then regions far to near painted 0.7 * colour + 0.3 * below, in float, uint8 at the end.
    grid = np.zeros((90, 90, 3), np.float32) + np.array(COLORS['darkslategray'], np.float32)
    for r in canvas.local_regions:
        a, b, c, d = r.rect
        grid[a:b, c:d] = 0.7 * np.array(r.color, np.float32) + 0.3 * grid[a:b, c:d]
    grid = grid.clip(0, 255).astype(np.uint8)
    assert np.array_equal(sketch_grid(canvas), grid)
    # a pixel under sky (far), dragon and warriors: 0.7*warriors + 0.3*(0.7*dragon + 0.3*(0.7*sky + 0.3*global))
    x = np.array(COLORS['darkslategray'], np.float32)
    for name in ('midnightblue', 'firebrick', 'darkgoldenrod'):
        x = 0.7 * np.array(COLORS[name], np.float32) + 0.3 * x
    assert np.array_equal(sketch_grid(canvas)[20, 30], x.astype(np.uint8))
    # resized and blurred exactly as Omost's pipeline does it
    t = torch.from_numpy(grid)[None].movedim(-1, 1).float()
    for blur, (hh, ww) in [(0, (77, 123)), (40, (480, 640)), (8, (64, 64))]:
        x = t if blur == 0 else torch.nn.functional.avg_pool2d(
            torch.nn.functional.pad(t, (blur,) * 4, mode='reflect'), kernel_size=(2 * blur + 1,) * 2, stride=(1, 1))
        ref = torch.nn.functional.interpolate(x, (hh, ww))[0].movedim(0, -1).numpy()
        assert np.allclose(sketch_array(canvas, ww, hh, blur), ref, atol=1e-3)


def test_overlay_preview_draws_boxes(dragon_code):
    canvas = parse_canvas(dragon_code).canvas
    image = overlay_preview(canvas, 896, 1152)
    assert image.size == (398, 512)
    plain = np.asarray(sketch_array(canvas, 398, 512)).astype(np.uint8)
    assert (np.asarray(image) != plain).any(axis=-1).mean() > 0.02  # outlines and labels were drawn


def test_json_round_trip_is_lossless(dragon_code):
    canvas = parse_canvas(dragon_code).canvas
    data = json.loads(json.dumps(canvas.to_json()))
    assert data['format'] == 'omost-canvas' and data['version'] == 1
    assert [r['rect'] for r in data['regions']] == [list(r.rect) for r in canvas.local_regions]
    assert canvas_from_json(data).canvas == canvas
    assert load_canvas(json.dumps(data)).canvas == canvas
    assert parse_canvas(canvas.to_code()).canvas == canvas


def test_comfyui_conditioning_json():
    raw = json.loads(read_fixture('comfyui_omost_conditioning.json'))
    canvas = load_canvas(read_fixture('comfyui_omost_conditioning.json')).canvas
    assert len(canvas.regions) == len(raw)
    for region, item in zip(canvas.regions, raw):
        assert list(region.rect) == item['rect'] and region.prefixes == item['prefixes']
        assert region.suffixes == item['suffixes'] and list(region.color) == item['color']
    assert canvas_from_json(canvas.to_json()).canvas == canvas


@pytest.mark.parametrize('bad, message', [
    ({'format': 'omost-canvas', 'version': 99, 'global': {}, 'regions': []}, 'version 99 is not supported'),
    ({'format': 'x'}, 'not a canvas JSON'),
    ([{'rect': [0, 90, 0, 90], 'prefixes': 'nope'}], 'prefixes must be a list'),
    ([{'rect': [0, 90, 0, 90], 'prefixes': ['a']}, {'rect': [5, 5, 0, 9], 'prefixes': ['b']}], 'is empty'),
    ('{"format": ', 'not valid JSON'),
])
def test_bad_json(bad, message):
    with pytest.raises(CanvasError, match=message):
        load_canvas(bad if not isinstance(bad, str) else bad)


def test_error_carries_position():
    with pytest.raises(CanvasError) as e:
        parse_canvas("canvas = Canvas()\ncanvas.set_global_description(f'{x}', [], 't', 'black')\n")
    assert e.value.line == 2 and e.value.col == 31 and 'f-strings are not allowed' in str(e.value)
    assert str(e.value).startswith('line 2, column 31: ')
    assert math.isfinite(e.value.col)
