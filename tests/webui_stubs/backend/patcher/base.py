"""The part of the `backend` ModelPatcher that attention patches touch, in its two hosts:
- Forge dfdcbab backend/patcher/base.py: `clone()` deep-copies model_options (`copy.deepcopy`), so every patch
  object in them is copied too (RegionalAttn2Patch.__deepcopy__ keeps its per-job state shared).
- Forge Neo webui/backend/patcher/base.py (`NeoModelPatcher` here): `clone()` runs backend/utils.py deepcopy_ on
  model_options, which copies dicts and lists only: patch objects are shared between a patcher and its clones.
Both: set_model_options_patch_replace copies transformer_options, patches_replace and the name's dict before
writing (copy-on-write); set_model_patch writes into the patcher's own transformer_options."""
import copy

from backend.utils import deepcopy_
from comfy_common import ComfyModelPatcher


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = model_options['transformer_options'].copy()
    to['patches_replace'] = dict(to.get('patches_replace', {}))
    to['patches_replace'][name] = dict(to['patches_replace'].get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    to['patches_replace'][name][block] = patch
    model_options['transformer_options'] = to
    return model_options


class ModelPatcher(ComfyModelPatcher):
    # modules/sd_samplers_cfg_denoiser.py -> backend/sampling/sampling_function.py calc_cond_uncond_batch labels the
    # rows of each UNet call with cond_or_uncond, cond_indices / uncond_indices, cond_mark and sigmas
    labels_rows_by_index = True

    def copy_model_options(self):
        return copy.deepcopy(self.model_options)

    def clone(self):
        n = type(self)(self.model)
        n.model_options = self.copy_model_options()
        return n

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_replace_all(self, patch, target='attn1'):  # backend/patcher/unet.py UnetPatcher
        for block_name in ('input', 'middle', 'output'):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)


class NeoModelPatcher(ModelPatcher):
    def copy_model_options(self):
        return deepcopy_(self.model_options)  # Neo ModelPatcher.clone: `n.model_options = utils.deepcopy_(...)`
