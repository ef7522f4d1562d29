"""A1111 hooks on a tiny real ldm UNetModel: every attn2 call equals Omost's formula on cond rows and the host's
own forward on the others; removal (also after an exception) restores bit-identical outputs."""

import sys

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
    level_hw,
    omost_attn2,
    one_thread,
    record_attn2_calls,
    tiny_unet,
    unet_step,
)

assert one_thread  # autouse fixture
BATCH = 2


@pytest.fixture(scope='module', params=['sd1', 'sd2'])
def both_unets(request):
    """SD1-style (conv proj_in) and SD2-style (linear proj_in) tiny UNets."""
    return tiny_unet(sd2=request.param == 'sd2')


@pytest.fixture(scope='module')
def unet():
    return tiny_unet()


@pytest.fixture(autouse=True)
def clean_hooks():
    yield
    a1111.remove_all()


def inputs(rows, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, *LATENT, generator=g)
    context = torch.randn(rows, length, 64, generator=g)
    return x, context


def expected(module, x, context, n_cond, token_map=TOKENS):
    """Omost's formula (float64) on the first n_cond rows, the host's class forward on the rest."""
    with torch.no_grad():
        plain = type(module).forward(module, x[n_cond:], context=context[n_cond:])
        if n_cond == 0:
            return None, plain
        tokens = torch.cat([token_map, torch.full((context.shape[1] - token_map.numel(),), -1)])
        cond = module.to_out(omost_attn2(module, x[:n_cond], context[:n_cond], RECTS, level_hw(LATENT, x.shape[1]),
                                         tokens))
    return cond, plain


def hooked(unet, **kw):
    regional = RegionalAttention(RECTS, TOKENS, None, **kw)
    hooks = a1111.A1111RegionalHooks(regional, context_kv=lambda c: (c, c))
    assert hooks.install(unet) == len(attn2_modules(unet)) > 0
    return hooks


def check_calls(calls, n_cond, expected_calls):
    assert len(calls) == expected_calls
    for module, x, context, out in calls:
        cond, plain = expected(module, x, context, n_cond)
        if n_cond:
            assert (out[:n_cond] - cond).abs().max() < 1e-5
        assert torch.equal(out[n_cond:], plain)


def test_joint_call_cond_rows_regional_uncond_rows_exactly_plain(both_unets):
    unet = both_unets
    hooks = hooked(unet)
    x, context = inputs(2 * BATCH, 231)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    calls, handles = record_attn2_calls(unet)
    unet_step(unet, x, context)
    for h in handles:
        h.remove()
    check_calls(calls, BATCH, len(attn2_modules(unet)))


def test_separate_calls_when_lengths_differ(unet):
    # Omost's long cond vs a 77-token negative: A1111 runs the cond rows, then one uncond call.
    hooks = hooked(unet)
    x, cond = inputs(BATCH, 231, seed=1)
    _, uncond = inputs(BATCH, 77, seed=2)
    hooks.on_cfg_denoiser(denoiser_params(cond, uncond))
    calls, handles = record_attn2_calls(unet)
    unet_step(unet, x, cond)
    check_calls(calls, BATCH, len(handles))
    calls.clear()
    out_uncond = unet_step(unet, x, uncond)
    for h in handles:
        h.remove()
    check_calls(calls, 0, len(handles))
    a1111.remove_all()
    assert torch.equal(out_uncond, unet_step(unet, x, uncond))


def test_cond_padded_to_a_longer_negative_masks_the_padding(unet):
    hooks = hooked(unet)
    x, context = inputs(2 * BATCH, 308, seed=3)  # cond padded from 231 to the 308-token negative
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH, :231], context[BATCH:]))
    calls, handles = record_attn2_calls(unet)
    unet_step(unet, x, context)
    for h in handles:
        h.remove()
    check_calls(calls, BATCH, len(handles))


def test_chunked_calls_follow_the_row_order(unet):
    # batch_cond_uncond off: calls of BATCH rows in x_in order, cond first.
    hooks = hooked(unet)
    x, context = inputs(2 * BATCH, 231, seed=4)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    calls, handles = record_attn2_calls(unet)
    unet_step(unet, x[:BATCH], context[:BATCH])
    check_calls(calls, BATCH, len(handles))
    calls.clear()
    unet_step(unet, x[BATCH:], context[BATCH:])
    for h in handles:
        h.remove()
    check_calls(calls, 0, len(handles))


def test_removal_restores_bit_identical_outputs_and_classes(both_unets):
    unet = both_unets
    cls = type(attn2_modules(unet)[0][1])
    class_forward = cls.forward
    x, context = inputs(2 * BATCH, 231, seed=5)
    before = unet_step(unet, x, context)
    hooks = hooked(unet)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    assert not torch.equal(unet_step(unet, x, context), before)
    assert cls.forward is class_forward  # only instances were touched
    hooks.remove()
    assert torch.equal(unet_step(unet, x, context), before)
    assert all('forward' not in m.__dict__ for _, m in attn2_modules(unet))
    assert not unet._forward_pre_hooks


def test_exception_inside_a_hooked_forward_leaves_no_trace(unet, monkeypatch):
    x, context = inputs(2 * BATCH, 231, seed=6)
    before = unet_step(unet, x, context)
    hooks = hooked(unet)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))

    def boom(*args, **kwargs):
        raise RuntimeError('out of memory (simulated)')

    monkeypatch.setattr(hooks.regional, 'plan_for', boom)
    with pytest.raises(RuntimeError, match='simulated'):
        unet_step(unet, x, context)
    a1111.remove_all()  # what the next generation / model load does
    assert torch.equal(unet_step(unet, x, context), before)
    assert all('forward' not in m.__dict__ for _, m in attn2_modules(unet))
    assert not unet._forward_pre_hooks


def test_disarmed_or_outside_the_window_is_bit_identical(unet):
    x, context = inputs(2 * BATCH, 231, seed=7)
    before = unet_step(unet, x, context)
    hooks = hooked(unet, start=0.0, end=0.5)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    hooks.regional.set_progress(0.5)  # what generation.on_cfg_denoiser sets from the denoiser's counters
    assert torch.equal(unet_step(unet, x, context), before)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    hooks.regional.set_progress(0.45)
    assert not torch.equal(unet_step(unet, x, context), before)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    hooks.disarm()
    assert torch.equal(unet_step(unet, x, context), before)
    other = hooked(unet)  # a second owner replaces the first; only one is ever armed
    assert other.armed and not hooks.armed


def test_hook_uses_the_modules_projections_so_lora_applies(unet):
    hooks = hooked(unet)
    x, context = inputs(2 * BATCH, 231, seed=8)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    unpatched = unet_step(unet, x, context)
    module = attn2_modules(unet)[0][1]
    original = module.to_k.weight.detach().clone()
    try:
        with torch.no_grad():
            module.to_k.weight += 0.5 * torch.randn_like(original)  # an in-place LoRA weight patch
        hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
        calls, handles = record_attn2_calls(unet)
        patched = unet_step(unet, x, context)
        for h in handles:
            h.remove()
        assert not torch.equal(patched, unpatched)
        check_calls(calls, BATCH, len(handles))  # the reference reads the patched module too
    finally:
        with torch.no_grad():
            module.to_k.weight.copy_(original)


def test_on_cfg_denoiser_reads_sdxl_dicts_and_controlnet_marks():
    regional = RegionalAttention(RECTS, TOKENS, (8, 8))
    hooks = a1111.A1111RegionalHooks(regional, context_kv=lambda c: (c, c))
    cond, uncond = torch.randn(3, 231, 64), torch.randn(1, 77, 64)
    marked_cond = torch.cat([torch.full((3, 1, 64), 1024.0), cond], 1)
    marked_uncond = torch.cat([torch.full((1, 1, 64), -1024.0), uncond], 1)
    hooks.on_cfg_denoiser(denoiser_params({'crossattn': marked_cond, 'vector': torch.zeros(3, 8)},
                                          {'crossattn': marked_uncond, 'vector': torch.zeros(1, 8)}, 5, 20))
    assert (hooks.n_cond, hooks.cond_length, hooks.uncond_length) == (3, 231, 77)
    hooks.on_cfg_denoiser(denoiser_params(cond, uncond))
    assert (hooks.n_cond, hooks.cond_length, hooks.uncond_length) == (3, 231, 77)


def test_host_settings_are_optional_outside_a1111(unet, monkeypatch):
    for name in ('modules', 'modules.shared', 'modules.hypernetworks', 'modules.hypernetworks.hypernetwork'):
        monkeypatch.setitem(sys.modules, name, None)  # no WebUI (the fake one may be loaded by other tests)
    hooks = a1111.A1111RegionalHooks(RegionalAttention(RECTS, TOKENS, None))
    hooks.install(unet)
    assert hooks.context_kv is None
    a1111.remove_all()
    assert all('forward' not in m.__dict__ for _, m in attn2_modules(unet))


@pytest.fixture
def a1111_sdp_with_a_hypernetwork():
    """A1111's sdp optimisation as its class forward and one loaded hypernetwork (tests/webui_stubs)."""
    import webui_helpers  # noqa: F401  (puts the fake `modules` package on the path)
    from modules import sd_hijack_optimizations, shared
    from modules.hypernetworks.hypernetwork import Hypernetwork
    sd_hijack_optimizations.SdOptimizationSdp().apply()
    shared.loaded_hypernetworks = [Hypernetwork(enable_sizes=(64,))]
    yield shared.loaded_hypernetworks
    shared.loaded_hypernetworks = []
    sd_hijack_optimizations.undo()


def test_hypernetworks_shape_the_regional_keys_and_values(unet, a1111_sdp_with_a_hypernetwork):
    """A1111 sends attn2's context through the loaded hypernetworks before to_k / to_v; the cond rows that get
    regions must too (Omost's formula on to_k(hyper_k(context)), to_v(hyper_v(context))), the others run the host's
    forward unchanged."""
    from modules.hypernetworks.hypernetwork import apply_hypernetworks
    x, context = inputs(2 * BATCH, 231, seed=3)
    hooks = a1111.A1111RegionalHooks(RegionalAttention(RECTS, TOKENS, None))  # the host's hypernetworks
    hooks.install(unet)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    calls, handles = record_attn2_calls(unet)
    try:
        unet_step(unet, x, context)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(attn2_modules(unet))
    for module, xi, ci, out in calls:
        with torch.no_grad():
            assert torch.equal(out[BATCH:], type(module).forward(module, xi[BATCH:], context=ci[BATCH:]))
            context_k, context_v = apply_hypernetworks(a1111_sdp_with_a_hypernetwork, ci[:BATCH])
            hw = level_hw(LATENT, xi.shape[1])
            cond = module.to_out(omost_attn2(module, xi[:BATCH], context_k, RECTS, hw, TOKENS, context_v))
            without, _ = expected(module, xi, ci, BATCH)  # the same regions without the hypernetwork
        assert (out[:BATCH] - cond).abs().max() < 1e-5
        assert (out[:BATCH] - without).abs().max() > 1e-3


def test_bf16_autocast_stays_within_the_hosts_own_rounding(unet):
    """A1111 runs the UNet under devices.autocast() (torch.autocast: fp16 / bf16 on a GPU; CPU bf16 here).
    Stated tolerance: the hooked UNet's bf16 output differs from its fp32 output by at most 1.1x what the host's
    own (unhooked) UNet does, and by at most 2.5% of the output's largest magnitude; the regions' own effect
    (fp32 Omost vs fp32 plain) stays more than twice that rounding error."""
    x, context = inputs(2 * BATCH, 231, seed=11)

    def run_autocast(enabled):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled):
            return unet(x, torch.full((x.shape[0],), 500.0), context=context).float()

    plain32, plain16 = run_autocast(False), run_autocast(True)
    hooks = a1111.A1111RegionalHooks(RegionalAttention(RECTS, TOKENS, None), context_kv=lambda c: (c, c))
    hooks.install(unet)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    omost32 = run_autocast(False)
    hooks.on_cfg_denoiser(denoiser_params(context[:BATCH], context[BATCH:]))
    omost16 = run_autocast(True)
    scale = plain32.abs().max()
    host_error = (plain16 - plain32).abs().max() / scale
    omost_error = (omost16 - omost32).abs().max() / scale
    assert omost_error <= 1.1 * host_error and omost_error <= 0.025, (omost_error, host_error)
    assert (omost32[:BATCH] - plain32[:BATCH]).abs().max() / scale > 2 * omost_error
    assert torch.equal(omost16[BATCH:], plain16[BATCH:])  # uncond rows: the host's own bf16 forward
