"""Checkpoints and reloading, as the hosts do it mid-job (refiner switch, hires checkpoint).

A1111 modules/sd_models.py reload_model_weights(info=...) and Forge's forge_model_reload both end with the new
model as `shared.sd_model` (every `p.sd_model` is that property) and call
`script_callbacks.model_loaded_callback(sd_model)`. Forge's freshly loaded model has fresh forge_objects (no
patches of the running pass)."""
from modules import script_callbacks, shared


class CheckpointInfo:
    def __init__(self, title, model):
        self.title = self.short_title = title
        self.model = model  # the model this checkpoint loads as (tests build it up front)
        model.sd_checkpoint_info = self


def reload_model_weights(sd_model=None, info=None):
    model = info.model
    if hasattr(model, 'forge_objects'):  # forge_model_reload: a new model, nothing patched on it
        model.forge_objects = model.forge_objects_original.shallow_copy()
        model.forge_objects_after_applying_lora = model.forge_objects_original.shallow_copy()
    shared.sd_model = model
    script_callbacks.model_loaded_callback(model)
    return model
