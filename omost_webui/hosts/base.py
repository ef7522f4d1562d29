"""What the generation steps need from the WebUI they run in. One subclass per host family (see
`omost_webui.hosts`); generation code calls these methods and never asks which host it is on."""

from __future__ import annotations


def crossattn(cond):
    """The cross-attention context of a cond: SDXL's are {'crossattn': (B, T, C), 'vector': ...} in every host."""
    return cond.get('crossattn') if isinstance(cond, dict) else cond


class Host:
    family = 'unknown'

    @classmethod
    def matches(cls, sd_model) -> bool:
        """Whether `sd_model` is this family's model, told by the objects it has (never by a version string)."""
        raise NotImplementedError

    def diffusion_model(self, sd_model):
        """The UNet module whose `...attn2` layers the regions act on."""
        raise NotImplementedError

    def tokenize_line(self, sd_model):
        """The host's `tokenize_line(line) -> (chunks, token_count)` for this model's CLIP(-L) text encoder, set up
        as the coming encode will be; None when the model has no CLIP text encoder the extension knows."""
        raise NotImplementedError

    def apply_regions(self, p, job, regional):
        """Make the model that samples next (this pass, or the rest of it after a model switch) run `regional`
        (a lib_omost.attention.RegionalAttention) in its attn2 layers. What it attaches is kept in `job.attached`;
        calling it again for the same pass and model changes nothing."""
        raise NotImplementedError

    def remove_regions(self, job):
        """Take off what apply_regions attached for this job (the coming pass runs without regions)."""
        job.attached = None

    def on_cfg_denoiser(self, job, params):
        """Per denoiser step, after the job's RegionalAttention got its progress (the global on_cfg_denoiser)."""

    def cond_token_count(self, text_cond) -> int:
        """Token length of an on_cfg_denoiser text_cond (tensor or SDXL dict) as the UNet's attn2 will see it."""
        return int(crossattn(text_cond).shape[1])

    @classmethod
    def release_all(cls):
        """Remove everything of ours this family may still have attached to any model (idempotent, cheap):
        between jobs, at a model load, at script unload, after a job that died."""
