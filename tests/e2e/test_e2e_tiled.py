"""Omost with tiled diffusion in a real WebUI: Forge's built-in "MultiDiffusion Integrated".

A tile is not the image: the regions must not be squeezed into each tile. Omost refuses the regions for UNet calls
on a tile (plain attention, the region prompts act as one prompt) and says so in the infotext's Omost notes; a tile
that covers the whole image is the image, and gets the regions as without tiling.

A1111's Tiled Diffusion extension (multidiffusion-upscaler-for-automatic1111) is not installed in the test
WebUI; the same refusal covers it (tests/test_tiled_diffusion.py drives it the way its kdiff_forward calls the
UNet); here it is skipped.
"""

from __future__ import annotations

import pytest

from .client import omost_args
from .test_e2e_ipadapter import _evidence


def _multidiffusion(webui, tile):
    status, scripts = webui.get('/sdapi/v1/script-info')
    if status != 200 or not any(s['name'] == 'multidiffusion integrated' for s in scripts):
        pytest.skip('no "MultiDiffusion Integrated" (Forge built-in) in this WebUI')
    # forge_multidiffusion.py ui(): enabled, method, tile width, tile height, tile overlap, tile batch size
    return {'MultiDiffusion Integrated': {'args': [True, 'MultiDiffusion', tile, tile, 0, 4]}}


def test_tiles_get_no_regions_and_say_so(webui, job, canvas, host, sdxl):
    size = 128 if sdxl else 64
    tiled = _multidiffusion(webui, size // 2)  # 2 x 2 tiles
    whole = _multidiffusion(webui, size)       # one tile: the image itself
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
    assert 'multidiffusion_enabled: True' in info and 'Omost: "' in info
    assert 'Omost notes' in info and 'tiled diffusion is on' in info
    assert tiled_regions.pixels == tiled_bags.pixels  # no region was drawn into any tile
    assert tiled_regions.pixels != regions.pixels
    assert 'Omost notes' not in one_tile.infotexts[0] and one_tile.pixels == regions.pixels
