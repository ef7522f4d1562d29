"""The editor's core: snapping to Omost's 729 boxes, Canvas code in the LLM's format, the compact infotext form, and
the canvas of a reply that is still streaming."""

import ast
import base64
import zlib

import pytest
from conftest import read_fixture

from lib_omost import layout
from lib_omost.canvas import AREAS, CanvasError, canvas_to_infotext, load_canvas, omost_rect, replace_code
from lib_omost.canvas_stream import CanvasStream

DRAGON = read_fixture('dragon_battle.canvas.py')
ASPECTS = [(1024, 1024), (1344, 768), (768, 1344), (1536, 640)]


def test_the_vocabulary_is_729_boxes_in_order():
    boxes = layout.boxes()
    assert len(boxes) == 9 * 9 * 9
    assert [b[:3] for b in boxes[:2]] == [('in the center', 'no offset', 'a small square area'),
                                          ('in the center', 'no offset', 'a small vertical area')]
    assert all(rect == omost_rect(*b) for *b, rect in boxes)


@pytest.mark.parametrize('width,height', ASPECTS)
def test_every_box_snaps_to_itself_and_a_nudged_drawing_snaps_back(width, height):
    for loc, off, area, rect in layout.boxes():
        assert omost_rect(*layout.snap_resize(rect, width, height)) == rect
        top, bottom, left, right = rect
        jitter = (top + 1.5, bottom - 1.5, left - 1.5 if left else 0, right + 1.5 if right < 90 else 90)
        snapped = omost_rect(*layout.snap_resize(jitter, width, height))
        assert max(abs(a - b) for a, b in zip(snapped, rect)) <= 5  # the next box is >= 5 grid units away


def test_snapping_measures_in_pixels_so_the_aspect_ratio_decides():
    # A 52 x 58 box: 4 grid units too tall for the small square (50 x 50 would be 2 wide, 8 tall), 2 too wide for
    # the small vertical (40 x 60 would be 12 wide, 2 tall). Across is cheap on a tall image, expensive on a wide one.
    drawn = (16, 74, 19, 71)
    wide = layout.snap_resize(drawn, 1536, 640)
    tall = layout.snap_resize(drawn, 640, 1536)
    assert wide != tall
    assert AREAS[wide[2]][0] > AREAS[tall[2]][0] or AREAS[wide[2]][1] < AREAS[tall[2]][1]


def test_moving_keeps_the_area_and_nudging_steps_through_all_nine_centres():
    assert layout.snap_move(14, 46) == ('on the left', 'no offset')
    assert layout.snap_move(-30, 200) == ('on the bottom-left', 'slightly to the lower-left')
    assert layout.snap_move(40, 40) == ('in the center', 'no offset')  # halfway between 35 and 45 goes up
    assert layout.snap_move(39.9, 39.9) == ('in the center', 'slightly to the upper-left')
    x = []
    loc, off = 'on the left', 'slightly to the left'
    for _ in range(10):
        x.append(layout.centre(loc, off)[0])
        loc, off = layout.nudge(loc, off, 1, 0)
    assert x == [5, 15, 25, 35, 45, 55, 65, 75, 85, 85]  # one grid step each, stopping at the edge
    assert layout.nudge('on the top', 'no offset', 0, -1) == ('on the top', 'slightly to the upper')


def test_the_phrase_reads_like_omost():
    assert layout.phrase('on the left', 'slightly to the upper', 'a large vertical area') == \
        'on the left, slightly to the upper, a large vertical area'
    assert layout.phrase('in the center', 'no offset', 'a small square area') == 'in the center, a small square area'


def test_code_is_written_like_the_llm_writes_it_and_round_trips():
    canvas = load_canvas(DRAGON).canvas
    code = canvas.to_code()
    blocks = code.split('\n# ')
    assert blocks[0].startswith('# Initialize the canvas\ncanvas = Canvas()')
    for block in blocks[1:]:  # every call with its comment exactly as the LLM wrote it (regions far to near)
        assert '# ' + block.rstrip('\n') in DRAGON
    assert load_canvas(code).canvas == canvas and load_canvas(code).warnings == []
    assert load_canvas(code).canvas.to_code() == code
    ast.parse(code)


def test_region_comments_follow_the_description():
    code = load_canvas(DRAGON).canvas.to_code()
    assert '# Add a mighty dragon.\ncanvas.add_local_description(' in code
    canvas = load_canvas(DRAGON).canvas
    canvas.local_regions[0].description = 'UFO over a city.'
    canvas.local_regions[1].description = ''
    code = canvas.to_code()
    assert '# Add UFO over a city.\n' in code and '# Add a region.\n' in code


def test_replace_code_keeps_the_words_around_the_block():
    reply = 'Sure, here it is:\n\n```python\n' + DRAGON + '```\nEnjoy!'
    edited = replace_code(reply, 'canvas = Canvas()\n')
    assert edited == 'Sure, here it is:\n\n```python\ncanvas = Canvas()\n```\nEnjoy!'
    assert replace_code(DRAGON, 'canvas = Canvas()\n') == 'canvas = Canvas()\n'


def test_the_infotext_form_is_compact_lossless_and_safe():
    canvas = load_canvas(DRAGON).canvas
    text = canvas_to_infotext(canvas)
    assert text.startswith('omz1.') and not set(text) & set('",:\n ')
    import json
    assert len(text) < len(json.dumps(canvas.to_json())) / 3
    assert load_canvas(text).canvas == canvas
    bomb = 'omz1.' + base64.urlsafe_b64encode(zlib.compress(b'{' + b' ' * 50_000_000)).decode()
    with pytest.raises(CanvasError, match='larger than'):
        load_canvas(bomb)
    with pytest.raises(CanvasError, match='compressed canvas'):
        load_canvas('omz1.not*base64')


def reply_of(code):
    return 'Sure. Here is the canvas:\n\n```python\n' + code.strip() + '\n```\nDone.'


def test_a_streaming_reply_shows_each_call_as_soon_as_it_closes():
    reply = reply_of(DRAGON)
    final = load_canvas(reply).canvas
    closes = [i for i in range(len(reply)) if reply.startswith('\n)', i)]
    stream, seen = CanvasStream(), {}
    for end in range(1, len(reply) + 1, 3):  # 3 characters per token
        if stream.feed(reply[:end]):
            seen[len(stream.result.canvas.local_regions)] = end
    assert sorted(seen) == list(range(len(final.local_regions) + 1))
    for k, close in enumerate(closes):  # region k appears within one token of its closing parenthesis line
        assert close + 2 <= seen[k] <= close + 2 + 3
    assert stream.result.canvas == final
    assert load_canvas(stream.code).canvas == final


def test_a_cut_reply_keeps_what_was_complete_and_the_work_is_per_statement(monkeypatch):
    reply = reply_of(DRAGON)
    cut = reply[:reply.index('A mighty dragon')]  # inside the second region's call
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, 'parse', lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    stream = CanvasStream()
    for end in range(1, len(cut) + 1):  # one character per token: thousands of feeds
        stream.feed(cut[:end])
    assert [r.description for r in stream.result.canvas.local_regions] == ['A group of fierce warriors.']
    assert len(parses) <= 4  # once per complete statement, not once per token


def test_bad_calls_and_bare_code_while_streaming():
    stream = CanvasStream()
    bad = DRAGON.replace("location='on the left'", "location=open('x')")
    assert stream.feed(bad)  # bare code, no fence; the bad region is left out, the others are shown
    assert 'A group of fierce warriors.' not in [r.description for r in stream.result.canvas.local_regions]
    assert len(stream.result.canvas.local_regions) == 3
    assert not CanvasStream().feed('I cannot draw that.\n')

