"""backend/patcher/unet.py UnetPatcher (Forge dfdcbab; `NeoUnetPatcher`: Forge Neo's, whose clone() shares patch
objects, see base.py). The extension tells the host family by this module: `backend.patcher.unet`."""
from backend.patcher.base import ModelPatcher, NeoModelPatcher


class UnetPatcher(ModelPatcher):
    pass


class NeoUnetPatcher(NeoModelPatcher):
    pass
