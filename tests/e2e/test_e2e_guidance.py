"""Image guidance in a real WebUI (issue 11): a guide image on one region changes the image, guidance 0 is
byte-identical to none, the infotext round-trips the parameters (and pasting without the image is refused), no
trace on the next plain job. SD1.5 and SDXL (both halves, then CLIP-L only).

The vision towers are random-weight CLIPVisionModelWithProjection files of the real projection widths (768:
ViT-L/14, 1280: ViT-bigG/14; tiny bodies, 224 px / patch 14 = 257 tokens like the real ones), built here into
OMOST_E2E_VISION_DIR and removed afterwards. That folder must be the WebUI's `omost_vision_path` setting, set by
the caller that started the WebUI (config.json or Settings > Omost; a folder inside the WebUI's models or data
folder, on this machine): path settings are out of the API's reach, `override_settings` included. The caller
should also empty `omost_vision_url_768` / `omost_vision_url_1280` (downloads off; also out of the API's reach).
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from .client import b64_png, omost_args

EVIDENCE = os.environ.get('OMOST_E2E_EVIDENCE', '')
VISION_DIR = os.environ.get('OMOST_E2E_VISION_DIR', '')
NAMES = {768: 'CLIP-ViT-L-14.safetensors', 1280: 'CLIP-ViT-bigG.safetensors'}

pytestmark = pytest.mark.skipif(not VISION_DIR, reason='needs OMOST_E2E_VISION_DIR, the WebUI\'s omost_vision_path '
                                                       'folder (see the module docstring)')


def build_towers(folder: str, widths) -> str:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    os.makedirs(folder, exist_ok=True)
    for width in widths:
        torch.manual_seed(width)
        config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                                  image_size=224, patch_size=14, projection_dim=width,
                                  hidden_act='quick_gelu' if width == 768 else 'gelu')
        model = CLIPVisionModelWithProjection(config)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith('position_ids')}
        save_file(state, os.path.join(folder, NAMES[width]))
    return folder


@pytest.fixture(scope='session')
def towers():
    """Both towers in the WebUI's tower folder for the session."""
    build_towers(VISION_DIR, (768, 1280))
    yield VISION_DIR
    for name in NAMES.values():
        os.remove(os.path.join(VISION_DIR, name))


@contextlib.contextmanager
def clip_l_only():
    """The bigG tower out of the WebUI's sight (a folder is searched for *.safetensors) while the block runs."""
    path = os.path.join(VISION_DIR, NAMES[1280])
    os.replace(path, path + '.off')
    try:
        yield
    finally:
        os.replace(path + '.off', path)


@pytest.fixture(scope='session')
def guide_png():
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(11)
    return b64_png(Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), 'RGB'))


def guided_job(job, canvas, guides, options=None):
    scripts = omost_args(canvas, options or {})
    scripts['Omost']['args'].append(guides)
    return job(alwayson_scripts=scripts)


def _save(name, result):
    if EVIDENCE and result.images:
        os.makedirs(EVIDENCE, exist_ok=True)
        with open(os.path.join(EVIDENCE, name + '.png'), 'wb') as f:
            f.write(result.images[0])


def _param(infotext: str, key: str) -> str:
    """A value of the infotext's last line (the hosts quote values with commas as JSON strings)."""
    line = infotext.strip().split('\n')[-1]
    start = line.index(key + ': ') + len(key) + 2
    if line[start] == '"':
        return json.JSONDecoder().raw_decode(line[start:])[0]
    return line[start:].split(',')[0]


def test_guide_on_one_region_differs_zero_is_identical_no_trace(webui, job, canvas, towers, guide_png, sdxl, host):
    tag = f'{host}-{"sdxl" if sdxl else "sd15"}'
    before = webui.txt2img(job()).ok()
    omost_only = webui.txt2img(guided_job(job, canvas, [])).ok()
    guided = webui.txt2img(guided_job(job, canvas, [{'target': 1, 'image': guide_png}])).ok()
    zero = webui.txt2img(guided_job(job, canvas,
                                    [{'target': 1, 'image': guide_png, 'max_guidance': 0.0}])).ok()
    after = webui.txt2img(job()).ok()
    for name, r in (('omost', omost_only), ('guided_region1', guided), ('guidance0', zero), ('plain', before)):
        _save(f'{tag}-{name}', r)
    assert guided.pixels != omost_only.pixels
    assert zero.images[0] != b'' and zero.pixels == omost_only.pixels
    assert before.pixels == after.pixels and 'Omost' not in after.infotexts[0]
    info = guided.infotexts[0]
    assert _param(info, 'Omost guidance towers') == ('ViT-L/14 + ViT-bigG/14' if sdxl else 'ViT-L/14')
    if sdxl:  # without the bigG tower only the CLIP-L half is guided, and the infotext says so
        with clip_l_only():
            clip_l = webui.txt2img(guided_job(job, canvas, [{'target': 1, 'image': guide_png}])).ok()
        _save(f'{tag}-guided_region1_clip_l_only', clip_l)
        assert _param(clip_l.infotexts[0], 'Omost guidance towers') == 'ViT-L/14 only (no ViT-bigG/14 vision tower)'
        assert clip_l.pixels not in (guided.pixels, omost_only.pixels)


def test_infotext_round_trips_the_parameters(webui, job, canvas, towers, guide_png):
    entry = {'target': 2, 'image': guide_png, 'method': 'threshold', 'threshold_floor': 0.2, 'threshold_mult': 1.0,
             'max_guidance': 0.8, 'header_max': 0.1, 'concepts': 'a dragon', 'order': 'text_order',
             'reuse': False}
    first = webui.txt2img(guided_job(job, canvas, [entry])).ok()
    params = webui.png_info(first.images[0]).get('parameters') or {}
    pasted = json.loads(params['Omost guidance'])
    assert len(pasted) == 1 and len(pasted[0]['image_hash']) == 12
    assert {k: pasted[0][k] for k in entry if k != 'image'} == {k: v for k, v in entry.items() if k != 'image'}
    refused = webui.txt2img(guided_job(job, canvas, pasted))
    assert refused.status == 422 and 'upload the image again' in refused.detail
    again = webui.txt2img(guided_job(job, canvas, [dict(pasted[0], image=guide_png)])).ok()
    assert again.pixels == first.pixels


def test_bad_guide_is_refused_with_the_reason(webui, job, canvas, towers, guide_png):
    r = webui.txt2img(guided_job(job, canvas, [{'target': 42, 'image': guide_png}]))
    assert r.status == 422 and 'no region 42' in r.detail
