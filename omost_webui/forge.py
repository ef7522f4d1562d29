"""Forge: regional cross-attention as attn2 replace patches on a clone of the UnetPatcher.

Forge's BasicTransformerBlock looks up `transformer_options['patches_replace']['attn2']` by
(block_name, block_id, transformer_index), falling back to (block_name, block_id), and calls
`patch(to_q(n), to_k(context), to_v(value), extra_options)`; the patch returns (B, N, heads * dim_head) and the
block applies `to_out`. `extra_options` carries `n_heads`, `original_shape` (B, C, H_lat, W_lat) and, per call,
`cond_or_uncond` / `cond_indices`. The patched clone is assigned to `p.sd_model.forge_objects.unet` for one
sampling pass; Forge rebuilds `forge_objects` before the next pass, so nothing needs undoing.

The step window is fed from the host's on_cfg_denoiser callback (`regional.set_progress(...)`).
"""

from __future__ import annotations

import torch.nn.functional as F

BLOCK_NAMES = ('input', 'middle', 'output')
MAX_BLOCKS = 16  # the same key range as Forge's set_model_replace_all: every (block, 0-15, 0-15)


def host_attention():
    """Forge's own attention function, `attention_function(q, k, v, heads, mask=None)` on (B, N, heads * d):
    backend/attention.py picks xformers / pytorch SDPA / split / sub-quadratic once at start-up, and every attn2
    without a replace patch runs it (backend/nn/unet.py CrossAttention.forward). Read from the module at patch
    time, as Forge binds it at import. Outside Forge (tests of lib_omost alone): torch SDPA."""
    try:
        from backend import attention
        return attention.attention_function
    except ImportError:
        return _sdpa


def _sdpa(q, k, v, heads, mask=None):
    b = q.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, q.shape[2], -1)


class RegionalAttn2Patch:
    """One attn2 replace patch. An earlier patch on the same key (IP-Adapter) is kept and its extra
    contribution added: out = omost(q, k, v) + (previous(q, k, v, eo) - plain(q, k, v)). Rows and steps
    without regions run Forge's own attention function."""

    def __init__(self, regional, previous=None, attention=None):
        self.regional = regional
        self.previous = previous
        self.attention = attention or host_attention()

    def __deepcopy__(self, memo):
        # UnetPatcher.clone() deep-copies model_options; every clone must drive the same per-generation state.
        return self

    def __call__(self, q, k, v, extra_options):
        heads = extra_options['n_heads']
        batch, pixels = q.shape[0], q.shape[1]
        shape = extra_options.get('original_shape')
        if shape is not None:
            self.regional.set_latent_size(int(shape[2]), int(shape[3]))
        rows = cond_rows(extra_options, batch)
        if self.previous is None and (not rows or not self.regional.active):  # nothing regional in this call
            return self.attention(q, k, v, heads)
        qh, kh, vh = (t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        out = self.regional.regional(qh, kh, vh, rows, tiled=True, plain=self._plain_heads)
        out = out.transpose(1, 2).reshape(batch, pixels, -1)
        if self.previous is not None:
            plain = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(batch, pixels, -1)
            out = out + (self.previous(q, k, v, extra_options) - plain)
        return out


    def _plain_heads(self, q, k, v):
        """The host's attention on (B, heads, N, d) tensors (regional() works in that layout)."""
        b, heads = q.shape[0], q.shape[1]
        merged = (t.transpose(1, 2).reshape(b, t.shape[2], -1) for t in (q, k, v))
        out = self.attention(*merged, heads)
        return out.reshape(b, out.shape[1], heads, -1).transpose(1, 2)


def cond_rows(extra_options, batch: int):
    """Batch rows of this call that hold the positive prompt (Forge: COND = 0 in cond_or_uncond)."""
    if 'cond_indices' in extra_options:
        return list(extra_options['cond_indices'])
    labels = extra_options.get('cond_or_uncond')
    if not labels:
        return []  # unlabelled call: leave it plain
    chunk = batch // len(labels)
    return [i * chunk + j for i, label in enumerate(labels) if label == 0 for j in range(chunk)]


def patch_unet(unet_patcher, regional):
    """A clone of `unet_patcher` whose every attn2 runs Omost's regional attention on cond rows."""
    unet = unet_patcher.clone()
    options = dict(unet.model_options.get('transformer_options', {}))
    replace = dict(options.get('patches_replace', {}))
    attn2 = dict(replace.get('attn2', {}))
    attention = host_attention()
    shared = RegionalAttn2Patch(regional, attention=attention)
    for block in BLOCK_NAMES:
        for number in range(MAX_BLOCKS):
            for index in range(MAX_BLOCKS):
                key = (block, number, index)
                previous = attn2.get(key) or attn2.get((block, number))
                if isinstance(previous, RegionalAttn2Patch):  # patched twice: wrap what was there before us
                    previous = previous.previous
                attn2[key] = shared if previous is None else RegionalAttn2Patch(regional, previous, attention)
    replace['attn2'] = attn2
    options['patches_replace'] = replace
    # Copy-on-write like Forge's set_model_options_patch_replace: the source patcher's dicts stay untouched.
    unet.model_options['transformer_options'] = options
    return unet
