"""Behavioural models of the two hosts' IP-Adapter attention code, for the composition tests.

Each function or class stands for the host lines named in its docstring and does what they do to attention
(which forward or patch runs, what is added, which rows get which image embedding); the image encoders are left
out: an "image prompt" here is a given (cond, uncond) pair of token embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.attention_helpers import heads_merge, heads_split

IMAGE_TOKENS = 4  # ImageProjModel's clip_extra_context_tokens for a plain IP-Adapter (both hosts)


def image_prompt(dim, seed):
    """(cond, uncond) image prompt embeddings of one reference image: (1, IMAGE_TOKENS, dim) each."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, IMAGE_TOKENS, dim, generator=g), torch.randn(1, IMAGE_TOKENS, dim, generator=g)


def ip_layers(dim, inners, seed):
    """IP-Adapter's per-layer key/value projections (context dim -> the layer's inner dim, one entry of `inners`
    per layer), named as both hosts name them ('{2n+1}_to_k_ip'): Forge IPAdapterPlus.py To_KV, sd-webui-controlnet
    ipadapter_model.py To_KV."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for number, inner in enumerate(inners):
        for kind in ('k', 'v'):
            linear = torch.nn.Linear(dim, inner, bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(inner, dim, generator=g) / dim ** 0.5)
            layers[f'{number * 2 + 1}_to_{kind}_ip'] = linear
    return layers


# --- Forge: extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py ----------------------------


class ForgeCrossAttentionPatch:
    """IPAdapterPlus.py: CrossAttentionPatch. __init__ keeps one condition per list entry and derives its layer
    keys from `number`; set_new_condition appends a condition; __call__ is `attention_function(q, k, v)` plus, per
    condition inside its sigma range, `attention_function(q, ip_k, ip_v) * weight` ("original" weight type), where
    ip_k / ip_v are its layer's projections of the cond or uncond embedding, picked per chunk from
    `cond_or_uncond` and repeated over the chunk's rows."""

    def __init__(self, weight, ipadapter, number, cond, uncond, weight_type='original', mask=None,
                 sigma_start=0.0, sigma_end=1.0, unfold_batch=False):
        self.conditions = []
        self.k_key = f'{number * 2 + 1}_to_k_ip'
        self.v_key = f'{number * 2 + 1}_to_v_ip'
        self.set_new_condition(weight, ipadapter, number, cond, uncond, weight_type, mask, sigma_start, sigma_end,
                               unfold_batch)

    def set_new_condition(self, weight, ipadapter, number, cond, uncond, weight_type='original', mask=None,
                          sigma_start=0.0, sigma_end=1.0, unfold_batch=False):
        self.conditions.append((weight, ipadapter, cond, uncond, sigma_start, sigma_end))

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        heads = extra_options['n_heads']
        labels = extra_options['cond_or_uncond']
        sigma = extra_options['sigmas'][0].item() if 'sigmas' in extra_options else 999999999.9
        per_chunk = n.shape[0] // len(labels)
        out = forge_attention_function(n, context_attn2, value_attn2, heads)
        for weight, layers, cond, uncond, sigma_start, sigma_end in self.conditions:
            if sigma > sigma_start or sigma < sigma_end:
                continue
            ip_k = torch.cat([layers[self.k_key]((cond, uncond)[i]).repeat(per_chunk, 1, 1) for i in labels])
            ip_v = torch.cat([layers[self.v_key]((cond, uncond)[i]).repeat(per_chunk, 1, 1) for i in labels])
            out = out + forge_attention_function(n, ip_k, ip_v, heads) * weight
        return out


def forge_attention_function(q, k, v, heads):
    """backend/attention.py: attention_pytorch, Forge's attention_function on CPU with pytorch attention:
    (B, N, heads * d) in and out, one SDPA."""
    qh, kh, vh = (heads_split(t, heads) for t in (q, k, v))
    return heads_merge(F.scaled_dot_product_attention(qh, kh, vh))


def forge_set_model_patch_replace(model, patch_kwargs, key):
    """IPAdapterPlus.py: set_model_patch_replace. Writes into the (already cloned) patcher's own
    transformer_options: a new CrossAttentionPatch where the key is free, else `set_new_condition` on what is
    there."""
    to = model.model_options['transformer_options']
    attn2 = to.setdefault('patches_replace', {}).setdefault('attn2', {})
    if key not in attn2:
        attn2[key] = ForgeCrossAttentionPatch(**patch_kwargs)
    else:
        attn2[key].set_new_condition(**patch_kwargs)


def forge_apply_ipadapter(model, layers, cond, uncond, sdxl, weight=0.8):
    """IPAdapterPlus.py: IPAdapterApply.apply_ipadapter, the part after the image encoding: clone the patcher, then
    one patch per cross-attention layer, `number` counting input, output, middle, with SD1.5's keys (block, id)
    and SDXL's (block, id, index)."""
    work_model = model.clone()
    kwargs = {'number': 0, 'weight': weight, 'ipadapter': layers, 'cond': cond, 'uncond': uncond,
              'weight_type': 'original', 'mask': None, 'sigma_start': 999999999.9, 'sigma_end': 0.0,
              'unfold_batch': False}
    for key in forge_ipadapter_keys(sdxl):
        forge_set_model_patch_replace(work_model, kwargs, key)
        kwargs['number'] += 1
    return work_model


def forge_ipadapter_keys(sdxl):
    """The keys, in `number` order, apply_ipadapter writes (IPAdapterPlus.py, end of apply_ipadapter)."""
    if not sdxl:
        return ([('input', i) for i in (1, 2, 4, 5, 7, 8)] + [('output', i) for i in range(3, 12)] +
                [('middle', 0)])
    keys = [('input', i, j) for i in (4, 5, 7, 8) for j in range(2 if i in (4, 5) else 10)]
    keys += [('output', i, j) for i in range(6) for j in range(2 if i in (3, 4, 5) else 10)]
    return keys + [('middle', 0, j) for j in range(10)]


# --- A1111 + sd-webui-controlnet: scripts/ipadapter/plugable_ipadapter.py -----------------------------------


class ControlNetIPAdapter:
    """sd-webui-controlnet's IP-Adapter on an ldm UNet. `hook` = PlugableIPAdapter.hook -> set_model_attn2_replace
    -> hack_blk per attn2; `clear` = clear_all_ip_adapter; `cond_mark` = what its UNet forward sets on the model
    per call (hook.py: UnetHook.hook.forward, `outer.model.cond_mark = cond_mark`: 1 = cond row)."""

    def __init__(self, layers, cond, uncond, weight=0.8):
        self.layers, self.cond, self.uncond, self.weight = layers, cond, uncond, weight
        self.all_hacks = {}
        self.cond_mark = None

    def hook(self, attn2_modules):
        for number, module in enumerate(attn2_modules):
            self.hack_blk(module, self.patch_forward(number))

    def hack_blk(self, block, function):
        """plugable_ipadapter.py: hack_blk. The first function on a block saves its current forward and shadows it
        with attn_forward_hacked (an instance attribute); later ones are only appended."""
        if not hasattr(block, 'ipadapter_hacks'):
            block.ipadapter_hacks = []
        if len(block.ipadapter_hacks) == 0:
            self.all_hacks[block] = block.forward
            block.forward = attn_forward_hacked.__get__(block, type(block))
        block.ipadapter_hacks.append(function)

    def clear(self):
        """plugable_ipadapter.py: clear_all_ip_adapter. Puts back each saved forward (as an instance attribute)."""
        for block, forward in self.all_hacks.items():
            block.forward = forward
            block.ipadapter_hacks = []
        self.all_hacks = {}

    def patch_forward(self, number):
        """PlugableIPAdapter.patch_forward / _attn_eval_ipadapter: the image embedding of each row (cond or uncond by
        cond_mark, ImageEmbed.eval) through the layer's to_k_ip / to_v_ip, SDPA with q, times the weight."""
        def forward(attn_blk, x, q):
            batch, heads = x.shape[0], attn_blk.heads
            mark = self.cond_mark[:, :, :, 0]
            emb = self.cond * mark + self.uncond * (1 - mark)
            ip_k = self.layers[f'{number * 2 + 1}_to_k_ip'](emb)
            ip_v = self.layers[f'{number * 2 + 1}_to_v_ip'](emb)
            ip_k, ip_v = (t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (ip_k, ip_v))
            out = F.scaled_dot_product_attention(q, ip_k, ip_v)
            return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]) * self.weight
        return forward


def attn_forward_hacked(self, x, context=None, **kwargs):
    """plugable_ipadapter.py: attn_forward_hacked. Plain SDPA of the module's q, k, v, plus every IP-Adapter term,
    then to_out; the forward it shadowed is never called."""
    batch, heads = x.shape[0], self.heads
    context = x if context is None else context
    q, k, v = (t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)
               for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3])
    for f in self.ipadapter_hacks:
        out = out + f(self, x, q)
    return self.to_out(out)
