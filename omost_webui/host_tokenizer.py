"""Counting tokens with the host's own tokenizer, so the bags match what the host will encode.

Both hosts expose `tokenize_line(line) -> (chunks, token_count)` on their CLIP(-L) text engine; it parses the
prompt syntax (emphasis, escapes, BREAK), replaces textual-inversion names and follows the host's settings, so
its counts are the host's counts. The text given to it is host prompt syntax (the escaped bags).

- Forge: `sd_model.text_processing_engine_l` (SDXL, Flux) or `sd_model.text_processing_engine` (SD1.5).
- A1111: `sd_model.conditioner.embedders[0]` (SDXL, CLIP-L) or `sd_model.cond_stage_model` (SD1.x).

Note: with Settings > Emphasis = "None" the hosts skip the prompt parser entirely: backslash escapes and BREAK are
then read as text, so the caller must switch emphasis to "Original" for the generation (host-integration §2.6).
"""

from __future__ import annotations

import functools


def find_tokenize_line(sd_model):
    """The host's `tokenize_line` for this model, or None when the model has no CLIP text engine we know."""
    for name in ('text_processing_engine_l', 'text_processing_engine'):  # Forge
        engine = getattr(sd_model, name, None)
        if engine is not None and hasattr(engine, 'tokenize_line'):
            return engine.tokenize_line
    conditioner = getattr(sd_model, 'conditioner', None)  # A1111 SDXL
    embedders = getattr(conditioner, 'embedders', None)
    if embedders and hasattr(embedders[0], 'tokenize_line'):
        return embedders[0].tokenize_line
    model = getattr(sd_model, 'cond_stage_model', None)  # A1111 SD1.x
    if model is not None and hasattr(model, 'tokenize_line'):
        return model.tokenize_line
    return None


class HostTokenizer:
    """`count(text)`: tokens without BOS/EOS; `chunks(text)`: 77-token chunks the host makes of `text`."""

    def __init__(self, tokenize_line):
        self._tokenize_line = functools.lru_cache(maxsize=4096)(tokenize_line)

    def count(self, text: str) -> int:
        # Exact within one chunk. Over 75, token_count counts every chunk but the last as full: never fewer than
        # the real count, and the bags treat anything over 75 alike (Omost crops a sub-prompt to 75).
        _, token_count = self._tokenize_line(text)
        return int(token_count)

    def chunks(self, text: str) -> int:
        chunks, _ = self._tokenize_line(text)
        return len(chunks)


def host_counter(sd_model):
    """(count, chunk_count) for lib_omost.prompts.build_host_prompt; raises RuntimeError for unknown models."""
    tokenize_line = find_tokenize_line(sd_model)
    if tokenize_line is None:
        raise RuntimeError(f'Omost: this model ({type(sd_model).__name__}) has no CLIP text encoder that the '
                           f'extension knows how to count tokens for')
    _refresh_forge_emphasis(getattr(tokenize_line, '__self__', None))
    tokenizer = HostTokenizer(tokenize_line)
    return tokenizer.count, tokenizer.chunks


def _refresh_forge_emphasis(engine):
    """Forge's `tokenize_line` parses with the emphasis mode of the engine's last encode (set in `__call__`), not
    the current setting: set it as the coming encode will, so BREAK and escapes count as they will be encoded."""
    if engine is None or not hasattr(engine, 'emphasis'):
        return
    try:
        from backend.text_processing import emphasis
        from modules.shared import opts
    except ImportError:  # A1111: its tokenize_line reads the setting itself
        return
    engine.emphasis = emphasis.get_current_option(opts.emphasis)()
