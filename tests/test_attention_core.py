"""lib_omost.attention: one SDPA call equals Omost's explicit score edit (float64 reference from the formula)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from lib_omost.attention import RegionalAttention, layer_size, omost_attention
from tests.attention_helpers import omost_masks, omost_reference, one_thread

assert one_thread  # autouse fixture

GLOBAL = (0, 90, 0, 90)


def random_case(seed, h, w, regions, chunks=2, heads=3, d=16, batch=2, dtype=torch.float32, min_side=25):
    g = torch.Generator().manual_seed(seed)
    rects = [GLOBAL]
    for _ in range(regions - 1):  # random, overlapping rects; Omost's own smallest is 25x25 (clipped)
        top, left = (int(x) for x in torch.randint(0, 90 - min_side, (2,), generator=g))
        bottom = top + int(torch.randint(min_side, 90 - top + 1, (1,), generator=g))
        right = left + int(torch.randint(min_side, 90 - left + 1, (1,), generator=g))
        rects.append((top, min(bottom, 90), left, min(right, 90)))
    tokens = torch.randint(0, regions, (77 * chunks,), generator=g)
    q = torch.randn(batch, heads, h * w, d, generator=g).to(dtype)
    k = torch.randn(batch, heads, tokens.numel(), d, generator=g).to(dtype)
    v = torch.randn(batch, heads, tokens.numel(), d, generator=g).to(dtype)
    return rects, tokens, q, k, v


@pytest.mark.parametrize('h,w,regions', [(8, 8, 1), (6, 10, 3), (13, 7, 5), (4, 4, 8), (1, 3, 4), (16, 12, 8)])
def test_matches_omost_formula_fp32(h, w, regions):
    rects, tokens, q, k, v = random_case(h * 100 + w + regions, h, w, regions)
    masks = omost_masks(rects, h, w)
    out = omost_attention(q, k, v, masks, tokens)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert (out.double() - omost_reference(q, k, v, masks, tokens)).abs().max() < 1e-5


@pytest.mark.parametrize('h,w,regions', [(8, 8, 4), (5, 11, 8)])
def test_matches_omost_formula_fp16(h, w, regions):
    rects, tokens, q, k, v = random_case(7 + regions, h, w, regions, dtype=torch.float16)
    masks = omost_masks(rects, h, w)
    out = omost_attention(q, k, v, masks, tokens)
    assert out.dtype == torch.float16
    assert (out.double() - omost_reference(q, k, v, masks, tokens)).abs().max() < 2e-3


def test_bf16_runs_close():
    rects, tokens, q, k, v = random_case(3, 6, 6, 3, dtype=torch.bfloat16)
    masks = omost_masks(rects, 6, 6)
    out = omost_attention(q, k, v, masks, tokens)
    assert out.dtype == torch.bfloat16
    assert (out.double() - omost_reference(q, k, v, masks, tokens)).abs().max() < 3e-2


def test_strength_zero_is_plain_sdpa_exactly():
    rects, tokens, q, k, v = random_case(1, 6, 9, 4)
    out = omost_attention(q, k, v, omost_masks(rects, 6, 9), tokens, strength=0.0)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize('strength', [0.25, 0.5, 1.5, 2.0])
def test_strength_is_the_area_emphasis_exponent(strength):
    rects, tokens, q, k, v = random_case(2, 7, 5, 4)
    masks = omost_masks(rects, 7, 5)
    out = omost_attention(q, k, v, masks, tokens, strength=strength)
    assert (out.double() - omost_reference(q, k, v, masks, tokens, strength)).abs().max() < 1e-5


def test_tiny_regions_from_json_canvases_stay_accurate():
    # Scales up to h*w: logits grow with them, so allow the float32 rounding to grow too (relative 1e-7).
    rects, tokens, q, k, v = random_case(9, 12, 20, 6, min_side=3)
    masks = omost_masks(rects, 12, 20)
    scale = 12 * 20 / masks.sum(1).clamp(min=1).min()
    out = omost_attention(q, k, v, masks, tokens)
    assert (out.double() - omost_reference(q, k, v, masks, tokens)).abs().max() < 1e-5 + 1e-7 * float(scale) * 10


def test_vanished_regions_and_uncovered_pixels_give_no_nan():
    # No global region, a region that vanishes at 2x2, pixels covered by no region.
    rects = [(0, 10, 0, 10), (80, 90, 80, 90)]
    tokens = torch.tensor([0] * 40 + [1] * 37)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 77, 8), torch.randn(1, 2, 77, 8)
    masks = omost_masks(rects, 2, 2)
    assert masks.sum() <= 1
    for dtype in (torch.float32, torch.float16):
        out = omost_attention(q.to(dtype), k.to(dtype), v.to(dtype), masks, tokens)
        assert torch.isfinite(out).all()


def test_unowned_columns_are_never_attended():
    rects, tokens, q, k, v = random_case(5, 6, 6, 3)
    tokens = torch.cat([tokens, torch.full((77,), -1)])
    k = torch.cat([k, 100 * torch.randn(2, 3, 77, 16)], dim=2)
    v = torch.cat([v, 1e6 * torch.ones(2, 3, 77, 16)], dim=2)
    masks = omost_masks(rects, 6, 6)
    out = omost_attention(q, k, v, masks, tokens)
    assert out.abs().max() < 100
    assert (out.double() - omost_reference(q, k, v, masks, tokens)).abs().max() < 1e-5


def test_layer_size_follows_stride_2_convolutions():
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)  # ldm/sgm/Forge Downsample
    for height, width in [(64, 64), (97, 61), (128, 72), (13, 7), (1, 5)]:
        x = torch.zeros(1, 1, height, width)
        for _ in range(5):
            h, w = x.shape[-2:]
            assert layer_size(h * w, height, width) == (h, w)
            x = conv(x)
    assert layer_size(1000, 64, 64) is None


def regional_for(rects, tokens, latent, **kw):
    return RegionalAttention(rects, tokens, latent, **kw)


def test_regional_all_rows_matches_reference_on_non_square_levels():
    rects, tokens, _, _, _ = random_case(11, 1, 1, 5)
    regional = regional_for(rects, tokens, (13, 21))
    for h, w in [(13, 21), (7, 11), (4, 6), (2, 3)]:
        _, _, q, k, v = random_case(h, h, w, 5)
        out = regional.regional(q, k, v)
        ref = omost_reference(q, k, v, omost_masks(rects, h, w), tokens)
        assert (out.double() - ref).abs().max() < 1e-5


def test_regional_cond_rows_only_other_rows_exactly_plain():
    rects, tokens, q, k, v = random_case(12, 6, 8, 4, batch=4)
    regional = regional_for(rects, tokens, (6, 8))
    plain = F.scaled_dot_product_attention(q, k, v)
    ref = omost_reference(q, k, v, omost_masks(rects, 6, 8), tokens)
    for rows in ([2, 3], slice(0, 2), torch.tensor([0, 3]), torch.tensor([False, True, False, True])):
        out = regional.regional(q, k, v, rows)
        picked = torch.zeros(4, dtype=torch.bool)
        picked[rows] = True
        assert torch.equal(out[~picked], plain[~picked])
        assert (out[picked].double() - ref[picked]).abs().max() < 1e-5
    assert torch.equal(regional.regional(q, k, v, []), plain)


@pytest.mark.parametrize('repeats', [2, 3])
def test_token_map_tiles_under_forge_lcm_repetition(repeats):
    rects, tokens, q, k, v = random_case(13, 5, 7, 3)
    regional = regional_for(rects, tokens, (5, 7))
    ref = omost_reference(q, k, v, omost_masks(rects, 5, 7), tokens)
    out = regional.regional(q, k.repeat(1, 1, repeats, 1), v.repeat(1, 1, repeats, 1), tiled=True)
    assert (out.double() - ref).abs().max() < 1e-5


def test_padding_beyond_the_map_is_masked_when_not_tiled():
    rects, tokens, q, k, v = random_case(14, 5, 7, 3)
    regional = regional_for(rects, tokens, (5, 7))
    extra = torch.randn(2, 3, 77, 16)
    out = regional.regional(q, torch.cat([k, extra], 2), torch.cat([v, 50 + extra], 2), tiled=False)
    ref = omost_reference(q, k, v, omost_masks(rects, 5, 7), tokens)
    assert (out.double() - ref).abs().max() < 1e-5


def test_step_window_strength_and_latent_changes():
    rects, tokens, q, k, v = random_case(15, 4, 4, 3)
    plain = F.scaled_dot_product_attention(q, k, v)
    regional = regional_for(rects, tokens, (8, 8), start=0.25, end=0.5)
    ref = omost_reference(q, k, v, omost_masks(rects, 4, 4), tokens)
    for progress, regional_expected in [(0.0, False), (0.25, True), (0.45, True), (0.5, False), (1.0, False)]:
        regional.set_progress(progress)
        out = regional.regional(q, k, v)
        if regional_expected:
            assert (out.double() - ref).abs().max() < 1e-5
        else:
            assert torch.equal(out, plain)
    full = regional_for(rects, tokens, (8, 8))
    full.set_progress(1.0)
    assert full.active
    assert torch.equal(regional_for(rects, tokens, (8, 8), strength=0).regional(q, k, v), plain)
    full.set_latent_size(16, 16)  # hires: 4x4 is now the third level
    assert (full.regional(q, k, v).double() - ref).abs().max() < 1e-5


def test_unmatched_sizes_fall_back_to_plain_and_log_once(caplog):
    rects, tokens, q, k, v = random_case(16, 4, 4, 3)
    plain = F.scaled_dot_product_attention(q, k, v)
    regional = regional_for(rects, tokens, (10, 10))  # 16 pixels is no level of 10x10
    with caplog.at_level(logging.WARNING, logger='lib_omost.attention'):
        assert torch.equal(regional.regional(q, k, v), plain)
        assert torch.equal(regional.regional(q, k, v), plain)
        short = regional_for(rects, tokens, (4, 4))
        assert torch.equal(short.regional(q, k[:, :, :77], v[:, :, :77]),
                           F.scaled_dot_product_attention(q, k[:, :, :77], v[:, :, :77]))
        assert torch.equal(regional_for(rects, tokens, None).regional(q, k, v), plain)
    messages = [r.getMessage() for r in caplog.records]
    assert sum('no UNet level' in m for m in messages) == 1
    assert sum('shorter than' in m for m in messages) == 1
    assert sum('latent size is unknown' in m for m in messages) == 1


def test_masks_are_built_once_per_layer_and_device():
    rects, tokens, q, k, v = random_case(17, 4, 4, 3)
    regional = regional_for(rects, tokens, (8, 8))
    regional.regional(q, k, v)
    regional.regional(q.half(), k.half(), v.half())
    regional.regional(q, k.repeat(1, 1, 2, 1), v.repeat(1, 1, 2, 1))
    assert list(regional._masks) == [(4, 4, 'cpu')]
    assert torch.equal(regional.layer_masks(4, 4, 'cpu'), omost_masks(rects, 4, 4))


def test_plans_are_bool_masks_in_a_bounded_cache_and_can_be_freed(monkeypatch):
    from lib_omost import attention
    rects = [GLOBAL] + [(i, i + 10, 0, 90) for i in range(0, 80, 10)]
    tokens = torch.arange(77 * len(rects)) // 77
    regional = RegionalAttention(rects, tokens, (64, 64))
    plan = regional.plan_for(64 * 64, tokens.numel(), 'cpu', torch.float32)
    assert plan.attn_mask.dtype == torch.bool  # 1 byte per (pixel, token), not 4
    assert plan.nbytes == 64 * 64 * tokens.numel() + tokens.numel() * 4
    monkeypatch.setattr(attention, '_MAX_PLAN_BYTES', int(1.1 * plan.nbytes))
    for pixels in (32 * 32, 16 * 16, 8 * 8):  # the coarser levels: a quarter of the size each
        regional.plan_for(pixels, tokens.numel(), 'cpu', torch.float32)
    assert [key[0] for key in regional._plans] == [32 * 32, 16 * 16, 8 * 8]  # the oldest, biggest one went
    assert regional.plan_bytes <= 1.1 * plan.nbytes
    regional.clear_plans()
    assert regional.plan_bytes == 0 and not regional._masks


def test_bad_token_maps_are_refused():
    with pytest.raises(ValueError, match=r'lie in \[-1, 0\]'):
        RegionalAttention([GLOBAL], [0, 1], (8, 8))
    with pytest.raises(ValueError, match='empty'):
        RegionalAttention([GLOBAL], [], (8, 8))
    with pytest.raises(ValueError, match=r'lie in \[-1, 0\]'):
        omost_attention(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2),
                        torch.ones(1, 4, dtype=torch.bool), torch.tensor([0, 0, 2]))
    # the edge of the valid range is accepted: region 0 and unowned columns
    assert RegionalAttention([GLOBAL], [0, -1, 0], (8, 8)).cond_length == 3
