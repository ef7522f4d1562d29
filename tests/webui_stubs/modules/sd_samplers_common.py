"""VAE encoding helper, img2img step arithmetic and the interrupt exception, as documented for both hosts."""
import torch

from modules import devices, script_callbacks, shared


class InterruptedException(BaseException):
    pass


approximation_indexes = {'Full': 0, 'Approx NN': 1, 'Approx cheap': 2, 'TAESD': 3}


def images_tensor_to_samples(image, approximation=None, model=None):
    """image (B, 3, H, W) in [0, 1] -> latent."""
    model = model or shared.sd_model
    image = image.to(devices.device, dtype=devices.dtype_vae) * 2 - 1
    return torch.cat([model.get_first_stage_encoding(model.encode_first_stage(img[None])) for img in image])


def setup_img2img_steps(p, steps=None):
    if shared.opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def apply_refiner(cfg_denoiser, sigma=None):
    """modules/sd_samplers_common.py apply_refiner, called first thing in every CFGDenoiser.forward. The switch
    point is the share of denoiser calls done (Forge always; A1111 with "refiner switch by sampling steps", else
    the same share measured on the sigmas). The new checkpoint is loaded (sd_models.reload_model_weights /
    forge_model_reload: model_loaded callbacks run), the conds re-encoded by it (p.setup_conds) and the denoiser
    points at the new model (update_inner_model)."""
    from modules import sd_models
    p = cfg_denoiser.p
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    info = p.refiner_checkpoint_info
    if info is None or getattr(shared.sd_model, 'sd_checkpoint_info', None) is info:
        return False
    p.extra_generation_params['Refiner'] = info.short_title
    p.extra_generation_params['Refiner switch at'] = p.refiner_switch_at
    sd_models.reload_model_weights(info=info)
    if hasattr(shared.sd_model, 'forge_objects'):  # Forge re-activates the extra networks on the new model
        shared.sd_model.activate_extra_networks(p, p.extra_network_data)
        p.reset_forge_objects()
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True
