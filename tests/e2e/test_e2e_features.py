"""Omost together with the WebUI features people use it with: hires fix, batches, img2img, the sketch start, LoRA,
ControlNet, and an interrupted job. Each compares pixel hashes of real renders."""

import threading
import time

import pytest

from .client import b64_png, omost_args


def _hires(webui):
    return {'enable_hr': True, 'hr_scale': 2, 'denoising_strength': 0.5,
            'hr_second_pass_steps': 2, **webui.hires_extras()}


def test_hires_fix(webui, job, canvas):
    plain = webui.txt2img(job(**_hires(webui))).ok()
    both = webui.txt2img(job(**_hires(webui), alwayson_scripts=omost_args(canvas))).ok()
    first_only = webui.txt2img(job(**_hires(webui), alwayson_scripts=omost_args(canvas, {'hires': False}))).ok()
    assert len({plain.pixels[0], both.pixels[0], first_only.pixels[0]}) == 3  # the hires pass got regions too
    assert 'Hires upscale: 2' in both.infotexts[0] and 'Omost: "' in both.infotexts[0]
    assert '"hires":false' in first_only.infotexts[0].replace(' ', '').replace('\\', '')


def test_batch_2_by_2(webui, job, canvas):
    plain = webui.txt2img(job(batch_size=2, n_iter=2)).ok()
    res = webui.txt2img(job(batch_size=2, n_iter=2, alwayson_scripts=omost_args(canvas))).ok()
    assert len(res.pixels) == len(plain.pixels) == 4
    assert len(set(res.pixels)) == 4 and all(a != b for a, b in zip(res.pixels, plain.pixels))
    assert len(res.infotexts) == 4 and all('Omost: "' in info for info in res.infotexts)
    assert 'Omost notes' not in res.infotexts[0]  # every row of every batch had the regions


def _init_image(webui, job):
    from PIL import Image
    import io
    png = webui.txt2img(job(seed=99)).ok().images[0]
    return b64_png(Image.open(io.BytesIO(png)).convert('RGB'))


def test_img2img(webui, job, canvas):
    init = _init_image(webui, job)
    payload = dict(init_images=[init], denoising_strength=0.6)
    webui.img2img(job(**payload)).ok()  # Forge's first img2img differs from every later one (with or without Omost)
    plain = webui.img2img(job(**payload)).ok()
    res = webui.img2img(job(**payload, alwayson_scripts=omost_args(canvas))).ok()
    again = webui.img2img(job(**payload)).ok()
    assert res.pixels != plain.pixels and again.pixels == plain.pixels
    assert 'Omost: "' in res.infotexts[0]


def test_sketch_start(webui, job, canvas, reference):
    regions = reference('omost')
    sketch = webui.txt2img(job(alwayson_scripts=omost_args(canvas, {'sketch': True}))).ok()
    assert sketch.pixels != regions.pixels
    assert '"sketch":true' in sketch.infotexts[0].replace(' ', '').replace('\\', '')


def test_lora(webui, job, canvas, reference, sdxl):
    # The harness's random_lora fits SD1.5; SDXL gets random_lora_xl (tests/e2e/make_sdxl_lora.py)
    name = 'random_lora_xl' if sdxl else 'random_lora'
    lora = f'a fierce battle <lora:{name}:1>'
    plain_lora = webui.txt2img(job(prompt=lora)).ok()
    omost_alone = reference('omost')
    both = webui.txt2img(job(prompt=lora, alwayson_scripts=omost_args(canvas))).ok()
    assert len({plain_lora.pixels[0], omost_alone.pixels[0], both.pixels[0]}) == 3
    assert both.infotexts[0].startswith(lora)  # the user's prompt, tag and all, stays in the infotext
    assert name in both.infotexts[0].split('\n')[-1]  # the host recorded the LoRA it applied


def _controlnet_unit(webui):
    from PIL import Image, ImageDraw
    status, body = webui.get('/controlnet/model_list')
    if status != 200:
        pytest.skip(f'no ControlNet in this WebUI (/controlnet/model_list: HTTP {status})')
    models = [m for m in body['model_list'] if 'canny' in m]
    if not models:
        pytest.skip(f'no canny ControlNet model: {body["model_list"]}')
    edges = Image.new('RGB', (64, 64))
    draw = ImageDraw.Draw(edges)
    draw.rectangle((8, 8, 40, 56), outline='white', width=2)
    draw.line((0, 63, 63, 0), fill='white', width=2)
    module = 'None' if 'None' in webui.controlnet_modules() else 'none'  # Forge-style built-in / sd-webui-controlnet
    return {'enabled': True, 'module': module, 'model': models[0], 'weight': 1.0,
            'image': b64_png(edges), 'resize_mode': 'Crop and Resize', 'pixel_perfect': False,
            'processor_res': 64, 'guidance_start': 0.0, 'guidance_end': 1.0, 'control_mode': 'Balanced'}


def test_controlnet(webui, job, canvas, sdxl, reference):
    if sdxl:
        pytest.skip('the random ControlNet is an SD1.5 model')
    unit = _controlnet_unit(webui)
    cn = {'ControlNet': {'args': [unit]}}
    cn_alone = webui.txt2img(job(alwayson_scripts=cn)).ok()
    omost_alone = reference('omost')
    both = webui.txt2img(job(alwayson_scripts={**cn, **omost_args(canvas)})).ok()
    plain = reference('plain')
    assert len({cn_alone.pixels[0], omost_alone.pixels[0], both.pixels[0], plain.pixels[0]}) == 4
    assert 'ControlNet' in both.infotexts[0] and 'Omost: "' in both.infotexts[0]
    assert 'ControlNet' in cn_alone.infotexts[0]


def test_interrupt_then_an_identical_baseline(webui, job, canvas, reference):
    before = webui.txt2img(job()).ok()
    long_job = job(steps=40, alwayson_scripts=omost_args(canvas))
    result = {}
    worker = threading.Thread(target=lambda: result.update(res=webui.txt2img(long_job)))
    worker.start()
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and worker.is_alive():
        status, progress = webui.get('/sdapi/v1/progress?skip_current_image=true')
        if status == 200 and (progress.get('state') or {}).get('sampling_step', 0) >= 1:
            break
        time.sleep(0.5)
    assert worker.is_alive(), 'the 40-step job ended before it could be interrupted'
    sampling_step = progress['state']['sampling_step']
    status, _ = webui.interrupt()
    assert status == 200
    worker.join(1200)
    interrupted = result['res']
    assert interrupted.status == 200, interrupted.detail
    assert sampling_step < 40
    after = webui.txt2img(job()).ok()
    assert after.pixels == before.pixels  # nothing of the interrupted job stayed behind
    again = webui.txt2img(job(alwayson_scripts=omost_args(canvas))).ok()
    assert again.pixels == reference('omost').pixels  # and Omost still works the same
