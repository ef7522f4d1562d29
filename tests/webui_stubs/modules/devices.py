import torch

device = torch.device('cpu')
cpu = torch.device('cpu')
dtype = torch.float32
dtype_vae = torch.float32
