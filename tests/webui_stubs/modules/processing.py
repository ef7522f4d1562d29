"""StableDiffusionProcessingTxt2Img/Img2Img and process_images with the hosts' documented call order
(host-integration.md section 1.2). Forge differences: `forge_objects` is rebuilt from
`forge_objects_after_applying_lora` before every sampling pass, and the hires pass calls
process_before_every_sampling twice."""
import torch
import torch.nn.functional as F

from modules import extra_networks, infotext_utils, prompt_parser, sd_samplers, shared


class Processed:
    def __init__(self, p, images, infotexts):
        self.images = images          # latents decoded by the fake VAE: (3, H, W) tensors
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ''


class StableDiffusionProcessing:
    is_img2img = False
    cached_c = [None, None]  # class-level as in the hosts: the prompt's conds are reused by the next job

    def __init__(self, sd_model, prompt='', negative_prompt='', seed=1, steps=3, cfg_scale=7.0, width=64,
                 height=64, batch_size=1, n_iter=1, denoising_strength=0.75, override_settings=None,
                 override_settings_restore_afterwards=True, scripts=None, script_args=(), **kwargs):
        shared.sd_model = sd_model  # the WebUI's loaded model; p.sd_model reads it (see the property)
        self.refiner_checkpoint_info = self.refiner_switch_at = None
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.steps, self.cfg_scale = seed, steps, cfg_scale
        self.width, self.height = width, height
        self.batch_size, self.n_iter = batch_size, n_iter
        self.denoising_strength = denoising_strength
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.scripts, self.script_args = scripts, tuple(script_args)
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.sampler = None
        self.modified_noise = None
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def sd_model(self):
        """modules/processing.py StableDiffusionProcessing.sd_model (both hosts): always `shared.sd_model`, so after
        a refiner switch or a hires checkpoint p.sd_model is the new model."""
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def get_conds(self):
        """modules/processing.py get_conds: the hires pass's conds during the hires pass."""
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return self.c, self.uc

    def close(self):
        self.sampler = None
        self.c = self.uc = None

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        n = self.batch_size * self.n_iter
        self.all_prompts = [self.prompt] * n if isinstance(self.prompt, str) else list(self.prompt)
        self.all_negative_prompts = [self.negative_prompt] * n
        self.all_seeds = [self.seed + i for i in range(n)]

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def encode(self, prompts):
        return self.sd_model.get_learned_conditioning(list(prompts))

    def get_conds_with_caching(self, prompts, steps, caches, hires_steps=None):
        """processing.get_conds_with_caching: the cached object itself when `cached_params` match (prompts,
        steps, the model, size, emphasis, extra networks), else get_multicond_learned_conditioning (AND)."""
        key = (tuple(prompts), steps, hires_steps, self.sd_model, self.width, self.height, shared.opts.emphasis,
               repr(getattr(self, 'extra_network_data', None)))
        for cache in caches:
            if cache[0] is not None and cache[0] == key:
                return cache[1]
        caches[0][1] = prompt_parser.get_multicond_learned_conditioning(self.sd_model, list(prompts), steps)
        caches[0][0] = key
        return caches[0][1]

    def setup_conds(self):
        # modules/processing.py setup_conds: uc from get_learned_conditioning, c from
        # get_multicond_learned_conditioning (AND), cached; Forge skips the uc when cfg_scale == 1 (`self.uc = None`).
        forge_cfg1 = hasattr(self.sd_model, 'forge_objects') and self.cfg_scale == 1
        self.uc = None if forge_cfg1 else self.encode(self.negative_prompts)
        self.c = self.get_conds_with_caching(self.prompts, self.steps, [StableDiffusionProcessing.cached_c])

    def noise(self, shape):
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds])

    def reset_forge_objects(self):
        if hasattr(self.sd_model, 'forge_objects'):
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, *args, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, hr_prompt='',
                 firstpass_image=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.hr_prompt, self.firstpass_image = hr_prompt, firstpass_image
        self.hr_prompts = None
        self.cached_hr_c = [None, None]

    def setup_prompts(self):
        super().setup_prompts()
        if self.enable_hr:
            self.all_hr_prompts = [self.hr_prompt or p for p in self.all_prompts]

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
            self.extra_generation_params['Denoising strength'] = self.denoising_strength

    def parse_extra_network_prompts(self):
        super().parse_extra_network_prompts()
        if self.enable_hr:
            n = self.iteration * self.batch_size
            self.hr_prompts = self.all_hr_prompts[n:n + self.batch_size]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)

    def setup_conds(self):
        super().setup_conds()
        if self.enable_hr:
            self.hr_uc = self.encode(self.negative_prompts)
            self.hr_c = self.get_conds_with_caching(self.hr_prompts, self.steps, [self.cached_hr_c, self.cached_c],
                                                    hires_steps=self.hr_second_pass_steps or self.steps)

    def sample(self, conditioning, unconditional_conditioning):
        self.sampler = sd_samplers.create_sampler(self.sd_model)
        if self.firstpass_image is not None and self.enable_hr:  # the "Hires fix" quick button
            samples = self.sd_model.encode_image(self.firstpass_image)
        else:
            x = self.noise((4, self.height // 8, self.width // 8))
            self.reset_forge_objects()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning,
                                                           uc=unconditional_conditioning)
            if self.modified_noise is not None:
                x, self.modified_noise = self.modified_noise, None
            samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                          image_conditioning=None)
            if not self.enable_hr:
                return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        samples = F.interpolate(samples, size=(self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8),
                                mode='nearest')
        self.sampler = sd_samplers.create_sampler(self.sd_model)
        noise = self.noise(samples.shape[1:])
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        if hasattr(self.sd_model, 'forge_objects'):
            self.reset_forge_objects()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c,
                                                           uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps)
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    is_img2img = True

    def __init__(self, *args, init_images=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_images = init_images

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.init_latent = self.sd_model.encode_image(self.init_images[0])

    def sample(self, conditioning, unconditional_conditioning):
        self.sampler = sd_samplers.create_sampler(self.sd_model)
        x = self.noise(self.init_latent.shape[1:])
        self.reset_forge_objects()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent.repeat(len(self.seeds), 1, 1, 1), x,
                                           conditioning, unconditional_conditioning)


def create_infotext(p, index):
    params = {'Steps': p.steps, 'CFG scale': p.cfg_scale, 'Seed': p.all_seeds[index],
              'Size': f'{p.width}x{p.height}', **p.extra_generation_params}
    line = ', '.join(f'{k}: {infotext_utils.quote(v)}' for k, v in params.items() if v is not None)
    return f'{p.all_prompts[index]}\nNegative prompt: {p.all_negative_prompts[index]}\n{line}'


def process_images(p):
    """Overrides applied after before_process and restored afterwards, even when processing fails."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = {k: shared.opts.data.get(k, shared.opts.get_default(k)) for k in p.override_settings}
    try:
        for k, v in p.override_settings.items():
            shared.opts.set(k, v, is_api=True, run_callbacks=False)
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored.items():
                shared.opts.set(k, v)


def process_images_inner(p):
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    p.applied_emphasis = shared.opts.emphasis
    with torch.inference_mode():
        p.init(p.all_prompts, p.all_seeds, None)
        images, infotexts = [], []
        for n in range(p.n_iter):
            p.iteration = n
            if shared.state.interrupted:
                break
            if hasattr(p.sd_model, 'forge_objects'):
                p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=[])
            p.parse_extra_network_prompts()
            p.sd_model.activate_extra_networks(p, p.extra_network_data)
            p.reset_forge_objects()
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=[])
            p.setup_conds()
            samples = p.sample(p.c, p.uc)
            decoded = p.sd_model.decode_first_stage(samples)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, decoded, batch_number=n)
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            for i in range(len(decoded)):
                images.append(decoded[i])
                infotexts.append(create_infotext(p, n * p.batch_size + i))
    res = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
