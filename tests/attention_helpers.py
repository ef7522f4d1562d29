"""Independent references for the attention tests: Omost's formula written out in float64, Omost's own mask
resizing (a 90x90 mask through torch's `nearest-exact` interpolation), a tiny real ldm UNet, and a faithful fake
of Forge's UnetPatcher / BasicTransformerBlock attn2 contract."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Import into a test module: small matrices, and OpenMP threads only contend on the shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The canvas of the hook and patch tests: the whole image (region 0, like the background) and two overlapping
# regions; chunk i of a 231-token cond (3 x 77) belongs to region i, like the bags.
TOKENS = torch.arange(77 * 3) // 77
A1111_RECTS = [(0, 90, 0, 90), (10, 70, 0, 45), (30, 90, 40, 90)]  # the A1111 hook tests (tiny ldm UNet)
A1111_LATENT = (8, 12)  # non-square; the tiny UNet's second level is 4 x 6
FORGE_RECTS = [(0, 90, 0, 90), (0, 60, 0, 50), (40, 90, 30, 90)]  # the Forge patch tests
FORGE_LATENT = (9, 13)  # not a multiple of anything: levels 9x13, 5x7, 3x4


def omost_masks(rects, h, w):
    """(R, h*w) bool exactly as Omost builds them: a 90x90 float mask per rect, interpolated nearest-exact."""
    out = []
    for top, bottom, left, right in rects:
        m = torch.zeros(90, 90)
        m[top:bottom, left:right] = 1.0
        m = F.interpolate(m[None, None], (h, w), mode='nearest-exact')[0, 0]
        out.append(m.flatten() > 0.5)
    return torch.stack(out)


def omost_reference(q, k, v, masks, token_region, strength=1.0):
    """Omost's score edit, explicit, float64: score = q.k/sqrt(d) * (N/area)**strength, -inf outside the
    token's region; token_region -1 = a column of no region (never attended)."""
    q, k, v = q.double(), k.double(), v.double()
    masks = torch.as_tensor(masks).bool()
    tokens = torch.as_tensor(token_region).long()
    n_pix = masks.shape[1]
    inside = torch.zeros(n_pix, tokens.numel(), dtype=torch.bool)
    scale = torch.ones(tokens.numel(), dtype=torch.float64)
    for j, r in enumerate(tokens.tolist()):
        if r >= 0:
            inside[:, j] = masks[r]
            scale[j] = (n_pix / max(int(masks[r].sum()), 1)) ** strength
    sim = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * scale
    sim = sim.masked_fill(~inside, float('-inf'))
    return sim.softmax(dim=-1) @ v


def heads_split(t, heads):
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def heads_merge(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def omost_attn2(module, x, context, rects, hw, tokens, context_v=None):
    """Omost's attention (`omost_reference`, float64) in an attn2 module, before its to_out: queries from x, keys
    from context, values from context_v (default: context), the rects' masks at the level's (h, w)."""
    q, k, v = (heads_split(t, module.heads) for t in (module.to_q(x), module.to_k(context),
                                                      module.to_v(context if context_v is None else context_v)))
    return heads_merge(omost_reference(q, k, v, omost_masks(rects, *hw), tokens)).float()


def level_hw(latent, pixels):
    """(h, w) of the UNet level with `pixels` positions: the latent halved, rounding up, until it has as many."""
    h, w = latent
    while h * w > pixels:
        h, w = (h + 1) // 2, (w + 1) // 2
    assert h * w == pixels, (latent, pixels)
    return h, w


def tiny_unet(sd2=False, seed=0, context_dim=64):
    """The tiny real ldm UNetModel of test-substrate.md section 3 (SD1-style conv proj or SD2-style linear)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    kwargs = {'num_head_channels': 16, 'use_linear_in_transformer': True} if sd2 else {'num_heads': 2}
    unet = UNetModel(image_size=16, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(1, 2), use_spatial_transformer=True,
                     transformer_depth=1, context_dim=context_dim, legacy=False, **kwargs)
    with torch.no_grad():  # ldm zero-initialises proj_out and the last conv: attention would not reach the output
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return unet.eval()


def unet_step(unet, x, context):
    """The tiny UNet's output for x at t = 500 (no grad)."""
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), 500.0), context=context)


def attn2_modules(unet):
    return [(n, m) for n, m in unet.named_modules() if n.endswith('attn2')]


def record_attn2_calls(unet):
    """([(module, x, context, output)] of every attn2 call from now on, the forward hooks' handles to remove)."""
    calls = []
    handles = [m.register_forward_hook(lambda mod, args, kwargs, out: calls.append(
        (mod, args[0], kwargs.get('context', args[1] if len(args) > 1 else None), out)), with_kwargs=True)
        for _, m in attn2_modules(unet)]
    return calls, handles


def denoiser_params(text_cond, text_uncond, step=0, total=20):
    """What A1111's CFGDenoiserParams carries that the hooks read."""
    return types.SimpleNamespace(text_cond=text_cond, text_uncond=text_uncond, sampling_step=step,
                                 total_sampling_steps=total)


# --- Forge ---------------------------------------------------------------------------------------------------


def forge_cross_attention():
    """The attn2 layer of the Forge patch tests: ldm's CrossAttention, 32 channels, 2 heads, 64-wide context."""
    from ldm.modules.attention import CrossAttention
    torch.manual_seed(0)
    return CrossAttention(query_dim=32, context_dim=64, heads=2, dim_head=16).eval()


class FakeUnetPatcher:
    """The part of Forge's UnetPatcher a patch touches: model_options and clone() deep-copying them."""

    def __init__(self, model=None):
        self.model = model
        self.model_options = {'transformer_options': {}}

    def clone(self):
        n = FakeUnetPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n


def forge_attn2(attn, n, context, transformer_options, block, block_index=0, n_heads=None):
    """The attn2 part of Forge's BasicTransformerBlock._forward: extra_options from transformer_options,
    replace patch lookup by (name, id, index) then (name, id); q/k/v projected before the patch, to_out after."""
    extra_options = {}
    replace = {}
    for key, value in transformer_options.items():
        if key == 'patches_replace':
            replace = value
        elif key != 'patches':
            extra_options[key] = value
    extra_options['n_heads'] = n_heads or attn.heads
    extra_options['dim_head'] = attn.to_q.out_features // extra_options['n_heads']
    extra_options['block'] = block
    extra_options['block_index'] = block_index
    patches = replace.get('attn2', {})
    key = (block[0], block[1], block_index)
    if key not in patches:
        key = block
    if key in patches:
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(context)
        return attn.to_out(patches[key](q, k, v, extra_options))
    q, k, v = (heads_split(t, attn.heads) for t in (attn.to_q(n), attn.to_k(context), attn.to_v(context)))
    return attn.to_out(heads_merge(F.scaled_dot_product_attention(q, k, v)))


def forge_call_options(cond_or_uncond, rows_per_chunk, latent_hw, channels=4):
    """The per-call transformer_options Forge's calc_cond_uncond_batch and UNet forward add."""
    cond_indices, uncond_indices = [], []
    for i, label in enumerate(cond_or_uncond):
        (cond_indices if label == 0 else uncond_indices).extend(range(i * rows_per_chunk, (i + 1) * rows_per_chunk))
    return {'cond_or_uncond': list(cond_or_uncond), 'cond_indices': cond_indices, 'uncond_indices': uncond_indices,
            'original_shape': [len(cond_or_uncond) * rows_per_chunk, channels, *latent_hw]}
