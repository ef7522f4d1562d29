"""Test rig for the WebUI hooks: tiny real models behind each host's documented interfaces.

- A1111: the real ldm UNetModel (stable-diffusion-sdkit, byte-identical attention to A1111's pinned ldm) under
  `sd_model.model.diffusion_model`, a text encoder whose `tokenize_line` follows A1111's chunking (real CLIP BPE,
  BREAK, escapes, emphasis, comma backtrack, Emphasis "None" skipping the parser), a fake VAE.
- Forge and Neo (the `backend` family), Forge Classic and reForge (the `ldm_patched` family): a UnetPatcher /
  forge_objects pair and a small UNet whose transformer blocks run attn2 exactly as their BasicTransformerBlock
  does (attn2_patch list, patches_replace["attn2"] looked up by (block, id, block_index) then (block, id), q/k/v
  projected before the replace patch, to_out after; unpatched attn2 runs the family's own attention function).
  The UnetPatchers are the family stubs: tests/webui_stubs/backend/patcher (Forge; Neo's clone semantics) and
  tests/webui_stubs/modules_forge/unet_patcher.py (Classic, reForge).
The fake `modules` package lives in tests/webui_stubs.
"""
import copy
import importlib.util
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(ROOT, 'tests', 'webui_stubs')
if STUBS not in sys.path:
    sys.path.insert(0, STUBS)

from lib_omost import clip_tokenizer  # noqa: E402


def _read_fixture(name):
    with open(os.path.join(ROOT, 'tests', 'fixtures', name), encoding='utf-8') as f:
        return f.read()

CONTEXT_DIM = 64

# ---------------------------------------------------------------------------------------------------------------
# Prompt parsing and chunking (A1111 prompt_parser.parse_prompt_attention + tokenize_line, as documented)

_RE_ATTENTION = re.compile(r'\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:', re.X)
_RE_BREAK = re.compile(r'\s*\bBREAK\b\s*', re.S)


def parse_prompt_attention(text):
    res, round_brackets, square_brackets = [], [], []

    def multiply(start, factor):
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _RE_ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith('\\'):
            res.append([token[1:], 1.0])
        elif token == '(':
            round_brackets.append(len(res))
        elif token == '[':
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), float(weight))
        elif token == ')' and round_brackets:
            multiply(round_brackets.pop(), 1.1)
        elif token == ']' and square_brackets:
            multiply(square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append(['BREAK', -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply(pos, 1.1)
    for pos in square_brackets:
        multiply(pos, 1 / 1.1)
    if not res:
        res = [['', 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1] and item[1] != -1 and merged[-1][1] != -1:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


class PromptChunk:
    def __init__(self):
        self.tokens, self.multipliers = [], []


class FakeClipEmbedder(nn.Module):
    """`tokenize_line(line) -> (chunks, token_count)` and `encode(prompts)` with A1111's per-chunk layout."""

    chunk_length = 75

    def __init__(self, seed=0, dim=CONTEXT_DIM):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Parameter(torch.randn(49408, dim, generator=g) * 0.5)
        self.position_embedding = nn.Parameter(torch.randn(77, dim, generator=g) * 0.1)
        self.comma_token = clip_tokenizer.encode(',')[0]

    def tokenize_line(self, line):
        from modules import shared
        if shared.opts.emphasis != 'None':
            parsed = parse_prompt_attention(line)
        else:
            parsed = [[line, 1.0]]
        chunks, chunk, token_count, last_comma = [], PromptChunk(), 0, -1

        def next_chunk(is_last=False):
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            pad = self.chunk_length - len(chunk.tokens)
            chunk.tokens = [clip_tokenizer.BOS_ID] + chunk.tokens + [clip_tokenizer.EOS_ID] * (pad + 1)
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * (pad + 1)
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for text, weight in parsed:
            if text == 'BREAK' and weight == -1:
                next_chunk()
                continue
            for token in clip_tokenizer.encode(text):
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif len(chunk.tokens) == self.chunk_length and last_comma != -1 \
                        and len(chunk.tokens) - last_comma <= 20:
                    cut = last_comma + 1
                    moved = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    next_chunk()
                    chunk.tokens, chunk.multipliers = list(moved[0]), list(moved[1])
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def encode(self, prompts):
        lines = [self.tokenize_line(p)[0] for p in prompts]
        n = max(len(chunks) for chunks in lines)
        rows = []
        for chunks in lines:
            chunks = chunks + [self.tokenize_line('')[0][0]] * (n - len(chunks))
            zs = []
            for c in chunks:
                z = self.token_embedding[torch.tensor(c.tokens)] + self.position_embedding
                zs.append(z * torch.tensor(c.multipliers)[:, None])
            rows.append(torch.cat(zs))
        return torch.stack(rows)


class FakeVAE(nn.Module):
    def __init__(self, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Parameter(torch.randn(4, 3, generator=g) * 0.5)
        self.dec = nn.Parameter(torch.randn(3, 4, generator=g) * 0.5)

    def encode(self, image):  # (B, 3, H, W) in -1..1
        return torch.einsum('oc,bchw->bohw', self.enc, F.avg_pool2d(image, 8))

    def decode(self, z):
        return torch.einsum('oc,bchw->bohw', self.dec, F.interpolate(z, scale_factor=8, mode='nearest'))


class _ModelBase(nn.Module):
    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self):
        super().__init__()
        self.vae = FakeVAE()
        self.activated = []  # extra-network data activated per batch, as the host's extra_networks.activate

    def activate_extra_networks(self, p, data):
        self.activated.append(data)

    def get_learned_conditioning(self, prompts):
        return self.embedder.encode(prompts)

    def encode_first_stage(self, image):
        return self.vae.encode(image)

    def get_first_stage_encoding(self, z):
        return z

    def decode_first_stage(self, z):
        return self.vae.decode(z)

    def encode_image(self, image):
        from modules import sd_samplers_common
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return sd_samplers_common.images_tensor_to_samples(array, None, self)


# ---------------------------------------------------------------------------------------------------------------
# A1111: the real ldm UNet


def tiny_ldm_unet(seed=0, context_dim=CONTEXT_DIM):
    """The tiny real ldm UNet of the attention tests, with its zero-initialised output projections given
    random weights: otherwise the attention (and so the regions) could not change the result."""
    from attention_helpers import tiny_unet
    unet = tiny_unet(seed=seed, context_dim=context_dim)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet


class A1111Model(_ModelBase):
    def __init__(self, unet, text_dim=CONTEXT_DIM):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.cond_stage_model = FakeClipEmbedder(dim=text_dim)
        self.embedder = self.cond_stage_model

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, context=cond)

    @property
    def cond_stage_model_empty_prompt(self):
        # modules/sd_models.py load_model: `sd_model.cond_stage_model_empty_prompt = get_empty_cond(sd_model)`,
        # the encoded empty prompt (1, 77, C) that CFGDenoiser.pad_cond_uncond appends
        return self.get_learned_conditioning([''])


class _SDXLConds:
    """SDXL text conditioning as both hosts return it: {'crossattn': (B, T, C), 'vector': (B, V)} (A1111
    sd_models_xl.get_learned_conditioning; Forge backend/diffusion_engine/sdxl.py). The tiny rig's crossattn is one
    CLIP-like encoder (the hosts concatenate CLIP-L and CLIP-G on the channels, same tokens) and the vector is
    zeros: the tiny UNets take no class embedding."""

    def get_learned_conditioning(self, prompts):
        from modules.prompt_parser import DictWithShape
        crossattn = self.embedder.encode(prompts)
        return DictWithShape({'crossattn': crossattn, 'vector': crossattn.new_zeros(crossattn.shape[0], 8)})


def tiny_sdxl_ldm_unet(seed=0):
    """A tiny UNet laid out like SDXL's: no attention at the first level, three levels (sgm itself is not on
    PyPI; ldm's SpatialTransformer cannot stack blocks on one context, so one block per level: Forge's rig has
    the deep stacks)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    unet = UNetModel(image_size=16, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(2, 4), use_spatial_transformer=True,
                     transformer_depth=1, context_dim=CONTEXT_DIM, num_head_channels=16,
                     use_linear_in_transformer=True, legacy=False)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return unet.eval()


def _a1111_sdxl_text(model):
    """A1111's SDXL text side (modules/sd_models_xl.py; Classic's and reForge's forge_loader.py keep it): the
    tokenizing CLIP-L is `conditioner.embedders[0]`, there is no cond_stage_model."""
    model.conditioner = nn.Module()
    model.conditioner.embedders = nn.ModuleList([model.embedder])
    del model.cond_stage_model


class A1111SDXLModel(_SDXLConds, A1111Model):
    """A1111's SDXL model: `conditioner.embedders[0]` tokenizes (FrozenCLIPEmbedderForSDXLWithCustomWords),
    conds are dicts, apply_model passes c['crossattn'] as the UNet's context (sgm OpenAIWrapper)."""
    is_sd1, is_sdxl = False, True

    def __init__(self, unet):
        super().__init__(unet)
        _a1111_sdxl_text(self)

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, context=cond['crossattn'])

    @property
    def cond_stage_model_empty_prompt(self):
        return self.get_learned_conditioning([''])['crossattn']


# ---------------------------------------------------------------------------------------------------------------
# Forge: UnetPatcher, forge_objects and a UNet with Forge's attn2 patch dispatch


class ForgeObjects:
    def __init__(self, unet, clip=None, vae=None, clipvision=None):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeCrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads, dim_head, family='forge'):
        super().__init__()
        self.heads, self.dim_head, self.family = heads, dim_head, family
        # reForge's layers carry a precision (ldm_patched/ldm/modules/attention.py CrossAttention.__init__
        # attn_precision; float32 for models that need upcasting): the stub gives the family's layers float32
        self.attn_precision = torch.float32 if family == 'forge-classic' else None
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def attention(self, q, k, v):
        if self.family == 'forge-classic':
            # ldm_patched/ldm/modules/attention.py CrossAttention.forward (reForge):
            # `optimized_attention(q, k, v, self.heads, attn_precision=self.attn_precision)`
            from ldm_patched.ldm.modules import attention
            return attention.optimized_attention(q, k, v, self.heads, attn_precision=self.attn_precision)
        # backend/nn/unet.py CrossAttention.forward: `out = attention_function(q, k, v, self.heads, mask)`
        from backend import attention
        return attention.attention_function(q, k, v, self.heads)

    def forward(self, x, context=None, value=None, transformer_options={}):
        context = x if context is None else context
        value = context if value is None else value
        return self.to_out(self.attention(self.to_q(x), self.to_k(context), self.to_v(value)))


class ForgeTransformerBlock(nn.Module):
    def __init__(self, dim, heads=2, dim_head=16, context_dim=CONTEXT_DIM, family='forge'):
        super().__init__()
        self.n_heads, self.d_head = heads, dim_head
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = ForgeCrossAttention(dim, context_dim, heads, dim_head, family)

    def forward(self, x, context, transformer_options):
        extra_options = {k: v for k, v in transformer_options.items() if k not in ('patches', 'patches_replace')}
        patches = transformer_options.get('patches', {})
        replace = transformer_options.get('patches_replace', {}).get('attn2', {})
        extra_options['n_heads'], extra_options['dim_head'] = self.n_heads, self.d_head
        if self.attn2.attn_precision is not None:  # reForge BasicTransformerBlock.forward sets "attn_precision"
            extra_options['attn_precision'] = self.attn2.attn_precision
        block = transformer_options.get('block')
        key = (block[0], block[1], transformer_options.get('block_index', 0))
        n = self.norm2(x)
        context_attn2, value_attn2 = context, None
        for patch in patches.get('attn2_patch', []):
            value_attn2 = context_attn2
            n, context_attn2, value_attn2 = patch(n, context_attn2, value_attn2, extra_options)
        if key not in replace:
            key = block
        if key in replace:
            value_attn2 = context_attn2 if value_attn2 is None else value_attn2
            q, k, v = self.attn2.to_q(n), self.attn2.to_k(context_attn2), self.attn2.to_v(value_attn2)
            n = self.attn2.to_out(replace[key](q, k, v, extra_options))
        else:
            n = self.attn2(n, context=context_attn2, value=value_attn2, transformer_options=extra_options)
        return x + n


class ForgeSpatialTransformer(nn.Module):
    def __init__(self, dim, depth=1, context_dim=CONTEXT_DIM, family='forge'):
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([ForgeTransformerBlock(dim, context_dim=context_dim, family=family)
                                                 for _ in range(depth)])
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x, context, transformer_options):
        b, c, h, w = x.shape
        y = self.proj_in(x).flatten(2).transpose(1, 2)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options['block_index'] = i
            y = block(y, context, transformer_options)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class ForgeTinyUNet(nn.Module):
    """conv -> attention ("input", 1) -> stride-2 down (rounding up) -> attention ("middle", 0) -> up ->
    attention ("output", 1) -> conv; the transformer_options keys Forge's IntegratedUNet sets."""

    def __init__(self, dim=32, seed=0, context_dim=CONTEXT_DIM, family='forge'):
        super().__init__()
        torch.manual_seed(seed)
        self.conv_in = nn.Conv2d(4, dim, 3, padding=1)
        self.time = nn.Linear(1, dim)
        self.input_attn = ForgeSpatialTransformer(dim, context_dim=context_dim, family=family)
        self.down = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.middle_attn = ForgeSpatialTransformer(dim, context_dim=context_dim, family=family)
        self.output_attn = ForgeSpatialTransformer(dim, context_dim=context_dim, family=family)
        self.conv_out = nn.Conv2d(dim, 4, 3, padding=1)

    def forward(self, x, timesteps, context, transformer_options):
        to = dict(transformer_options)
        to['original_shape'] = list(x.shape)
        to['transformer_index'] = 0
        h = self.conv_in(x) + self.time(timesteps[:, None].float() / 100.0)[:, :, None, None]
        to['block'] = ('input', 1)
        h = self.input_attn(h, context, to)
        to['transformer_index'] += 1
        skip = h
        m = self.down(h)
        to['block'] = ('middle', 0)
        m = self.middle_attn(m, context, to)
        to['transformer_index'] += 1
        h = skip + F.interpolate(m, size=skip.shape[-2:], mode='nearest')
        to['block'] = ('output', 1)
        h = self.output_attn(h, context, to)
        return self.conv_out(h)


class ForgeTinySDXLUNet(nn.Module):
    """Forge's SDXL attn2 keys (backend/nn/unet.py, SDXL transformer_depth [0, 2, 10] / middle 10 /
    output [10, 10, 10, 2, 2, 2]): ('input', 4) with block_index 0-1, ('input', 7), ('middle', 0) and
    ('output', 2) with 0-9, ('output', 5) with 0-1; no attention at the first level; three levels."""

    LAYOUT = (('input', 4, 2, 1), ('input', 7, 10, 2), ('middle', 0, 10, 2), ('output', 2, 10, 2),
              ('output', 5, 2, 1))  # (block, id, depth, level)

    def __init__(self, dim=32, seed=0, family='forge'):
        super().__init__()
        torch.manual_seed(seed)
        self.conv_in = nn.Conv2d(4, dim, 3, padding=1)
        self.time = nn.Linear(1, dim)
        self.down1 = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.attn = nn.ModuleList([ForgeSpatialTransformer(dim, depth, family=family)
                                   for _, _, depth, _ in self.LAYOUT])
        self.conv_out = nn.Conv2d(dim, 4, 3, padding=1)

    def forward(self, x, timesteps, context, transformer_options):
        to = dict(transformer_options)
        to['original_shape'] = list(x.shape)
        to['transformer_index'] = 0
        h0 = self.conv_in(x) + self.time(timesteps[:, None].float() / 100.0)[:, :, None, None]
        h1 = self.down1(h0)
        h = {1: h1}
        for (block, number, _, level), attn in zip(self.LAYOUT, self.attn):
            if level == 2 and 2 not in h:
                h[2] = self.down2(h[1])
            to['block'] = (block, number)
            h[level] = attn(h[level], context, to)
            to['transformer_index'] += 1
            if block == 'output' and level == 2:
                h[1] = h[1] + F.interpolate(h[2], size=h[1].shape[-2:], mode='nearest')
        return self.conv_out(h0 + F.interpolate(h[1], size=h0.shape[-2:], mode='nearest'))


class KModel(nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model

    def apply_model(self, x, t, context, transformer_options):
        return self.diffusion_model(x, t, context, transformer_options)


class ForgeModel(_ModelBase):
    """Forge's (and, with `neo=True`, Forge Neo's) SD1.5 engine (backend/diffusion_engine/sd15.py): the text engine
    `text_processing_engine`, forge_objects with a backend/patcher/unet.py UnetPatcher."""

    def __init__(self, unet_module, text_dim=CONTEXT_DIM, neo=False):
        from backend.patcher.unet import NeoUnetPatcher, UnetPatcher
        super().__init__()
        self.text_processing_engine = FakeClipEmbedder(dim=text_dim)
        self.embedder = self.text_processing_engine
        self.kmodel = KModel(unet_module)
        self.forge_objects = ForgeObjects((NeoUnetPatcher if neo else UnetPatcher)(self.kmodel), vae=self.vae)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()


class ForgeSDXLModel(_SDXLConds, ForgeModel):
    """Forge's SDXL engine: `text_processing_engine_l` tokenizes (CLIP-L; _g has the same tokens), conds are
    dicts."""
    is_sd1, is_sdxl = False, True

    def __init__(self, unet_module, neo=False):
        super().__init__(unet_module, neo=neo)
        self.text_processing_engine_l = self.embedder
        del self.text_processing_engine


class ForgeClassicModel(_ModelBase):
    """Forge Classic's / reForge's SD1.5 model: A1111's ldm model with `forge_objects` added
    (modules_forge/forge_loader.py load_model_for_a1111), its unet a modules_forge/unet_patcher.py UnetPatcher, its
    text encoder A1111's (`cond_stage_model` = forge_clip.CLIP_SD_15_L, modules/sd_hijack_clip.py tokenize_line).
    Build the UNet with ForgeTinyUNet(family='forge-classic'): unpatched attn2 runs ldm_patched's
    optimized_attention."""

    def __init__(self, unet_module, text_dim=CONTEXT_DIM):
        from modules_forge.unet_patcher import UnetPatcher
        super().__init__()
        self.cond_stage_model = FakeClipEmbedder(dim=text_dim)
        self.embedder = self.cond_stage_model
        self.kmodel = KModel(unet_module)
        self.forge_objects = ForgeObjects(UnetPatcher(self.kmodel), vae=self.vae)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()


class ForgeClassicSDXLModel(_SDXLConds, ForgeClassicModel):
    """Classic's / reForge's SDXL: `conditioner.embedders[0]` (forge_clip.CLIP_SD_XL_L) tokenizes, conds are dicts."""
    is_sd1, is_sdxl = False, True

    def __init__(self, unet_module):
        super().__init__(unet_module)
        _a1111_sdxl_text(self)


# ---------------------------------------------------------------------------------------------------------------
# The extension, loaded as the WebUI loads a script file


def load_script():
    """Import scripts/omost.py as the WebUI does (by path, as a fresh module) and return its Script class."""
    path = os.path.join(ROOT, 'scripts', 'omost.py')
    spec = importlib.util.spec_from_file_location('omost_script_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state_dict_snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def forward_attributes(module):
    """Instance-level `forward` overrides anywhere under `module` (what an A1111 hook leaves behind)."""
    return [name for name, m in module.named_modules() if 'forward' in vars(m)]


# ---------------------------------------------------------------------------------------------------------------
# Running generations through the fake host


class Rig:
    """One model, the extension's script (loaded once per test session) and a probe on every denoiser step."""

    _script_module = None

    def __init__(self, model):
        from modules import script_callbacks, scripts
        if Rig._script_module is None:
            Rig._script_module = load_script()
            script_callbacks.on_cfg_denoiser(Rig._probe)
        self.model = model
        self.script = Rig._script_module.Script()
        self.runner = scripts.ScriptRunner([(self.script, 7)])  # enabled, canvas, options, guidance, 3 images
        self.bare = scripts.ScriptRunner([])  # a WebUI that never loaded the extension

    steps = []  # one dict per denoiser step of the last generations (cleared by generate())

    @staticmethod
    def _probe(params):
        from modules import shared
        p = params.denoiser.p
        model = p.sd_model
        info = {'model': model, 'hr': p.is_hr_pass, 'prompt': p.prompts[0], 'cond_len': params.text_cond.shape[1], 'emphasis': shared.opts.emphasis,
                'denoise': p.denoising_strength, 'total': params.total_sampling_steps}
        if hasattr(model, 'forge_objects'):
            options = model.forge_objects.unet.model_options['transformer_options']  # what this step runs
            info['patched'] = len(options.get('patches_replace', {}).get('attn2', {}))
        else:
            info['hooked'] = len(forward_attributes(model.model.diffusion_model))
        job = getattr(p, '_omost_job', None)
        current = getattr(job, 'current', None)
        info['latent_size'] = getattr(current, 'latent_size', None)
        info['progress'] = getattr(current, 'progress', None)  # Omost's callback ran before this probe
        info['regional'] = getattr(current, 'active', None)
        info['plan_bytes'] = getattr(current, 'plan_bytes', None)  # plans of the earlier steps of this pass
        info['sampling_step'] = params.sampling_step
        Rig.steps.append(info)

    def p(self, omost=None, bare=False, **kwargs):
        from modules import processing
        args = dict(prompt='a photo <lora:foo:0.5>', negative_prompt='blurry', steps=2, width=64, height=64,
                    cfg_scale=5.0)
        args.update(kwargs)
        cls = processing.StableDiffusionProcessingImg2Img if 'init_images' in args \
            else processing.StableDiffusionProcessingTxt2Img
        script_args = list(omost) if omost is not None else [False, '', '', '[]', None, None, None]
        return cls(self.model, scripts=self.bare if bare else self.runner, script_args=script_args, **args)

    def generate(self, omost=None, bare=False, close=True, **kwargs):
        """(p, Processed) of one generation; `omost` = the script args [enabled, canvas, options]. Run inside
        `with closing(p)` as the hosts' txt2img/img2img UI and API do (close=False: a caller that does not)."""
        import contextlib
        from modules import processing
        Rig.steps = []
        p = self.p(omost, bare, **kwargs)
        with contextlib.closing(p) if close else contextlib.nullcontext():
            return p, processing.process_images(p)


DRAGON = _read_fixture('dragon_battle.canvas.py')  # Omost's real transcript: 24 bags
SMALL = '''canvas = Canvas()
canvas.set_global_description(description='A cat and a dog in a garden.', detailed_descriptions=['Sunny day.'],
    tags='cat, dog, garden', HTML_web_color_name='green')
canvas.add_local_description(location='on the left', offset='no offset', area='a small square area',
    distance_to_viewer=2.0, description='An orange cat.', detailed_descriptions=['The cat sits.'], tags='cat',
    atmosphere='calm', style='photo', quality_meta='sharp', HTML_web_color_name='orange')
canvas.add_local_description(location='on the right', offset='no offset', area='a small vertical area',
    distance_to_viewer=1.0, description='A black dog.', detailed_descriptions=['The dog runs.'], tags='dog',
    atmosphere='lively', style='photo', quality_meta='sharp', HTML_web_color_name='black')
'''


def omost(canvas=SMALL, **options):
    """The script args an API client sends: [enabled, canvas, options JSON]."""
    return [True, canvas, json.dumps(options) if options else '']


def images_equal(a, b) -> bool:
    return len(a.images) == len(b.images) and all(torch.equal(x, y) for x, y in zip(a.images, b.images))


def check_step_window(rig):
    """Both hosts report `state.sampling_step` after a step (0, 0, 1 for 3 steps); the window follows the
    denoiser's own call counter: start 0.5 of 3 steps is regional in the last step, end 0.5 in the first two."""
    _, full = rig.generate(omost(), steps=3)
    _, plain = rig.generate(omost(regions=False), steps=3)
    _, late = rig.generate(omost(start=0.5), steps=3)
    assert [s['sampling_step'] for s in Rig.steps] == [0, 0, 1]
    assert [s['progress'] for s in Rig.steps] == [0, 1 / 3, 2 / 3]
    assert [s['regional'] for s in Rig.steps] == [False, False, True]
    _, early = rig.generate(omost(end=0.5), steps=3)
    assert [s['regional'] for s in Rig.steps] == [True, True, False]
    results = (full, plain, late, early)
    assert not any(images_equal(a, b) for i, a in enumerate(results) for b in results[i + 1:])


class NoCrossAttentionUNet(nn.Module):
    """A denoiser without attn2 (what Flux / SD3 are to the extension)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x, timesteps=None, context=None, transformer_options=None):
        return self.conv(x)


def check_refiner_switch(rig, refiner, plain_refiner):
    """Both hosts load the refiner inside the sampling pass (sd_samplers_common.apply_refiner): the regions
    continue on it (a later window still changes the image), the infotext and console say so; a refiner that
    cannot take regions is named in the infotext; no hook is left on either model."""
    from modules import sd_models
    sd_models.CheckpointInfo('base', rig.model)
    switch = dict(steps=4, refiner_checkpoint_info=sd_models.CheckpointInfo('refiner', refiner),
                  refiner_switch_at=0.5)
    p, full = rig.generate(omost(), **switch)
    assert [s['model'] for s in Rig.steps] == [rig.model] * 2 + [refiner] * 2
    assert all(s['regional'] for s in Rig.steps)
    if hasattr(refiner, 'forge_objects'):
        assert all(s['patched'] for s in Rig.steps)
    else:
        assert all(s['hooked'] for s in Rig.steps)
        assert forward_attributes(refiner.model.diffusion_model) == []
        assert forward_attributes(rig.model.model.diffusion_model) == []
    assert 'Omost notes: regions continued on refiner' in full.info
    _, early = rig.generate(omost(end=0.5), **switch)  # regions on the base model only
    assert not images_equal(full, early)
    switch['refiner_checkpoint_info'] = sd_models.CheckpointInfo('flux-like', plain_refiner)
    _, res = rig.generate(omost(), **switch)
    assert [s['regional'] for s in Rig.steps] == [True, True, None, None]
    assert 'switched to flux-like, which has no cross-attention' in res.info and 'Omost notes: ' in res.info
    # a refiner whose encoder makes another number of chunks of the bags: the token map no longer fits
    encode = refiner.embedder.encode
    refiner.embedder.encode = lambda prompts: torch.cat([encode(prompts)] * 2, dim=1)
    try:
        switch['refiner_checkpoint_info'] = sd_models.CheckpointInfo('other-encoder', refiner)
        _, res = rig.generate(omost(), **switch)
        _, off_after_switch = rig.generate(omost(end=0.5), **switch)
    finally:
        refiner.embedder.encode = encode
    assert [s['regional'] for s in Rig.steps] == [True, True, None, None]
    assert 'switched to other-encoder, whose cond has' in res.info
    assert images_equal(res, off_after_switch)  # plain on the refiner, as if the window had ended
