"""Omost's box vocabulary as geometry, for the region editor: snapping a drawn box to the nearest of the 729
(location x offset x area) boxes, moving and nudging on the 9 x 9 grid of box centres, and the readable phrase.

`javascript/omost_editor.js` mirrors `snap_resize`, `snap_move`, `nudge` and `box_rect` so the phrase can follow the
mouse while dragging; tests/test_ui_browser.py checks that both agree on every box for several aspect ratios.
Keep the two in step: same vocabulary order, same arithmetic, first minimum wins.
"""

from __future__ import annotations

import math

from lib_omost.canvas import AREAS, GRID, LOCATIONS, OFFSETS, omost_rect

# Box centres on one axis: 15/45/75 with -10/0/+10 offsets, i.e. 5, 15, ..., 85 (each from one pair).
CENTRE_STEP = 10
CENTRES = tuple(range(5, GRID, CENTRE_STEP))
_LOCATION_AT = {xy: name for name, xy in LOCATIONS.items()}
_OFFSET_AT = {dxy: name for name, dxy in OFFSETS.items()}


def boxes() -> list:
    """All 729 (location, offset, area, rect) in vocabulary order; rect is (top, bottom, left, right), clipped."""
    return [(loc, off, area, omost_rect(loc, off, area)) for loc in LOCATIONS for off in OFFSETS for area in AREAS]


_BOXES = boxes()


def box_rect(location: str, offset: str, area: str) -> tuple:
    return omost_rect(location, offset, area)


def centre(location: str, offset: str) -> tuple:
    """The unclipped box centre (x, y) on the 90 grid."""
    (x, y), (dx, dy) = LOCATIONS[location], OFFSETS[offset]
    return x + dx, y + dy


def _from_centre_index(ix: int, iy: int) -> tuple:
    """(location, offset) of the centre CENTRES[ix], CENTRES[iy]."""
    bases, shifts = (15, 45, 75), (-CENTRE_STEP, 0, CENTRE_STEP)
    return (_LOCATION_AT[(bases[ix // 3], bases[iy // 3])], _OFFSET_AT[(shifts[ix % 3], shifts[iy % 3])])


def _centre_index(c: float) -> int:
    # floor(x + 0.5), not round(): Python rounds halves to even, JavaScript's Math.round up; this is the same in both
    i = math.floor((c - CENTRES[0]) / CENTRE_STEP + 0.5)
    return max(0, min(len(CENTRES) - 1, i))


def snap_move(cx: float, cy: float) -> tuple:
    """(location, offset) whose centre is nearest to (cx, cy): a moved box keeps its area."""
    return _from_centre_index(_centre_index(cx), _centre_index(cy))


def nudge(location: str, offset: str, dx: int, dy: int) -> tuple:
    """(location, offset) moved by dx, dy centre steps (one step = 10 grid units), stopping at the edges."""
    x, y = centre(location, offset)
    return _from_centre_index(max(0, min(8, _centre_index(x) + dx)), max(0, min(8, _centre_index(y) + dy)))


def snap_resize(rect, width: int, height: int) -> tuple:
    """(location, offset, area) of the box nearest to `rect` (top, bottom, left, right on the 90 grid, any floats).

    Distance: the sum of squared edge distances in pixels of a width x height image (Omost stretches its grid to
    the image, so one grid unit is width/90 pixels across and height/90 down). Ties: the first in vocabulary order.
    """
    top, bottom, left, right = (float(v) for v in rect)
    sx, sy = width / GRID, height / GRID
    best, best_cost = None, None
    for loc, off, area, (t, b, l, r) in _BOXES:
        d1, d2, d3, d4 = (top - t) * sy, (bottom - b) * sy, (left - l) * sx, (right - r) * sx
        cost = d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4
        if best_cost is None or cost < best_cost:
            best, best_cost = (loc, off, area), cost
    return best


def phrase(location: str, offset: str, area: str) -> str:
    """The words the LLM reads: 'on the left, slightly to the upper, a large vertical area'."""
    return ', '.join([location] + ([] if offset == 'no offset' else [offset]) + [area])
