"""Omost's `Canvas`, read as data.

Omost's LLMs answer with Python-like code that calls `Canvas` methods. Omost itself runs that code with
`exec()`; here it is parsed with `ast` and only three statement shapes are understood:

    canvas = Canvas()
    canvas.set_global_description(...literal arguments...)
    canvas.add_local_description(...literal arguments...)

Nothing in the input is ever executed. The geometry, the repairs and the sub-prompts follow Omost's
`lib_omost/canvas.py` (lllyasviel/Omost@731e749) exactly.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import json
import math
import re
import tokenize
import warnings as _warnings

import numpy as np

from lib_omost.colors import HTML_COLORS

GRID = 90  # Omost lays every canvas out on a 90 x 90 grid.

LOCATIONS = {  # centre (x, y) on the grid
    'in the center': (45, 45), 'on the left': (15, 45), 'on the right': (75, 45),
    'on the top': (45, 15), 'on the bottom': (45, 75), 'on the top-left': (15, 15),
    'on the top-right': (75, 15), 'on the bottom-left': (15, 75), 'on the bottom-right': (75, 75),
}
OFFSETS = {  # (dx, dy)
    'no offset': (0, 0), 'slightly to the left': (-10, 0), 'slightly to the right': (10, 0),
    'slightly to the upper': (0, -10), 'slightly to the lower': (0, 10),
    'slightly to the upper-left': (-10, -10), 'slightly to the upper-right': (10, -10),
    'slightly to the lower-left': (-10, 10), 'slightly to the lower-right': (10, 10),
}
AREAS = {  # (w, h)
    'a small square area': (50, 50), 'a small vertical area': (40, 60), 'a small horizontal area': (60, 40),
    'a medium-sized square area': (60, 60), 'a medium-sized vertical area': (50, 80),
    'a medium-sized horizontal area': (80, 50), 'a large square area': (70, 70),
    'a large vertical area': (60, 90), 'a large horizontal area': (90, 60),
}

GLOBAL_FIELDS = ('description', 'detailed_descriptions', 'tags', 'HTML_web_color_name')
LOCAL_FIELDS = ('location', 'offset', 'area', 'distance_to_viewer', 'description', 'detailed_descriptions', 'tags',
                'atmosphere', 'style', 'quality_meta', 'HTML_web_color_name')
# Fields an LLM sometimes forgets; a missing one becomes empty (with a warning) instead of failing the canvas.
OPTIONAL_FIELDS = {'detailed_descriptions': [], 'tags': '', 'atmosphere': '', 'style': '', 'quality_meta': '',
                   'offset': 'no offset'}

# Limits that keep hostile or runaway input cheap to reject.
MAX_INPUT_CHARS = 512 * 1024
MAX_REGIONS = 64
MAX_STRING_CHARS = 8192
MAX_LIST_ITEMS = 128
MAX_NESTING = 16

JSON_FORMAT = 'omost-canvas'
JSON_VERSION = 1


class CanvasError(ValueError):
    """The one error type of the canvas core: a human message plus, where known, the line and column."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        self.message = message
        self.line = line
        self.col = col
        super().__init__(str(self))

    def __str__(self):
        if self.line is None:
            return self.message
        where = f'line {self.line}' + (f', column {self.col}' if self.col is not None else '')
        return f'{where}: {self.message}'


@dataclasses.dataclass
class Region:
    """One region of a canvas. The global region covers the whole grid and has no location fields."""
    description: str
    detailed_descriptions: list
    tags: str
    color_name: str
    color: tuple  # (r, g, b)
    rect: tuple  # (top, bottom, left, right) on the 90 grid
    prefixes: list
    suffixes: list
    is_global: bool = False
    raw: bool = False  # given only as rect + sub-prompts (ComfyUI_omost JSON): no original Canvas fields
    location: str | None = None
    offset: str | None = None
    area: str | None = None
    distance_to_viewer: float | None = None
    atmosphere: str | None = None
    style: str | None = None
    quality_meta: str | None = None

    @property
    def label(self) -> str:
        return self.description or (self.prefixes[-1] if self.prefixes else '')


@dataclasses.dataclass
class Canvas:
    global_region: Region
    local_regions: list  # far to near

    @property
    def regions(self) -> list:
        """The global region first, then the local regions far to near (Omost's `bag_of_conditions` order)."""
        return [self.global_region] + list(self.local_regions)

    def masks(self, height: int, width: int) -> np.ndarray:
        """Region masks (R, height, width) bool, Omost's 90x90 rects resized with `nearest-exact`."""
        return region_masks([r.rect for r in self.regions], height, width)

    def to_json(self) -> dict:
        return canvas_to_json(self)

    def to_code(self) -> str:
        return canvas_to_code(self)


@dataclasses.dataclass
class ParseResult:
    canvas: Canvas
    warnings: list


def closest_name(value: str, options, field: str, where: str, warnings: list) -> str:
    """Omost's repair: case-insensitive closest match with difflib (cutoff 0.5)."""
    lowered = value.lower()
    match = difflib.get_close_matches(lowered, list(options), n=1, cutoff=0.5)
    if not match:
        raise CanvasError(f'{where}: {field} {value!r} is not a valid value and nothing close to it is')
    if match[0] != lowered:
        warnings.append(f'{where}: corrected {field} {value!r} -> {match[0]!r}')
    return match[0]


def safe_str(x: str) -> str:
    return x.strip(',. ') + '.'


def omost_rect(location: str, offset: str, area: str) -> tuple:
    """(top, bottom, left, right) on the 90 grid, clipped to [0, 90], exactly as Omost computes it."""
    xb, yb = LOCATIONS[location]
    xo, yo = OFFSETS[offset]
    w, h = AREAS[area]
    rect = (yb + yo - h // 2, yb + yo + h // 2, xb + xo - w // 2, xb + xo + w // 2)
    return tuple(max(0, min(GRID, i)) for i in rect)


def _nearest_exact_index(out_size: int) -> np.ndarray:
    """Source row of each output row under torch's `nearest-exact` (what Omost resizes its masks with).

    torch (aten UpSample.h, `nearest_neighbor_exact_compute_source_index`) computes the scale in float32,
    `float(in) / out`, multiplies `(dst + 0.5)` by it in double and floors the product rounded to float32:
    src = min(floorf(float((dst + 0.5) * scale)), in - 1). Exact float64 arithmetic differs at sizes such as 33,
    39 and 73, so the same roundings are done here."""
    scale = np.float64(np.float32(GRID) / np.float32(out_size))
    product = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale).astype(np.float32)
    return np.minimum(np.floor(product).astype(np.int64), GRID - 1)


def region_masks(rects, height: int, width: int) -> np.ndarray:
    """Masks (R, height, width) bool for rects on the 90 grid, mapped onto the actual aspect ratio."""
    if height < 1 or width < 1:
        raise CanvasError(f'mask size must be positive, got {height}x{width}')
    ys = _nearest_exact_index(height)
    xs = _nearest_exact_index(width)
    out = np.zeros((len(rects), height, width), dtype=bool)
    for i, (top, bottom, left, right) in enumerate(rects):
        rows = (ys >= top) & (ys < bottom)
        cols = (xs >= left) & (xs < right)
        out[i] = rows[:, None] & cols[None, :]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading code


def extract_code(text: str) -> str:
    """The canvas code in an LLM reply: the ```python fence when there is one (closed or cut off), else all."""
    fence = re.search(r'```[ \t]*(?:python|py)?[ \t]*\r?\n(.*?)(?:\r?\n[ \t]*```|\Z)', text, re.DOTALL | re.IGNORECASE)
    if fence and 'canvas' in fence.group(1).lower():
        return fence.group(1)
    for block in re.finditer(r'```[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)', text, re.DOTALL):
        if 'Canvas' in block.group(1):
            return block.group(1)
    return text


def _check_nesting(code: str):
    """Reject deep bracket nesting before `ast` sees it (no RecursionError, no slow parse)."""
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.OP:
                if tok.string in '([{':
                    depth += 1
                    if depth > MAX_NESTING:
                        raise CanvasError(f'brackets nested deeper than {MAX_NESTING} levels', *tok.start)
                elif tok.string in ')]}':
                    depth -= 1
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # ast.parse reports these with a position


def _complete_statements_end(code: str) -> int | None:
    """Offset just after the last complete logical line, for replies cut off mid-call."""
    lines = code.splitlines(keepends=True)
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.NEWLINE:
                last = tok.end
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if last is None:
        return None
    row, col = last
    return sum(len(x) for x in lines[:row - 1]) + col


def _parse_module(code: str, warnings: list) -> ast.Module:
    _check_nesting(code)
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter('ignore')  # invalid escape sequences and the like are not our user's problem
            return ast.parse(code, mode='exec')
    except (SyntaxError, ValueError) as first:
        line = getattr(first, 'lineno', None)
        end = _complete_statements_end(code)
        if end is not None:
            head = code[:end]
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter('ignore')
                    module = ast.parse(head, mode='exec')
            except (SyntaxError, ValueError):
                module = None
            if module is not None and head.strip():
                dropped_line = head.count('\n') + 1
                tail = code[end:].strip().splitlines()
                what = tail[0][:60] if tail else ''
                warnings.append(f'line {dropped_line}: the reply is cut off; dropped the incomplete statement '
                                f'starting {what!r} (every complete call before it is kept)')
                return module
        msg = getattr(first, 'msg', str(first))
        raise CanvasError(f'not valid Canvas code: {msg}', line, getattr(first, 'offset', None)) from None
    except (RecursionError, MemoryError):
        raise CanvasError('the code is nested too deeply to read') from None


_UNSUPPORTED = {
    ast.JoinedStr: 'f-strings are not allowed',
    ast.Call: 'calls are not allowed inside arguments',
    ast.Name: 'names are not allowed, only literal values',
    ast.Attribute: 'attribute access is not allowed',
    ast.BinOp: 'expressions are not allowed, only literal values',
    ast.Subscript: 'subscripts are not allowed',
    ast.ListComp: 'comprehensions are not allowed',
    ast.GeneratorExp: 'comprehensions are not allowed',
    ast.Lambda: 'lambdas are not allowed',
}


def _literal(node, where: str):
    """A literal argument: str, int, float, or a list/tuple of those; anything else is an error."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float))):
        if isinstance(node.value, str) and len(node.value) > MAX_STRING_CHARS:
            raise CanvasError(f'{where}: string longer than {MAX_STRING_CHARS} characters', node.lineno,
                              node.col_offset + 1)
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        if len(node.elts) > MAX_LIST_ITEMS:
            raise CanvasError(f'{where}: list longer than {MAX_LIST_ITEMS} items', node.lineno, node.col_offset + 1)
        return [_literal(e, where) for e in node.elts]
    reason = next((m for t, m in _UNSUPPORTED.items() if isinstance(node, t)), 'only literal values are allowed')
    raise CanvasError(f'{where}: {reason}', getattr(node, 'lineno', None),
                      getattr(node, 'col_offset', -1) + 1 if hasattr(node, 'col_offset') else None)


def _call_arguments(call: ast.Call, names: tuple, where: str, warnings: list) -> dict:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise CanvasError(f'{where}: * and ** arguments are not allowed', call.lineno, call.col_offset + 1)
    if len(call.args) > len(names):
        raise CanvasError(f'{where}: too many positional arguments ({len(call.args)} > {len(names)})',
                          call.lineno, call.col_offset + 1)
    nodes = dict(zip(names, call.args))
    for kw in call.keywords:
        if kw.arg not in names:
            warnings.append(f'line {kw.value.lineno}: {where}: ignored unknown argument {kw.arg!r}')
            continue
        if kw.arg in nodes:
            raise CanvasError(f'{where}: argument {kw.arg!r} given twice', kw.value.lineno, kw.value.col_offset + 1)
        nodes[kw.arg] = kw.value
    label = nodes.get('description')
    if not where.startswith('global') and isinstance(label, ast.Constant) and isinstance(label.value, str):
        where = f'{where} ({label.value[:40]!r})'
    return {name: (_literal(node, f'{where}: field {name!r}'), node) for name, node in nodes.items()}


def _describe(stmt: ast.stmt) -> str:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return 'an import'
    if isinstance(stmt, ast.ClassDef):
        return f'a class definition ({stmt.name})'
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f'a function definition ({stmt.name})'
    if isinstance(stmt, (ast.For, ast.While, ast.AsyncFor)):
        return 'a loop'
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return 'an assignment'
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return 'a call that is not a Canvas method'
    return f'a {type(stmt).__name__} statement'


class _Builder:
    """Collects whitelisted calls in order, with Omost's validation and repair."""

    def __init__(self, warnings: list):
        self.warnings = warnings
        self.global_args = None
        self.local_args = []  # (values, call node)
        self.started = False

    def reset(self, stmt):
        if self.started and (self.global_args or self.local_args):
            self.warnings.append(f'line {stmt.lineno}: `canvas = Canvas()` again; the calls before it are discarded')
        self.global_args = None
        self.local_args = []
        self.started = True

    def statement(self, stmt: ast.stmt):
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # docstrings and bare strings
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and stmt.targets[0].id == 'canvas' and isinstance(stmt.value, ast.Call) \
                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == 'Canvas' \
                and not stmt.value.args and not stmt.value.keywords:
            self.reset(stmt)
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            func = stmt.value.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == 'canvas' \
                    and func.attr in ('set_global_description', 'add_local_description'):
                if func.attr == 'set_global_description':
                    if self.global_args is not None:
                        self.warnings.append(f'line {stmt.lineno}: set_global_description called again; '
                                             'the later call wins')
                    self.global_args = (_call_arguments(stmt.value, GLOBAL_FIELDS, 'global description',
                                                        self.warnings), stmt)
                else:
                    if len(self.local_args) >= MAX_REGIONS:
                        raise CanvasError(f'more than {MAX_REGIONS} local regions', stmt.lineno, stmt.col_offset + 1)
                    where = f'region {len(self.local_args) + 1}'
                    self.local_args.append((_call_arguments(stmt.value, LOCAL_FIELDS, where, self.warnings), stmt))
                return
        self.warnings.append(f'line {stmt.lineno}: ignored {_describe(stmt)} (never executed)')


def _field(values: dict, name: str, kind, where: str, node, warnings: list):
    if name not in values:
        if name in OPTIONAL_FIELDS:
            warnings.append(f'{where}: missing {name}; using {OPTIONAL_FIELDS[name]!r}')
            return OPTIONAL_FIELDS[name]
        raise CanvasError(f'{where}: missing required field {name!r}', node.lineno, node.col_offset + 1)
    value, vnode = values[name]
    line, col = getattr(vnode, 'lineno', None), getattr(vnode, 'col_offset', -1) + 1
    if kind == 'str' and not isinstance(value, str):
        raise CanvasError(f'{where}: field {name!r} must be a string, got {type(value).__name__}', line, col)
    if kind == 'list[str]' and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise CanvasError(f'{where}: field {name!r} must be a list of strings', line, col)
    if kind == 'distance':
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise CanvasError(f'{where}: field {name!r} must be a positive finite number, got {value!r}', line, col)
        value = float(value)
    return value


def build_global(values: dict, node, warnings: list) -> Region:
    where = 'global description'
    description = _field(values, 'description', 'str', where, node, warnings)
    detailed = _field(values, 'detailed_descriptions', 'list[str]', where, node, warnings)
    tags = _field(values, 'tags', 'str', where, node, warnings)
    color_name = closest_name(_field(values, 'HTML_web_color_name', 'str', where, node, warnings), HTML_COLORS,
                              'HTML_web_color_name', where, warnings)
    return Region(description=description, detailed_descriptions=list(detailed), tags=tags, color_name=color_name,
                  color=tuple(HTML_COLORS[color_name]), rect=(0, GRID, 0, GRID),
                  prefixes=[safe_str(description)], suffixes=[safe_str(x) for x in list(detailed) + [tags]],
                  is_global=True)


def build_local(values: dict, node, index: int, global_prefixes: list, warnings: list) -> Region:
    label = values.get('description', (None,))[0]
    where = f'region {index}' + (f' ({label[:40]!r})' if isinstance(label, str) else '')
    description = _field(values, 'description', 'str', where, node, warnings)
    location = closest_name(_field(values, 'location', 'str', where, node, warnings), LOCATIONS, 'location', where,
                            warnings)
    offset = closest_name(_field(values, 'offset', 'str', where, node, warnings), OFFSETS, 'offset', where, warnings)
    area = closest_name(_field(values, 'area', 'str', where, node, warnings), AREAS, 'area', where, warnings)
    distance = _field(values, 'distance_to_viewer', 'distance', where, node, warnings)
    detailed = _field(values, 'detailed_descriptions', 'list[str]', where, node, warnings)
    tags = _field(values, 'tags', 'str', where, node, warnings)
    atmosphere = _field(values, 'atmosphere', 'str', where, node, warnings)
    style = _field(values, 'style', 'str', where, node, warnings)
    quality_meta = _field(values, 'quality_meta', 'str', where, node, warnings)
    color_name = closest_name(_field(values, 'HTML_web_color_name', 'str', where, node, warnings), HTML_COLORS,
                              'HTML_web_color_name', where, warnings)
    return Region(description=description, detailed_descriptions=list(detailed), tags=tags, color_name=color_name,
                  color=tuple(HTML_COLORS[color_name]), rect=omost_rect(location, offset, area),
                  prefixes=[safe_str(x) for x in list(global_prefixes) + [description]],
                  suffixes=[safe_str(x) for x in list(detailed) + [tags, atmosphere, style, quality_meta]],
                  location=location, offset=offset, area=area, distance_to_viewer=distance, atmosphere=atmosphere,
                  style=style, quality_meta=quality_meta)


def sort_far_to_near(regions: list) -> list:
    """Omost's order: stable sort by distance_to_viewer, descending."""
    return sorted(regions, key=lambda r: r.distance_to_viewer, reverse=True)


def parse_canvas(text: str) -> ParseResult:
    """Parse Canvas code (a whole LLM reply, a fenced block or bare code) into a Canvas, never executing it."""
    if not isinstance(text, str):
        raise CanvasError(f'canvas code must be text, got {type(text).__name__}')
    if len(text) > MAX_INPUT_CHARS:
        raise CanvasError(f'input is {len(text)} characters; the limit is {MAX_INPUT_CHARS}')
    if '\x00' in text:
        raise CanvasError('input contains NUL bytes; it is not Canvas code')
    if not text.strip():
        raise CanvasError('input is empty: paste Canvas code or ask the LLM for a canvas')
    warnings = []
    code = extract_code(text)
    if 'canvas' not in code.lower():
        raise CanvasError('no Canvas code found: the reply has no `canvas.set_global_description(...)` or '
                          '`canvas.add_local_description(...)` calls')
    module = _parse_module(code, warnings)
    builder = _Builder(warnings)
    for stmt in module.body:
        builder.statement(stmt)
    if builder.global_args is None and not builder.local_args:
        raise CanvasError('no Canvas calls found: expected `canvas.set_global_description(...)` and '
                          '`canvas.add_local_description(...)`')
    if not builder.started:
        warnings.append('no `canvas = Canvas()` line; reading the calls anyway')
    if builder.global_args is None:
        raise CanvasError('the canvas has no `canvas.set_global_description(...)` call; Omost needs the global '
                          'description and colour')
    global_values, global_node = builder.global_args
    glob = build_global(global_values, global_node, warnings)
    # Omost prefixes each local region with the global description as it stood when the region was added;
    # a global call after local ones is a model error, and using the final global description is the sane repair.
    locals_ = [build_local(v, n, i + 1, glob.prefixes, warnings) for i, (v, n) in enumerate(builder.local_args)]
    return ParseResult(Canvas(glob, sort_far_to_near(locals_)), warnings)


# ---------------------------------------------------------------------------------------------------------------
# JSON form


def _region_json(r: Region) -> dict:
    if r.raw:
        d = {'rect': list(r.rect), 'prefixes': list(r.prefixes), 'suffixes': list(r.suffixes), 'color': list(r.color)}
        if not r.is_global:
            d['distance_to_viewer'] = r.distance_to_viewer
        return d
    d = {'description': r.description, 'detailed_descriptions': list(r.detailed_descriptions), 'tags': r.tags}
    if not r.is_global:
        d.update(location=r.location, offset=r.offset, area=r.area, distance_to_viewer=r.distance_to_viewer,
                 atmosphere=r.atmosphere, style=r.style, quality_meta=r.quality_meta)
    d.update(HTML_web_color_name=r.color_name, color=list(r.color), rect=list(r.rect), prefixes=list(r.prefixes),
             suffixes=list(r.suffixes))
    return d


def canvas_to_json(canvas: Canvas) -> dict:
    """The documented, versioned JSON form (see README, "Canvas JSON")."""
    return {'format': JSON_FORMAT, 'version': JSON_VERSION, 'global': _region_json(canvas.global_region),
            'regions': [_region_json(r) for r in canvas.local_regions]}


def _check_str_list(value, where, field):
    if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS or \
            not all(isinstance(v, str) and len(v) <= MAX_STRING_CHARS for v in value):
        raise CanvasError(f'{where}: {field} must be a list of strings')
    return list(value)


def _check_rect(value, where):
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= GRID for v in value)):
        raise CanvasError(f'{where}: rect must be [top, bottom, left, right], integers in 0..{GRID}')
    top, bottom, left, right = value
    if top >= bottom or left >= right:
        raise CanvasError(f'{where}: rect {list(value)} is empty')
    return tuple(value)


def _check_color(value, where):
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise CanvasError(f'{where}: color must be [r, g, b], integers in 0..255')
    return tuple(value)


def _raw_region(d: dict, where: str, is_global: bool, distance: float | None) -> Region:
    """A region given only by rect/prefixes/suffixes/color (ComfyUI_omost's conditioning JSON)."""
    prefixes = _check_str_list(d.get('prefixes'), where, 'prefixes')
    suffixes = _check_str_list(d.get('suffixes', []), where, 'suffixes')
    if not prefixes:
        raise CanvasError(f'{where}: prefixes must not be empty')
    color = _check_color(d['color'], where) if 'color' in d else (0, 0, 0)
    rect = _check_rect(d.get('rect'), where)
    return Region(description=prefixes[-1], detailed_descriptions=[], tags='', color_name='', color=color,
                  rect=rect, prefixes=prefixes, suffixes=suffixes, is_global=is_global, raw=True,
                  distance_to_viewer=distance)


def canvas_from_json(data) -> ParseResult:
    """Our canvas JSON (any supported version) or ComfyUI_omost's conditioning list."""
    warnings = []
    if isinstance(data, list):  # ComfyUI_omost: [{rect, prefixes, suffixes, color}, ...], global first, far to near
        if not data or len(data) > MAX_REGIONS + 1 or not all(isinstance(d, dict) for d in data):
            raise CanvasError(f'ComfyUI canvas JSON must be a list of 1..{MAX_REGIONS + 1} region objects')
        glob = _raw_region(data[0], 'region 0 (global)', True, None)
        if glob.rect != (0, GRID, 0, GRID):
            warnings.append('the first ComfyUI region does not cover the whole canvas; using it as global anyway')
            glob.rect = (0, GRID, 0, GRID)
        # ComfyUI drops distance_to_viewer; list order is far to near, so number them down to keep that order.
        n = len(data) - 1
        locals_ = [_raw_region(d, f'region {i}', False, float(n - i + 1)) for i, d in enumerate(data[1:], 1)]
        return ParseResult(Canvas(glob, locals_), warnings)
    if not isinstance(data, dict):
        raise CanvasError('canvas JSON must be an object (or ComfyUI_omost\'s list of regions)')
    if data.get('format') != JSON_FORMAT:
        raise CanvasError(f'not a canvas JSON: "format" must be {JSON_FORMAT!r}')
    version = data.get('version')
    if version != JSON_VERSION:
        raise CanvasError(f'canvas JSON version {version!r} is not supported (this build reads {JSON_VERSION})')
    g = data.get('global')
    regions = data.get('regions', [])
    if not isinstance(g, dict) or not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise CanvasError('canvas JSON needs a "global" object and a "regions" list')
    if len(regions) > MAX_REGIONS:
        raise CanvasError(f'more than {MAX_REGIONS} local regions')

    class _N:  # a node-like position holder for _field's messages
        lineno = None
        col_offset = -2

    def values(d):
        return {k: (v, _N) for k, v in d.items()}

    if 'description' in g:
        glob = build_global(values({k: g[k] for k in GLOBAL_FIELDS if k in g}), _N, warnings)
    else:
        glob = _raw_region(g, 'global', True, None)
    locals_ = []
    for i, r in enumerate(regions, 1):
        if 'location' in r:
            locals_.append(build_local(values({k: r[k] for k in LOCAL_FIELDS if k in r}), _N, i, glob.prefixes,
                                       warnings))
        else:
            dist = r.get('distance_to_viewer')
            locals_.append(_raw_region(r, f'region {i}', False, float(dist) if isinstance(
                dist, (int, float)) and not isinstance(dist, bool) else float(len(regions) - i + 1)))
    return ParseResult(Canvas(glob, sort_far_to_near(locals_)), warnings)


def load_canvas(source) -> ParseResult:
    """Whatever a user or API client hands us: Canvas code, a whole LLM reply, or canvas JSON (text or object)."""
    if isinstance(source, (dict, list)):
        return canvas_from_json(source)
    if not isinstance(source, str):
        raise CanvasError(f'expected Canvas code or canvas JSON, got {type(source).__name__}')
    stripped = source.strip()
    if stripped.startswith(INFOTEXT_PREFIX):
        stripped = canvas_json_from_infotext(stripped)
    if stripped[:1] in ('{', '['):
        if len(stripped) > MAX_INPUT_CHARS:
            raise CanvasError(f'input is {len(stripped)} characters; the limit is {MAX_INPUT_CHARS}')
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as e:
            raise CanvasError(f'not valid JSON: {e}') from None
        return canvas_from_json(data)
    return parse_canvas(source)


# ---------------------------------------------------------------------------------------------------------------
# Back to code (for the UI's editable canvas box and for restoring pasted infotext)


def _add_comment(description: str) -> str:
    """Omost's comment above a region: '# Add a mighty dragon.' for description 'A mighty dragon.'."""
    text = ' '.join((description or '').split()) or 'a region.'
    first = text.split()[0]
    if first[0].isupper() and (len(first) == 1 or first[1:].islower()):  # 'A', 'The'; not 'UFO'
        text = text[0].lower() + text[1:]
    return f'# Add {text}'


def canvas_to_code(canvas: Canvas) -> str:
    """Canvas code that parses back to the same canvas, written the way Omost's models write it (their comments,
    one argument per line, unindented), regions far to near."""
    def s(x):
        return repr(x)

    def lst(items):
        return '[\n' + ''.join(f'{s(x)},\n' for x in items) + ']' if items else '[]'

    if any(r.raw for r in canvas.regions):
        raise CanvasError('this canvas came from ComfyUI JSON (rects only) and has no Canvas code form; use its JSON')
    g = canvas.global_region
    out = ['# Initialize the canvas', 'canvas = Canvas()', '# Set a global description for the canvas',
           'canvas.set_global_description(', f'description={s(g.description)},',
           f'detailed_descriptions={lst(g.detailed_descriptions)},', f'tags={s(g.tags)},',
           f'HTML_web_color_name={s(g.color_name)},', ')']
    for r in canvas.local_regions:
        out += [_add_comment(r.description), 'canvas.add_local_description(', f'location={s(r.location)},',
                f'offset={s(r.offset)},', f'area={s(r.area)},', f'distance_to_viewer={r.distance_to_viewer!r},',
                f'description={s(r.description)},', f'detailed_descriptions={lst(r.detailed_descriptions)},',
                f'tags={s(r.tags)},', f'atmosphere={s(r.atmosphere)},', f'style={s(r.style)},',
                f'quality_meta={s(r.quality_meta)},', f'HTML_web_color_name={s(r.color_name)},', ')']
    return '\n'.join(out) + '\n'


def replace_code(reply: str, code: str) -> str:
    """`reply` with its canvas code replaced by `code` (the text around the code block is kept)."""
    fence = re.search(r'(```[ \t]*(?:python|py)?[ \t]*\r?\n)(.*?)(\r?\n[ \t]*```|\Z)', reply,
                      re.DOTALL | re.IGNORECASE)
    if fence and 'canvas' in fence.group(2).lower():
        return reply[:fence.start(2)] + code.rstrip('\n') + reply[fence.end(2):]
    if '```' not in reply and 'canvas' in reply.lower():
        return code  # the reply was bare code
    return reply.rstrip() + '\n\n```python\n' + code.rstrip('\n') + '\n```'


# ---------------------------------------------------------------------------------------------------------------
# Compact, lossless infotext form: "omz1." + base64url(zlib(canvas JSON)), no quotes, commas or colons to escape


INFOTEXT_PREFIX = 'omz1.'


def canvas_to_infotext(canvas: Canvas) -> str:
    import base64
    import zlib
    data = json.dumps(canvas_to_json(canvas), separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    return INFOTEXT_PREFIX + base64.urlsafe_b64encode(zlib.compress(data, 9)).decode('ascii').rstrip('=')


def canvas_json_from_infotext(text: str) -> str:
    """The canvas JSON text of an infotext value written by `canvas_to_infotext` (bounded: no zip bombs)."""
    import base64
    import binascii
    import zlib
    body = text.strip()[len(INFOTEXT_PREFIX):]
    try:
        packed = base64.urlsafe_b64decode(body + '=' * (-len(body) % 4))
        inflater = zlib.decompressobj()
        data = inflater.decompress(packed, MAX_INPUT_CHARS * 4)
        if inflater.unconsumed_tail:
            raise CanvasError(f'compressed canvas is larger than {MAX_INPUT_CHARS} characters')
        return data.decode('utf-8')
    except (binascii.Error, ValueError, zlib.error) as e:
        raise CanvasError(f'not a valid compressed canvas ({INFOTEXT_PREFIX}...): {e}') from None
