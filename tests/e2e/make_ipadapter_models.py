"""Random-weight IP-Adapter models and the CLIP vision tower they need, in the layouts the two WebUIs load, for the
end-to-end IP-Adapter tests (tests/e2e/test_e2e_ipadapter.py). torch + safetensors only; nothing is downloaded.

    python tests/e2e/make_ipadapter_models.py --host forge --webui /path/to/forge/webui [--sdxl]
    python tests/e2e/make_ipadapter_models.py --host a1111 --webui /path/to/a1111/webui [--sdxl]

What each host loads, and from where (read from the hosts' loaders):

| | Forge (sd_forge_ipadapter) | A1111 + sd-webui-controlnet |
|---|---|---|
| IP-Adapter | `models/ControlNet/ip-adapter_{sd15,sdxl}_random.safetensors` | `extensions/sd-webui-controlnet/models/` (same names) |
| CLIP vision | `models/ControlNetPreprocessor/CLIP-ViT-H-14.safetensors` (preprocessor "CLIP-ViT-H (IPAdapter)") | `extensions/sd-webui-controlnet/annotator/downloads/clip_vision/clip_h.pth` (preprocessor "ip-adapter_clip_sd15" / "ip-adapter_clip_sdxl_plus_vith") |
| tower layout | any of ViT-L/H/bigG, picked by its keys (backend/patcher/clipvision.py: load_clipvision_from_sd): we write ViT-L (the smallest, 0.3 B values) under the H file name | always ViT-H: the config is fixed by the preprocessor (annotator/clipvision: config_clip_h, load_state_dict(strict=False) into a freshly initialised model, so every key is written) |
| image embedding | `image_embeds` (projection_dim: 768 for our ViT-L) | `image_embeds` (1024) |

The IP-Adapters are plain (non-plus) ones, in the h94 safetensors layout both hosts read
(`image_proj.proj.weight/bias`, `image_proj.norm.weight/bias`: ImageProjModel with 4 tokens;
`ip_adapter.{2n+1}.to_k_ip.weight` / `to_v_ip.weight`: one pair per cross-attention layer, n counting input, output,
then middle blocks, the order both hosts number them: Forge IPAdapterPlus.py apply_ipadapter,
sd-webui-controlnet enums.py transformer_ids). SDXL is told by to_k_ip's input width 2048.

Values: a per-name seeded normal (so a file is the same on every machine), scaled so that activations stay near
unit size: weights N(0, 1/fan_in), layer-norm weights 1 and biases 0. Everything is stored in float16 (half the
disk); both hosts copy it into their float32 models on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch

SEED = 20240601
CLIP_VIT_L = dict(hidden=1024, layers=24, intermediate=4096, projection=768)   # Forge's CLIP_VISION_VITL
CLIP_VIT_H = dict(hidden=1280, layers=32, intermediate=5120, projection=1024)  # both hosts' CLIP_VISION_H
PATCH, IMAGE = 14, 224
IMAGE_TOKENS = 4

# Cross-attention layers in IP-Adapter's `number` order and their channel widths.
SD15_LAYERS = [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
SDXL_LAYERS = ([640] * 4 + [1280] * 20) + ([1280] * 30 + [640] * 6) + [1280] * 10
CONTEXT = {'sd15': 768, 'sdxl': 2048}


def _generator(name: str) -> torch.Generator:
    digest = hashlib.sha256(f'{SEED}:{name}'.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], 'little'))


def _weight(name, *shape, fan_in=None):
    fan_in = fan_in or shape[-1]
    return torch.randn(*shape, generator=_generator(name)) / fan_in ** 0.5


def clip_vision_state_dict(size: dict, dtype=torch.float16) -> dict:
    """CLIPVisionModelWithProjection's state dict (transformers' key names) for a tower of `size`."""
    d, n_pos = size['hidden'], (IMAGE // PATCH) ** 2 + 1
    sd = {
        'vision_model.embeddings.class_embedding': torch.randn(d, generator=_generator('class')) * 0.02,
        'vision_model.embeddings.patch_embedding.weight': _weight('patch', d, 3, PATCH, PATCH,
                                                                  fan_in=3 * PATCH * PATCH),
        'vision_model.embeddings.position_embedding.weight': torch.randn(n_pos, d, generator=_generator('pos'))
        * 0.02,
        'visual_projection.weight': _weight('visual_projection', size['projection'], d),
    }
    for norm in ('pre_layrnorm', 'post_layernorm'):
        sd[f'vision_model.{norm}.weight'] = torch.ones(d)
        sd[f'vision_model.{norm}.bias'] = torch.zeros(d)
    for i in range(size['layers']):
        p = f'vision_model.encoder.layers.{i}.'
        for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            sd[p + f'self_attn.{proj}.weight'] = _weight(p + proj, d, d)
            sd[p + f'self_attn.{proj}.bias'] = torch.zeros(d)
        for norm in ('layer_norm1', 'layer_norm2'):
            sd[p + f'{norm}.weight'] = torch.ones(d)
            sd[p + f'{norm}.bias'] = torch.zeros(d)
        sd[p + 'mlp.fc1.weight'] = _weight(p + 'fc1', size['intermediate'], d)
        sd[p + 'mlp.fc1.bias'] = torch.zeros(size['intermediate'])
        sd[p + 'mlp.fc2.weight'] = _weight(p + 'fc2', d, size['intermediate'])
        sd[p + 'mlp.fc2.bias'] = torch.zeros(d)
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def ip_adapter_state_dict(arch: str, clip_dim: int) -> dict:
    """A plain IP-Adapter for `arch` ('sd15' / 'sdxl') reading image embeddings of width clip_dim."""
    context = CONTEXT[arch]
    layers = SD15_LAYERS if arch == 'sd15' else SDXL_LAYERS
    sd = {
        'image_proj.proj.weight': _weight(f'{arch}.proj', IMAGE_TOKENS * context, clip_dim),
        'image_proj.proj.bias': torch.zeros(IMAGE_TOKENS * context),
        'image_proj.norm.weight': torch.ones(context),
        'image_proj.norm.bias': torch.zeros(context),
    }
    for number, width in enumerate(layers):
        for kind in ('k', 'v'):
            key = f'{number * 2 + 1}.to_{kind}_ip.weight'
            sd['ip_adapter.' + key] = _weight(f'{arch}.{key}', width, context)
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def layout(host: str, webui: str) -> dict:
    if host == 'forge':
        return {'adapters': os.path.join(webui, 'models', 'ControlNet'),
                'tower': os.path.join(webui, 'models', 'ControlNetPreprocessor', 'CLIP-ViT-H-14.safetensors'),
                'size': CLIP_VIT_L}
    controlnet = os.path.join(webui, 'extensions', 'sd-webui-controlnet')
    return {'adapters': os.path.join(controlnet, 'models'),
            'tower': os.path.join(controlnet, 'annotator', 'downloads', 'clip_vision', 'clip_h.pth'),
            'size': CLIP_VIT_H}


def save(sd: dict, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(sd, tmp)
    else:  # sd-webui-controlnet torch.load()s its towers, through A1111's safe unpickler (modules/safe.py), whose
        # zip whitelist predates the '.format_version' record of today's torch.save: the legacy format passes
        torch.save(sd, tmp, _use_new_zipfile_serialization=False)
    os.replace(tmp, path)
    print(f'wrote {path} ({os.path.getsize(path) / 2 ** 20:.0f} MiB)')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--host', choices=['forge', 'a1111'], required=True)
    ap.add_argument('--webui', required=True, help='the WebUI folder (holds models/ and extensions/)')
    ap.add_argument('--sdxl', action='store_true', help='also the SDXL IP-Adapter')
    ap.add_argument('--force', action='store_true', help='rewrite files that exist')
    args = ap.parse_args(argv)
    where = layout(args.host, args.webui)
    clip_dim = where['size']['projection']
    jobs = [(where['tower'], lambda: clip_vision_state_dict(where['size']))]
    for arch in ['sd15'] + (['sdxl'] if args.sdxl else []):
        path = os.path.join(where['adapters'], f'ip-adapter_{arch}_random.safetensors')
        jobs.append((path, lambda arch=arch: ip_adapter_state_dict(arch, clip_dim)))
    for path, build in jobs:
        if os.path.exists(path) and not args.force:
            print(f'exists: {path}')
            continue
        save(build(), path)


if __name__ == '__main__':
    main()
