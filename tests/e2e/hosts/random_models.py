#!/usr/bin/env python3
"""Seeded random-weight Stable Diffusion models in the original single-file layouts, for the CPU WebUIs that host.sh builds.

  random_models.py sd15 OUT.safetensors --webui DIR   SD1.5 (model.diffusion_model., first_stage_model.,
                                                           cond_stage_model.transformer.)
  random_models.py sdxl OUT.safetensors --webui DIR   SDXL base (conditioner.embedders.0 = CLIP-L in HF names,
                                                           conditioner.embedders.1.model = OpenCLIP bigG)
  random_models.py lora OUT.safetensors               SD1.5 LoRA, kohya names (lora_unet_*, lora_te_*), rank 4
  random_models.py cnet OUT.safetensors --ckpt SD15   SD1.5 ControlNet, control_v11p_sd15_canny layout
  random_models.py vaeapprox-sdxl OUT.pt              VAE-approx for SDXL live previews
  --list instead of OUT prints the tensor count and a digest of the names/shapes/dtypes, writing nothing.

sd15/sdxl take their tensor names and shapes from the model code of the WebUI checkout given by --webui, built on
the meta device, so the files load exactly as real checkpoints do. Run them with that WebUI's venv python:
  Forge or Neo (has backend/): its IntegratedUNet2DConditionModel with huggingface_guess's unet configs, its
      IntegratedAutoencoderKL with the bundled diffusers configs, transformers' CLIPTextModel.
  A1111 (has repositories/stable-diffusion-stability-ai): ldm's LatentDiffusion (configs/v1-inference.yaml) or sgm's
      DiffusionEngine (sd_xl_base.yaml); needs HF_HOME holding openai/clip-vit-large-patch14's config and tokenizer
      (hf_cache.py). Only the weights are kept (not the noise-schedule buffers, which both WebUIs
      compute from the config), so both sources give the same names, shapes and, per name, the same values.
lora, cnet and vaeapprox-sdxl need only torch and safetensors (cnet reads the UNet encoder shapes from --ckpt).

Values, seeded per tensor name (env SEED, default 20240601): matrices/convs N(0, 1/fan_in), 1-d weights (norms)
1 + N(0, 0.1^2), biases N(0, 0.02^2), token embeddings N(0, 0.02^2), position embeddings N(0, 0.01^2).
The layers LDM zero-initialises get random weights too (else the UNet output ignores the prompt); ControlNet zero
convs are scaled by 0.3. The CLIP final layer-norm bias is offset by +0.5 so the text encoder's output mean is
clearly non-zero (the WebUIs' prompt-emphasis renormalisation divides by it: a zero mean gives black images).
Saved as fp16 (the .pt as fp32), one tensor generated and written at a time (SDXL peaks near 3 GB of RAM).
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import zlib

ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
ap.add_argument('kind', choices=['sd15', 'sdxl', 'lora', 'cnet', 'vaeapprox-sdxl'])
ap.add_argument('out', nargs='?')
ap.add_argument('--webui', help='WebUI checkout (Forge or A1111) whose model code gives the sd15/sdxl shapes')
ap.add_argument('--ckpt', help='cnet: the SD1.5 checkpoint whose UNet encoder shapes the ControlNet copies')
ap.add_argument('--seed', type=int, default=int(os.environ.get('SEED', '20240601')))
ap.add_argument('--list', action='store_true', help='print the tensor count and a names/shapes digest; write nothing')
A = ap.parse_args()
if not A.list and not A.out:
    ap.error('OUT is required (or --list)')
if A.kind in ('sd15', 'sdxl') and not A.webui:
    ap.error(f'{A.kind} needs --webui DIR (a Forge or A1111 checkout)')
if A.kind == 'cnet' and not A.ckpt:
    ap.error('cnet needs --ckpt SD15_CHECKPOINT')
OUT = os.path.abspath(A.out) if A.out else None
WEBUI = os.path.abspath(A.webui) if A.webui else None
SEED = A.seed

import torch  # noqa: E402

KEEP = ('model.diffusion_model.', 'first_stage_model.', 'cond_stage_model.', 'conditioner.')
FP16 = torch.float16


# ---------------------------------------------------------------- values
def gen_for(key):
    return torch.Generator().manual_seed((SEED * 1000003 + zlib.crc32(key.encode())) & 0x7FFFFFFFFFFF)


def rand_value(key, shape):
    g = gen_for(key)
    shape = tuple(shape)
    n = lambda s: torch.randn(shape, generator=g) * s  # noqa: E731
    last = key.rsplit('.', 1)[-1]
    if 'position_ids' in key:
        return torch.arange(shape[-1]).expand(shape).clone()
    if 'logit_scale' in key:
        return torch.full(shape, 4.6052)
    if 'position_embedding' in key or key.endswith('positional_embedding'):
        return n(0.01)
    if 'token_embedding' in key:
        return n(0.02)
    if len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return n(1.0 / fan_in ** 0.5)
    if len(shape) == 0:
        return n(0.02)
    if last == 'weight':
        return 1.0 + n(0.1)
    if key.endswith('final_layer_norm.bias') or key.endswith('ln_final.bias'):
        return 0.5 + n(0.1)
    return n(0.02)


class Lazy:
    """A tensor made only when written, so a whole model never sits in memory."""

    def __init__(self, key, shape, dtype, scale=1.0):
        self.key, self.shape, self.dtype, self.scale = key, tuple(shape), dtype, scale

    def make(self):
        t = rand_value(self.key, self.shape).to(self.dtype)
        return t if self.scale == 1.0 else (t.float() * self.scale).to(self.dtype)

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


def fill(meta_sd, prefix=''):
    """name -> meta tensor  ==>  prefix+name -> Lazy (floats as fp16)"""
    return {prefix + k: Lazy(prefix + k, v.shape, FP16 if v.is_floating_point() else v.dtype) for k, v in meta_sd.items()}


DT_NAMES = {torch.float16: 'F16', torch.float32: 'F32', torch.int64: 'I64', torch.int32: 'I32', torch.bfloat16: 'BF16'}


def save_streaming(sd, path, metadata):
    """safetensors writer that makes and writes one tensor at a time (safetensors' save_file holds everything)."""
    header, off, keys = {'__metadata__': metadata}, 0, sorted(sd)
    for k in keys:
        v = sd[k]
        n = v.numel() * torch.empty((), dtype=v.dtype).element_size()
        header[k] = {'dtype': DT_NAMES[v.dtype], 'shape': list(v.shape), 'data_offsets': [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(',', ':')).encode()
    hb += b' ' * (-len(hb) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.part', 'wb') as f:
        f.write(struct.pack('<Q', len(hb)))
        f.write(hb)
        for k in keys:
            v = sd[k]
            t = v.make() if isinstance(v, Lazy) else v
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(path + '.part', path)


def read_header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop('__metadata__', None)
    return {k: tuple(v['shape']) for k, v in h.items()}


# ---------------------------------------------------------------- shapes from Forge's model code
def forge_setup():
    sys.argv = [sys.argv[0], '--always-cpu']  # Forge's backend.args parses sys.argv on import
    # huggingface_guess: a repository in Forge, vendored under modules_forge/packages in Neo
    sys.path[:0] = [WEBUI, os.path.join(WEBUI, 'repositories', 'huggingface_guess'), os.path.join(WEBUI, 'packages_3rdparty'),
                    os.path.join(WEBUI, 'modules_forge', 'packages')]
    os.chdir(WEBUI)


def forge_unet_sd(cfg):
    from backend.nn.unet import IntegratedUNet2DConditionModel
    cfg = {k: v for k, v in cfg.items() if k not in ('dtype', 'image_size', 'use_temporal_attention', 'use_temporal_resblock', 'legacy')}
    with torch.device('meta'):
        m = IntegratedUNet2DConditionModel(**cfg)
    return m.state_dict()


def forge_vae_sd(repo):
    from backend.nn.vae import IntegratedAutoencoderKL
    config = IntegratedAutoencoderKL.load_config(os.path.join(WEBUI, 'backend', 'huggingface', repo, 'vae'))
    with torch.device('meta'):
        m = IntegratedAutoencoderKL.from_config(config)
    return m.state_dict()


def forge_clip_sd(repo, sub, projection):
    from transformers import CLIPTextConfig, CLIPTextModel
    config = CLIPTextConfig.from_pretrained(os.path.join(WEBUI, 'backend', 'huggingface', repo, sub))
    with torch.device('meta'):
        m = CLIPTextModel(config)
        sd = {'transformer.' + k: v for k, v in m.state_dict().items()}
        sd['transformer.text_model.embeddings.position_ids'] = torch.empty((1, config.max_position_embeddings), dtype=torch.int64)
        if projection:
            sd['transformer.text_projection.weight'] = torch.empty(config.hidden_size, config.hidden_size)
    return sd


def forge_unet_configs():
    """the SD15/SDXL unet configs are literals inside huggingface_guess.detection: evaluate those two"""
    import inspect
    from huggingface_guess import detection
    src = inspect.getsource(detection.unet_config_from_diffusers_unet)
    cfgs = {}
    for name in ('SD15', 'SDXL'):
        body = src[src.index(f'    {name} = {{'):].split('=', 1)[1]
        depth = 0
        for i, ch in enumerate(body):
            depth += (ch == '{') - (ch == '}')
            if depth == 0 and ch == '}':
                break
        cfgs[name] = eval(body[:i + 1], {'dtype': None})
    return cfgs


def forge_meta(kind):
    forge_setup()
    cfg = forge_unet_configs()['SD15' if kind == 'sd15' else 'SDXL']
    sd = {'model.diffusion_model.' + k: v for k, v in forge_unet_sd(cfg).items()}
    if kind == 'sd15':
        repo = 'runwayml/stable-diffusion-v1-5'
        sd.update({'first_stage_model.' + k: v for k, v in forge_vae_sd(repo).items()})
        sd.update({'cond_stage_model.' + k: v for k, v in forge_clip_sd(repo, 'text_encoder', False).items()})
        return sd
    from huggingface_guess import diffusers_convert
    repo = 'stabilityai/stable-diffusion-xl-base-1.0'
    sd.update({'first_stage_model.' + k: v for k, v in forge_vae_sd(repo).items()})
    sd.update({'conditioner.embedders.0.' + k: v for k, v in forge_clip_sd(repo, 'text_encoder', False).items()})
    g = {'clip_g.' + k: v for k, v in forge_clip_sd(repo, 'text_encoder_2', True).items() if 'position_ids' not in k}
    g = diffusers_convert.convert_text_enc_state_dict_v20(g, 'clip_g')  # HF -> OpenCLIP names (in_proj, text_projection^T)
    sd.update({'conditioner.embedders.1.model.' + k[len('clip_g.'):]: v for k, v in g.items()})
    sd['conditioner.embedders.1.model.logit_scale'] = torch.empty((), device='meta')
    return sd


# ---------------------------------------------------------------- shapes from A1111's ldm / sgm code
def a1111_meta(kind):
    for r in ('stable-diffusion-stability-ai', 'generative-models', 'k-diffusion'):
        sys.path.insert(0, os.path.join(WEBUI, 'repositories', r))
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    import transformers
    from omegaconf import OmegaConf
    cfg = {'sd15': os.path.join(WEBUI, 'configs', 'v1-inference.yaml'),
           'sdxl': os.path.join(WEBUI, 'repositories', 'generative-models', 'configs', 'inference', 'sd_xl_base.yaml')}[kind]
    conf = OmegaConf.load(cfg).model
    # no downloads, no real weights: text encoders from their configs, big layers on the meta device
    transformers.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, name, *a, **k: cls(transformers.CLIPTextConfig.from_pretrained(name)))
    import open_clip
    create = open_clip.create_model_and_transforms
    open_clip.create_model_and_transforms = lambda *a, pretrained=None, **k: create(*a, pretrained=None, **k)
    torch.nn.Module.to = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention, torch.nn.Embedding):
        def on_meta(self, *a, _orig=cls.__init__, **k):
            k['device'] = 'meta'
            _orig(self, *a, **k)
        cls.__init__ = on_meta
    for fn in ('kaiming_uniform_', '_no_grad_normal_', '_no_grad_uniform_', 'normal_', 'uniform_', 'trunc_normal_',
               'zeros_', 'ones_', 'constant_', 'xavier_uniform_'):
        if hasattr(torch.nn.init, fn):
            setattr(torch.nn.init, fn, lambda t, *a, **k: t)
    if kind == 'sd15':
        from ldm.util import instantiate_from_config
    else:
        from sgm.util import instantiate_from_config
        conf.params.pop('ckpt_path', None)
    return instantiate_from_config(conf).state_dict()


def checkpoint_lazy(kind):
    if os.path.exists(os.path.join(WEBUI, 'backend', 'nn', 'unet.py')):
        source, meta = 'forge', forge_meta(kind)
    elif os.path.isdir(os.path.join(WEBUI, 'repositories', 'stable-diffusion-stability-ai')):
        source, meta = 'a1111', a1111_meta(kind)
    else:
        sys.exit(f'{WEBUI}: neither a Forge/Neo checkout (backend/) nor one with repositories/stable-diffusion-stability-ai'
                 ' (A1111, Classic, reForge)')
    print(f'{kind}: shapes from the {source} model code in {WEBUI}', file=sys.stderr)
    return fill({k: v for k, v in meta.items() if k.startswith(KEEP)})


# ---------------------------------------------------------------- LoRA, ControlNet (torch + safetensors only)
def lora_modules():
    """SD1.5 kohya module names -> (out, in): every UNet attention projection, every CLIP attention/MLP projection"""
    mods = {}
    blocks = [(f'down_blocks_{b}_attentions_{a}', c) for b, c in ((0, 320), (1, 640), (2, 1280)) for a in (0, 1)]
    blocks += [('mid_block_attentions_0', 1280)]
    blocks += [(f'up_blocks_{b}_attentions_{a}', c) for b, c in ((1, 1280), (2, 640), (3, 320)) for a in (0, 1, 2)]
    for blk, c in blocks:
        for att, ctx in (('attn1', c), ('attn2', 768)):
            p = f'lora_unet_{blk}_transformer_blocks_0_{att}'
            mods.update({p + '_to_q': (c, c), p + '_to_k': (c, ctx), p + '_to_v': (c, ctx), p + '_to_out_0': (c, c)})
    for i in range(12):
        p = f'lora_te_text_model_encoder_layers_{i}'
        mods.update({f'{p}_self_attn_{m}': (768, 768) for m in ('q_proj', 'k_proj', 'v_proj', 'out_proj')})
        mods.update({f'{p}_mlp_fc1': (3072, 768), f'{p}_mlp_fc2': (768, 3072)})
    return mods


def build_lora():
    rank, sd = 4, {}
    for name, (n_out, n_in) in lora_modules().items():
        g = gen_for(name)
        sd[name + '.lora_down.weight'] = (torch.randn(rank, n_in, generator=g) / n_in ** 0.5).half()
        sd[name + '.lora_up.weight'] = (torch.randn(n_out, rank, generator=g) * 0.5 / rank ** 0.5).half()
        sd[name + '.alpha'] = torch.tensor(float(rank)).half()
    return sd


def build_cnet(ckpt):
    """control_model.*: the UNet encoder's shapes (from the checkpoint), hint block and zero convs"""
    sd = {}
    for k, shape in read_header(ckpt).items():
        if k.startswith(('model.diffusion_model.input_blocks.', 'model.diffusion_model.middle_block.',
                         'model.diffusion_model.time_embed.')):
            name = 'control_model.' + k[len('model.diffusion_model.'):]
            sd[name] = Lazy(name, shape, FP16)
    if not sd:
        sys.exit(f'{ckpt}: no model.diffusion_model.input_blocks.* tensors (not an SD1.5 checkpoint?)')

    def conv(name, cin, cout, k, scale=1.0):
        for suffix, shape in (('weight', (cout, cin, k, k)), ('bias', (cout,))):
            key = f'control_model.{name}.{suffix}'
            sd[key] = Lazy(key, shape, FP16, scale)

    for i, (a, b) in enumerate([(3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, 320)]):
        conv(f'input_hint_block.{2 * i}', a, b, 3)
    # smaller zero-conv outputs, so the control adds to the UNet's skips instead of swamping them
    for i, ch in enumerate([320] * 4 + [640] * 3 + [1280] * 5):
        conv(f'zero_convs.{i}.0', ch, ch, 1, 0.3)
    conv('middle_block_out.0', 1280, 1280, 1, 0.3)
    return sd


def build_vaeapprox_sdxl():
    layers = [(4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3)]
    sd = {}
    for i, (ci, co, k) in enumerate(layers, 1):
        sd[f'conv{i}.weight'] = rand_value(f'vaeapprox.conv{i}.weight', (co, ci, k, k))
        sd[f'conv{i}.bias'] = rand_value(f'vaeapprox.conv{i}.bias', (co,))
    return sd


if __name__ == '__main__':
    kind = A.kind
    if kind in ('sd15', 'sdxl'):
        sd = checkpoint_lazy(kind)
    else:
        sd = {'lora': build_lora, 'cnet': lambda: build_cnet(A.ckpt), 'vaeapprox-sdxl': build_vaeapprox_sdxl}[kind]()
    n = sum(v.numel() for v in sd.values())
    if A.list:
        lines = ''.join(f'{k} {str(v.dtype)} {list(v.shape)}\n' for k, v in sorted(sd.items()))
        print(f'{kind}: {len(sd)} tensors, {n / 1e6:.1f} M values, layout sha256 {hashlib.sha256(lines.encode()).hexdigest()[:16]}')
        sys.exit(0)
    meta = {'format': 'pt', 'random_weights': f'{kind}, seed {SEED}'}
    if kind == 'lora':
        meta.update({'ss_network_module': 'networks.lora', 'ss_network_dim': '4', 'ss_network_alpha': '4',
                     'ss_base_model_version': 'sd_v1'})
    if kind == 'vaeapprox-sdxl':
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        # torch's legacy format: A1111's safe unpickler (modules/safe.py) rejects the zip format's
        # '.format_version' record, and the SDXL live preview then fails every job with a 500.
        torch.save(sd, OUT + '.part', _use_new_zipfile_serialization=False)
        os.replace(OUT + '.part', OUT)
    else:
        save_streaming(sd, OUT, meta)
    print(f'   {kind}: {len(sd)} tensors, {n / 1e6:.1f} M values -> {OUT}')
