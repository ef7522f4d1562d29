"""Forge Classic (Haoming02/sd-webui-forge-classic, branch classic) and reForge (Panchovix/stable-diffusion-webui-
reForge): the old Forge backend on `ldm_patched`. The model is A1111's ldm/sgm model with `forge_objects` added
(modules_forge/forge_loader.py load_model_for_a1111), whose `unet` is a modules_forge/unet_patcher.py UnetPatcher
(a subclass of ldm_patched/modules/model_patcher.py ModelPatcher); the text encoders are A1111's
(modules/sd_hijack_clip.py, wrapped by modules_forge/forge_clip.py). attn2 replace patches are called as
`patch(q, k, v, extra_options)` (ldm_patched/ldm/modules/attention.py BasicTransformerBlock.forward), and
calc_cond_batch labels the rows with `cond_or_uncond` only (ldm_patched/modules/samplers.py)."""

from __future__ import annotations

from omost_webui.host_tokenizer import clip_tokenize_line
from omost_webui.hosts.patcher import PatcherHost, patcher_roots


class ForgeClassicHost(PatcherHost):
    family = 'forge-classic'

    @classmethod
    def matches(cls, sd_model) -> bool:
        # modules_forge/unet_patcher.py class UnetPatcher(ldm_patched.modules.model_patcher.ModelPatcher)
        return bool({'modules_forge', 'ldm_patched'} & patcher_roots(sd_model))

    def attention_function(self):
        # ldm_patched/ldm/modules/attention.py: `optimized_attention` is picked once at import (basic / sage /
        # xformers / pytorch / split / sub-quadratic); CrossAttention.forward calls
        # `optimized_attention(q, k, v, self.heads)` for every attn2 without a replace patch (reForge adds
        # `attn_precision=`, which only upcasts on the GPU when asked to).
        from ldm_patched.ldm.modules import attention
        return attention.optimized_attention

    def tokenize_line(self, sd_model):
        # modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line reads opts.emphasis itself
        return clip_tokenize_line(sd_model)
