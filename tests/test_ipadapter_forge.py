"""Forge: Omost's attn2 patches and Forge's built-in IP-Adapter compose, in both orders, SD1.5 and SDXL keys.

IP-Adapter (tests/ipadapter_stubs.py, modelled on sd_forge_ipadapter's IPAdapterPlus.py) writes attn2 replace
patches at (block, id) keys for SD1.5 and (block, id, index) keys for SDXL; applied after Omost it either found
nothing at its SD1.5 key (its patch was shadowed by ours at (block, id, 0): the image prompt silently dropped) or
called `set_new_condition` on our patch (SDXL: AttributeError). Both orders must give regions AND image prompt.
"""

import pytest
import torch

from lib_omost.attention import RegionalAttention
from omost_webui.hosts import patcher as forge
from omost_webui.hosts.patcher import patch_unet
from tests.attention_helpers import FORGE_LATENT as LATENT
from tests.attention_helpers import FORGE_RECTS as RECTS
from tests.attention_helpers import (
    TOKENS,
    FakeUnetPatcher,
    forge_attn2,
    forge_call_options,
    forge_cross_attention,
    one_thread,
)
from tests.ipadapter_stubs import ForgeCrossAttentionPatch, forge_apply_ipadapter, image_prompt, ip_layers

assert one_thread  # autouse fixture
BLOCK, HW = ('input', 4, 0), (5, 7)  # a cross-attention layer of both SD1.5 and SDXL
ROWS = 2


@pytest.fixture(scope='module')
def attn():
    return forge_cross_attention()


@pytest.fixture(autouse=True)
def ip_adapter_module(monkeypatch):
    """Forge imports the built-in extension as `lib_ipadapter.IPAdapterPlus` (forge_ipadapter.py imports it by
    that name); the patch builds that module's CrossAttentionPatch when IP-Adapter extends it."""
    import sys
    import types
    module = types.ModuleType(forge.IP_ADAPTER_MODULE)
    module.CrossAttentionPatch = ForgeCrossAttentionPatch
    monkeypatch.setitem(sys.modules, forge.IP_ADAPTER_MODULE, module)


def with_ip(unet, sdxl, seed=1):
    cond, uncond = image_prompt(64, seed)
    return forge_apply_ipadapter(unet, ip_layers(64, [32] * 70, seed), cond, uncond, sdxl)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(2 * ROWS, 231, 64, generator=g)  # [uncond, cond]: Forge's usual cond_or_uncond [1, 0]
    x = torch.randn(2 * ROWS, HW[0] * HW[1], 32, generator=g)
    return x, context


def run(attn, unet, x, context, labels=(1, 0)):
    options = dict(unet.model_options['transformer_options'])
    options.update(forge_call_options(list(labels), ROWS, LATENT))
    with torch.no_grad():
        return forge_attn2(attn, x, context, options, BLOCK[:2], BLOCK[2])


def compose(order, sdxl, regional):
    source = FakeUnetPatcher()
    if order == 'ip_first':  # the usual order: built-in extensions run process_before_every_sampling first
        return patch_unet(with_ip(source, sdxl), regional)
    return with_ip(patch_unet(source, regional), sdxl)


@pytest.mark.parametrize('sdxl', [False, True], ids=['sd15', 'sdxl'])
@pytest.mark.parametrize('order', ['ip_first', 'omost_first'])
def test_regions_and_image_prompt_together(attn, order, sdxl):
    regional = RegionalAttention(RECTS, TOKENS, None)
    x, context = inputs()
    plain = run(attn, FakeUnetPatcher(), x, context)
    ip_alone = run(attn, with_ip(FakeUnetPatcher(), sdxl), x, context)
    omost_alone = run(attn, patch_unet(FakeUnetPatcher(), regional), x, context)
    both = run(attn, compose(order, sdxl, regional), x, context)
    # uncond rows: exactly what IP-Adapter alone gives
    assert torch.equal(both[:ROWS], ip_alone[:ROWS])
    # cond rows: Omost's regional attention plus IP-Adapter's image term (to_out is affine, so the terms add)
    image_term = ip_alone - plain
    assert (both[ROWS:] - (omost_alone[ROWS:] + image_term[ROWS:])).abs().max() < 1e-5
    assert (both - ip_alone)[ROWS:].abs().max() > 1e-3 and image_term[ROWS:].abs().max() > 1e-3


@pytest.mark.parametrize('sdxl', [False, True], ids=['sd15', 'sdxl'])
def test_both_orders_agree(attn, sdxl):
    x, context = inputs(3)
    first = run(attn, compose('ip_first', sdxl, RegionalAttention(RECTS, TOKENS, None)), x, context)
    second = run(attn, compose('omost_first', sdxl, RegionalAttention(RECTS, TOKENS, None)), x, context)
    assert (first - second).abs().max() < 1e-6


@pytest.mark.parametrize('order', ['ip_first', 'omost_first'])
def test_outside_the_step_window_exactly_ip_adapter(attn, order):
    regional = RegionalAttention(RECTS, TOKENS, None, start=0.5, end=1.0)
    x, context = inputs(4)
    ip_alone = run(attn, with_ip(FakeUnetPatcher(), True), x, context)
    both = compose(order, True, regional)
    assert torch.equal(run(attn, both, x, context), ip_alone)
    regional.set_progress(0.6)
    assert not torch.equal(run(attn, both, x, context), ip_alone)


def test_cond_only_call_and_a_second_image_prompt(attn):
    """Forge's cfg=1 calls carry cond rows only; a second IP-Adapter unit extends the same patches."""
    regional = RegionalAttention(RECTS, TOKENS, None)
    x, context = inputs(5)
    x, context = x[ROWS:], context[ROWS:]
    two = with_ip(with_ip(patch_unet(FakeUnetPatcher(), regional), True, seed=1), True, seed=2)
    one = with_ip(patch_unet(FakeUnetPatcher(), regional), True, seed=1)
    patch = two.model_options['transformer_options']['patches_replace']['attn2'][BLOCK]
    assert len(patch.previous.conditions) == 2
    assert not torch.equal(run(attn, two, x, context, labels=(0,)), run(attn, one, x, context, labels=(0,)))
