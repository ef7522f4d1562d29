"""The UnetPatcher hosts through the script's own hooks, each test once per host as its family stub has it:
- 'forge': Forge's `backend`, a UnetPatcher whose clone() deep-copies model_options;
- 'neo': Forge Neo's `backend`, whose clone() copies dicts and lists only (patch objects shared between clones);
- 'forge-classic': Forge Classic's / reForge's `ldm_patched` (modules_forge/unet_patcher.py, A1111's text encoder,
  ldm_patched's optimized_attention, rows labelled by cond_or_uncond only).
forge_objects rebuilt before every sampling pass, attn2 replace patches dispatched as the hosts' transformer block
does (tests/webui_helpers.py), [uncond, cond] batching with LCM tiling (tests/webui_stubs/modules/sd_samplers.py)."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from lib_omost.canvas import load_canvas
from webui_helpers import (DRAGON, ForgeClassicModel, ForgeModel, ForgeTinyUNet, NoCrossAttentionUNet, Rig,
                           check_refiner_switch, check_step_window, images_equal, omost)

FAMILY_OF = {'forge': 'forge', 'neo': 'forge', 'forge-classic': 'forge-classic'}


def model_of(host, unet=None, seed=0):
    """The host's SD1.5 model around `unet` (default: the tiny UNet running that host's attention)."""
    unet = unet if unet is not None else ForgeTinyUNet(seed=seed, family=FAMILY_OF[host])
    if host == 'forge-classic':
        return ForgeClassicModel(unet)
    return ForgeModel(unet, neo=host == 'neo')


def host_attention_calls(host):
    """The call log of the host's own attention function (tests/webui_stubs)."""
    if FAMILY_OF[host] == 'forge-classic':
        from ldm_patched.ldm.modules import attention
        return attention.calls
    from backend import attention
    return attention.calls


@pytest.fixture(scope='module', params=list(FAMILY_OF))
def host(request):
    return request.param


@pytest.fixture(scope='module')
def rig(host):
    return Rig(model_of(host))


@pytest.fixture(autouse=True)
def host_state(rig):
    from modules import errors, shared
    base = rig.model.forge_objects_original.unet
    options, replace = dict(base.model_options['transformer_options']), base.model_options['transformer_options']
    errors.reported.clear()
    yield
    shared.state.interrupted = False
    # Nothing of ours outlives a generation: the patcher the host starts from is never modified.
    assert rig.model.forge_objects_after_applying_lora.unet is base
    assert base.model_options['transformer_options'] is replace and replace == options
    assert 'patches_replace' not in base.model_options['transformer_options']


class IPAdapterLike:
    """An attn2 replace patch installed before Omost (what Forge's IP-Adapter does): plain attention plus an
    extra term. Counts its calls on the class: UnetPatcher.clone() deep-copies the instance."""

    calls = 0

    def __call__(self, q, k, v, extra_options):
        IPAdapterLike.calls += 1
        heads = extra_options['n_heads']
        b = q.shape[0]
        qh, kh, vh = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, q.shape[1], -1)
        return out + 0.3 * q.tanh()


def test_disabled_is_bit_identical_and_unpatched(rig, baseline):
    _, res = rig.generate()
    assert images_equal(res, baseline)
    assert all(s['patched'] == 0 for s in Rig.steps)


def test_regions_patch_the_pass_and_change_the_result(rig, baseline):
    from modules import errors
    p, res = rig.generate(omost(DRAGON))
    steps = list(Rig.steps)
    _, bags_only = rig.generate(omost(DRAGON, regions=False))
    assert errors.reported == []
    assert all(s['patched'] == 3 * 16 * 17 for s in steps)  # every (block, id, index) and (block, id) key
    assert not images_equal(res, baseline) and not images_equal(res, bags_only)
    # 24 bags of 1848 tokens vs a 77-token negative: LCM/min = 24 > 4, so Forge runs separate calls
    assert steps[0]['cond_len'] == 77 * (steps[0]['prompt'].count(' BREAK ') + 1)
    assert p.all_prompts == ['a photo <lora:foo:0.5>'] and res.infotexts[0].startswith('a photo <lora:foo:0.5>\n')
    assert load_canvas(p.extra_generation_params['Omost canvas']).canvas == load_canvas(DRAGON).canvas
    assert images_equal(rig.generate()[1], baseline)


def test_tiled_contexts_and_hires_passes(rig, baseline):
    # SMALL has 3 bags: 231 cond tokens vs 77 uncond tokens are batched together, uncond tiled x3
    p, res = rig.generate(omost(), enable_hr=True, hr_scale=1.5, batch_size=2, steps=2)
    first = [s for s in Rig.steps if not s['hr']]
    hires = [s for s in Rig.steps if s['hr']]
    assert first and hires and all(s['patched'] for s in Rig.steps)
    assert {s['latent_size'] for s in first} == {(8, 8)} and {s['latent_size'] for s in hires} == {(12, 12)}
    _, plain = rig.generate(enable_hr=True, hr_scale=1.5, batch_size=2, steps=2)
    assert not images_equal(res, plain)
    p, _ = rig.generate(omost(hires=False), enable_hr=True, hr_scale=1.5, steps=2)
    assert all(s['patched'] for s in Rig.steps if not s['hr']) and not any(s['patched'] for s in Rig.steps
                                                                            if s['hr'])
    assert images_equal(rig.generate()[1], baseline)


def test_composes_with_an_earlier_attn2_patch_and_a_later_clone(rig, baseline):
    """IP-Adapter-like patch already on the patcher the pass starts from; another extension clones the unet after
    Omost (UnetPatcher.clone deep-copies model_options): both keep working with the regions."""
    from modules import scripts
    model = rig.model
    original = model.forge_objects_after_applying_lora
    ip = IPAdapterLike()
    with_ip = original.unet.clone()
    for block, number in (('input', 1), ('middle', 0), ('output', 1)):
        with_ip.set_model_attn2_replace(ip, block, number, 0)

    class LaterCloner(scripts.Script):
        def title(self):
            return 'later'

        def process_before_every_sampling(self, p, *args, **kwargs):
            p.sd_model.forge_objects.unet = p.sd_model.forge_objects.unet.clone()

    later = LaterCloner()
    runner = scripts.ScriptRunner([(rig.script, 3), (later, 0)])
    from modules import processing
    try:
        model.forge_objects_after_applying_lora = original.shallow_copy()
        model.forge_objects_after_applying_lora.unet = with_ip
        Rig.steps = []
        res_ip_only = processing.process_images(rig.p(bare=True))
        ip_calls_plain = ip.calls
        p = rig.p(omost())
        p.scripts = runner
        Rig.steps = []
        res_both = processing.process_images(p)
        assert all(s['patched'] == 3 * 16 * 17 for s in Rig.steps)
        assert ip.calls > ip_calls_plain  # the earlier patch still runs inside Omost's
    finally:
        model.forge_objects_after_applying_lora = original
    _, res_omost_only = rig.generate(omost())
    assert not images_equal(res_both, res_ip_only) and not images_equal(res_both, res_omost_only)
    assert images_equal(rig.generate()[1], baseline)


def test_step_window_follows_the_denoiser_through_clones(rig):
    """The progress reaches the patch even after later clones of the UnetPatcher."""
    check_step_window(rig)


def test_refiner_switch_inside_the_pass_keeps_the_regions(rig, host):
    check_refiner_switch(rig, model_of(host, seed=3), model_of(host, NoCrossAttentionUNet()))


def test_rows_and_steps_without_regions_run_the_hosts_attention_function(rig, host):
    """Each host picks its attention (xformers / SDPA / split / sub-quad) once: backend/attention.py
    attention_function (Forge, Neo), ldm_patched/ldm/modules/attention.py optimized_attention (Classic, reForge);
    whatever is not regional goes through it: every row of the first step (window 0.5-1), the uncond row of the
    second. The other family's function is never called."""
    calls, other = host_attention_calls(host), host_attention_calls('forge-classic' if host != 'forge-classic'
                                                                    else 'forge')
    calls.clear()
    other.clear()
    rig.generate(omost(start=0.5), steps=2)
    # one joint [uncond, cond] call per step (lengths 77 and 231 tile to 231), 3 attn2 layers per call
    assert [rows for rows, _, _ in calls] == [2, 2, 2, 1, 1, 1]
    assert other == []
    if host == 'forge-classic':  # with the layer's attn_precision, as reForge's CrossAttention.forward passes it
        from ldm_patched.ldm.modules import attention
        assert attention.precisions[-6:] == [torch.float32] * 6


def test_model_without_attn2_is_left_alone(rig, host):
    from torch import nn

    class FluxLike(nn.Module):
        def forward(self, x, timesteps, context, transformer_options):
            return x * 0.5

    flux = Rig(model_of(host, FluxLike()))
    p, res = flux.generate(omost())
    assert 'Omost canvas' not in res.infotexts[0] and any('no cross-attention' in c for c in p.comments)
    assert 'Omost notes: "Omost is skipped: this model has no cross-attention' in res.infotexts[0]
    assert all(s['patched'] == 0 and ' BREAK ' not in s['prompt'] for s in Rig.steps)
    assert torch.isfinite(res.images[0]).all()


def test_forge_counting_uses_the_current_emphasis_setting(monkeypatch):
    """Forge's tokenize_line parses with the emphasis of the engine's last encode; the counter refreshes it from
    the setting first, as the coming encode will (backend/text_processing/classic_engine.py)."""
    import types
    from modules import shared
    from omost_webui.host_tokenizer import host_counter
    from omost_webui.hosts import ForgeHost

    class Mode:
        def __init__(self, name):
            self.name = name

    options = {'Original': lambda: Mode('Original'), 'None': lambda: Mode('None')}
    fake = types.ModuleType('backend.text_processing.emphasis')
    fake.get_current_option = lambda name: options[name]
    for name, module in [('backend', types.ModuleType('backend')),
                         ('backend.text_processing', types.ModuleType('backend.text_processing')),
                         ('backend.text_processing.emphasis', fake)]:
        monkeypatch.setitem(sys.modules, name, module)

    class Engine:
        emphasis = Mode('None')  # left over from a job that ran under Emphasis "None"

        def tokenize_line(self, line):
            parts = line.split(' BREAK ') if self.emphasis.name != 'None' else [line]
            return [[0] * 77 for _ in parts], 75 * len(parts)

    model = types.SimpleNamespace(text_processing_engine=Engine())
    monkeypatch.setitem(shared.opts.data, 'emphasis', 'Original')
    count, chunks = host_counter(ForgeHost().tokenize_line(model))
    assert model.text_processing_engine.emphasis.name == 'Original' and chunks('a BREAK b') == 2
