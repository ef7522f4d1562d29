"""A1111 + sd-webui-controlnet: Omost's attn2 hooks and ControlNet's IP-Adapter compose, in both orders, on a
tiny real ldm UNet.

sd-webui-controlnet's IP-Adapter (tests/ipadapter_stubs.py, modelled on its plugable_ipadapter.py) shadows each
attn2.forward with `attn_forward_hacked`, which adds its image prompt terms. It hooks in its `process()`, before
Omost's `process_before_every_sampling`, so our hook sat on top of it and sent the cond rows through Omost's
attention only (image prompt silently off on the rows it matters for). Hooked the other way round, its forward
never calls ours (regions silently off). Both orders must give regions AND image prompt, and leave no trace.
"""

import pytest
import torch

from lib_omost.attention import RegionalAttention
from omost_webui.hosts import a1111
from tests.attention_helpers import A1111_LATENT as LATENT
from tests.attention_helpers import A1111_RECTS as RECTS
from tests.attention_helpers import (
    TOKENS,
    attn2_modules,
    denoiser_params,
    heads_split,
    level_hw,
    omost_attn2,
    one_thread,
    record_attn2_calls,
    tiny_unet,
    unet_step,
)
from tests.ipadapter_stubs import ControlNetIPAdapter, attn_forward_hacked, image_prompt, ip_layers

assert one_thread  # autouse fixture
BATCH = 2


@pytest.fixture(scope='module')
def unet():
    return tiny_unet()


@pytest.fixture(autouse=True)
def clean_hooks(unet):
    yield
    a1111.remove_all()
    for _, module in attn2_modules(unet):
        module.__dict__.pop('forward', None)
        module.__dict__.pop('ipadapter_hacks', None)


def modules(unet):
    return [m for _, m in attn2_modules(unet)]


def controlnet_ip(unet, seed=1):
    cond, uncond = image_prompt(64, seed)
    ip = ControlNetIPAdapter(ip_layers(64, [m.to_q.out_features for m in modules(unet)], seed), cond, uncond)
    ip.cond_mark = torch.tensor([1.0] * BATCH + [0.0] * BATCH)[:, None, None, None]  # [cond rows, uncond rows]
    return ip


def omost_hooks(unet, **kw):
    hooks = a1111.A1111RegionalHooks(RegionalAttention(RECTS, TOKENS, None, **kw), context_kv=lambda c: (c, c))
    hooks.install(unet)
    return hooks


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * BATCH, 4, *LATENT, generator=g), torch.randn(2 * BATCH, 231, 64, generator=g)


def run(unet, x, context, hooks=None):
    if hooks is not None:
        hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    return unet_step(unet, x, context)


def none_of_ours(unet):
    return all(getattr(m.__dict__.get('forward'), 'omost_owner', None) is None for m in modules(unet))


def install(unet, order):
    ip = controlnet_ip(unet)
    if order == 'ip_first':  # the real order: ControlNet hooks in process(), Omost before every sampling
        ip.hook(modules(unet))
        hooks = omost_hooks(unet)
    else:
        hooks = omost_hooks(unet)
        ip.hook(modules(unet))
    return ip, hooks


@pytest.mark.parametrize('order', ['ip_first', 'omost_first'])
def test_every_attn2_call_gets_regions_and_image_prompt(unet, order):
    x, context = inputs()
    ip, hooks = install(unet, order)
    calls, handles = record_attn2_calls(unet)
    run(unet, x, context, hooks)
    for h in handles:
        h.remove()
    assert len(calls) == len(modules(unet))
    with torch.no_grad():
        for module, xs, ctx, out in calls:
            q = heads_split(module.to_q(xs), module.heads)
            image = sum(f(module, xs, q) for f in module.ipadapter_hacks)
            regional = omost_attn2(module, xs[:BATCH], ctx[:BATCH], RECTS, level_hw(LATENT, xs.shape[1]), TOKENS)
            assert (out[:BATCH] - module.to_out(regional + image[:BATCH])).abs().max() < 1e-5
            # uncond rows: what ControlNet's own forward gives them
            assert (out[BATCH:] - attn_forward_hacked(module, xs, context=ctx)[BATCH:]).abs().max() < 1e-6


def test_both_orders_differ_from_each_extension_alone(unet):
    x, context = inputs(1)
    plain = run(unet, x, context)
    hooks = omost_hooks(unet)
    omost_alone = run(unet, x, context, hooks)
    hooks.remove()
    ip = controlnet_ip(unet)
    ip.hook(modules(unet))
    ip_alone = run(unet, x, context)
    ip.clear()
    results = []
    for order in ('ip_first', 'omost_first'):
        ip, hooks = install(unet, order)
        results.append(run(unet, x, context, hooks))
        hooks.remove()
        ip.clear()
        a1111.remove_all()
    assert (results[0] - results[1]).abs().max() < 1e-5
    for other in (plain, omost_alone, ip_alone):
        assert (results[0] - other).abs().max() > 1e-3


@pytest.mark.parametrize('order', ['ip_first', 'omost_first'])
@pytest.mark.parametrize('controlnet_cleans_first', [False, True])
def test_no_trace_whichever_postprocess_runs_first(unet, order, controlnet_cleans_first):
    x, context = inputs(2)
    plain = run(unet, x, context)
    ip, hooks = install(unet, order)
    run(unet, x, context, hooks)
    if controlnet_cleans_first:  # postprocess runs in script order: sd-webui-controlnet sorts before sd-webui-omost
        ip.clear()
        hooks.remove()
    else:
        hooks.remove()
        ip.clear()
    a1111.remove_all()  # the next job's process() / the job's close
    assert none_of_ours(unet)
    assert torch.equal(run(unet, x, context), plain)


def test_outside_the_step_window_exactly_ip_adapter(unet):
    x, context = inputs(3)
    ip = controlnet_ip(unet)
    ip.hook(modules(unet))
    ip_alone = run(unet, x, context)
    hooks = omost_hooks(unet, start=0.5)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:], step=0, total=4))
    with torch.no_grad():
        out = unet(x, torch.full((x.shape[0],), 500.0), context=context)
    assert torch.equal(out, ip_alone)
