"""Counting tokens with the host's own tokenizer, so the bags match what the host will encode.

Every host exposes `tokenize_line(line) -> (chunks, token_count)` on its CLIP(-L) text engine; it parses the
prompt syntax (emphasis, escapes, BREAK), replaces textual-inversion names and follows the host's settings, so
its counts are the host's counts. The text given to it is host prompt syntax (the escaped bags). Which object has
it is the host family's business (`Host.tokenize_line`), found with one of:

- `engine_tokenize_line`: Forge's `backend` (Forge, Neo): `sd_model.text_processing_engine_l` (SDXL, Flux) or
  `sd_model.text_processing_engine` (SD1.5).
- `clip_tokenize_line`: A1111's text encoders (modules/sd_hijack_clip.py, also in Forge Classic and reForge):
  `sd_model.conditioner.embedders[0]` (SDXL, CLIP-L) or `sd_model.cond_stage_model` (SD1.x).

Note: with Settings > Emphasis = "None" the hosts skip the prompt parser entirely: backslash escapes and BREAK are
then read as text, so the caller must switch emphasis to "Original" for the generation (host-integration §2.6).
"""

from __future__ import annotations

import functools


def engine_tokenize_line(sd_model):
    for name in ('text_processing_engine_l', 'text_processing_engine'):
        engine = getattr(sd_model, name, None)
        if engine is not None and hasattr(engine, 'tokenize_line'):
            return engine.tokenize_line
    return None


def clip_tokenize_line(sd_model):
    conditioner = getattr(sd_model, 'conditioner', None)  # SDXL
    embedders = getattr(conditioner, 'embedders', None)
    if embedders and hasattr(embedders[0], 'tokenize_line'):
        return embedders[0].tokenize_line
    model = getattr(sd_model, 'cond_stage_model', None)  # SD1.x
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


def host_counter(tokenize_line, model_name: str = 'this model'):
    """(count, chunk_count) for lib_omost.prompts.build_host_prompt; RuntimeError when there is no tokenize_line."""
    if tokenize_line is None:
        raise RuntimeError(f'Omost: {model_name} has no CLIP text encoder that the extension knows how to count '
                           f'tokens for')
    tokenizer = HostTokenizer(tokenize_line)
    return tokenizer.count, tokenizer.chunks
