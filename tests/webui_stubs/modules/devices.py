import torch

device = torch.device('cpu')
cpu = torch.device('cpu')
dtype = torch.float32
dtype_vae = torch.float32


def autocast(disable=False):
    """devices.autocast: a no-op context on CPU float32 (A1111 returns contextlib.nullcontext() there)."""
    import contextlib
    return contextlib.nullcontext()
