"""A checkpoint loaded in the middle of an Omost job, in a real WebUI: the refiner (loaded inside the sampling
pass by sd_samplers_common.apply_refiner) and the hires checkpoint (loaded between the passes). Both hosts fire
on_model_loaded there; the regions must continue on the new model, and the infotext says so.

The other checkpoint is the refiner: random-sd15 under an SDXL run (SDXL -> SD1.5, the usual refiner case across
architectures), random-sdxl under an SD1.5 run."""

import pytest

from .client import CKPT, omost_args

SWITCH_KEY = 'regions continued on'  # in the infotext's Omost notes


OTHER = 'random-sd15' if 'xl' in CKPT.lower() else 'random-sdxl'  # the checkpoint that is not under test


@pytest.fixture(scope='module')
def other(webui, ckpt):
    if 'xl' not in CKPT.lower():
        pytest.skip('loads the SDXL checkpoint: run it in an SDXL run (OMOST_E2E_CKPT=random-sdxl.safetensors)')
    return webui.model_title(OTHER + '.safetensors')


def test_refiner_switch_keeps_the_regions_on_the_refiner(webui, job, canvas, other):
    refiner = dict(steps=4, refiner_checkpoint=other, refiner_switch_at=0.5)

    def run(options=None):
        scripts = omost_args(canvas, options) if options is not None else None
        return webui.txt2img(job(alwayson_scripts=scripts, **refiner)).ok()

    full = run({})
    early = run({'end': 0.5})  # regions on the base model only
    plain = run()
    assert f'{SWITCH_KEY} {OTHER}' in full.infotexts[0], full.infotexts[0]
    assert 'Refiner:' in full.infotexts[0]
    assert full.pixels != early.pixels  # the regions reached the refiner's steps
    assert full.pixels != plain.pixels and early.pixels != plain.pixels


def test_hires_checkpoint_keeps_the_regions_on_the_hires_model(webui, job, canvas, other):
    hires = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                 denoising_strength=0.6, hr_checkpoint_name=other, **webui.hires_extras())
    on = webui.txt2img(job(alwayson_scripts=omost_args(canvas, {}), **hires)).ok()
    off = webui.txt2img(job(alwayson_scripts=omost_args(canvas, {'hires': False}), **hires)).ok()
    assert f'{SWITCH_KEY} {OTHER}' in on.infotexts[0], on.infotexts[0]
    assert on.pixels != off.pixels  # the regions reached the hires pass on the other model
