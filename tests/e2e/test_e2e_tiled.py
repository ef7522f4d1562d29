"""Omost with tiled diffusion in a real WebUI: Forge's built-in "MultiDiffusion Integrated", or A1111's Tiled Diffusion
extension (pkuliyi2015/multidiffusion-upscaler-for-automatic1111, installed into the WebUI's extensions folder).

A tile is not the image: the regions must not be squeezed into each tile. Omost refuses the regions for UNet calls
on a tile (plain attention, the region prompts act as one prompt) and says so in the infotext's Omost notes; a tile
that covers the whole image is the image, and gets the regions as without tiling.

A1111's Tiled Diffusion calls the UNet on tiles from its own kdiff_forward (tests/test_tiled_diffusion.py drives it
the same way offline); a job whose latent fits one tile is not tiled at all (tilediffusion.py process: "ignore tiling
when there's only 1 tile"). Skipped where neither is installed.
"""

from __future__ import annotations

import pytest

from .client import omost_args
from .test_e2e_ipadapter import _evidence


def _multidiffusion(webui, tile):
    """The tiling script's alwayson args for tiles of `tile` image pixels, and the infotext key it writes."""
    status, scripts = webui.get('/sdapi/v1/script-info')
    names = {s['name'] for s in scripts} if status == 200 else set()
    if 'multidiffusion integrated' in names:
        # Forge forge_multidiffusion.py ui(): enabled, method, tile width, tile height, tile overlap, tile batch size
        return {'MultiDiffusion Integrated': {'args': [True, 'MultiDiffusion', tile, tile, 0, 4]}}, \
            'multidiffusion_enabled: True'
    if 'tiled diffusion' in names:
        # tilediffusion.py ui(): enabled, method, overwrite_size, keep_input_size, image_width, image_height,
        # latent tile width, latent tile height, overlap, tile batch size, upscaler, scale factor, noise inversion
        # (5 args), control_tensor_cpu, enable_bbox_control, draw_background, causal_layers. Tiles are in latents.
        return {'Tiled Diffusion': {'args': [True, 'MultiDiffusion', False, True, 1024, 1024, tile // 8, tile // 8, 0, 4,
                                             'None', 2.0, False, 10, 1.0, 1.0, 64, False, False, True, False]}}, \
            'Tiled Diffusion: '
    pytest.skip('no tiled diffusion in this WebUI (Forge\'s "MultiDiffusion Integrated" or A1111\'s Tiled Diffusion)')


def test_tiles_get_no_regions_and_say_so(webui, job, canvas, host, sdxl):
    size = 128 if sdxl else 64
    tiled, tiled_key = _multidiffusion(webui, size // 2)  # 2 x 2 tiles
    whole, _ = _multidiffusion(webui, size)               # one tile: the image itself
    regions = webui.txt2img(job(width=size, height=size, alwayson_scripts=omost_args(canvas))).ok()
    tiled_regions = webui.txt2img(job(width=size, height=size, alwayson_scripts={**tiled, **omost_args(canvas)})).ok()
    tiled_bags = webui.txt2img(job(width=size, height=size,
                                   alwayson_scripts={**tiled, **omost_args(canvas, {'regions': False})})).ok()
    one_tile = webui.txt2img(job(width=size, height=size, alwayson_scripts={**whole, **omost_args(canvas)})).ok()
    runs = {'regions': regions, 'tiled_regions': tiled_regions, 'tiled_bags_only': tiled_bags, 'one_tile': one_tile}
    _evidence('tiled', host=host, arch='sdxl' if sdxl else 'sd15', order='-', size=size,
              pixels={k: r.pixels[0] for k, r in runs.items()}, seconds={k: r.seconds for k, r in runs.items()},
              infotext_tiled=tiled_regions.infotexts[0])
    info = tiled_regions.infotexts[0]
    assert tiled_key in info and 'Omost: "' in info
    assert 'Omost notes' in info and 'tiled diffusion is on' in info
    assert tiled_regions.pixels == tiled_bags.pixels  # no region was drawn into any tile
    assert tiled_regions.pixels != regions.pixels
    assert 'Omost notes' not in one_tile.infotexts[0] and one_tile.pixels == regions.pixels
