"""The A1111 path, driven through the script's own hooks: a tiny real ldm UNet, A1111's call order and CFG layout
(tests/webui_stubs), the real attention hooks, bags and canvas code."""

import json

import pytest
import torch

from webui_helpers import DRAGON, SMALL, A1111Model, NoCrossAttentionUNet, Rig, check_refiner_switch, check_step_window, forward_attributes, images_equal, omost, tiny_ldm_unet


@pytest.fixture(autouse=True)
def host_state():
    from modules import errors, shared
    errors.reported.clear()
    yield
    shared.state.interrupted = False
    assert shared.opts.emphasis == 'Original'




def test_disabled_is_untouched_and_bit_identical(rig, baseline):
    p, res = rig.generate()
    assert images_equal(res, baseline)
    assert all(step['hooked'] == 0 for step in Rig.steps)  # no hook even during sampling
    assert 'Omost' not in res.infotexts[0]
    assert not hasattr(p, '_omost_job') and 'close' not in vars(p)


def test_regions_steer_the_real_unet_and_keep_the_users_prompt(rig, baseline):
    p, res = rig.generate(omost(DRAGON))
    steps = list(Rig.steps)
    _, bags_only = rig.generate(omost(DRAGON, regions=False))
    assert not images_equal(res, baseline)
    assert not images_equal(res, bags_only)  # the attention itself changed the result, not only the prompt
    from modules import errors
    assert errors.reported == []
    # The UNet saw the bags: several 77-token chunks, one per BREAK-separated bag, all hooked while sampling.
    n_bags = steps[0]['prompt'].count(' BREAK ') + 1
    assert n_bags >= 5 and all(step['cond_len'] == 77 * n_bags for step in steps)
    assert all(step['hooked'] == 7 for step in steps) and forward_attributes(rig.model.model.diffusion_model) == []
    assert all(step['latent_size'] == (8, 8) for step in steps)
    # The user's prompt stays in p.all_prompts and the infotext; their LoRA tag was still parsed and activated.
    assert p.all_prompts == ['a photo <lora:foo:0.5>']
    assert res.infotexts[0].startswith('a photo <lora:foo:0.5>\n')
    assert rig.model.activated[-1] == [('lora', 'foo:0.5')]
    assert 'a photo' in steps[0]['prompt'] and '<lora' not in steps[0]['prompt']


def test_step_window_counts_the_denoiser_calls_not_the_reported_step(rig):
    check_step_window(rig)


def test_refiner_switch_inside_the_pass_keeps_the_regions(rig):
    check_refiner_switch(rig, A1111Model(tiny_ldm_unet(seed=3)), A1111Model(NoCrossAttentionUNet()))


def test_plans_live_for_the_job_only(rig):
    p, _ = rig.generate(omost(DRAGON), steps=2)
    assert Rig.steps[1]['plan_bytes'] > 0  # built in step 1, reused in step 2
    job = p._omost_job
    assert job.regional.plan_bytes == 0 and not job.regional._masks  # freed when the job ended


def test_infotext_records_canvas_and_options_and_pastes_back(rig):
    from lib_omost.canvas import load_canvas
    from modules import infotext_utils, script_callbacks
    _, res = rig.generate(omost(strength=0.8, end=0.9))
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    n = len(load_canvas(SMALL).canvas.local_regions)
    assert params['Omost'] == f'{n} regions, strength 0.8'  # a readable summary; the canvas is compressed
    assert f'Omost: "{n} regions, strength 0.8"' in res.infotexts[0] and 'Omost canvas: omz1.' in res.infotexts[0]
    assert json.loads(params['Omost options'])['strength'] == 0.8
    canvas_json = load_canvas(params['Omost canvas']).canvas.to_json()
    assert canvas_json == load_canvas(SMALL).canvas.to_json()
    script_callbacks.infotext_pasted_callback(res.infotexts[0], params)
    assert params['Omost'] == 'True'
    assert params['Omost canvas'].lstrip().startswith('# Initialize the canvas\ncanvas = Canvas()')  # editable code
    assert load_canvas(params['Omost canvas']).canvas.to_json() == canvas_json
    old_form = {'Omost': 'True', 'Omost canvas': json.dumps(canvas_json), 'Steps': '3'}  # written before omz1
    script_callbacks.infotext_pasted_callback('', old_form)
    assert old_form['Omost'] == 'True' and load_canvas(old_form['Omost canvas']).canvas.to_json() == canvas_json
    plain = infotext_utils.parse_generation_parameters('cat\nSteps: 3, Seed: 1, Size: 64x64')
    script_callbacks.infotext_pasted_callback('', plain)
    assert plain['Omost'] == 'False'  # pasting an image made without Omost turns it off


def test_no_trace_after_finished_interrupted_and_failed_generations(rig, baseline):
    from modules import script_callbacks, shared
    unet = rig.model.model.diffusion_model
    weights = {k: v.clone() for k, v in unet.state_dict().items()}

    rig.generate(omost())
    assert images_equal(rig.generate()[1], baseline)

    def interrupt(params):
        if params.denoiser.step == 1:
            shared.state.interrupted = True
    script_callbacks.on_cfg_denoiser(interrupt)
    try:
        _, res = rig.generate(omost())
    finally:
        script_callbacks.callbacks['cfg_denoiser'].remove(interrupt)
        shared.state.interrupted = False
    assert len(res.images) == 1
    assert images_equal(rig.generate()[1], baseline)

    calls = []

    def out_of_memory(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError('CUDA out of memory (simulated)')
    handle = unet.register_forward_pre_hook(out_of_memory)
    try:
        with pytest.raises(RuntimeError, match='simulated'):
            rig.generate(omost())  # the host skips postprocess; closing(p) removes the hooks at once
        assert forward_attributes(unet) == []
        calls.clear()
        with pytest.raises(RuntimeError, match='simulated'):
            rig.generate(omost(), close=False)  # a caller without closing(p): the hooks stay ...
    finally:
        handle.remove()
    assert forward_attributes(unet)
    assert images_equal(rig.generate()[1], baseline)  # ... and the next generation removes them first
    assert forward_attributes(unet) == []
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())


def test_hires_batches_and_the_hires_switch(rig):
    p, res = rig.generate(omost(), enable_hr=True, hr_scale=1.5, batch_size=2, n_iter=2, denoising_strength=0.6,
                          steps=1)
    assert len(res.images) == 4 and res.images[0].shape == (3, 96, 96)
    first = [s for s in Rig.steps if not s['hr']]
    hires = [s for s in Rig.steps if s['hr']]
    assert first and hires and all(s['hooked'] == 7 for s in Rig.steps)
    assert {s['latent_size'] for s in first} == {(8, 8)} and {s['latent_size'] for s in hires} == {(12, 12)}
    assert p.hr_prompts[0].count(' BREAK ') == first[0]['prompt'].count(' BREAK ') == 2  # 3 regions, 1 bag each
    assert all(s['denoise'] == 0.6 for s in hires)

    p, _ = rig.generate(omost(hires=False), enable_hr=True, hr_scale=1.5, steps=2)
    assert all(s['hooked'] == 7 for s in Rig.steps if not s['hr'])
    assert all(s['hooked'] == 0 for s in Rig.steps if s['hr'])
    assert ' BREAK ' in p.hr_prompts[0]  # the bags stay; only the regional attention is off there


def test_hires_quick_button_skips_the_first_pass(rig):
    from PIL import Image
    first = Image.new('RGB', (64, 64), (120, 30, 200))
    p, res = rig.generate(omost(), enable_hr=True, hr_scale=1.5, firstpass_image=first, txt2img_upscale=True)
    assert Rig.steps and all(s['hr'] and s['hooked'] == 7 and s['latent_size'] == (12, 12) for s in Rig.steps)


def test_img2img_with_the_accordion(rig):
    from PIL import Image
    init = Image.new('RGB', (64, 64), (10, 200, 30))
    _, plain = rig.generate(init_images=[init], denoising_strength=0.7, steps=3)
    _, regional = rig.generate(omost(sketch=True, sketch_denoise=0.3), init_images=[init], denoising_strength=0.7,
                               steps=3)
    assert Rig.steps and all(s['hooked'] == 7 for s in Rig.steps)
    # img2img keeps its own init image and denoise (t_enc = int(0.7 * 3) = 2: 3 denoiser calls); the sketch
    # start is for txt2img only
    assert len(Rig.steps) == 3 and all(s['denoise'] == 0.7 for s in Rig.steps)
    assert not images_equal(plain, regional)


def test_sketch_start_is_first_pass_img2img_and_restores_denoise(rig):
    _, noise_start = rig.generate(omost(), steps=4, enable_hr=True, hr_scale=1.5, denoising_strength=0.6)
    p, sketch_start = rig.generate(omost(sketch=True, sketch_denoise=0.5), steps=4, enable_hr=True, hr_scale=1.5,
                                   denoising_strength=0.6)
    first = [s for s in Rig.steps if not s['hr']]
    hires = [s for s in Rig.steps if s['hr']]
    # img2img at 0.5 of 4 steps runs t_enc = 2 steps from sigma[1] (A1111's setup_img2img_steps): 3 denoiser calls
    assert len(first) == 3 and all(s['denoise'] == 0.5 for s in first)
    assert all(s['denoise'] == 0.6 for s in hires) and p.denoising_strength == 0.6
    assert not images_equal(noise_start, sketch_start)
    assert json.loads(p.extra_generation_params['Omost options'])['sketch'] is True


def test_emphasis_none_is_overridden_for_the_job_only(rig):
    from modules import shared
    _, reference = rig.generate(omost())
    shared.opts.emphasis = 'None'
    try:
        _, res = rig.generate(omost())
        assert all(s['emphasis'] == 'Original' for s in Rig.steps)
        assert shared.opts.emphasis == 'None'
    finally:
        shared.opts.emphasis = 'Original'
    assert images_equal(res, reference)
    _, res = rig.generate(omost(), override_settings={'emphasis': 'None'})  # a request asking for None
    assert all(s['emphasis'] == 'Original' for s in Rig.steps) and images_equal(res, reference)
    from omost_webui.generation import OmostInputError
    shared.opts.emphasis = 'None'
    try:  # the host would keep an override it does not restore: refuse instead of rendering broken bags
        with pytest.raises(OmostInputError, match='Emphasis'):
            rig.generate(omost(), override_settings_restore_afterwards=False)
    finally:
        shared.opts.emphasis = 'Original'


REPLY = 'Sure, here is the canvas:\n\n```python\n' + SMALL + '```\nEnjoy!'


@pytest.mark.parametrize('form', ['code', 'reply', 'json_text', 'json_object'])
def test_api_canvas_forms(rig, form):
    from lib_omost.canvas import load_canvas
    expected = load_canvas(SMALL).canvas.to_json()
    canvas = {'code': SMALL, 'reply': REPLY, 'json_text': json.dumps(expected), 'json_object': expected}[form]
    p, res = rig.generate([True, canvas, {'strength': 0.5}])
    assert load_canvas(p.extra_generation_params['Omost canvas']).canvas.to_json() == expected
    assert json.loads(p.extra_generation_params['Omost options'])['strength'] == 0.5
    assert len(res.images) == 1 and Rig.steps[0]['hooked'] == 7


def test_api_rejects_bad_input_before_sampling(rig, tmp_path):
    from omost_webui.generation import OmostInputError
    marker = tmp_path / 'pwned'
    hostile = [
        f"import os\nos.system('touch {marker}')\ncanvas = Canvas()",
        f"canvas = Canvas()\ncanvas.set_global_description(description=open('{marker}', 'w').write('x'), "
        "detailed_descriptions=[], tags='', HTML_web_color_name='red')",
        "canvas = Canvas()\ncanvas.__class__.__init__.__globals__['os'].system('true')",
    ]
    for canvas, options, expected in [(h, '', 'Omost canvas') for h in hostile] + [
            ('', '', 'canvas is empty'), ('{"format": "omost-canvas", "version": 1}', '', 'Omost canvas'),
            (SMALL, {'bogus': 1}, 'bogus'), (SMALL, '{"strength": 9}', 'strength'),
            (SMALL, '{not json', 'not valid JSON'), (SMALL, {'preset': 'no-such-preset'}, 'no-such-preset')]:
        Rig.steps = []
        with pytest.raises(OmostInputError, match=expected) as info:
            rig.generate([True, canvas, options])
        assert info.value.status_code == 422 and info.value.detail == str(info.value)
        assert Rig.steps == []  # refused before anything was sampled
    assert not marker.exists()
    assert forward_attributes(rig.model.model.diffusion_model) == []


def test_prompt_box_too_long_for_the_bags_is_refused_with_its_reason(rig):
    from omost_webui.generation import OmostInputError
    quality = ', '.join(['masterpiece', 'best quality', 'highly detailed', 'sharp focus', 'dramatic lighting',
                         'intricate', 'cinematic', 'award winning photograph', 'volumetric light', 'film grain'])
    Rig.steps = []
    with pytest.raises(OmostInputError, match='shorten') as info:
        rig.generate(omost(preset='pony'), prompt=quality + ' <lora:x:1>')
    assert info.value.status_code == 422 and Rig.steps == []
    p, res = rig.generate(omost(preset='none'), prompt=quality + ' <lora:x:1>', steps=1)
    assert len(res.images) == 1  # the same text fits without the preset's tags


def test_different_prompts_in_one_batch_fall_back_to_plain_attention(rig, capsys):
    long = 'a very long and different prompt about castles, towers, knights, banners, moats and ' * 2
    p, res = rig.generate(omost(DRAGON), prompt=['dragon', long], batch_size=2, steps=1)
    assert len(res.images) == 2 and all(s['hooked'] == 0 for s in Rig.steps)
    assert 'regional attention is off for this batch' in capsys.readouterr().out
    assert ' BREAK ' in Rig.steps[0]['prompt']  # the bags still apply to each image


def test_model_without_cross_attention_is_left_alone(rig, baseline):
    from torch import nn
    model = A1111Model(nn.Identity())  # no attn2 anywhere, like Flux / SD3
    flux_like = Rig(model)
    p = flux_like.p(omost())
    p.setup_prompts()
    from omost_webui import generation
    generation.process(p, True, SMALL, '')
    # neither a job, nor a close/init wrapper (refusal), nor the canvas in the infotext: the job's info (comment)
    # and the infotext's notes say why
    assert not hasattr(p, '_omost_job') and 'close' not in vars(p) and 'init' not in vars(p)
    assert 'Omost' not in p.extra_generation_params and 'Omost canvas' not in p.extra_generation_params
    assert any('no cross-attention' in c for c in p.comments)
    assert p.extra_generation_params['Omost notes'].startswith('Omost is skipped: this model has no cross-attention')


def test_tag_preset_reaches_the_bags(rig):
    from lib_omost.presets import get_preset
    rig.generate(omost(), steps=1)
    plain_bags = Rig.steps[0]['prompt']
    rig.generate(omost(preset='pony'), steps=1)
    pony_bags = Rig.steps[0]['prompt']
    tags = get_preset('pony').prepend.strip().rstrip(',')
    assert tags and tags not in plain_bags
    assert all(bag.startswith(tags) or tags in bag for bag in pony_bags.split(' BREAK '))
