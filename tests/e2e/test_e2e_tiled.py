"""Omost with tiled diffusion in a real WebUI: Forge's built-in "MultiDiffusion Integrated", or A1111's Tiled Diffusion
extension (pkuliyi2015/multidiffusion-upscaler-for-automatic1111, installed into the WebUI's extensions folder).

A tile is not the image: the regions must not be squeezed into each tile. Omost refuses the regions for UNet calls
on a tile (plain attention, the region prompts act as one prompt) and says so in the infotext's Omost notes; a tile
that covers the whole image is the image, and gets the regions as without tiling.

A1111's Tiled Diffusion calls the UNet on tiles from its own kdiff_forward (tests/test_tiled_diffusion.py drives it
the same way offline); a job whose latent fits one tile is not tiled at all (tilediffusion.py process: "ignore tiling
when there's only 1 tile"). The test runs in the first tab the tiler is on (Neo's MultiDiffusion is on img2img
only). Skipped where neither is installed.
"""

from __future__ import annotations

import pytest

from .client import b64_png, omost_args
from .test_e2e_ipadapter import _evidence


def _tiler(webui):
    """(endpoint, args(tile), infotext key) of the tiling script, on the first tab that runs it: txt2img, else img2img.

    The API finds an alwayson script only in the runner of the endpoint asked (modules/api/api.py:
    script_name_to_index over that endpoint's script_runner.scripts), while /sdapi/v1/script-info lists both tabs'
    scripts, each with its is_img2img. Forge's MultiDiffusion is on both tabs (forge_multidiffusion.py show():
    AlwaysVisible); Neo's only on img2img (show(): AlwaysVisible if is_img2img else None), so there the test runs
    in img2img."""
    status, scripts = webui.get('/sdapi/v1/script-info')
    tabs = {(s['name'], bool(s.get('is_img2img'))) for s in scripts} if status == 200 else set()
    for img2img in (False, True):
        endpoint = 'img2img' if img2img else 'txt2img'
        if ('multidiffusion integrated', img2img) in tabs:
            # Forge forge_multidiffusion.py ui(): enabled, method, tile width, tile height, tile overlap, tile batch
            return endpoint, lambda tile: {'MultiDiffusion Integrated': {
                'args': [True, 'MultiDiffusion', tile, tile, 0, 4]}}, 'multidiffusion_enabled: True'
        if ('tiled diffusion', img2img) in tabs:
            # tilediffusion.py ui(): enabled, method, overwrite_size, keep_input_size, image_width, image_height,
            # latent tile width, latent tile height, overlap, tile batch size, upscaler, scale factor, noise
            # inversion (5 args), control_tensor_cpu, enable_bbox_control, draw_background, causal_layers. Tiles are
            # in latents.
            return endpoint, lambda tile: {'Tiled Diffusion': {'args': [
                True, 'MultiDiffusion', False, True, 1024, 1024, tile // 8, tile // 8, 0, 4, 'None', 2.0, False, 10,
                1.0, 1.0, 64, False, False, True, False]}}, 'Tiled Diffusion: '
    pytest.skip('no tiled diffusion in this WebUI (Forge\'s "MultiDiffusion Integrated" or A1111\'s Tiled Diffusion)')


def _init_image(size):
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (size, size), (40, 70, 160))
    ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 180, 50))
    return b64_png(im)


def test_tiles_get_no_regions_and_say_so(webui, job, canvas, host, sdxl):
    size = 128 if sdxl else 64
    endpoint, tiler, tiled_key = _tiler(webui)
    tiled, whole = tiler(size // 2), tiler(size)  # 2 x 2 tiles; one tile: the image itself
    extra = {}
    if endpoint == 'img2img':
        extra = {'init_images': [_init_image(size)], 'denoising_strength': 0.75}
        webui.img2img(job(width=size, height=size, **extra)).ok()  # Forge's first img2img differs from later ones

    def run(scripts):
        return webui.generate(endpoint, job(width=size, height=size, **extra, alwayson_scripts=scripts)).ok()
    regions = run(omost_args(canvas))
    tiled_regions = run({**tiled, **omost_args(canvas)})
    tiled_bags = run({**tiled, **omost_args(canvas, {'regions': False})})
    one_tile = run({**whole, **omost_args(canvas)})
    runs = {'regions': regions, 'tiled_regions': tiled_regions, 'tiled_bags_only': tiled_bags, 'one_tile': one_tile}
    _evidence('tiled', host=host, arch='sdxl' if sdxl else 'sd15', order='-', size=size, endpoint=endpoint,
              pixels={k: r.pixels[0] for k, r in runs.items()}, seconds={k: r.seconds for k, r in runs.items()},
              infotext_tiled=tiled_regions.infotexts[0])
    info = tiled_regions.infotexts[0]
    assert tiled_key in info and 'Omost: "' in info
    assert 'Omost notes' in info and 'tiled diffusion is on' in info
    assert tiled_regions.pixels == tiled_bags.pixels  # no region was drawn into any tile
    assert tiled_regions.pixels != regions.pixels
    assert 'Omost notes' not in one_tile.infotexts[0] and one_tile.pixels == regions.pixels
