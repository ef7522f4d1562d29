"""Forge Classic / reForge modules_forge/unet_patcher.py UnetPatcher: clone() deep-copies model_options
(`n.model_options = copy.deepcopy(self.model_options)`). The extension tells the host family by this module."""
import copy

from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):
    def clone(self):
        n = UnetPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n
