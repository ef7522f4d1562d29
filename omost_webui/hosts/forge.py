"""Forge (dfdcbab) and Forge Neo: the `backend` package. The model is a backend/diffusion_engine/*.py engine with
`forge_objects` (ForgeObjects: unet, clip, vae, clipvision) whose `unet` is a backend/patcher/unet.py UnetPatcher;
text goes through backend/text_processing/classic_engine.py ClassicTextProcessingEngine.

Neo's ModelPatcher is rewritten from ComfyUI: its clone() copies dicts and lists only (backend/utils.py deepcopy_),
so patch objects are shared between clones; hosts/patcher.py never mutates one it did not make."""

from __future__ import annotations

from omost_webui.host_tokenizer import engine_tokenize_line
from omost_webui.hosts.patcher import PatcherHost, patcher_roots


class ForgeHost(PatcherHost):
    family = 'forge'

    @classmethod
    def matches(cls, sd_model) -> bool:
        # backend/patcher/unet.py class UnetPatcher(ModelPatcher), ModelPatcher in backend/patcher/base.py
        return 'backend' in patcher_roots(sd_model)

    def attention_function(self):
        # backend/attention.py: `attention_function` is picked once at import (xformers / pytorch / split /
        # sub-quadratic; Neo adds sage and flash); backend/nn/unet.py CrossAttention.forward calls
        # `attention_function(q, k, v, self.heads, mask)` for every attn2 without a replace patch. Read at patch
        # time from the module, as the host binds it at import.
        from backend import attention
        return attention.attention_function

    def tokenize_line(self, sd_model):
        tokenize_line = engine_tokenize_line(sd_model)
        engine = getattr(tokenize_line, '__self__', None)
        if engine is not None and hasattr(engine, 'emphasis'):
            # backend/text_processing/classic_engine.py: tokenize_line parses with `self.emphasis`, which __call__
            # sets from the setting (`emphasis.get_current_option(opts.emphasis)()`) at each encode: set it as the
            # coming encode will, so BREAK and escapes count as they will be encoded.
            from backend.text_processing import emphasis
            from modules.shared import opts
            engine.emphasis = emphasis.get_current_option(opts.emphasis)()
        return tokenize_line
