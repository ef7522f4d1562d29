"""VAE encoding helper, img2img step arithmetic and the interrupt exception, as documented for both hosts."""
import torch

from modules import devices, shared


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
