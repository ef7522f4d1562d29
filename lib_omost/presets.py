"""Tag presets: rewrite Omost's natural-language sub-prompts for tag-trained checkpoints.

A preset has three parts, all optional:

- `replace`: `[["from words", "to words"], ...]`, applied to every sub-prompt (descriptions, details, tags)
  before the sub-prompts are bagged. Matching is case-insensitive, any run of spaces matches a space, and a
  phrase matches whole words only (a letter, digit, `_`, `'` or `-` next to it blocks the match, so `man` leaves
  `woman`, `man-made` and `man's` alone). Where phrases overlap the longest wins, and replaced text is never
  matched again. The result is literal text (escaped for the host like the rest of the LLM's text).
- `prepend` / `append`: tags written once per bag, at its start / end, in WebUI prompt syntax like the prompt box
  (emphasis allowed). They count against each bag's 75 tokens.
- `extends`: the name of another preset whose `replace` list comes first (this preset's own pairs win for the same
  phrase) and whose `prepend` / `append` are used where this preset does not set its own.

File format (the shipped `presets_default.json` is an example; a user file adds presets or overrides them by name):

    {"format": "omost-presets", "version": 1,
     "presets": {"my-style": {"description": "...", "extends": "anime",
                              "replace": [["a cat", "1cat"]], "prepend": "masterpiece,", "append": ""}}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from lib_omost.canvas import CanvasError

FORMAT = 'omost-presets'
VERSION = 1
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'presets_default.json')
MAX_FILE_BYTES = 1024 * 1024
PRESET_KEYS = ('description', 'extends', 'replace', 'prepend', 'append')
_WORD_EDGE_BEFORE = r"(?<![\w'-])"
_WORD_EDGE_AFTER = r"(?![\w'-])"


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str = ''
    replace: tuple = ()  # ((from, to), ...) after `extends` is resolved
    prepend: str = ''
    append: str = ''

    def apply(self, text: str) -> str:
        """`text` with this preset's replacements (one pass; replaced text is not matched again)."""
        pattern = _replace_pattern(self.replace)
        if pattern is None:
            return text
        targets = {_phrase_key(a): b for a, b in self.replace}
        return pattern.sub(lambda m: targets[_phrase_key(m.group(0))], text)


def _phrase_key(phrase: str) -> str:
    return ' '.join(phrase.lower().split())


_PATTERNS = {}


def _replace_pattern(pairs: tuple):
    if not pairs:
        return None
    if pairs not in _PATTERNS:
        # Longest phrase first, so that 'two girls' wins over 'girls' where both start at the same place.
        phrases = sorted({_phrase_key(a) for a, _ in pairs}, key=len, reverse=True)
        body = '|'.join(r'\s+'.join(re.escape(w) for w in p.split()) for p in phrases)
        _PATTERNS[pairs] = re.compile(f'{_WORD_EDGE_BEFORE}(?:{body}){_WORD_EDGE_AFTER}', re.IGNORECASE)
    return _PATTERNS[pairs]


def _read_json(path: str) -> dict:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise CanvasError(f'preset file {path}: {size} bytes, the limit is {MAX_FILE_BYTES}')
        with open(path, 'r', encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CanvasError(f'preset file {path}: not valid JSON: {e.msg}', e.lineno, e.colno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CanvasError(f'preset file {path}: cannot read it: {e}') from None
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise CanvasError(f'preset file {path}: must be an object with "format": "{FORMAT}"')
    if data.get('version') != VERSION:
        raise CanvasError(f'preset file {path}: version {data.get("version")!r} is not supported (this build '
                          f'reads {VERSION})')
    presets = data.get('presets')
    if not isinstance(presets, dict):
        raise CanvasError(f'preset file {path}: "presets" must be an object of named presets')
    return presets


def _check_entry(path: str, name, entry) -> dict:
    where = f'preset file {path}: preset {name!r}'
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise CanvasError(f'preset file {path}: preset names must be 1 to 64 characters, got {name!r}')
    if not isinstance(entry, dict):
        raise CanvasError(f'{where} must be an object')
    unknown = sorted(set(entry) - set(PRESET_KEYS))
    if unknown:
        raise CanvasError(f'{where}: unknown key(s) {", ".join(unknown)}; known: {", ".join(PRESET_KEYS)}')
    for key in ('description', 'extends', 'prepend', 'append'):
        if key in entry and not isinstance(entry[key], str):
            raise CanvasError(f'{where}: "{key}" must be a string')
    pairs = entry.get('replace', [])
    if not isinstance(pairs, list):
        raise CanvasError(f'{where}: "replace" must be a list of ["from", "to"] pairs')
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise CanvasError(f'{where}: replace item {i} must be a ["from", "to"] pair of strings, got {pair!r}')
        if not re.search(r'\w', pair[0]):
            raise CanvasError(f'{where}: replace item {i}: "from" must contain a word, got {pair[0]!r}')
    return entry


def _resolve(raw: dict) -> dict:
    """Presets with `extends` folded in; raw = {name: (path, entry)}."""
    resolved = {}

    def build(name: str, chain: tuple) -> Preset:
        if name in resolved:
            return resolved[name]
        path, entry = raw[name]
        base = None
        if entry.get('extends'):
            parent = entry['extends']
            if parent not in raw:
                raise CanvasError(f'preset file {path}: preset {name!r} extends {parent!r}, which does not exist')
            if parent in chain:
                raise CanvasError(f'preset file {path}: preset {name!r} extends itself through '
                                  f'{" -> ".join(chain + (parent,))}')
            base = build(parent, chain + (parent,))
        pairs = {}
        for a, b in (base.replace if base else ()) + tuple(tuple(p) for p in entry.get('replace', [])):
            pairs[_phrase_key(a)] = b  # later pairs (this preset's) win
        resolved[name] = Preset(name=name, description=entry.get('description', ''), replace=tuple(pairs.items()),
                                prepend=entry.get('prepend', base.prepend if base else '').strip(),
                                append=entry.get('append', base.append if base else '').strip())
        return resolved[name]

    for name in raw:
        build(name, (name,))
    return resolved


def load_presets(path: str | None = None) -> dict:
    """The shipped presets, plus (overriding by name) those of the user's file at `path` if it exists."""
    raw = {}
    for source in [DEFAULT_PATH] + ([path] if path and os.path.exists(path) else []):
        for name, entry in _read_json(source).items():
            raw[name] = (source, _check_entry(source, name, entry))
    return _resolve(raw)


def get_preset(name: str, presets: dict | None = None) -> Preset:
    presets = load_presets() if presets is None else presets
    if not name or name == 'none':
        return presets.get('none', Preset('none'))
    if name not in presets:
        raise CanvasError(f'unknown tag preset {name!r}; known: {", ".join(sorted(presets))}')
    return presets[name]
