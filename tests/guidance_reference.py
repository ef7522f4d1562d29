"""An independent transcription of FlexDiffuse's guidance.py (tim-speed/flexdiffuse @ 1272669, `_map_emb`,
`_traverse_a_to_b`, `_clustered_guidance`, `_blend_weights`, `Tweener.tween`, `ConceptMapper`), loop for loop,
on (1, tokens, dim) tensors as there. The tests check lib_omost.guidance (vectorised) against it.

Only change: the print() calls are gone.
"""

import math

import numpy as np
import torch

GUIDE_ORDER_TEXT = 0
GUIDE_ORDER_ALIGN = 1
GUIDE_ORDER_DIRECT = 2


def _map_emb(alt_emb, txt_emb, alt_emb_reuse=True, guide_order=GUIDE_ORDER_ALIGN):
    altft = alt_emb / alt_emb.norm(dim=-1, keepdim=True)
    txtft = txt_emb / txt_emb.norm(dim=-1, keepdim=True)
    all_matches = []
    for i, ialtft in enumerate(altft[0, :]):
        ialtft = ialtft.unsqueeze(0)
        similarity = (100.0 * (ialtft @ txtft.mT)).softmax(dim=-1)
        all_matches += [(i, ii, v.item()) for ii, v in enumerate(similarity[0, 0, 1:])]
    if guide_order == GUIDE_ORDER_TEXT:
        all_matches.sort(key=lambda t: (t[1], -t[2], t[0]))
    elif guide_order == GUIDE_ORDER_DIRECT:
        all_matches.sort(key=lambda t: (t[1], t[0]))
        mapped_tokens = np.zeros((txt_emb.shape[1], 2))
        for alt_i, txt_i, s in all_matches:
            if alt_i == txt_i:
                mapped_tokens[txt_i] = (alt_i, s)
        return mapped_tokens
    else:
        all_matches.sort(key=lambda t: (-t[2], t[1], t[0]))
    mapped_tokens = np.zeros((txt_emb.shape[1], 2))
    alt_toks_used = set()
    for alt_i, txt_i, s in all_matches:
        if mapped_tokens[txt_i, 1] > 0 or alt_i in alt_toks_used:
            continue
        mapped_tokens[txt_i] = (alt_i, s)
        if not alt_emb_reuse:
            alt_toks_used.add(alt_i)
    return mapped_tokens


def _traverse_a_to_b(al, bl, weights, slope):
    bi = 0

    def traverse_left(a, b):
        d = a - b
        gslope = slope / d
        for i in range(1, d):
            weights[a - i] -= gslope * i

    def traverse_right(a, b):
        d = b - a
        gslope = slope / d
        for i in range(1, d + 1):
            weights[a + i] -= gslope * i

    if bl[0] == 0:
        weights[0] -= slope
    for a in al:
        b = bl[bi]
        if b < a:
            traverse_left(a, b)
            bi += 1
        if bi >= len(bl):
            break
        b = bl[bi]
        traverse_right(a, b)
    return weights


def _clustered_guidance(mapped_tokens, threshold, guidance):
    token_len = mapped_tokens.shape[0]
    clustered_weights = None
    peaks = []
    for txt_i, (_, s) in enumerate(mapped_tokens[1:-1], 1):
        if s < threshold:
            continue
        if mapped_tokens[txt_i - 1, 1] <= s >= mapped_tokens[txt_i + 1, 1]:
            peaks.append(txt_i)
    if peaks:
        valleys = []
        if peaks[0] != 0:
            valleys.append(0)
        for p1, p2 in zip(peaks, peaks[1:]):
            d = p2 - p1
            if d > 0:
                valleys.append(p1 + math.ceil(d / 2))
        if peaks[-1] != token_len - 1:
            valleys.append(token_len - 1)
        clustered_weights = _traverse_a_to_b(peaks, valleys, torch.ones((token_len,)), 1.0) * guidance
    return clustered_weights


def _blend_weights(a, b):
    if a.max() >= 0:
        if b.max() >= 0:
            return torch.maximum(a, b)
        return a + b
    return torch.minimum(a, b)


class Tweener:
    def __init__(self, threshold=(0.5, 0.5), linear=(0.0, 0.5), clustered=0.5, max_guidance=0.5, header_max=0.15,
                 align_mode=GUIDE_ORDER_ALIGN, mapping_reuse=True):
        self.threshold_floor, self.threshold_mult = threshold
        self.linear_start, self.linear_end = linear
        self.clustered = clustered
        self.max_guidance = max_guidance
        self.header_max = header_max
        self.align_mode = align_mode
        self.mapping_reuse = mapping_reuse

    def weights(self, base_emb, alt_emb):
        mapped_tokens = _map_emb(alt_emb, base_emb, self.mapping_reuse, self.align_mode)
        avg_similarity = mapped_tokens[:, 1].mean()
        alt_weights = torch.linspace(self.linear_start, self.linear_end, steps=base_emb.shape[1])
        if self.clustered != 0:
            clustered_weights = _clustered_guidance(mapped_tokens, avg_similarity, self.clustered)
            if clustered_weights is not None:
                alt_weights = _blend_weights(alt_weights, clustered_weights)
        if self.threshold_mult != 0:
            th_weights = torch.ones_like(alt_weights) * self.threshold_mult
            for txt_i, (_, s) in enumerate(mapped_tokens):
                if s < self.threshold_floor:
                    th_weights[txt_i] = 0
            alt_weights = _blend_weights(alt_weights, th_weights)
        if self.header_max < 1.0:
            hw = alt_weights[0].item()
            if hw >= 0:
                alt_weights[0] = min(hw, self.header_max)
            else:
                alt_weights[0] = max(hw, -self.header_max)
        return mapped_tokens, alt_weights

    def tween(self, base_emb, alt_emb):
        mapped_tokens, alt_weights = self.weights(base_emb, alt_emb)
        clip_embeddings = torch.zeros_like(base_emb)
        for txt_i, (img_i, s) in enumerate(mapped_tokens):
            sd = 1.0 - s
            iw = min(alt_weights[txt_i].item(), self.max_guidance)
            if iw == 0:
                clip_embeddings[0, txt_i] = base_emb[0, txt_i]
            elif abs(iw) >= sd:
                clip_embeddings[0, txt_i] = alt_emb[0, int(img_i)]
            else:
                d_emb = alt_emb[0, int(img_i)] - base_emb[0, txt_i]
                clip_embeddings[0, txt_i] = base_emb[0, txt_i] + (d_emb * iw)
        return clip_embeddings


class ConceptMapper:
    def __init__(self, guide_embeddings, concept_embeddings):
        self.guide_embeddings = guide_embeddings
        self.concept_embeddings = concept_embeddings
        self.concept_mappings = _map_emb(guide_embeddings, concept_embeddings, False, GUIDE_ORDER_TEXT)

    def map(self, base_embeddings, output_embeddings=None):
        if output_embeddings is None:
            output_embeddings = base_embeddings.clone()
        concept_text = _map_emb(self.concept_embeddings, base_embeddings, True, GUIDE_ORDER_ALIGN)
        for txt_i, (concept_i, s) in enumerate(concept_text, 1):
            concept_i = int(concept_i)
            cmi = int(concept_i) - 1
            if cmi < 0:
                continue
            concept_image_i, concept_image_s = self.concept_mappings[cmi]
            concept_image_i = int(concept_image_i)
            if s > 0.9:
                output_embeddings[0, txt_i] = self.guide_embeddings[0, concept_image_i]
        return output_embeddings
