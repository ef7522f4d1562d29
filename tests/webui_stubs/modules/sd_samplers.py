"""An Euler sampler with each host's CFG denoiser layout (host-integration.md section 3.4):
- A1111: on_cfg_denoiser, then one UNet call with cond rows first when cond/uncond lengths are equal, otherwise
  a cond call and a separate uncond call; `sd_model.apply_model(x, t, context)`.
- Forge: on_cfg_denoiser, then `[uncond, cond]` in one call (cond_or_uncond [1, 0]) when the lengths are equal or
  their LCM is at most 4x the shorter (each context tiled to the LCM), separate calls otherwise; the UnetPatcher
  read from `p.sd_model.forge_objects.unet` when sampling starts; transformer_options carry cond_or_uncond,
  cond_indices, uncond_indices, cond_mark and sigmas.
Interrupts raise InterruptedException in the denoiser; the sampler returns the last latent. The cond is the
MulticondLearnedConditioning of processing.setup_conds, stacked per step (prompt_parser.reconstruct_multicond_batch)."""
import math

import torch

from modules import prompt_parser, script_callbacks, sd_samplers_common, shared


def create_sampler(sd_model):
    return Sampler(sd_model)


def _timesteps(sigma):
    return sigma * 100.0


class A1111CFGDenoiser:
    def __init__(self, sampler):
        self.sampler, self.p, self.step = sampler, None, 0

    def inner(self, x, sigma, context):
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0)
        eps = self.p.sd_model.apply_model(x * c_in[:, None, None, None], _timesteps(sigma), context)
        return x - eps * sigma[:, None, None, None]

    def callbacks(self, x, sigma, uncond, cond):
        """Interrupt check and on_cfg_denoiser; the callbacks may replace text_cond / text_uncond."""
        if shared.state.interrupted or shared.state.skipped:
            raise sd_samplers_common.InterruptedException
        params = script_callbacks.CFGDenoiserParams(x, None, sigma, shared.state.sampling_step,
                                                    shared.state.sampling_steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        return params.text_cond, params.text_uncond

    def forward(self, x, sigma, uncond, cond, cond_scale):
        cond, uncond = self.callbacks(x, sigma, uncond, cond)
        b = x.shape[0]
        if cond.shape[1] == uncond.shape[1]:  # batch_cond_uncond: one call, cond rows first
            out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]))
            out_cond, out_uncond = out[:b], out[b:]
        else:
            out_cond = self.inner(x, sigma, cond)
            out_uncond = self.inner(x, sigma, uncond)
        self.step += 1
        return out_uncond + (out_cond - out_uncond) * cond_scale


class ForgeCFGDenoiser(A1111CFGDenoiser):
    def unet_call(self, x, sigma, context, cond_or_uncond):
        unet = self.sampler.unet_patcher
        b = x.shape[0] // len(cond_or_uncond)
        options = dict(unet.model_options.get('transformer_options', {}))
        options['cond_or_uncond'] = list(cond_or_uncond)
        options['sigmas'] = sigma
        options['cond_mark'] = torch.tensor([c for c in cond_or_uncond for _ in range(b)], dtype=x.dtype)
        options['cond_indices'] = [i * b + j for i, c in enumerate(cond_or_uncond) if c == 0 for j in range(b)]
        options['uncond_indices'] = [i * b + j for i, c in enumerate(cond_or_uncond) if c == 1 for j in range(b)]
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0)
        eps = unet.model.apply_model(x * c_in[:, None, None, None], _timesteps(sigma), context, options)
        return x - eps * sigma[:, None, None, None]

    def forward(self, x, sigma, uncond, cond, cond_scale):
        cond, uncond = self.callbacks(x, sigma, uncond, cond)
        b = x.shape[0]
        lc, lu = cond.shape[1], uncond.shape[1]
        lcm = lc * lu // math.gcd(lc, lu)
        if lcm // min(lc, lu) <= 4:  # concatenable: tiled to the LCM, uncond rows first
            context = torch.cat([uncond.repeat(1, lcm // lu, 1), cond.repeat(1, lcm // lc, 1)])
            out = self.unet_call(torch.cat([x, x]), torch.cat([sigma, sigma]), context, [1, 0])
            out_uncond, out_cond = out[:b], out[b:]
        else:
            out_cond = self.unet_call(x, sigma, cond, [0])
            out_uncond = self.unet_call(x, sigma, uncond, [1])
        self.step += 1
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

    def launch_sampling(self, p, x, sigmas, cond, uncond):
        self.model_wrap_cfg.p = p
        if self.forge:
            self.unet_patcher = p.sd_model.forge_objects.unet
        shared.state.sampling_steps = len(sigmas) - 1
        self.last_latent = x
        try:
            for i in range(len(sigmas) - 1):
                shared.state.sampling_step = i
                sigma = sigmas[i] * x.new_ones(x.shape[0])
                step_cond = prompt_parser.reconstruct_multicond_batch(cond, i)  # as CFGDenoiser.forward
                denoised = self.model_wrap_cfg.forward(x, sigma, uncond, step_cond, p.cfg_scale)
                self.last_latent = denoised
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        except sd_samplers_common.InterruptedException:
            return self.last_latent
        return x
