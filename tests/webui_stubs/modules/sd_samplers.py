"""An Euler sampler with each host's CFG denoiser layout (host-integration.md section 3.4):
- A1111: on_cfg_denoiser, then one UNet call with cond rows first when cond/uncond lengths are equal, otherwise
  a cond call and a separate uncond call; `sd_model.apply_model(x, t, context)`.
- Forge (also Neo, Classic, reForge: their samplers are ComfyUI's): on_cfg_denoiser, then `[uncond, cond]` in one
  call (cond_or_uncond [1, 0]) when the lengths are equal or their LCM is at most 4x the shorter (each context tiled
  to the LCM), separate calls otherwise; the UnetPatcher
  read from `p.sd_model.forge_objects.unet` when sampling starts; transformer_options carry cond_or_uncond and
  sigmas, and in the backend hosts cond_indices, uncond_indices and cond_mark (the stub patcher's
  `labels_rows_by_index`).
Interrupts raise InterruptedException in the denoiser; the sampler returns the last latent."""
import functools
import math

import torch

from modules import prompt_parser, script_callbacks, sd_samplers_common, shared


def create_sampler(sd_model):
    return Sampler(sd_model)


def _timesteps(sigma):
    return sigma * 100.0


def _cat(conds):
    """modules/sd_samplers_cfg_denoiser.py catenate_conds (SDXL conds are dicts)."""
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([x[key] for x in conds]) for key in conds[0].keys()}


def _sub(cond, a, b):
    """sd_samplers_cfg_denoiser.subscript_cond."""
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


def _crossattn(cond):
    return cond['crossattn'] if isinstance(cond, dict) else cond


def _with_crossattn(cond, tensor):
    if isinstance(cond, dict):
        return prompt_parser.DictWithShape({**cond, 'crossattn': tensor})
    return tensor


class A1111CFGDenoiser:
    def __init__(self, sampler):
        # modules/sd_samplers_cfg_denoiser.py CFGDenoiser.__init__ (both hosts): `step` counts the calls of this
        # denoiser (`self.step += 1` at the end of forward), `total_steps` is set by Sampler.launch_sampling.
        self.sampler, self.p, self.step = sampler, None, 0
        self.steps = self.total_steps = None
        self.image_cfg_scale = None  # KDiffusionSampler.initialize: getattr(p, 'image_cfg_scale', None)

    def update_inner_model(self):
        """CFGDenoiser.update_inner_model: the sampler's conds from the (new) model."""
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args['cond'] = c
        self.sampler.sampler_extra_args['uncond'] = uc

    def refiner(self, cond, uncond):
        """The first lines of CFGDenoiser.forward (both hosts)."""
        if shared.state.interrupted or shared.state.skipped:
            raise sd_samplers_common.InterruptedException
        if sd_samplers_common.apply_refiner(self):
            return self.sampler.sampler_extra_args['cond'], self.sampler.sampler_extra_args['uncond']
        return cond, uncond

    def inner(self, x, sigma, context):
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0)
        eps = self.p.sd_model.apply_model(x * c_in[:, None, None, None], _timesteps(sigma), context)
        return x - eps * sigma[:, None, None, None]

    def callbacks(self, x, sigma, uncond, cond):
        """on_cfg_denoiser; the callbacks may replace x, sigma, text_cond and text_uncond."""
        params = script_callbacks.CFGDenoiserParams(x, None, sigma, shared.state.sampling_step,
                                                    shared.state.sampling_steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        return params

    def pad_cond_uncond(self, cond, uncond):
        """CFGDenoiser.pad_cond_uncond: the shorter one gets empty-prompt chunks appended."""
        empty = self.p.sd_model.cond_stage_model_empty_prompt
        num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]

        def pad(c, repeats):  # pad_cond: on 'crossattn' for SDXL dicts
            t = _crossattn(c)
            return _with_crossattn(c, torch.cat([t, empty.repeat((t.shape[0], repeats, 1))], axis=1))
        if num_repeats < 0:
            cond = pad(cond, -num_repeats)
        elif num_repeats > 0:
            uncond = pad(uncond, num_repeats)
        return cond, uncond

    @staticmethod
    def pad_cond_uncond_v0(cond, uncond):
        """CFGDenoiser.pad_cond_uncond_v0: uncond's last vector repeated, or uncond truncated, to cond's length."""
        vec = _crossattn(uncond)
        if vec.shape[1] < cond.shape[1]:
            vec = torch.hstack([vec, vec[:, -1:].repeat([1, cond.shape[1] - vec.shape[1], 1])])
        elif vec.shape[1] > cond.shape[1]:
            vec = vec[:, :cond.shape[1]]
        return cond, _with_crossattn(uncond, vec)

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond=0.0):
        """The row layout of A1111 1.10's modules/sd_samplers_cfg_denoiser.py CFGDenoiser.forward, line for line
        (its image_cond / c_concat and mask blending left out: the tiny UNet takes no extra channels)."""
        cond, uncond = self.refiner(cond, uncond)
        opts = shared.opts
        is_edit_model = getattr(self.p.sd_model, 'cond_stage_key', None) == 'edit' \
            and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)]
                         + [x] + ([x] if is_edit_model else []))
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)]
                             + [sigma] + ([sigma] if is_edit_model else []))
        params = self.callbacks(x_in, sigma_in, uncond, tensor)
        x_in, sigma_in, tensor, uncond = params.x, params.sigma, params.text_cond, params.text_uncond
        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond \
                and not is_edit_model:
            skip_uncond = True
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]
        # padding comes after the callback: the callback sees the unpadded lengths
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)
        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            if is_edit_model:
                cond_in = _cat([tensor, uncond, uncond])
            elif skip_uncond:
                cond_in = tensor
            else:
                cond_in = _cat([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner(x_in, sigma_in, cond_in)
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner(x_in[a:b], sigma_in[a:b], _sub(cond_in, a, b))
        else:
            x_out = torch.zeros_like(x_in)
            batch_size = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], batch_size):
                b = min(a + batch_size, tensor.shape[0])
                x_out[a:b] = self.inner(x_in[a:b], sigma_in[a:b], _sub(tensor, a, b))
            if not skip_uncond:
                x_out[-uncond.shape[0]:] = self.inner(x_in[-uncond.shape[0]:], sigma_in[-uncond.shape[0]:], uncond)
        denoised_image_indexes = [c[0][0] for c in conds_list]
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])])
        if is_edit_model:  # CFGDenoiser.combine_denoised_for_edit_model
            out_cond, out_img_cond, out_uncond = x_out.chunk(3)
            denoised = out_uncond + cond_scale * (out_cond - out_img_cond) \
                + self.image_cfg_scale * (out_img_cond - out_uncond)
        else:  # CFGDenoiser.combine_denoised
            scale = 1.0 if skip_uncond else cond_scale
            denoised_uncond = x_out[-uncond.shape[0]:]
            denoised = torch.clone(denoised_uncond)
            for i, conds in enumerate(conds_list):
                for cond_index, weight in conds:
                    denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * scale)
        self.step += 1
        return denoised


class ForgeCFGDenoiser(A1111CFGDenoiser):
    free_memory = float('inf')  # what backend/memory_management.get_free_memory reports (tests lower it)
    memory_per_row = 1.0        # the UNet's memory_required(input_shape) per batch row

    def unet_call(self, x, sigma, context, cond_or_uncond):
        # backend/sampling/sampling_function.py sampling_function: the UnetPatcher is read at every call from
        # `self.inner_model.inner_model.forge_objects.unet`, the inner model being shared.sd_model
        # (CFGDenoiserKDiffusion.inner_model)
        unet = self.sampler.unet_patcher = shared.sd_model.forge_objects.unet
        b = x.shape[0] // len(cond_or_uncond)
        options = dict(unet.model_options.get('transformer_options', {}))
        options['cond_or_uncond'] = list(cond_or_uncond)
        options['sigmas'] = sigma
        if unet.labels_rows_by_index:  # the backend hosts; ldm_patched's calc_cond_batch sets cond_or_uncond only
            options['cond_mark'] = torch.tensor([c for c in cond_or_uncond for _ in range(b)], dtype=x.dtype)
            options['cond_indices'] = [i * b + j for i, c in enumerate(cond_or_uncond) if c == 0 for j in range(b)]
            options['uncond_indices'] = [i * b + j for i, c in enumerate(cond_or_uncond) if c == 1 for j in range(b)]
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0)
        eps = unet.model.apply_model(x * c_in[:, None, None, None], _timesteps(sigma), context, options)
        return x - eps * sigma[:, None, None, None]

    @staticmethod
    def can_concat(a, b):
        """backend/sampling/condition.py ConditionCrossAttn.can_concat: lengths whose LCM is <= 4x the shorter."""
        la, lb = a.shape[1], b.shape[1]
        lcm = la * lb // math.gcd(la, lb)
        return lcm // min(la, lb) <= 4

    def calc_cond_uncond_batch(self, x, sigma, cond, uncond):
        """backend/sampling/sampling_function.py calc_cond_uncond_batch: to_run = [(cond, COND), (uncond, UNCOND)]
        (uncond left out when it is None); concatenable items are taken in reverse order, as many as fit in
        free memory (halving until they do), each context tiled to the LCM length (ConditionCrossAttn.concat)."""
        to_run = [(_crossattn(cond), 0)] + ([(_crossattn(uncond), 1)] if uncond is not None else [])
        out = {}
        while to_run:
            first = to_run[0][0]
            to_batch_temp = [i for i in range(len(to_run)) if self.can_concat(to_run[i][0], first)]
            to_batch_temp.reverse()
            to_batch = to_batch_temp[:1]
            for i in range(1, len(to_batch_temp) + 1):
                batch_amount = to_batch_temp[:len(to_batch_temp) // i]
                if len(batch_amount) * x.shape[0] * self.memory_per_row < self.free_memory:
                    to_batch = batch_amount
                    break
            items = [to_run.pop(i) for i in to_batch]
            lengths = [c.shape[1] for c, _ in items]
            lcm = functools.reduce(lambda a, b: a * b // math.gcd(a, b), lengths)
            context = torch.cat([c.repeat(1, lcm // c.shape[1], 1) for c, _ in items])
            labels = [label for _, label in items]
            chunks = self.unet_call(torch.cat([x] * len(items)), torch.cat([sigma] * len(items)), context,
                                    labels).chunk(len(items))
            for label, chunk in zip(labels, chunks):
                out[label] = chunk
        return out.get(0), out.get(1)

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond=0.0):
        """modules/sd_samplers_cfg_denoiser.py (Forge) CFGDenoiser.forward -> sampling_function: the callback
        gets the unpadded conds; skip-early-CFG / NGMS set cond_scale 1; sampling_function_inner drops the
        uncond at cond_scale 1 (the cfg1 optimisation)."""
        cond, uncond = self.refiner(cond, uncond)
        _, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        params = self.callbacks(x, sigma, uncond, cond)
        opts = shared.opts
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
        uncond = None if math.isclose(cond_scale, 1.0) else params.text_uncond
        out_cond, out_uncond = self.calc_cond_uncond_batch(params.x, params.sigma, params.text_cond, uncond)
        self.step += 1
        if out_uncond is None:
            return out_cond
        return out_uncond + (out_cond - out_uncond) * cond_scale


class Sampler:
    def __init__(self, sd_model):
        self.forge = hasattr(sd_model, 'forge_objects')
        self.model_wrap_cfg = (ForgeCFGDenoiser if self.forge else A1111CFGDenoiser)(self)
        self.last_latent = None
        self.unet_patcher = None

    @staticmethod
    def get_sigmas(steps):
        return torch.linspace(3.0, 0.0, steps + 1)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        sigmas = self.get_sigmas(steps or p.steps)
        return self.launch_sampling(p, x * sigmas[0], sigmas, conditioning, unconditional_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigma_sched = self.get_sigmas(steps)[steps - t_enc - 1:]
        return self.launch_sampling(p, x + noise * sigma_sched[0], sigma_sched, conditioning,
                                    unconditional_conditioning)

    def callback_state(self, d):
        # modules/sd_samplers_common.py Sampler.callback_state (both hosts): k-diffusion calls it AFTER step i
        # (k_diffusion/sampling.py sample_euler: `callback({'i': i, ...})` follows the denoiser call), so during
        # step i >= 1 `state.sampling_step` (what on_cfg_denoiser reports) is still i - 1.
        shared.state.sampling_step = d['i']

    def launch_sampling(self, p, x, sigmas, cond, uncond):
        self.model_wrap_cfg.p = p
        self.sampler_extra_args = {'cond': cond, 'uncond': uncond}
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)  # KDiffusionSampler.initialize
        if self.forge:
            self.unet_patcher = p.sd_model.forge_objects.unet
        # modules/sd_samplers_common.py Sampler.launch_sampling: steps and the expected denoiser calls
        # (SamplerData.total_steps: steps for a first-order sampler like this Euler), then step 0.
        steps = len(sigmas) - 1
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps
        shared.state.sampling_steps = steps
        shared.state.sampling_step = 0
        self.last_latent = x
        try:
            for i in range(steps):  # k_diffusion/sampling.py sample_euler
                sigma = sigmas[i] * x.new_ones(x.shape[0])
                denoised = self.model_wrap_cfg.forward(x, sigma, uncond, cond, p.cfg_scale,
                                                      getattr(p, 's_min_uncond', 0.0))
                self.last_latent = denoised
                self.callback_state({'i': i, 'sigma': sigmas[i], 'denoised': denoised})
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        except sd_samplers_common.InterruptedException:
            return self.last_latent
        return x
