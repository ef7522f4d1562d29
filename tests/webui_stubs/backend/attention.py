"""Forge backend/attention.py: `attention_function` is chosen once at import from the command line (xformers,
pytorch SDPA, split, sub-quadratic) and called by backend/nn/unet.py CrossAttention.forward as
`attention_function(q, k, v, heads, mask)` on (B, N, heads * dim_head) tensors. Here it is attention_pytorch,
counted so tests can see what went through the host's own attention."""
import torch

calls = []  # (batch rows, query length, key length) of every call


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    calls.append((q.shape[0], q.shape[-2], k.shape[-2]))
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = map(lambda t: t.view(b, -1, heads, dim_head).transpose(1, 2), (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


attention_function = attention_pytorch
