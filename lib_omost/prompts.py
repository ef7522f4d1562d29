"""Sub-prompt bags and the host prompt: Omost's text encoding, written as a WebUI prompt.

Omost (`StableDiffusionXLOmostPipeline.encode_bag_of_subprompts_greedy`) encodes a region as bags: the region's
prefix path (global description, then its own description) followed by as many of its other sub-prompts as fit,
first-fit in order, with `allowed = 75 - prefix_tokens` and every sub-prompt cropped to 75 tokens. Each bag is one
77-token CLIP chunk (BOS + at most 75 + EOS + padding) and the chunks are concatenated.

Both WebUI hosts encode `bag BREAK bag BREAK ...` as exactly that, provided every bag is at most 75 host tokens:
each BREAK segment becomes its own 77-token chunk, in order. So a region is a run of whole chunks, and its mask
covers all 77 columns of each of its chunks, as in Omost.

Token counting is pluggable: a counter takes text in host prompt syntax (what the host parses) and returns its
tokens without BOS/EOS. Inside the WebUI it is the host's own tokenizer (`omost_webui.host_tokenizer`); offline
it is the real CLIP BPE (`offline_counter`).

Differences from Omost, all where Omost would lose text:
- Where a bag would pass 75 tokens (a prefix plus one over-long sub-prompt), Omost truncates the token list; here
  the sub-prompt is cropped by whole words so that the bag fits. Nothing spills into another chunk.
- A head (preset tags + prompt box text + prefix path) over 75 tokens is cropped to `CROPPED_HEAD_TOKENS`, so every
  bag keeps room for detail; Omost would encode the first 75 prefix tokens in every bag and drop every detail.
  Words come off the end of the first prefix (the global description) first, then the next. The preset's tags
  and the prompt box text are never cropped: over `EXTRAS_MAX_TOKENS` they are an error the user sees.
- When the host's own chunking (`chunk_count`) says a bag would take two chunks, the bag is split in two (or, for a
  single sub-prompt, cropped by words) instead of being truncated.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Callable, Optional

from lib_omost.canvas import Canvas, CanvasError
from lib_omost.presets import Preset, get_preset, load_presets

CHUNK_TOKENS = 77        # one CLIP context: BOS + 75 + EOS
BAG_TOKENS = 75          # tokens a bag may hold between BOS and EOS
EXTRAS_MAX_TOKENS = 40   # preset tags + prompt box text per bag; more would crowd out Omost's descriptions
CROPPED_HEAD_TOKENS = 50  # a head over 75 tokens is cropped to this, leaving 25 tokens of every bag for details

Counter = Callable[[str], int]

# ---------------------------------------------------------------------------------------------------------------
# Host prompt syntax. The rules are those of A1111/Forge `prompt_parser` (both hosts parse the same way):
# emphasis ( ) [ ] with `\` escapes, [a:b:N] / [a|b] scheduling, `\bAND\b` composition, a trailing `:number`
# as AND weight, `\s*\bBREAK\b\s*` chunk breaks and `<name:args>` extra networks.

_SPECIAL_CHARS = re.compile(r'[\\()\[\]|]')
_KEYWORDS = re.compile(r'\b(?:AND|BREAK)\b')
_EXTRA_NETWORK = re.compile(r'<(\w+):([^>]+)>')
_EXTRA_NETWORK_OPEN = re.compile(r'<(\w+):')
_TRAILING_WEIGHT = re.compile(r':\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$')
_ESCAPE_PAIR = re.compile(r'\\(.)', re.S)


def _lower_keywords(text: str) -> str:
    # CLIP lower-cases everything, so 'and'/'break' are the very same tokens as 'AND'/'BREAK' (a zero-width
    # character would add byte tokens instead).
    return _KEYWORDS.sub(lambda m: m.group(0).lower(), text)


def escape(text: str) -> str:
    """LLM text as host prompt syntax that the host encodes literally, token for token.

    `\\ ( ) [ ] |` get a backslash (`|` too, so that a user's `[a|b]` in the prompt box still parses); upper-case
    AND/BREAK are lower-cased; `<name:` becomes `<name :` (no extra network can match, and CLIP drops the
    space anyway); whitespace runs become one space (as CLIP does)."""
    text = ' '.join(text.split())
    text = _SPECIAL_CHARS.sub(lambda m: '\\' + m.group(0), text)
    return _EXTRA_NETWORK_OPEN.sub(r'<\1 :', _lower_keywords(text))


def unescape(host_text: str) -> str:
    """The literal text of `escape`d text (drops each escaping backslash)."""
    return _ESCAPE_PAIR.sub(r'\1', host_text)


def defuse_trailing_weight(host_text: str) -> str:
    """A prompt ending in `:number` (e.g. 'ratio 16:9.') would lose it to an AND weight; a backslash before the
    last character breaks the pattern, and the emphasis parser drops that backslash again."""
    stripped = host_text.rstrip()
    if not _TRAILING_WEIGHT.search(stripped):
        return host_text
    return stripped[:-1] + '\\' + stripped[-1]


def clean_user_text(text: str) -> str:
    """The prompt box's text as it goes into the bags: host syntax (emphasis stays), but no extra-network tags
    (the host has already activated them), and no AND/BREAK, which would break the chunk layout."""
    text = _lower_keywords(_EXTRA_NETWORK.sub(' ', text or ''))
    return ' '.join(text.split())


def offline_counter(host_text: str) -> int:
    """CLIP tokens of host prompt text, outside the WebUI: the real CLIP BPE on the unescaped text (any emphasis
    syntax in the prompt box is counted as text, which only over-counts)."""
    from lib_omost import clip_tokenizer
    return clip_tokenizer.count(unescape(host_text))


# ---------------------------------------------------------------------------------------------------------------
# Bags


@dataclasses.dataclass(frozen=True)
class _Piece:
    text: str
    literal: bool = True  # LLM text (escaped for the host) or host syntax (prompt box, preset tags)

    @property
    def host(self) -> str:
        return escape(self.text) if self.literal else self.text


@dataclasses.dataclass
class Bag:
    text: str        # what the encoder reads: head, sub-prompts, tail (unescaped)
    host_text: str   # the same in host prompt syntax
    tokens: int      # counted tokens (Omost's sum over the pieces), at most 75
    items: tuple     # indices into the region's suffixes
    cropped: bool = False


@dataclasses.dataclass
class RegionPrompt:
    index: int       # position in canvas.regions
    rect: tuple      # the region's (top, bottom, left, right) on Omost's 90 grid
    bags: list       # [Bag]
    start: int       # chunk range [start, end)
    end: int


@dataclasses.dataclass
class HostPrompt:
    text: str           # for p.prompts[i]: escaped bags joined with ' BREAK '
    regions: list       # [RegionPrompt], canvas.regions order
    token_region: list  # region index of every context column, 77 per chunk
    n_chunks: int
    warnings: list


def greedy_partition(lengths: list, allowed: int) -> list:
    """Omost's first-fit-in-order partition: index groups, a new group whenever the next item does not fit."""
    groups, current, total = [], [], 0
    for i, n in enumerate(lengths):
        if total + n > allowed:
            if current:
                groups.append(current)
            current, total = [i], n
        else:
            current.append(i)
            total += n
    if current:
        groups.append(current)
    return groups


def _join(texts) -> str:
    return ' '.join(t for t in texts if t)


class _Fitter:
    """Counts pieces (cached) and decides whether a bag fits, with the counter and, if given, the host chunker."""

    def __init__(self, counter: Counter, chunk_count: Optional[Callable[[str], int]]):
        self.counter = counter
        self.chunk_count = chunk_count
        self._counts = {}

    def count(self, piece: _Piece) -> int:
        if not piece.text:
            return 0
        if piece not in self._counts:
            self._counts[piece] = int(self.counter(piece.host))
        return self._counts[piece]

    def length(self, pieces) -> int:
        return sum(self.count(p) for p in pieces)

    def fits(self, pieces, limit: int = BAG_TOKENS) -> bool:
        if self.length(pieces) > limit:
            return False
        return self.chunk_count is None or self.chunk_count(_join(p.host for p in pieces)) <= 1

    def crop(self, pieces: list, at: int, limit: int = BAG_TOKENS) -> _Piece:
        """pieces[at] cut to as many leading words as keep the bag within `limit` (binary search)."""
        words = pieces[at].text.split()

        def candidate(n):
            return dataclasses.replace(pieces[at], text=' '.join(words[:n]))

        low, high = 0, len(words)
        while low < high:
            mid = (low + high + 1) // 2
            if self.fits(pieces[:at] + [candidate(mid)] + pieces[at + 1:], limit):
                low = mid
            else:
                high = mid - 1
        return candidate(low)


def _crop_head(fitter: _Fitter, before: list, prefixes: list, after: list) -> list:
    """Prefix pieces cut so that the head holds at most CROPPED_HEAD_TOKENS: the first prefix (the global
    description) loses words from its end first, then the next."""
    prefixes = list(prefixes)
    for i in range(len(prefixes)):
        pieces = before + prefixes + after
        if fitter.fits(pieces, CROPPED_HEAD_TOKENS):
            break
        prefixes[i] = fitter.crop(pieces, len(before) + i, CROPPED_HEAD_TOKENS)
    return prefixes


def _split_to_fit(fitter: _Fitter, before: list, group: list, after: list) -> list:
    """[(pieces, item indices, cropped)]: the group as one bag, or (when the host would spill it) the longest
    leading runs that fit, a lone sub-prompt that does not fit being cropped by words."""
    if not group:  # a region without sub-prompts: one bag with the head alone
        return [([], (), False)]
    out, rest = [], list(group)
    while rest:
        n = len(rest)
        while n > 0 and not fitter.fits(before + [p for _, p in rest[:n]] + after):
            n -= 1
        if n == 0:
            index, piece = rest[0]
            cropped = fitter.crop(before + [piece] + after, len(before))
            out.append(([cropped], (index,), True))
            rest = rest[1:]
        else:
            out.append(([p for _, p in rest[:n]], tuple(i for i, _ in rest[:n]), False))
            rest = rest[n:]
    return out


def region_bags(prefixes: list, suffixes: list, counter: Counter, *, preset: Preset | None = None,
                user_text: str = '', chunk_count=None, where: str = 'region') -> tuple:
    """(bags, warnings) for one region: Omost's greedy bags of `suffixes` behind the `prefixes` path.

    `user_text` is host syntax (already cleaned); the preset's replacements apply to every sub-prompt and its
    prepend/append tags go once into every bag."""
    preset = preset or Preset('none')
    fitter = _Fitter(counter, chunk_count)
    warnings = []
    before = [_Piece(_with_separator(t), literal=False) for t in (preset.prepend, user_text) if t]
    after = [_Piece(preset.append, literal=False)] if preset.append else []
    extras = fitter.length(before + after)
    if extras > EXTRAS_MAX_TOKENS:
        raise CanvasError(f'the tag preset and the prompt box text take {extras} tokens in every bag of the '
                          f'{where}; at most {EXTRAS_MAX_TOKENS} fit next to Omost\'s descriptions: shorten the '
                          f'prompt box text (its <lora:...> tags do not count) or choose a preset with fewer tags')
    head = [_Piece(preset.apply(t)) for t in prefixes]
    if not fitter.fits(before + head + after):
        head = _crop_head(fitter, before, head, after)
        warnings.append(f'{where}: the description path was over {BAG_TOKENS} tokens and was cropped to '
                        f'{fitter.length(before + head + after)}')
    before = before + head
    allowed = BAG_TOKENS - fitter.length(before + after)

    pieces = [_Piece(preset.apply(t)) for t in suffixes]
    lengths = [min(fitter.count(p), BAG_TOKENS) for p in pieces]  # Omost crops every sub-prompt to 75 tokens
    over_long = {i for i, p in enumerate(pieces) if fitter.count(p) > BAG_TOKENS}
    pieces = [fitter.crop([p], 0) if i in over_long else p for i, p in enumerate(pieces)]
    groups = greedy_partition(lengths, allowed) or [[]]
    bags = []
    for group in groups:
        members = [(i, pieces[i]) for i in group]
        crop = len(members) == 1 and lengths[group[0]] > allowed
        if crop:  # Omost would truncate the token list here; cut whole words instead
            members = [(group[0], fitter.crop(before + [pieces[group[0]]] + after, len(before)))]
        crop = crop or bool(over_long.intersection(group))
        parts = _split_to_fit(fitter, before, members, after)
        if len(parts) > 1:
            warnings.append(f'{where}: the host tokenizer needed a bag split in {len(parts)}')
        for bag_pieces, items, cropped in parts:
            all_pieces = before + bag_pieces + after
            if not _join(p.text for p in all_pieces):  # an empty last BREAK segment would make no chunk at all
                all_pieces = [_Piece('.')]
            bags.append(Bag(text=_join(p.text for p in all_pieces), host_text=_join(p.host for p in all_pieces),
                            tokens=fitter.length(all_pieces), items=items, cropped=crop or cropped))
    if any(b.cropped for b in bags):
        warnings.append(f'{where}: a sub-prompt over the room left in its bag was cropped by words')
    return bags, warnings


def _with_separator(text: str) -> str:
    """Tags written before the descriptions end with a comma, so they do not run into the first sentence."""
    return text if text[-1:] in (',', '.', ';', '!', '?') else text + ','


def build_host_prompt(canvas: Canvas, counter: Counter, *, preset='none', user_text: str = '',
                      user_target: str = 'every', chunk_count=None, presets: dict | None = None) -> HostPrompt:
    """The host prompt for a canvas: every region's bags, escaped and joined with ' BREAK ', and where each
    region's chunks lie. `counter(host_text)` counts tokens as the host does; `chunk_count(host_text)`, when
    given (the host's own tokenize_line), verifies that every bag is one chunk."""
    if user_target not in ('every', 'global'):
        raise CanvasError(f"prompt target must be 'every' or 'global', got {user_target!r}")
    if not isinstance(preset, Preset):
        preset = get_preset(preset, presets)
    user_text = clean_user_text(user_text)
    regions, warnings, start = [], [], 0
    for index, region in enumerate(canvas.regions):
        where = 'global region' if index == 0 else f'region {index} ({region.label[:40]!r})'
        text = user_text if (user_target == 'every' or index == 0) else ''
        bags, notes = region_bags(region.prefixes, region.suffixes, counter, preset=preset, user_text=text,
                                  chunk_count=chunk_count, where=where)
        warnings += notes
        regions.append(RegionPrompt(index=index, rect=tuple(region.rect), bags=bags, start=start, end=start + len(bags)))
        start += len(bags)
    last = regions[-1].bags[-1]
    last.host_text = defuse_trailing_weight(last.host_text)
    token_region = [r.index for r in regions for _ in range((r.end - r.start) * CHUNK_TOKENS)]
    text = ' BREAK '.join(b.host_text for r in regions for b in r.bags)
    return HostPrompt(text=text, regions=regions, token_region=token_region, n_chunks=start, warnings=warnings)


# ---------------------------------------------------------------------------------------------------------------
# CLI: python -m lib_omost bags FILE


def cli_bags(args, canvas: Canvas) -> int:
    from lib_omost import clip_tokenizer
    presets = load_presets(getattr(args, 'presets', None))
    result = build_host_prompt(canvas, offline_counter, preset=args.preset, user_text=args.prompt,
                               user_target=args.prompt_target, presets=presets)
    for w in result.warnings:
        print(f'warning: {w}', file=sys.stderr)
    out = {
        'regions': [{'index': r.index, 'label': canvas.regions[r.index].label, 'chunks': [r.start, r.end],
                     'bags': [{'text': b.text, 'tokens': clip_tokenizer.count(b.text)} for b in r.bags]}
                    for r in result.regions],
        'prompt': result.text,
        'token_region': {'length': len(result.token_region), 'chunk_tokens': CHUNK_TOKENS,
                         'chunks': [[r.start, r.end, r.index] for r in result.regions]},
    }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    # Lists of numbers on one line; JSON strings never hold a raw newline, so only real lists match.
    text = re.sub(r'\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]', lambda m: '[' + ', '.join(m.group(1).split(',\n')).replace(
        ' ' * 2, '') + ']', text)
    print(text)
    return 0
