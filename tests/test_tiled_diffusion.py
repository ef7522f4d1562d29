"""Tiled diffusion: a UNet call on a tile of the image gets plain attention and a message, never the whole canvas.

Forge's built-in MultiDiffusion (extensions-builtin/sd_forge_multidiffusion/lib_multidiffusion/tiled_diffusion.py:
MultiDiffusion / MixtureOfDiffusers.__call__, installed with set_model_unet_function_wrapper) and A1111's Tiled
Diffusion extension (multidiffusion-upscaler-for-automatic1111, tile_methods/abstractdiffusion.py: kdiff_forward,
which replaces sampler.model_wrap_cfg.inner_model.forward) both cut the latent into tiles and run the UNet on a
batch of tiles: `original_shape` (Forge) and the diffusion model's x (A1111) are the tile's, and nothing tells the
attention where the tile lies. Squeezing the canvas into each tile would paint every region into every tile.
"""

import pytest
import torch

from lib_omost.attention import RegionalAttention
from omost_webui.hosts import a1111
from omost_webui.hosts.patcher import patch_unet
from tests.attention_helpers import FORGE_RECTS as RECTS
from tests.attention_helpers import (
    TOKENS,
    FakeUnetPatcher,
    denoiser_params,
    forge_attn2,
    forge_call_options,
    forge_cross_attention,
    one_thread,
    tiny_unet,
)

assert one_thread  # autouse fixture
IMAGE = (8, 12)   # latent of the whole image
TILE = (4, 6)     # latent of one tile
ROWS = 2


def regional_with_notes():
    regional = RegionalAttention(RECTS, TOKENS, None)
    regional.set_image_size(*IMAGE)
    notes = []
    regional.notify = notes.append
    return regional, notes


def split_tiles(x):
    """MultiDiffusion's batching of tiles: x_tile = cat(x[bbox] for the batch's bboxes), here the 4 quarters."""
    h, w = TILE
    return torch.cat([x[:, :, i:i + h, j:j + w] for i in (0, h) for j in (0, w)])


def test_a_tile_is_refused_once_with_the_reason():
    regional, notes = regional_with_notes()
    regional.set_latent_size(*TILE)
    assert regional.plan_for(TILE[0] * TILE[1], 231, 'cpu', torch.float32) is None
    assert regional.plan_for(2 * 3, 231, 'cpu', torch.float32) is None
    assert len(notes) == 1 and 'tiled diffusion' in notes[0] and '32x48 px tiles of the 64x96 px image' in notes[0]
    regional.set_latent_size(*IMAGE)  # a single tile covering the whole image is the image
    assert regional.plan_for(IMAGE[0] * IMAGE[1], 231, 'cpu', torch.float32) is not None
    assert len(notes) == 1


@pytest.fixture(scope='module')
def attn():
    return forge_cross_attention()


def forge_call(attn, unet, x, context, latent):
    options = dict(unet.model_options['transformer_options'])
    options.update(forge_call_options([1, 0], x.shape[0] // 2, latent))
    with torch.no_grad():
        return forge_attn2(attn, x, context, options, ('input', 4), 0)


def test_forge_multidiffusion_tiles_get_plain_attention(attn):
    regional, notes = regional_with_notes()
    unet = patch_unet(FakeUnetPatcher(), regional)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(4 * 2 * ROWS, 231, 64, generator=g)  # 4 tiles x [uncond, cond] rows
    x = torch.randn(4 * 2 * ROWS, 6, 32, generator=g)  # the 2x3 level of a 4x6 tile
    plain = forge_call(attn, FakeUnetPatcher(), x, context, TILE)
    assert torch.equal(forge_call(attn, unet, x, context, TILE), plain)
    assert len(notes) == 1 and 'tiled diffusion' in notes[0]
    # the same rows on the whole image's level do get regions
    x, context = x[:2 * ROWS], context[:2 * ROWS]
    whole = (IMAGE[0] // 2, IMAGE[1] // 2)
    x = torch.randn(2 * ROWS, whole[0] * whole[1], 32, generator=g)
    assert not torch.equal(forge_call(attn, unet, x, context, IMAGE), forge_call(attn, FakeUnetPatcher(), x, context,
                                                                                   IMAGE))


def test_a1111_tiled_diffusion_tiles_get_plain_attention():
    unet = tiny_unet()
    regional, notes = regional_with_notes()
    hooks = a1111.A1111RegionalHooks(regional, context_kv=lambda c: (c, c))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2 * ROWS, 4, *IMAGE, generator=g)
    context = torch.randn(2 * ROWS, 231, 64, generator=g)
    x_tiles, context_tiles = split_tiles(x), context.repeat(4, 1, 1)  # abstractdiffusion.py: repeat_cond_dict
    t = torch.full((x_tiles.shape[0],), 500.0)
    with torch.no_grad():
        plain = unet(x_tiles, t, context=context_tiles)
        try:
            hooks.install(unet)
            hooks.on_cfg_denoiser(denoiser_params(context_tiles[:ROWS * 4], context_tiles[ROWS * 4:]))
            tiled = unet(x_tiles, t, context=context_tiles)
        finally:
            a1111.remove_all()
    assert torch.equal(tiled, plain)
    assert len(notes) == 1 and 'tiled diffusion' in notes[0]


def test_a_tiled_job_says_so_in_the_infotext_and_renders_as_regions_off(monkeypatch):
    """A1111 path through the script's hooks: the UNet run on four tiles of the latent, as Tiled Diffusion's
    kdiff_forward does (abstractdiffusion.py: repeat_func: tiles batched, sigma and cond repeated, then stitched)."""
    from webui_helpers import A1111Model, Rig, images_equal, omost, tiny_ldm_unet
    model = A1111Model(tiny_ldm_unet())
    untiled = model.apply_model

    def tiled_apply_model(x, t, cond):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        boxes = [(i, j) for i in (0, h) for j in (0, w)]
        tiles = torch.cat([x[:, :, i:i + h, j:j + w] for i, j in boxes])
        out_tiles = untiled(tiles, t.repeat(len(boxes)), cond.repeat(len(boxes), 1, 1)).chunk(len(boxes))
        out = torch.empty_like(x)
        for (i, j), tile in zip(boxes, out_tiles):
            out[:, :, i:i + h, j:j + w] = tile
        return out

    rig = Rig(model)
    _, untiled_regions = rig.generate(omost())
    monkeypatch.setattr(model, 'apply_model', tiled_apply_model)
    _, tiled = rig.generate(omost())
    _, tiled_bags_only = rig.generate(omost(regions=False))
    assert images_equal(tiled, tiled_bags_only)  # refused: no canvas squeezed into the tiles
    assert not images_equal(untiled_regions, tiled)
    info = tiled.infotexts[0]
    assert 'Omost notes: "tiled diffusion is on (the UNet sees 32x32 px tiles of the 64x64 px image)' in info
    assert 'Omost notes' not in untiled_regions.infotexts[0]
