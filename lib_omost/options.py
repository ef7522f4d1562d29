"""Render options: one validated record shared by the UI, the API, the infotext and the hooks."""

from __future__ import annotations

import dataclasses
import json
import math

from lib_omost.canvas import CanvasError


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    regions: bool = True          # regional cross-attention on (off: bags only, plain attention)
    strength: float = 1.0         # 0 = plain attention, 1 = Omost's formula
    start: float = 0.0            # step window, as fractions of the sampling
    end: float = 1.0
    hires: bool = True            # also apply the regions in the hires-fix pass
    sketch: bool = False          # start the first pass from the colour sketch (img2img)
    sketch_denoise: float = 0.95
    sketch_blur: int = 40         # box-blur radius on the 90 grid; Omost uses 40
    preset: str = 'none'          # tag preset applied to every sub-prompt
    prompt_target: str = 'every'  # the prompt box's text goes to 'every' bag or the 'global' region only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(',', ':'))


SWITCH_FORMS = 'true or false (also "true"/"false" or 0/1)'
_SWITCH_WORDS = {'true': True, 'false': False, '1': True, '0': False}


def parse_switch(value, name: str) -> bool:
    """An on/off value in the forms API clients send: true/false, "true"/"false" (any case: the infotext writes
    True/False), 0/1. Anything else is an error naming what is expected (Python's truthiness would turn the
    string "false" on)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _SWITCH_WORDS:
        return _SWITCH_WORDS[value.strip().lower()]
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + '...'
    raise CanvasError(f'{name} must be {SWITCH_FORMS}, got {shown}')


_RANGES = {'strength': (0.0, 2.0), 'start': (0.0, 1.0), 'end': (0.0, 1.0), 'sketch_denoise': (0.05, 1.0),
           'sketch_blur': (0, 45)}
_CHOICES = {'prompt_target': ('every', 'global')}


def check_value(label: str, v, default, limits=None, choices=None):
    """`v` checked against the type of `default` (bool, int/float within `limits`, str among `choices`);
    CanvasError('<label> must be ...') otherwise."""
    kind = type(default)
    if kind is bool:
        v = parse_switch(v, label)
    elif kind in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CanvasError(f'{label} must be a number, got {v!r}')
        low, high = limits
        if not low <= v <= high:
            raise CanvasError(f'{label} must be between {low} and {high}, got {v!r}')
        v = kind(v)
    else:
        if not isinstance(v, str):
            raise CanvasError(f'{label} must be a string, got {v!r}')
        if choices and v not in choices:
            raise CanvasError(f'{label} must be one of {", ".join(choices)}, got {v!r}')
    return v


def parse_options(value) -> RenderOptions:
    """Options from a dict, a JSON string, None or '' (defaults). Unknown keys and bad values are errors."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return RenderOptions()
    if isinstance(value, RenderOptions):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise CanvasError(f'Omost options are not valid JSON: {e}') from None
    if not isinstance(value, dict):
        raise CanvasError(f'Omost options must be an object of named options, got {type(value).__name__}')
    fields = {f.name: f for f in dataclasses.fields(RenderOptions)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise CanvasError(f'unknown Omost option(s) {", ".join(unknown)}; known: {", ".join(fields)}')
    clean = {key: check_value(f'Omost option {key!r}', v, fields[key].default, _RANGES.get(key), _CHOICES.get(key))
             for key, v in value.items()}
    options = RenderOptions(**clean)
    if options.start >= options.end:
        raise CanvasError(f'Omost step window is empty: start {options.start} must be below end {options.end}')
    return options
