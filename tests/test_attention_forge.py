"""Forge attn2 replace patches, driven exactly the way Forge's BasicTransformerBlock calls them."""

import math

import pytest
import torch
import torch.nn.functional as F

from lib_omost.attention import RegionalAttention
from omost_webui.hosts.patcher import RegionalAttn2Patch, patch_unet
from tests.attention_helpers import FORGE_LATENT as LATENT
from tests.attention_helpers import FORGE_RECTS as RECTS
from tests.attention_helpers import (
    TOKENS,
    FakeUnetPatcher,
    forge_attn2,
    forge_call_options,
    forge_cross_attention,
    heads_merge,
    heads_split,
    omost_attn2,
    one_thread,
)

assert one_thread  # autouse fixture
LEVELS = {('input', 1, 0): (9, 13), ('input', 4, 0): (5, 7), ('middle', 0, 0): (3, 4), ('output', 7, 0): (5, 7)}
ROWS = 2  # images per chunk


@pytest.fixture(scope='module')
def attn():
    return forge_cross_attention()


def call(attn, options, block, x, context):
    with torch.no_grad():
        return forge_attn2(attn, x, context, options, block[:2], block[2])


def expected_cond(attn, x, cond_context, hw):
    with torch.no_grad():
        return attn.to_out(omost_attn2(attn, x, cond_context, RECTS, hw, TOKENS))


def patched_options(regional, base=None):
    base = base or FakeUnetPatcher()
    unet = patch_unet(base, regional)
    assert unet is not base
    return unet, dict(unet.model_options['transformer_options'])


def level_inputs(hw, contexts, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(contexts.shape[0], hw[0] * hw[1], 32, generator=g)


def contexts_lcm(seed, cond_len=231, uncond_len=77):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(ROWS, cond_len, 64, generator=g)
    uncond = torch.randn(ROWS, uncond_len, 64, generator=g)
    a, b = cond_len, uncond_len
    lcm = a * b // math.gcd(a, b)
    return cond, uncond, cond.repeat(1, lcm // a, 1), uncond.repeat(1, lcm // b, 1)


def test_clone_is_patched_and_the_source_untouched():
    source = FakeUnetPatcher()
    regional = RegionalAttention(RECTS, TOKENS, None)
    unet, options = patched_options(regional, source)
    assert source.model_options == {'transformer_options': {}}
    attn2 = options['patches_replace']['attn2']
    assert len(attn2) == 3 * 16 * 16 + 3 * 16  # every (block, id, index) and the (block, id) fallbacks
    assert attn2[('input', 4)] is attn2[('input', 4, 0)]  # SD1.5's IP-Adapter extends the patch Forge reaches
    again = unet.clone()  # Forge deep-copies model_options on every clone: the copies drive the same state
    copied = again.model_options['transformer_options']['patches_replace']['attn2']
    assert copied[('output', 7, 0)].regional is regional
    assert copied[('input', 4)] is copied[('input', 4, 0)] is not attn2[('input', 4, 0)]


@pytest.mark.parametrize('cond_len,uncond_len', [(231, 77), (231, 154), (231, 231)])
def test_cond_rows_regional_uncond_rows_plain_under_lcm_tiling(attn, cond_len, uncond_len):
    regional = RegionalAttention(RECTS, TOKENS, None)
    _, options = patched_options(regional)
    plain_options = {}
    cond, _, cond_tiled, uncond_tiled = contexts_lcm(cond_len + uncond_len, cond_len, uncond_len)
    context = torch.cat([uncond_tiled, cond_tiled])  # Forge's usual order: cond_or_uncond = [1, 0]
    options.update(forge_call_options([1, 0], ROWS, LATENT))
    plain_options.update(forge_call_options([1, 0], ROWS, LATENT))
    for block, hw in LEVELS.items():
        x = level_inputs(hw, context, seed=hw[0])
        out = call(attn, options, block, x, context)
        plain = call(attn, plain_options, block, x, context)
        assert torch.equal(out[:ROWS], plain[:ROWS])
        assert (out[ROWS:] - expected_cond(attn, x[ROWS:], cond, hw)).abs().max() < 1e-5


def test_single_label_calls(attn):
    regional = RegionalAttention(RECTS, TOKENS, None)
    _, options = patched_options(regional)
    cond, uncond, _, _ = contexts_lcm(1)
    block, hw = ('input', 4, 0), LEVELS[('input', 4, 0)]
    x = level_inputs(hw, cond, seed=3)
    options.update(forge_call_options([0], ROWS, LATENT))
    assert (call(attn, options, block, x, cond) - expected_cond(attn, x, cond, hw)).abs().max() < 1e-5
    options.update(forge_call_options([1], ROWS, LATENT))
    assert torch.equal(call(attn, options, block, x, uncond),
                       call(attn, forge_call_options([1], ROWS, LATENT), block, x, uncond))


def test_outside_the_step_window_is_plain(attn):
    regional = RegionalAttention(RECTS, TOKENS, None, start=0.0, end=0.3)
    _, options = patched_options(regional)
    _, _, cond, uncond = contexts_lcm(2, 231, 231)
    context = torch.cat([uncond, cond])
    options.update(forge_call_options([1, 0], ROWS, LATENT))
    block = ('middle', 0, 0)
    x = level_inputs(LEVELS[block], context, seed=4)
    plain = call(attn, forge_call_options([1, 0], ROWS, LATENT), block, x, context)
    regional.set_progress(0.5)
    assert torch.equal(call(attn, options, block, x, context), plain)
    regional.set_progress(0.1)
    assert not torch.equal(call(attn, options, block, x, context), plain)


class IPAdapterLike:
    """An earlier attn2 replace patch: plain attention plus attention to its own extra tokens."""

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.k = torch.randn(1, 4, 32, generator=g)
        self.v = torch.randn(1, 4, 32, generator=g)

    def extra(self, q, heads):
        k, v = (heads_split(t.expand(q.shape[0], -1, -1), heads) for t in (self.k, self.v))
        return 0.5 * heads_merge(F.scaled_dot_product_attention(heads_split(q, heads), k, v))

    def __call__(self, q, k, v, extra_options):
        heads = extra_options['n_heads']
        plain = heads_merge(F.scaled_dot_product_attention(*(heads_split(t, heads) for t in (q, k, v))))
        return plain + self.extra(q, heads)


@pytest.mark.parametrize('key', [('input', 4), ('input', 4, 0)])
def test_an_existing_replace_patch_is_composed(attn, key):
    source = FakeUnetPatcher()
    ip = IPAdapterLike(5)
    source.model_options['transformer_options']['patches_replace'] = {'attn2': {key: ip}}
    regional = RegionalAttention(RECTS, TOKENS, None)
    _, options = patched_options(regional, source)
    assert source.model_options['transformer_options']['patches_replace']['attn2'] == {key: ip}
    _, _, cond, uncond = contexts_lcm(6, 231, 231)
    context = torch.cat([uncond, cond])
    options.update(forge_call_options([1, 0], ROWS, LATENT))
    block, hw = ('input', 4, 0), LEVELS[('input', 4, 0)]
    x = level_inputs(hw, context, seed=7)
    out = call(attn, options, block, x, context)
    with torch.no_grad():
        extra = attn.to_out[0].weight @ ip.extra(attn.to_q(x), attn.heads).transpose(1, 2)
        without_ip = call(attn, dict(patched_options(regional)[1], **forge_call_options([1, 0], ROWS, LATENT)),
                          block, x, context)
    # to_out is affine: out(omost + extra) = out(omost) + W @ extra
    assert (out - (without_ip + extra.transpose(1, 2))).abs().max() < 1e-5
    assert (out[ROWS:] - expected_cond(attn, x[ROWS:], cond, hw) - extra.transpose(1, 2)[ROWS:]).abs().max() < 1e-5


def test_patching_twice_does_not_stack():
    regional = RegionalAttention(RECTS, TOKENS, None)
    once, _ = patched_options(regional)
    _, options = patched_options(regional, once)
    patch = options['patches_replace']['attn2'][('input', 1, 0)]
    assert isinstance(patch, RegionalAttn2Patch) and patch.previous is None


def test_the_wrapped_patch_still_moves_with_the_model():
    """The hosts call `to(device)` and `models()` on every attn2 patch that has them (model_patches_to /
    model_patches_models in backend/patcher/base.py and ldm_patched/modules/model_patcher.py): a patch that Omost
    wraps gets both, and the host's dict entry stays Omost's patch."""

    class Movable:
        def __init__(self):
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

        def models(self):
            return ['ip-adapter model']

    source = FakeUnetPatcher()
    theirs = Movable()
    source.model_options['transformer_options'] = {'patches_replace': {'attn2': {('input', 1, 0): theirs}}}
    ours = patch_unet(source, RegionalAttention(RECTS, TOKENS, None))
    attn2 = ours.model_options['transformer_options']['patches_replace']['attn2']
    patch = attn2[('input', 1, 0)]
    assert patch.to('meta') is patch and patch.previous.moved_to == 'meta'
    assert patch.models() == ['ip-adapter model'] and attn2[('input', 2, 0)].models() == []
    assert attn2[('input', 2, 0)].to('meta') is attn2[('input', 2, 0)]
