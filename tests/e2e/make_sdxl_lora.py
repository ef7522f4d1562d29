"""A random-weight SDXL LoRA for the end-to-end LoRA test on SDXL (the harness's random_lora is an SD1.5 one, whose
shapes do not fit SDXL's layers). Kohya's SDXL names (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k`, as
sd-scripts writes them and both WebUIs' Lora loaders read them), rank 4, on the cross-attention keys and values of
the first 640-wide level (input_blocks 4 and 5): enough to change every image, and small, because A1111 keeps a copy
of every weight a LoRA patches (a LoRA on all of SDXL's attention projections adds ~4 GB in fp32 and ran a 24 GB
machine out of memory). The shapes are read from the checkpoint's safetensors header, nothing is loaded. torch +
safetensors only.

    python tests/e2e/make_sdxl_lora.py --ckpt models/Stable-diffusion/random-sdxl.safetensors \
        --out models/Lora/random_lora_xl.safetensors          # then: <lora:random_lora_xl:1>
"""

from __future__ import annotations

import argparse
import re

import torch
from safetensors import safe_open
from safetensors.torch import save_file

RANK = 4
PROJECTION = re.compile(r'^model\.diffusion_model\.(input_blocks\.[45]\.1\..+\.attn2\.(?:to_k|to_v))\.weight$')


def build(ckpt: str) -> dict:
    out = {}
    with safe_open(ckpt, 'pt') as f:
        for key in sorted(f.keys()):
            match = PROJECTION.match(key)
            if not match:
                continue
            rows, cols = f.get_slice(key).get_shape()
            name = 'lora_unet_' + match.group(1).replace('.', '_')
            g = torch.Generator().manual_seed(sum(name.encode()) * 7919)
            out[f'{name}.lora_down.weight'] = torch.randn(RANK, cols, generator=g) / cols ** 0.5
            out[f'{name}.lora_up.weight'] = torch.randn(rows, RANK, generator=g) / RANK ** 0.5
            out[f'{name}.alpha'] = torch.tensor(float(RANK))
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    tensors = build(a.ckpt)
    save_file(tensors, a.out, metadata={'ss_network_module': 'networks.lora', 'ss_network_dim': str(RANK),
                                        'ss_network_alpha': str(RANK), 'ss_base_model_version': 'sdxl_base_v1-0'})
    print(f'wrote {a.out}: {len(tensors) // 3} layers')
