"""'Start from the sketch': the first pass of a txt2img job is sampled as img2img from the encoded colour sketch.

Called from `process_before_every_sampling` of the first pass, right after the host created `p.sampler` and
before it calls `p.sampler.sample(...)`. The wrapper is an attribute of that sampler instance only; the hires
pass creates a new sampler, so nothing outlives the pass. `p.denoising_strength` is the hires pass's denoise too,
hence it is restored as soon as the first pass returns (host-integration.md section 4).
"""

from __future__ import annotations


def encode_sketch(p, canvas, blur: int, x):
    """The (blurred) colour sketch encoded by the host's VAE: a latent shaped and placed like `x`."""
    import torch
    from lib_omost.sketch import sketch_array
    from modules import sd_samplers_common
    height, width = int(x.shape[-2]) * 8, int(x.shape[-1]) * 8
    image = torch.from_numpy(sketch_array(canvas, width, height, blur)).permute(2, 0, 1)[None] / 255.0
    latent = sd_samplers_common.images_tensor_to_samples(image, None, p.sd_model)
    return latent.to(device=x.device, dtype=x.dtype).repeat(x.shape[0], 1, 1, 1)


def seed_first_pass(p, canvas, options, x):
    sampler = getattr(p, 'sampler', None)
    if sampler is None or not hasattr(sampler, 'sample_img2img'):
        print('[Omost] this sampler cannot start from an image; the sketch start is skipped.')
        return
    init_latent = encode_sketch(p, canvas, options.sketch_blur, x)
    img2img = sampler.sample_img2img
    denoise = float(options.sketch_denoise)

    def sample(p_, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        saved = p_.denoising_strength
        p_.denoising_strength = denoise
        try:
            return img2img(p_, init_latent, noise, conditioning, unconditional_conditioning, steps=steps,
                           image_conditioning=image_conditioning)
        finally:
            p_.denoising_strength = saved

    sampler.sample = sample
