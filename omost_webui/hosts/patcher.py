"""The WebUIs with a ComfyUI-style UnetPatcher (Forge's `backend`, Forge Neo; Forge Classic and reForge on
`ldm_patched`): regional cross-attention as attn2 replace patches on a clone of the UnetPatcher.

Every one of them runs attn2 the same way (Forge/Neo backend/nn/unet.py BasicTransformerBlock._forward; Classic and
reForge ldm_patched/ldm/modules/attention.py BasicTransformerBlock.forward): it looks up
`transformer_options['patches_replace']['attn2']` by (block_name, block_id, transformer_index), falling back to
(block_name, block_id), and calls `patch(to_q(n), to_k(context), to_v(value), extra_options)`; the patch returns
(B, N, heads * dim_head) and the block applies `to_out`. `extra_options` carries `n_heads`, `original_shape`
(B, C, H_lat, W_lat) and, per call, `cond_or_uncond` (and `cond_indices` in the backend hosts). The patched clone is
assigned to `p.sd_model.forge_objects.unet` for one sampling pass; the hosts rebuild `forge_objects` before the next
pass (modules/processing.py: `forge_objects_after_applying_lora.shallow_copy()`), so nothing needs undoing.

What `clone()` copies differs: Forge, Classic and reForge deep-copy `model_options`; Neo copies its dicts and lists
only (backend/utils.py deepcopy_), so the patch objects in them are shared between clones. Hence nothing here
mutates a dict, list or patch object the source patcher holds: `patch_unet` writes into copies, and
`RegionalAttn2Patch.set_new_condition` extends a copy of the patch it wraps.

IP-Adapter (sd_forge_ipadapter, lib_ipadapter/IPAdapterPlus.py, in every one of these hosts) writes its own attn2
replace patches, in either order relative to ours (see RegionalAttn2Patch), so ours compose with it.

The step window is fed from the host's on_cfg_denoiser callback (`regional.set_progress(...)`).
"""

from __future__ import annotations

import copy
import sys

import torch.nn.functional as F

from lib_omost.attention import attend
from omost_webui.hosts.base import Host

BLOCK_NAMES = ('input', 'middle', 'output')
MAX_BLOCKS = 16  # the same key range as Forge's set_model_replace_all: every (block, 0-15, 0-15)
IP_ADAPTER_MODULE = 'lib_ipadapter.IPAdapterPlus'  # the built-in sd_forge_ipadapter of all four (imported by that name)


def sdpa(q, k, v, heads, mask=None):
    """torch SDPA with the hosts' attention signature (tests of the patch outside a WebUI)."""
    b = q.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, q.shape[2], -1)


class RegionalAttn2Patch:
    """One attn2 replace patch: regional attention on the cond rows.

    An attn2 patch that was there before us (IP-Adapter: plain attention plus attention to its image tokens) is
    kept as `previous` and runs first; the cond rows then get Omost's change on top of it:
        out = previous(q, k, v, eo) + (omost(q, k, v) - plain(q, k, v))      on cond rows, while regions apply
    so the other rows, and every row outside the step window, are exactly what `previous` gives.

    IP-Adapter applied AFTER us finds our patch at its key and calls `set_new_condition(...)` on it
    (IPAdapterPlus.py: set_model_patch_replace): we create (or extend) its CrossAttentionPatch as our `previous`,
    so the image prompt is kept whatever the order of the two extensions.

    Without a `previous`, rows and steps without regions run `attention`: the host's own attention function (see
    the host classes' `attention_function`), torch SDPA when none is given."""

    def __init__(self, regional, previous=None, attention=None):
        self.regional = regional
        self.previous = previous
        self._owns_previous = False  # `previous` came from the source patcher (shared with it in Neo)
        self.attention = attention or sdpa

    def __deepcopy__(self, memo):
        # Forge's, Classic's and reForge's UnetPatcher.clone() deep-copy model_options (backend/patcher/base.py,
        # modules_forge/unet_patcher.py: clone). Every clone must drive the same per-generation state (`regional`);
        # what it wraps is copied, as those hosts copy every other patch.
        new = RegionalAttn2Patch(self.regional, copy.deepcopy(self.previous, memo), self.attention)
        new._owns_previous = True
        return new

    def set_new_condition(self, **patch_kwargs):
        """IP-Adapter's way to add an image prompt to the patch already at its key (see the class docstring)."""
        if self.previous is not None:
            if not self._owns_previous:  # Neo's clone() shares patch objects: extend a copy, never the source's
                self.previous, self._owns_previous = _own_copy(self.previous), True
            self.previous.set_new_condition(**patch_kwargs)
            return
        module = sys.modules.get(IP_ADAPTER_MODULE)
        if module is None:  # only that module calls this; without it there is nothing to build
            raise AttributeError(f'set_new_condition: {IP_ADAPTER_MODULE} is not loaded')
        self.previous, self._owns_previous = module.CrossAttentionPatch(**patch_kwargs), True

    def to(self, device, *args, **kwargs):
        # The hosts move attention patches with the model and load the models they name (backend/patcher/base.py,
        # ldm_patched/modules/model_patcher.py: model_patches_to `patch = patch.to(device)` and model_patches_models
        # `patch.models()`, for every patch that has them); ours must pass both on to the patch it wraps.
        if hasattr(self.previous, 'to'):
            self.previous = self.previous.to(device, *args, **kwargs)
        return self

    def models(self):
        return list(self.previous.models()) if hasattr(self.previous, 'models') else []

    def __call__(self, q, k, v, extra_options):
        heads = extra_options['n_heads']
        # reForge's block passes its layer's precision to the attention (ldm_patched/ldm/modules/attention.py
        # BasicTransformerBlock.forward: extra_options["attn_precision"]; CrossAttention.forward:
        # `optimized_attention(..., attn_precision=self.attn_precision)`, which upcasts in basic / split / sub-quad):
        # the plain attention here gets it too. The other hosts set none.
        host = {'attn_precision': extra_options['attn_precision']} if 'attn_precision' in extra_options else {}
        batch, pixels = q.shape[0], q.shape[1]
        shape = extra_options.get('original_shape')
        if shape is not None:
            self.regional.set_latent_size(int(shape[2]), int(shape[3]))
        rows = cond_rows(extra_options, batch)
        if self.previous is None and (not rows or not self.regional.active):  # nothing regional in this call
            return self.attention(q, k, v, heads, **host)
        qh, kh, vh = (t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.previous is not None:
            return self._on_top_of_previous(q, k, v, qh, kh, vh, rows, extra_options, host)
        out = self.regional.regional(qh, kh, vh, rows, tiled=True,
                                     plain=lambda *qkv: self._plain_heads(*qkv, **host))
        return out.transpose(1, 2).reshape(batch, pixels, -1)

    def _on_top_of_previous(self, q, k, v, qh, kh, vh, rows, extra_options, host):
        out = self.previous(q, k, v, extra_options)
        plan = self.regional.plan_for(qh.shape[2], kh.shape[2], qh.device, qh.dtype, tiled=True) if rows else None
        if plan is None:
            return out
        batch, pixels = q.shape[0], q.shape[1]
        qc, kc, vc = qh[rows], kh[rows], vh[rows]
        # the host's attention for the plain part, the function `previous` used (IPAdapterPlus.py __call__)
        delta = attend(qc, kc, vc, plan) - self._plain_heads(qc, kc, vc, **host)
        out = out.clone()
        out[rows] += delta.transpose(1, 2).reshape(len(rows), pixels, -1).to(out.dtype)
        return out

    def _plain_heads(self, q, k, v, **host):
        """The host's attention on (B, heads, N, d) tensors (regional() works in that layout); `host`: what the
        host's attention gets besides q, k, v and heads in this call."""
        b, heads = q.shape[0], q.shape[1]
        merged = (t.transpose(1, 2).reshape(b, t.shape[2], -1) for t in (q, k, v))
        out = self.attention(*merged, heads, **host)
        return out.reshape(b, out.shape[1], heads, -1).transpose(1, 2)


def _own_copy(patch):
    """A copy of another extension's patch object whose list and dict attributes are copies too: what its
    `set_new_condition` appends to (IPAdapterPlus.py CrossAttentionPatch: weights, ipadapters, conds, ...), so
    extending the copy leaves the original as it was. The tensors and models in the lists are shared, unchanged."""
    new = copy.copy(patch)
    for name, value in vars(new).items():
        if isinstance(value, (list, dict)):
            setattr(new, name, copy.copy(value))
    return new


def cond_rows(extra_options, batch: int):
    """Batch rows of this call that hold the positive prompt: `cond_indices` where the host sets it (Forge and Neo
    backend/sampling/sampling_function.py calc_cond_uncond_batch), else COND = 0 in `cond_or_uncond` (Classic and
    reForge ldm_patched/modules/samplers.py calc_cond_batch sets only that)."""
    if 'cond_indices' in extra_options:
        return list(extra_options['cond_indices'])
    labels = extra_options.get('cond_or_uncond')
    if not labels:
        return []  # unlabelled call: leave it plain
    chunk = batch // len(labels)
    return [i * chunk + j for i, label in enumerate(labels) if label == 0 for j in range(chunk)]


def patch_unet(unet_patcher, regional, attention=None):
    """A clone of `unet_patcher` whose every attn2 runs Omost's regional attention on cond rows.

    Every key gets its own patch (an IP-Adapter applied after us extends the one at its key, with that layer's
    weights). The (block, id) key Forge falls back to shares the patch of (block, id, 0): SD1.5's IP-Adapter
    writes (block, id) keys, which Forge would never reach past our (block, id, 0) entry."""
    unet = unet_patcher.clone()
    options = dict(unet.model_options.get('transformer_options', {}))
    replace = dict(options.get('patches_replace', {}))
    attn2 = dict(replace.get('attn2', {}))

    def ours(previous):
        if isinstance(previous, RegionalAttn2Patch):  # patched twice: wrap what was there before us
            previous = previous.previous
        return RegionalAttn2Patch(regional, previous, attention)

    for block in BLOCK_NAMES:
        for number in range(MAX_BLOCKS):
            fallback = attn2.get((block, number))
            for index in range(MAX_BLOCKS):
                key = (block, number, index)
                attn2[key] = ours(attn2.get(key) or fallback)
            attn2[(block, number)] = attn2[(block, number, 0)]
    replace['attn2'] = attn2
    options['patches_replace'] = replace
    # Copy-on-write like the hosts' set_model_options_patch_replace: the source patcher's dicts stay untouched.
    unet.model_options['transformer_options'] = options
    return unet


def patcher_roots(sd_model) -> set:
    """The top-level packages of the classes the model's UnetPatcher is made of (empty without forge_objects):
    'backend' in Forge and Neo, 'modules_forge' / 'ldm_patched' in Forge Classic and reForge."""
    unet = getattr(getattr(sd_model, 'forge_objects', None), 'unet', None)
    if unet is None:
        return set()
    return {(cls.__module__ or '').split('.')[0] for cls in type(unet).__mro__}


class PatcherHost(Host):
    """The hosts whose model carries `forge_objects` with a ComfyUI-style UnetPatcher (see the module docstring)."""

    def attention_function(self):
        """The host's own attention function, (q, k, v, heads) on (B, N, heads * d): what attn2 runs unpatched."""
        raise NotImplementedError

    def diffusion_model(self, sd_model):
        # forge_objects.unet.model is the host's BaseModel / KModel; its diffusion_model the UNet
        return sd_model.forge_objects.unet.model.diffusion_model

    def apply_regions(self, p, job, regional):
        # modules/processing.py (every one of these hosts): before each sampling pass `p.sd_model.forge_objects`
        # becomes `forge_objects_after_applying_lora.shallow_copy()`, then process_before_every_sampling runs and the
        # sampler reads `forge_objects.unet` (sd_samplers_kdiffusion.py / sd_samplers_cfg_denoiser.py). Our patched
        # clone replaces it there for this pass only; the host's own patchers are never modified.
        unet = p.sd_model.forge_objects.unet
        if unet is job.attached:  # already ours for this pass (the hook may run more than once)
            return
        job.attached = patch_unet(unet, regional, self.attention_function())
        p.sd_model.forge_objects.unet = job.attached
