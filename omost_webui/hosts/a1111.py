"""AUTOMATIC1111 1.10 (`ldm` / `sgm` models, modules/sd_hijack.py): regional cross-attention through instance-level
`attn2.forward` hooks. The host family class, `A1111Host`, is at the end.

A1111 installs its attention optimisations as CLASS attributes (`CrossAttention.forward = ...`), so an instance
attribute on each `attn2` module shadows them and `del module.forward` brings them back. Nothing here touches a
class. Every hooked module is kept in a module-level registry, so `remove_all()` can clean up from anywhere
(postprocess, the next generation, model load, script unload), also after a generation died with an exception.

A hook acts only while its owner is armed; otherwise it calls the forward it shadows, so the host's own
attention runs unchanged. A1111 passes no cond/uncond labels: `on_cfg_denoiser` records how many rows are cond
and a forward pre-hook on the diffusion model counts the rows of each UNet call. A1111's CFGDenoiser lays x_in out
as [cond rows, uncond rows] and sends them in order (one call, or chunks), so the rows of a call with an index
below n_cond are cond. Cond rows get regional attention, the others the host's own forward.

sd-webui-controlnet's IP-Adapter shadows the same attn2.forward (see `_ip_adapter_terms`): where it is on, the
hooks add its image prompt terms to the rows they compute, and go back on top of it when it hooked after them.

No `modules` import at module level: this file is imported in tests and in every host (`omost_webui.hosts`).
"""

from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F

from lib_omost.attention import attend
from omost_webui.host_tokenizer import clip_tokenize_line
from omost_webui.hosts.base import Host, crossattn

log = logging.getLogger(__name__)

CONTROLNET_MARK = 1024.0  # sd-webui-controlnet prepends a token of +-1024 to mark cond / uncond contexts

_hooked = weakref.WeakKeyDictionary()  # attn2 module -> [our forwards installed on it, oldest first]
_pre_hooks = []                         # (owner, RemovableHandle) of the diffusion-model pre-hooks
_armed = None                           # the one A1111RegionalHooks whose hooks may act


def remove_all():
    """Disarm and remove every hook this module ever installed (idempotent)."""
    global _armed
    _armed = None
    for module in list(_hooked):
        _unhook(module)
    for owner, handle in _pre_hooks:
        handle.remove()
    _pre_hooks.clear()


def _unhook(module, owner=None):
    """Take our forwards off `module` (those of `owner` only, when given), newest first, as far as they are on top.
    One that another extension shadowed stays registered and comes off when it is back on top: sd-webui-controlnet
    keeps the forward it shadowed and puts it back in its postprocess (plugable_ipadapter.py: clear_all_ip_adapter)."""
    ours = _hooked.get(module, [])
    while True:
        current = module.__dict__.get('forward')
        if current not in ours or (owner is not None and current.omost_owner is not owner):
            break
        if current.omost_previous is None:
            del module.forward
        else:
            module.forward = current.omost_previous
        ours.remove(current)
    if ours and current not in ours and not _ip_adapter_terms(module):
        # The forward we shadowed was put back over ours by its owner (no IP-Adapter left): ours are off the chain.
        ours.clear()
    if not ours:
        _hooked.pop(module, None)


def _host_hypernetworks():
    """A1111's hypernetwork context function (context -> (context_k, context_v)), or None outside A1111."""
    try:
        from modules import shared
        from modules.hypernetworks import hypernetwork
    except ImportError:
        return None
    return lambda context, layer=None: hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context, layer)


def _marked(cond) -> int:
    """1 when sd-webui-controlnet prepended its marker token to this context, else 0."""
    if cond is None or cond.shape[1] < 2:
        return 0
    first = cond[:, 0, :].detach().float()
    return int(bool(((first.abs() - CONTROLNET_MARK).abs() < 1e-3).all()))


def cond_token_count(cond) -> int:
    """Token length of an on_cfg_denoiser text_cond (tensor or SDXL dict), without ControlNet's mark."""
    cond = crossattn(cond)
    return int(cond.shape[1]) - _marked(cond)


def _ip_adapter_terms(module):
    """sd-webui-controlnet's IP-Adapter functions on this attn2 (empty when it has none).

    Its `hack_blk` (scripts/ipadapter/plugable_ipadapter.py) shadows attn2.forward with `attn_forward_hacked`:
    plain SDPA of q, k, v, then `out = out + f(self, x, q)` for every f in `module.ipadapter_hacks`, then to_out.
    Each f attends q to its image prompt tokens, cond or uncond per row from the UNet call's `cond_mark`, so it
    needs every row of the call."""
    return tuple(getattr(module, 'ipadapter_hacks', None) or ())


class A1111RegionalHooks:
    """The attn2 hooks of one generation, driven by a `lib_omost.attention.RegionalAttention`."""

    def __init__(self, regional, context_kv=None):
        self.regional = regional
        self.context_kv = context_kv  # context -> (context_k, context_v); None: A1111's hypernetworks, if any
        self.n_cond = None            # cond rows of the current denoiser step (text_cond.shape[0])
        self.cond_length = None       # L_c, L_u: token lengths seen by the denoiser, without ControlNet's mark
        self.uncond_length = None
        self._rows_seen = 0           # rows of x_in already sent to the UNet in this denoiser step
        self._call_rows = None        # (first row, rows) of the running UNet call
        self._said = set()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def install(self, diffusion_model, arm: bool = True) -> int:
        """Hook every `...attn2` CrossAttention under the diffusion model; returns how many were hooked."""
        if self.context_kv is None:
            self.context_kv = _host_hypernetworks()
        count = 0
        for name, module in diffusion_model.named_modules():
            if name.rsplit('.', 1)[-1] == 'attn2' and type(module).__name__ == 'CrossAttention':
                self._hook(module)
                count += 1
        handle = diffusion_model.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        _pre_hooks.append((self, handle))
        if arm:
            self.arm()
        return count

    def arm(self):
        global _armed
        _armed = self

    def disarm(self):
        global _armed
        if _armed is self:
            _armed = None

    @property
    def armed(self) -> bool:
        return _armed is self

    def remove(self):
        self.disarm()
        for module in list(_hooked):
            _unhook(module, owner=self)
        for entry in [e for e in _pre_hooks if e[0] is self]:
            entry[1].remove()
            _pre_hooks.remove(entry)

    def _hook(self, module):
        """Put our forward on top of `module`'s, whatever is there (the class's, an IP-Adapter's, an old one)."""
        _unhook(module)
        previous = module.__dict__.get('forward')
        owner = self

        def forward(x, context=None, mask=None, **kwargs):
            return owner._forward(module, previous, x, context, mask, kwargs)

        forward.omost_owner = self
        forward.omost_previous = previous
        module.forward = forward
        _hooked.setdefault(module, []).append(forward)

    def _retake_shadowed(self):
        """sd-webui-controlnet's IP-Adapter hooked after us: its attn_forward_hacked shadows our forward and never
        calls it (plugable_ipadapter.py: hack_blk), so regions would be off. Go back on top of it; _forward then
        adds its image prompt terms itself."""
        for module, ours in list(_hooked.items()):
            current = module.__dict__.get('forward')
            if ours and ours[-1].omost_owner is self and current is not ours[-1] and _ip_adapter_terms(module):
                self._hook(module)

    # -- per step and per UNet call ----------------------------------------------------------------------

    def on_cfg_denoiser(self, params):
        """Called from A1111's on_cfg_denoiser callback before the UNet calls of every sampling step."""
        cond, uncond = crossattn(params.text_cond), crossattn(params.text_uncond)
        self.n_cond = int(cond.shape[0])
        self.cond_length = cond_token_count(cond)
        self.uncond_length = None if uncond is None else cond_token_count(uncond)
        self._rows_seen = 0
        self._call_rows = None
        if self.cond_length != self.regional.cond_length:
            self._say(f'the cond has {self.cond_length} tokens but the region map {self.regional.cond_length}; '
                      'plain attention')

    def _before_unet(self, module, args, kwargs):
        if _armed is not self:
            return
        x = args[0] if args else kwargs.get('x')
        if not torch.is_tensor(x) or x.dim() != 4:
            self._call_rows = None
            return
        self._retake_shadowed()
        self._call_rows = (self._rows_seen, int(x.shape[0]))
        self._rows_seen += int(x.shape[0])
        self.regional.set_latent_size(int(x.shape[-2]), int(x.shape[-1]))

    def _say(self, message):
        if message not in self._said:
            self._said.add(message)
            log.warning('Omost: %s', message)

    def _cond_row_count(self, x, context, mask, kwargs) -> int:
        """How many leading rows of this attn2 call are cond rows that get regions (0: all plain)."""
        if _armed is not self or context is None or mask is not None or x.dim() != 3:
            return 0
        if kwargs.get('additional_tokens') is not None or kwargs.get('n_times_crossframe_attn_in_self'):
            return 0
        if not self.regional.active or self.n_cond is None or self._call_rows is None:
            return 0
        if self.cond_length != self.regional.cond_length or context.shape[1] < self.cond_length:
            return 0  # not the region prompt (uncond-only call, other prompt, bug upstream)
        first, rows = self._call_rows
        if x.shape[0] != rows or context.shape[0] != rows:
            return 0  # not the UNet call the pre-hook saw
        return min(max(self.n_cond - first, 0), rows)

    def _forward(self, module, previous, x, context, mask, kwargs):
        def plain(x_, context_):
            if previous is not None:
                return previous(x_, context=context_, mask=mask, **kwargs)
            return type(module).forward(module, x_, context=context_, mask=mask, **kwargs)

        n_cond = self._cond_row_count(x, context, mask, kwargs)
        if n_cond == 0:
            return plain(x, context)
        ip_terms = _ip_adapter_terms(module)
        x_q = x if ip_terms else x[:n_cond]  # IP-Adapter's terms need the query of every row of the call
        context_cond = context[:n_cond]
        context_k, context_v = self.context_kv(context_cond) if self.context_kv else (context_cond, context_cond)
        # The module's own projections, so LoRA (weight patches or functional forwards) applies.
        q, k, v = module.to_q(x_q), module.to_k(context_k), module.to_v(context_v)
        rows, pixels, heads = q.shape[0], q.shape[1], module.heads
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        # attend() computes fp16/bf16 in float32 (what A1111's upcast_attn asks for) and returns q's dtype.
        plan = self.regional.plan_for(pixels, k.shape[2], q.device, q.dtype, tiled=False)
        if plan is None:
            return plain(x, context)
        out = attend(q[:n_cond], k, v, plan).transpose(1, 2).reshape(n_cond, pixels, -1)
        if ip_terms:
            return module.to_out(self._with_ip_adapter(module, ip_terms, out, x, q, context, n_cond))
        out = module.to_out(out)
        if n_cond < x.shape[0]:
            out = torch.cat([out, plain(x[n_cond:], context[n_cond:])])
        return out

    @staticmethod
    def _with_ip_adapter(module, ip_terms, out_cond, x, q, context, n_cond):
        """The attention output (before to_out) of every row with IP-Adapter's image prompt terms added: what
        sd-webui-controlnet's attn_forward_hacked computes (plain SDPA, then `out + f(self, x, q)` per term),
        with the cond rows' attention regional."""
        if n_cond < x.shape[0]:
            rest = context[n_cond:]
            k, v = (t.reshape(t.shape[0], t.shape[1], module.heads, -1).transpose(1, 2)
                    for t in (module.to_k(rest), module.to_v(rest)))
            plain = F.scaled_dot_product_attention(q[n_cond:], k, v)
            out_cond = torch.cat([out_cond, plain.transpose(1, 2).reshape(plain.shape[0], plain.shape[2], -1)])
        for term in ip_terms:
            out_cond = out_cond + term(module, x, q)
        return out_cond


class A1111Host(Host):
    family = 'a1111'

    @classmethod
    def matches(cls, sd_model) -> bool:
        # modules/sd_models.py load_model: an ldm LatentDiffusion / sgm DiffusionEngine, whose `model` (DiffusionWrapper
        # / OpenAIWrapper) holds `diffusion_model`; the Forge families add `forge_objects` to theirs
        return not hasattr(sd_model, 'forge_objects') and hasattr(getattr(sd_model, 'model', None), 'diffusion_model')

    def diffusion_model(self, sd_model):
        return sd_model.model.diffusion_model

    def tokenize_line(self, sd_model):
        # modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line (reads opts.emphasis itself);
        # modules/sd_hijack.py puts it on cond_stage_model (SD1.x) and on conditioner.embedders[0] (SDXL)
        return clip_tokenize_line(sd_model)

    def apply_regions(self, p, job, regional):
        # A1111 keeps one model object between jobs, so hooks are armed for this job only and removed after it
        # (release_all); sd_hijack_optimizations.py sets CrossAttention.forward on the CLASS, our hooks shadow it.
        self.remove_regions(job)
        job.attached = A1111RegionalHooks(regional)
        job.attached.install(self.diffusion_model(p.sd_model))

    def remove_regions(self, job):
        if job.attached is not None:
            job.attached.remove()
        job.attached = None

    def on_cfg_denoiser(self, job, params):
        # modules/sd_samplers_cfg_denoiser.py CFGDenoiser.forward: the callback runs before the UNet calls of a step
        if job.attached is not None:
            job.attached.on_cfg_denoiser(params)

    def cond_token_count(self, text_cond) -> int:
        return cond_token_count(text_cond)  # without sd-webui-controlnet's mark token

    @classmethod
    def release_all(cls):
        remove_all()
