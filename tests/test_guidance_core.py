"""lib_omost.guidance against the loop-for-loop transcription of FlexDiffuse's guidance.py (guidance_reference)."""

import dataclasses

import pytest
import torch

from lib_omost import guidance as G
from tests import guidance_reference as ref

DIM = 256


def _fixed(seed=0, n_image=50, copies=((3, 5), (7, 20), (11, 24), (30, 40), (33, 50))):
    """A (77, DIM) text chunk and (n_image, DIM) image tokens; image token a is text token b plus a little noise
    for each (a, b) in `copies`, so that some matches are strong (peaks, threshold passes, whole takes)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(77, DIM, generator=g)
    image = torch.randn(n_image, DIM, generator=g) * 1.3
    for a, b in copies:
        image[a] = text[b] + 0.05 * torch.randn(DIM, generator=g)
    return text, image


def _tweener(params: G.GuideParams) -> ref.Tweener:
    """guidance.py's Tweener with the same settings; `method` written out by hand (0 for the sources it drops)."""
    linear = (params.linear_start, params.linear_end)
    clustered, mult = params.clustered, params.threshold_mult
    if params.method == 'linear':
        clustered, mult = 0.0, 0.0
    elif params.method == 'clustered':
        linear, mult = (0.0, 0.0), 0.0
    elif params.method == 'threshold':
        linear, clustered = (0.0, 0.0), 0.0
    order = {'best_fit': ref.GUIDE_ORDER_ALIGN, 'text_order': ref.GUIDE_ORDER_TEXT,
             'direct': ref.GUIDE_ORDER_DIRECT}[params.order]
    return ref.Tweener((params.threshold_floor, mult), linear, clustered, params.max_guidance, params.header_max,
                       order, params.reuse)


CASES = {
    'defaults': G.GuideParams(),
    'seed experiments': G.GuideParams(threshold_mult=0.25, threshold_floor=0.75, clustered=0.25, max_guidance=0.35,
                                      header_max=0.0),
    'linear': G.GuideParams(method='linear', linear_start=0.1, linear_end=1.0, max_guidance=1.0),
    'clustered': G.GuideParams(method='clustered', clustered=0.5, max_guidance=1.0),
    'clustered negative': G.GuideParams(clustered=-0.5, linear_end=1.0, threshold_mult=1.0, max_guidance=1.0),
    'threshold': G.GuideParams(method='threshold', threshold_floor=0.2, threshold_mult=1.0, max_guidance=1.0),
    'threshold negative': G.GuideParams(threshold_mult=-0.25, clustered=0.0, linear_end=1.0, max_guidance=1.0),
    'all negative linear': G.GuideParams(linear_start=-0.6, linear_end=-0.2, clustered=0.3, max_guidance=0.5),
    'header uncapped': G.GuideParams(linear_start=0.4, header_max=1.0, max_guidance=1.0),
    'text order, no reuse': G.GuideParams(order='text_order', reuse=False, threshold_floor=0.2),
    'best fit, no reuse': G.GuideParams(reuse=False, threshold_floor=0.2),
    'direct': G.GuideParams(order='direct', threshold_floor=0.01, max_guidance=0.8),
}


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize('seed', [0, 1])
def test_methods_match_guidance_py(name, seed):
    params = CASES[name]
    text, image = _fixed(seed)
    tweener = _tweener(params)
    mapped_ref, weights_ref = tweener.weights(text[None], image[None])
    mapped = G.map_tokens(image, text, params.reuse, params.order)
    # guidance.py multiplies one image token at a time: the same sums in another order, so equal to float32
    # rounding; the token assignment must be the same.
    assert torch.equal(mapped[:, 0], torch.from_numpy(mapped_ref[:, 0]))
    torch.testing.assert_close(mapped[:, 1], torch.from_numpy(mapped_ref[:, 1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(G.token_weights(mapped, params), weights_ref, rtol=0, atol=1e-5)
    expected = tweener.tween(text[None], image[None])[0]
    out = G.guide_chunk(text, image, params)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert not torch.equal(out, text)  # every case changes something


def test_cases_cover_every_branch():
    """The fixed tensors reach peaks, threshold passes, whole takes and the header cap (else the comparison
    above would check less than it claims)."""
    text, image = _fixed(0)
    mapped = G.map_tokens(image, text)
    assert G.clustered_weights(mapped, float(mapped[:, 1].mean()), 0.5) is not None
    assert int((mapped[:, 1] >= 0.75).sum()) >= 3
    mix, whole = G.mix_weights(mapped, G.token_weights(mapped, CASES['threshold']), 1.0)
    assert bool(whole.any()) and bool(((mix != 0) & ~whole).any())
    weights = G.token_weights(mapped, CASES['header uncapped'])
    capped = G.token_weights(mapped, dataclasses.replace(CASES['header uncapped'], header_max=0.15))
    assert float(weights[0]) > 0.15 and float(capped[0]) == pytest.approx(0.15)


def test_plateau_peaks_do_not_divide_by_zero():
    mapped = torch.zeros((8, 2), dtype=torch.float64)
    mapped[2:4, 1] = 0.9  # two equal neighbours: both peaks; guidance.py raises ZeroDivisionError here
    with pytest.raises(ZeroDivisionError):
        ref._clustered_guidance(mapped.numpy(), 0.1, 1.0)
    w = G.clustered_weights(mapped, 0.1, 1.0)  # one peak at 2, down to 0 at both ends
    torch.testing.assert_close(w, torch.tensor([0, 0.5, 1, 0.8, 0.6, 0.4, 0.2, 0]))


@pytest.mark.parametrize('params', [G.GuideParams(max_guidance=0.0),
                                    G.GuideParams(method='linear', linear_start=0.0, linear_end=0.0),
                                    G.GuideParams(method='threshold', threshold_floor=1.01)])
def test_zero_guidance_returns_the_chunk_itself(params):
    text, image = _fixed(0)
    assert G.guide_chunk(text, image, params) is text


@pytest.mark.parametrize('params', [G.GuideParams(), G.GuideParams(max_guidance=0.0, linear_end=0.0, clustered=0,
                                                                   threshold_mult=0)])
def test_concept_mapping_matches_concept_mapper(params):
    text, image = _fixed(0)
    # The concept prompt repeats text tokens 20 and 40 (as a concept word would match a prompt word): those
    # tokens map, through the concept prompt, to the image tokens matching them.
    g = torch.Generator().manual_seed(5)
    concept = torch.randn(77, DIM, generator=g)
    concept[1], concept[2] = text[20] + 0.01, text[40] - 0.01
    rows = G.concept_rows(image, concept, text)
    assert {t for t, _ in rows} >= {20, 40}
    expected = _tweener(params).tween(text[None], image[None])
    expected = ref.ConceptMapper(image[None], concept[None]).map(text[None], expected)[0]
    out = G.guide_chunk(text, image, params, concept=concept)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert not torch.equal(out, text)


def test_half_precision_chunk_stays_half():
    text, image = _fixed(0)
    out = G.guide_chunk(text.half(), image, G.GuideParams())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), G.guide_chunk(text, image, G.GuideParams()), rtol=0, atol=2e-2)


def test_report_lists_every_token():
    text, image = _fixed(0)
    rows = G.chunk_report(text, image, G.GuideParams())
    assert len(rows) == 77 and rows[-1][1:3] == (0, 0.0)
    assert rows[-1][3] == pytest.approx(0.5) and rows[-1][4] == pytest.approx(0.5)
