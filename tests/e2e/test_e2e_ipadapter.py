"""Omost together with IP-Adapter in a real WebUI: Forge's built-in sd_forge_ipadapter, A1111's sd-webui-controlnet.

Needs the random IP-Adapter models and CLIP vision tower in the WebUI (tests/e2e/make_ipadapter_models.py); skips
without them. The image with both must differ from Omost alone and from IP-Adapter alone (either one silently
dropped gives the other's image), and a plain job afterwards must be the plain job before.

Which extension patches attention first follows the scripts' load order (Forge calls process_before_every_sampling
in load order; a `Before = sd_forge_controlnet, sd-webui-controlnet` in the [scripts] section of the extension's
metadata.ini loads Omost first). The test reads the order from /sdapi/v1/script-info, records it, and checks it
against OMOST_E2E_ORDER ('omost_first' / 'ip_first') when that is set. OMOST_E2E_EVIDENCE names a folder for a JSON
summary per test.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from .client import b64_png, omost_args
from .test_e2e_api import ConsoleLines


def _reference_image():
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (96, 96), (30, 90, 200))
    draw = ImageDraw.Draw(im)
    draw.ellipse((20, 10, 80, 70), fill=(240, 200, 40))
    draw.rectangle((0, 70, 96, 96), fill=(40, 160, 60))
    return b64_png(im)


def _controlnet_models(webui):
    """(status, body) of /controlnet/model_list. The route is added by an app_started callback, which both hosts run
    after the /sdapi routes answer (webui.py: create_api, then app_started_callback): wait for it a little."""
    deadline = time.monotonic() + 120
    while True:
        status, body = webui.get('/controlnet/model_list')
        if status != 404 or time.monotonic() > deadline:
            return status, body
        time.sleep(2)


def _ip_adapter_unit(webui, sdxl):
    status, body = _controlnet_models(webui)
    if status != 200:
        pytest.skip(f'no ControlNet in this WebUI (/controlnet/model_list: HTTP {status})')
    name = 'ip-adapter_sdxl_random' if sdxl else 'ip-adapter_sd15_random'
    models = [m for m in body['model_list'] if name in m]
    if not models:
        pytest.skip(f'no {name} (run tests/e2e/make_ipadapter_models.py): {body["model_list"]}')
    if 'CLIP-ViT-H (IPAdapter)' in webui.controlnet_modules():
        # sd_forge_ipadapter's preprocessor (models/ControlNetPreprocessor): Forge, Neo, Classic, reForge
        module = 'CLIP-ViT-H (IPAdapter)'
    else:  # sd-webui-controlnet's ViT-H preprocessors (annotator/downloads/clip_vision/clip_h.pth)
        module = 'ip-adapter_clip_sdxl_plus_vith' if sdxl else 'ip-adapter_clip_sd15'
    return {'enabled': True, 'module': module, 'model': models[0], 'weight': 1.0, 'image': _reference_image(),
            'resize_mode': 'Crop and Resize', 'pixel_perfect': False, 'processor_res': 224, 'guidance_start': 0.0,
            'guidance_end': 1.0, 'control_mode': 'Balanced'}


def _patch_order(webui) -> str:
    """'omost_first' or 'ip_first': the txt2img scripts' order, the order their per-sampling hooks run in."""
    status, scripts = webui.get('/sdapi/v1/script-info')
    assert status == 200, (status, scripts)
    names = [s['name'] for s in scripts if not s.get('is_img2img')]
    return 'omost_first' if names.index('omost') < names.index('controlnet') else 'ip_first'


def _evidence(name, **record):
    folder = os.environ.get('OMOST_E2E_EVIDENCE')
    if folder:
        os.makedirs(folder, exist_ok=True)
        tag = '-'.join(str(record.get(k)) for k in ('host', 'arch', 'order'))
        with open(os.path.join(folder, f'{name}-{tag}.json'), 'w', encoding='utf-8') as f:
            json.dump(record, f, indent=1)


def _skip_if_the_hosts_vision_loader_failed(console):
    """Skip (with the host's error) when IP-Adapter did nothing because the host's own CLIP vision loader raised.
    Forge Neo on transformers 4.56: backend/patcher/clipvision.py ClipVisionModel.__init__ -> ModelPatcher(...) ->
    backend/patcher/base.py ModelPatcher.__init__ `self.model.device = current_device` raises AttributeError
    "property 'device' of 'CLIPVisionModelWithProjection' object has no setter" (transformers makes `device` a
    read-only property), with or without Omost. Any other reason for an IP-Adapter that changes nothing fails."""
    error = next((line.strip() for line in console if 'CLIPVision' in line and 'has no setter' in line), None)
    if error:
        pytest.skip(f'the host\'s IP-Adapter does not apply, even without Omost: its CLIP vision loader raised '
                    f'"{error}" (a host bug: Neo\'s backend/patcher/base.py ModelPatcher.__init__ sets model.device)')


def test_regions_and_image_prompt_together(webui, job, canvas, host, sdxl):
    unit = _ip_adapter_unit(webui, sdxl)
    order = _patch_order(webui)
    expected = os.environ.get('OMOST_E2E_ORDER')
    assert expected in (None, '', order), f'scripts load {order}, expected {expected}'
    ip = {'ControlNet': {'args': [unit]}}
    plain = webui.txt2img(job()).ok()
    with ConsoleLines() as console:
        ip_alone = webui.txt2img(job(alwayson_scripts=ip)).ok()
    if ip_alone.pixels == plain.pixels:
        _skip_if_the_hosts_vision_loader_failed(console.lines)
    omost_alone = webui.txt2img(job(alwayson_scripts=omost_args(canvas))).ok()
    both = webui.txt2img(job(alwayson_scripts={**ip, **omost_args(canvas)})).ok()
    again = webui.txt2img(job()).ok()
    runs = {'plain': plain, 'ip_alone': ip_alone, 'omost_alone': omost_alone, 'both': both, 'plain_after': again}
    _evidence('ipadapter', host=host, arch='sdxl' if sdxl else 'sd15', order=order, model=unit['model'],
              module=unit['module'], pixels={k: r.pixels[0] for k, r in runs.items()},
              seconds={k: r.seconds for k, r in runs.items()}, infotext_both=both.infotexts[0],
              infotext_ip_alone=ip_alone.infotexts[0])
    assert ip_alone.pixels != plain.pixels, f'IP-Adapter alone changed nothing; its infotext: {ip_alone.infotexts[0]}'
    assert len({plain.pixels[0], ip_alone.pixels[0], omost_alone.pixels[0], both.pixels[0]}) == 4
    assert again.pixels == plain.pixels  # nothing of either extension outlives its job
    info = both.infotexts[0]
    assert 'Omost: "' in info and 'ControlNet' in info and 'Omost notes' not in info
