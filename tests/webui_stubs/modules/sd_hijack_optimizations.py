"""A1111 1.10's "sdp" cross-attention optimisation (modules/sd_hijack_optimizations.py): SdOptimizationSdp.apply
assigns the CLASS attribute `ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward`,
which sends the context through the loaded hypernetworks before to_k / to_v. Tests apply it and undo() it."""
import torch.nn.functional as F

from modules import shared
from modules.hypernetworks import hypernetwork

_original = {}


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    batch_size, sequence_length, inner_dim = x.shape
    h = self.heads
    q_in = self.to_q(x)
    context = x if context is None else context
    context_k, context_v = hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context, self)
    k_in = self.to_k(context_k)
    v_in = self.to_v(context_v)
    head_dim = inner_dim // h
    q = q_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    k = k_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    v = v_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    hidden_states = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, h * head_dim).to(q.dtype)
    return self.to_out[1](self.to_out[0](hidden_states))


class SdOptimizationSdp:
    def apply(self):
        import ldm.modules.attention
        _original.setdefault('ldm', ldm.modules.attention.CrossAttention.forward)
        ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward


def undo():
    """sd_hijack_optimizations.undo: the class forward ldm shipped with."""
    import ldm.modules.attention
    if 'ldm' in _original:
        ldm.modules.attention.CrossAttention.forward = _original.pop('ldm')
