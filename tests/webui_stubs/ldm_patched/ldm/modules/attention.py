"""Forge Classic / reForge ldm_patched/ldm/modules/attention.py: `optimized_attention` is chosen once at import (basic,
sage, xformers, pytorch, split, sub-quadratic) and called by CrossAttention.forward as
`optimized_attention(q, k, v, self.heads)` (reForge adds `attn_precision=`) on (B, N, heads * dim_head) tensors.
Here it is attention_pytorch, counted so tests can see what went through the host's own attention (a list apart
from backend/attention.py's, so a host class that picked the other family's function is caught)."""
from comfy_common import logging_attention_pytorch

calls = []  # (batch rows, query length, key length) of every call
precisions = []  # the attn_precision of every call (reForge passes the layer's)
attention_pytorch = logging_attention_pytorch(calls, precisions)
optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
