"""Forge backend/attention.py: `attention_function` is chosen once at import from the command line (xformers,
pytorch SDPA, split, sub-quadratic) and called by backend/nn/unet.py CrossAttention.forward as
`attention_function(q, k, v, heads, mask)` on (B, N, heads * dim_head) tensors. Here it is attention_pytorch,
counted so tests can see what went through the host's own attention."""
from comfy_common import logging_attention_pytorch

calls = []  # (batch rows, query length, key length) of every call
attention_pytorch = logging_attention_pytorch(calls)
attention_function = attention_pytorch
