"""Forge Classic / reForge ldm_patched/modules/model_patcher.py ModelPatcher, the part attention patches touch:
set_model_patch_replace and set_model_patch write into the patcher's own transformer_options in place (no
copy-on-write, unlike `backend`); clone() is modules_forge/unet_patcher.py's (deep copy of model_options)."""
from comfy_common import ComfyModelPatcher


class ModelPatcher(ComfyModelPatcher):
    # ldm_patched/modules/samplers.py calc_cond_batch (Classic calc_cond_uncond_batch): the per-call
    # transformer_options get `cond_or_uncond`, `uuids` and `sigmas`, no cond_indices
    labels_rows_by_index = False

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options['transformer_options']
        if 'patches_replace' not in to:
            to['patches_replace'] = {}
        if name not in to['patches_replace']:
            to['patches_replace'][name] = {}
        block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
        to['patches_replace'][name][block] = patch
