"""A1111 1.10's hypernetworks as attn2 sees them (modules/hypernetworks/hypernetwork.py).

HypernetworkModule.forward: `x + self.linear(x) * multiplier` (linear layers sized dim * layer_structure, here
the default [1, 2, 1] with the "linear" activation, i.e. none). A Hypernetwork holds, per context width, a pair of
modules for the keys and the values. apply_hypernetworks(hypernetworks, context, layer) threads the context through
every loaded hypernetwork's pair (apply_single_hypernetwork) and returns (context_k, context_v); every attention
optimisation of A1111 (sd_hijack_optimizations.py: split_cross_attention_forward, ..._sdp, xformers, sub-quad)
calls it on the context of attn2 before to_k / to_v."""
import torch


class HypernetworkModule(torch.nn.Module):
    multiplier = 1.0

    def __init__(self, dim, layer_structure=(1, 2, 1), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers = []
        for i in range(len(layer_structure) - 1):
            linear = torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1]))
            with torch.no_grad():  # weight_init 'Normal' (std 0.01) would be too gentle to see in a test
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.2)
                linear.bias.zero_()
            layers.append(linear)
        self.linear = torch.nn.Sequential(*layers)
        self.eval()

    def forward(self, x):
        return x + self.linear(x) * (self.multiplier if not self.training else 1)


class Hypernetwork:
    def __init__(self, name='hn', enable_sizes=(64,), seed=0):
        self.name = name
        self.layers = {size: (HypernetworkModule(size, seed=seed), HypernetworkModule(size, seed=seed + 1))
                       for size in enable_sizes}


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    hypernetwork_layers = (hypernetwork.layers if hypernetwork is not None else {}).get(context_k.shape[2], None)
    if hypernetwork_layers is None:
        return context_k, context_v
    if layer is not None:
        layer.hyper_k = hypernetwork_layers[0]
        layer.hyper_v = hypernetwork_layers[1]
    return hypernetwork_layers[0](context_k), hypernetwork_layers[1](context_v)


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context
    context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v, layer)
    return context_k, context_v
