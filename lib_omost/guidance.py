"""Image guidance: FlexDiffuse's methods (seed 004, `guidance.py` of tim-speed/flexdiffuse) on one 77-token chunk.

A guide image's CLIP tokens (every patch token of the vision tower, projected: `lib_omost.vision.image_tokens`) are
mapped onto a chunk of the prompt's CLIP text embeddings, and each text token moves towards its best-matching
image token by a per-token weight. The weights are built from three sources, blended as guidance.py does:

- Linear: a ramp from `linear_start` at the chunk's first token to `linear_end` at its last (the back of a CLIP
  prompt carries style more than subject);
- Clustered: tokens whose match peaks above the average similarity get `clustered`, falling linearly to 0 halfway
  to the next peak (and at both ends);
- Threshold: every token whose match is at least `threshold_floor` gets `threshold_mult`;

then the first ("header") token's weight is capped to +-`header_max`, every weight to at most `max_guidance`, and
a token whose weight reaches 1 - similarity takes the image token whole. An optional concept prompt (its own
encoded chunk) selects image tokens through its words: a text token matching a concept token above 0.9 becomes the
image token that concept token matched (after the rest, and not capped).

This is guidance.py's code, vectorised, with its quirks kept (where the seed's text says otherwise, the code
wins; the README lists the differences):
- `_map_emb` drops the header column of the similarity but enumerates the rest from 0, so weight i of the chunk
  uses the match of text token i + 1, the header token (weight 0) is moved with the match of token 1 (capped by
  `header_max`), and the last token has no match (image token 0, similarity 0).
- The similarity is a softmax over the chunk's 77 text tokens of 100 x cosine, per image token.
- `max_guidance` caps from above only (`min(w, max)`): negative weights pass it.
- Defaults are guidance.py's (`Tweener.__init__`), not the seed's experiment settings.
One change: two neighbouring equal peaks (a plateau) make guidance.py divide by zero; here a plateau counts as
one peak, its first token.

Torch only; no WebUI import. Inputs are (tokens, dim) tensors; the output is a new tensor, or the input itself when
no token changes (guidance 0 is bit-identical to none).
"""

from __future__ import annotations

import math

import torch

from lib_omost.guide_params import METHODS, ORDERS, GuideParams  # noqa: F401 - the core's names

CONCEPT_MATCH = 0.9  # ConceptMapper.map: a text token maps when it matches a concept token above this


# ---------------------------------------------------------------------------------------------------------------
# Mapping (guidance.py `_map_emb`)


def similarity(alt: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """(alt tokens, text tokens - 1): per alt token, the softmax over text tokens of 100 x cosine, header column
    dropped (guidance.py computes it per alt token; batched here)."""
    alt_n = alt.float() / alt.float().norm(dim=-1, keepdim=True)
    txt_n = txt.float() / txt.float().norm(dim=-1, keepdim=True)
    return (100.0 * (alt_n @ txt_n.T)).softmax(dim=-1)[:, 1:]


def map_tokens(alt: torch.Tensor, txt: torch.Tensor, reuse: bool = True, order: str = 'best_fit') -> torch.Tensor:
    """(text tokens, 2) float64: per row, (alt token index, similarity). Row i holds the match of text token i + 1
    (guidance.py's off-by-one); the last row is never written, (0, 0)."""
    if order not in ORDERS:
        raise ValueError(f'mapping order must be one of {", ".join(ORDERS)}, got {order!r}')
    sim = similarity(alt, txt).double()  # guidance.py keeps the .item() values: float64 from here on
    n_alt, n_cols = sim.shape
    mapped = torch.zeros((txt.shape[0], 2), dtype=torch.float64)
    if order == 'direct':
        k = min(n_alt, n_cols)
        idx = torch.arange(k)
        mapped[idx, 0] = idx.double()
        mapped[idx, 1] = sim[idx, idx]
        return mapped
    if reuse:
        # Every text column takes its best alt token (first on ties). guidance.py keeps the first match with a
        # similarity > 0; a column whose every similarity underflowed to 0 is overwritten by each match in turn
        # and ends with the last alt token.
        best, index = sim.max(dim=0)
        index = torch.where(best > 0, index, torch.full_like(index, n_alt - 1))
        mapped[:n_cols, 0] = index.double()
        mapped[:n_cols, 1] = best
        return mapped
    # Without reuse the assignment is greedy over the sorted matches (guidance.py's loop).
    flat = sim.flatten().tolist()
    matches = [(i, j, flat[i * n_cols + j]) for i in range(n_alt) for j in range(n_cols)]
    if order == 'text_order':
        matches.sort(key=lambda t: (t[1], -t[2], t[0]))
    else:
        matches.sort(key=lambda t: (-t[2], t[1], t[0]))
    used, rows = set(), mapped.tolist()
    for alt_i, txt_i, s in matches:
        if rows[txt_i][1] > 0 or alt_i in used:
            continue
        rows[txt_i] = [float(alt_i), s]
        used.add(alt_i)
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Weights (guidance.py `_clustered_guidance`, `_traverse_a_to_b`, `_blend_weights`, `Tweener.tween`)


def _slopes(peaks: list, valleys: list, n: int) -> torch.Tensor:
    """1 at the peaks, falling linearly to 0 at the valleys (guidance.py `_traverse_a_to_b`, slope 1, with its
    float32 in-place steps so the numbers are the same)."""
    w = torch.ones((n,))
    if valleys[0] == 0:
        w[0] -= 1.0
    v = 0
    for a in peaks:
        b = valleys[v]
        if b < a:  # left side, the valley itself excluded
            for i in range(1, a - b):
                w[a - i] -= 1.0 / (a - b) * i
            v += 1
        if v >= len(valleys):
            break
        b = valleys[v]
        for i in range(1, b - a + 1):  # right side, down to the valley
            w[a + i] -= 1.0 / (b - a) * i
    return w


def clustered_weights(mapped: torch.Tensor, threshold: float, guidance: float) -> torch.Tensor | None:
    """Weights peaking at `guidance` on the similarity peaks at or above `threshold`; None without a peak."""
    s = mapped[:, 1].tolist()
    n = len(s)
    peaks = [i for i in range(1, n - 1) if s[i] >= threshold and s[i - 1] <= s[i] >= s[i + 1]]
    peaks = [p for k, p in enumerate(peaks) if k == 0 or p != peaks[k - 1] + 1]  # a plateau is one peak
    if not peaks:
        return None
    valleys = [0] + [p1 + math.ceil((p2 - p1) / 2) for p1, p2 in zip(peaks, peaks[1:]) if p2 > p1] + [n - 1]
    return _slopes(peaks, valleys, n) * guidance


def blend_weights(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """guidance.py `_blend_weights`: the larger of two positive rows, the sum of opposite ones, else the smaller."""
    if a.max() >= 0:
        return torch.maximum(a, b) if b.max() >= 0 else a + b
    return torch.minimum(a, b)


def token_weights(mapped: torch.Tensor, params: GuideParams) -> torch.Tensor:
    """The per-token image weights of a chunk before `max_guidance` (what the CLI prints)."""
    n = mapped.shape[0]
    start, end, clustered, threshold_mult = params.sources()
    weights = torch.linspace(start, end, steps=n)
    if clustered != 0:
        cw = clustered_weights(mapped, float(mapped[:, 1].mean()), clustered)
        if cw is not None:
            weights = blend_weights(weights, cw)
    if threshold_mult != 0:
        th = torch.where(mapped[:, 1] < params.threshold_floor, torch.zeros(n), torch.full((n,), threshold_mult))
        weights = blend_weights(weights, th.float())
    if params.header_max < 1.0:
        weights[0] = weights[0].clamp(-params.header_max, params.header_max)
    return weights


def mix_weights(mapped: torch.Tensor, weights: torch.Tensor, max_guidance: float) -> torch.Tensor:
    """Per token, how far it moves towards its image token: min(w, max_guidance), and +-1 (all of the image) where
    |w| reaches 1 - similarity."""
    iw = torch.minimum(weights.double(), torch.tensor(float(max_guidance), dtype=torch.float64))
    whole = (iw != 0) & (iw.abs() >= 1.0 - mapped[:, 1])
    return torch.where(whole, torch.ones_like(iw), iw), whole


# ---------------------------------------------------------------------------------------------------------------
# Applying them


def guide_chunk(text: torch.Tensor, image: torch.Tensor, params: GuideParams,
                concept: torch.Tensor | None = None) -> torch.Tensor:
    """One (77, dim) chunk of text embeddings guided by image tokens (n, dim); `concept` is the concept prompt's
    encoded chunk (77, dim) or None. Returns `text` itself when nothing changes."""
    mapped = map_tokens(image, text, params.reuse, params.order)
    mix, whole = mix_weights(mapped, token_weights(mapped, params), params.max_guidance)
    picked = image.to(text.dtype)[mapped[:, 0].long()]
    changed = mix != 0
    out = text
    if bool(changed.any()):
        w = mix.to(torch.float32).unsqueeze(1)
        moved = (text.float() + (picked.float() - text.float()) * w).to(text.dtype)
        moved = torch.where(whole.unsqueeze(1), picked, moved)
        out = torch.where(changed.unsqueeze(1), moved, text)
    if concept is not None:
        rows = concept_rows(image, concept, text)
        if rows:
            out = out.clone() if out is text else out
            for txt_i, image_i in rows:
                out[txt_i] = image[image_i].to(text.dtype)
    return out


def concept_rows(image: torch.Tensor, concept: torch.Tensor, text: torch.Tensor) -> list:
    """[(text token, image token)] that guidance.py's ConceptMapper replaces: the concept prompt is mapped onto
    the image (no reuse, text order), the chunk onto the concept prompt, and a chunk token whose concept match is
    above CONCEPT_MATCH takes the image token of that concept token."""
    concept_image = map_tokens(image, concept, reuse=False, order='text_order')
    concept_text = map_tokens(concept, text, reuse=True, order='best_fit')
    rows = []
    # ConceptMapper.map enumerates from 1: row k is text token k + 1 (undoing map_tokens' shift), and the concept
    # token index c is row c - 1 of concept_image. The last row of concept_text is never written (c = 0: skipped).
    for k, (c, s) in enumerate(concept_text.tolist()):
        c = int(c)
        if c - 1 < 0 or s <= CONCEPT_MATCH:
            continue
        rows.append((k + 1, int(concept_image[c - 1, 0])))
    return rows


def chunk_report(text: torch.Tensor, image: torch.Tensor, params: GuideParams) -> list:
    """Per token of one chunk: (index, image token, similarity, weight, mix) - the numbers the CLI prints."""
    mapped = map_tokens(image, text, params.reuse, params.order)
    weights = token_weights(mapped, params)
    mix, _ = mix_weights(mapped, weights, params.max_guidance)
    return [(i, int(mapped[i, 0]), float(mapped[i, 1]), float(weights[i]), float(mix[i]))
            for i in range(mapped.shape[0])]
