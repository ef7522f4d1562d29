"""What Forge's `backend` and the `ldm_patched` of Forge Classic / reForge both took from ComfyUI, written once for
their two stubs: attention_pytorch (backend/attention.py; ldm_patched/ldm/modules/attention.py) and the
ModelPatcher methods that add a patch to a list (backend/patcher/base.py; ldm_patched/modules/model_patcher.py
set_model_patch, which writes into the patcher's own transformer_options)."""
import torch


def logging_attention_pytorch(calls, precisions=None):
    """attention_pytorch(q, k, v, heads, mask=None, ...) on (B, N, heads * dim_head) tensors, appending
    (batch rows, query length, key length) of every call to `calls` (and its attn_precision to `precisions`), so
    tests see what went through it."""

    def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                          skip_output_reshape=False):
        calls.append((q.shape[0], q.shape[-2], k.shape[-2]))
        if precisions is not None:
            precisions.append(attn_precision)
        if skip_reshape:
            b, _, _, dim_head = q.shape
        else:
            b, _, dim_head = q.shape
            dim_head //= heads
            q, k, v = map(lambda t: t.view(b, -1, heads, dim_head).transpose(1, 2), (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                                               is_causal=False)
        return out.transpose(1, 2).reshape(b, -1, heads * dim_head)

    return attention_pytorch


class ComfyModelPatcher:
    labels_rows_by_index = True  # see the family stubs

    def __init__(self, model):
        self.model = model
        self.model_options = {'transformer_options': {}}

    def set_model_patch(self, patch, name):
        to = self.model_options['transformer_options']
        if 'patches' not in to:
            to['patches'] = {}
        to['patches'][name] = to['patches'].get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        raise NotImplementedError  # the families differ here

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, 'attn2_patch')

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, 'attn2', block_name, number, transformer_index)
