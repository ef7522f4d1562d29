"""`python -m lib_omost bench attention [--quick]`: regional attention vs plain SDPA vs Omost's explicit processor.

One run, side by side, round-robin (every repeat times each method once, so load changes hit all of them alike):
  plain  - `scaled_dot_product_attention(q, k, v)` with the same keys (what the host does without regions)
  ours   - `RegionalAttention.regional` (k scaled per key, one SDPA with a broadcast (N, T) mask; plan cached)
  Omost  - Omost's `OmostCrossAttnProcessor` arithmetic: masks resized and repeated per call, the (B, heads, N, T)
           bool mask and score matrix, multiply, masked_fill, softmax, @ v
Times are medians in ms (CUDA: wall time; CPU: process CPU time on one thread, so that other jobs on a shared
machine do not skew the ratios). Peak memory is what one call adds on top of its inputs:
  CUDA - `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus what was allocated before;
  CPU  - peak resident set size: after all timings, glibc is told to serve allocations >= 64 KiB by mmap and the
         heap is trimmed before each call (so no freed memory is reused unseen), the kernel's peak-RSS counter is
         reset (/proc/self/clear_refs) and VmHWM read back after the call.
         This counts every byte the call touches (torch tensors and kernel scratch alike). Without /proc: n/a.
Ours also keeps a per-generation plan (the N x T additive mask + T key scales) per layer size and context length,
built once on the first step: the `plan MB` column. Per call, ours allocates the scaled keys and the output.
Last, one UNet step of a small real ldm UNet with the A1111 hooks armed vs without them (both with an SDPA class
forward, as A1111's --opt-sdp-attention installs).
"""

from __future__ import annotations

import ctypes
import math
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

SD15 = [(4096, 8, 40), (1024, 8, 80), (256, 8, 160), (64, 8, 160)]
SDXL = [(4096, 10, 64), (1024, 20, 64)]
CHUNKS = (3, 9, 18)
QUICK = [('SD1.5', 4096, 8, 40, 3), ('SD1.5', 4096, 8, 40, 18), ('SD1.5', 1024, 8, 80, 9), ('SD1.5', 64, 8, 160, 9),
         ('SDXL', 4096, 10, 64, 18), ('SDXL', 1024, 20, 64, 9)]
BATCH = 2
RECTS = [(0, 90, 0, 90), (0, 60, 0, 50), (30, 90, 40, 90), (10, 80, 20, 70), (45, 90, 0, 45)]  # global + 4


def _cases(quick):
    if quick:
        return QUICK
    return [(model, n, heads, d, chunks) for model, shapes in (('SD1.5', SD15), ('SDXL', SDXL))
            for n, heads, d in shapes for chunks in CHUNKS]


def _latent_for(pixels):
    side = math.isqrt(pixels)
    return side, side


class PeakMemory:
    """Peak bytes one call adds: CUDA allocator statistics, or peak RSS on Linux CPUs (see module doc)."""

    def __init__(self, device):
        self.device = device
        self.method = 'cuda max_memory_allocated' if device.type == 'cuda' else 'peak RSS (VmHWM), mmap >= 64 KiB'
        self.available = device.type == 'cuda' or self._prepare_cpu()
        # Serving every allocation by mmap adds page faults to every call: call this after all timings.

    def _prepare_cpu(self):
        try:
            self._libc = ctypes.CDLL('libc.so.6')
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self._status()
            return True
        except (OSError, AttributeError, KeyError):
            self.method = 'n/a (needs Linux /proc and glibc)'
            return False

    def start(self):
        """Switch to measuring (CPU: from now on glibc unmaps every freed block >= 64 KiB at once)."""
        if self.available and self.device.type == 'cpu':
            self._libc.mallopt(-3, 64 * 1024)   # M_MMAP_THRESHOLD (fixed: no more dynamic raising)
            self._libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD

    @staticmethod
    def _status():
        values = {}
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(('VmRSS:', 'VmHWM:')):
                    key, value = line.split(':')
                    values[key] = int(value.split()[0]) * 1024
        return values['VmRSS'], values['VmHWM']

    def measure(self, fn) -> float:
        """MB; nan when not measurable."""
        if not self.available:
            return float('nan')
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del out
            return peak / 2 ** 20
        self._libc.malloc_trim(0)  # freed heap blocks would be reused without touching new pages
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base, _ = self._status()
        out = fn()
        _, peak = self._status()
        del out
        return max(peak - base, 0) / 2 ** 20


def omost_processor(q, k, v, masks90, token_counts):
    """Omost's OmostCrossAttnProcessor after the projections (lllyasviel/Omost lib_omost/pipeline.py), step by
    step: per-call mask resize and repeat, (B, heads, N, T) mask, explicit scores."""
    h, w = _latent_for(q.shape[2])
    columns = [F.interpolate(m[None, None], (h, w), mode='nearest-exact').flatten().unsqueeze(1).repeat(1, n)
               for m, n in zip(masks90, token_counts)]
    masks = torch.cat(columns, dim=1)
    mask_bool = masks > 0.5
    mask_scale = (h * w) / torch.sum(masks, dim=0, keepdim=True)
    mask_bool = mask_bool[None, None].repeat(q.shape[0], q.shape[1], 1, 1)
    mask_scale = mask_scale[None, None].repeat(q.shape[0], q.shape[1], 1, 1)
    sim = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    sim = sim * mask_scale.to(sim)
    sim.masked_fill_(mask_bool.logical_not(), float('-inf'))
    return sim.softmax(dim=-1) @ v


def _token_layout(chunks, regions):
    """Chunk i of 77 tokens belongs to region i % regions, like the bags (every region gets >= 1 chunk)."""
    owner = [i % regions for i in range(chunks)]
    token_region = torch.tensor(owner).repeat_interleave(77)
    counts = [77 * owner.count(r) for r in range(regions)]
    order = torch.argsort(token_region, stable=True)  # Omost concatenates each region's tokens in turn
    return token_region[order], counts


def _masks90(rects):
    out = []
    for top, bottom, left, right in rects:
        m = torch.zeros(90, 90)
        m[top:bottom, left:right] = 1.0
        out.append(m)
    return out


def _clock(device):
    """CUDA: wall time after synchronize. CPU: this process's CPU time, which the other jobs on a shared machine
    do not inflate (the benchmark runs torch on one thread there, so it equals wall time on an idle machine)."""
    if device.type == 'cuda':
        def now():
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.process_time


def _time_round_robin(fns, repeats, device):
    now = _clock(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            fn()
            times[name].append((now() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def attention_row(pixels, heads, d, chunks, device, dtype, warm=('plain', 'ours', 'Omost')):
    """The three methods on one shape, warmed up (our plan is built once, as on a generation's first step)."""
    from lib_omost.attention import RegionalAttention
    g = torch.Generator().manual_seed(pixels + chunks)
    tokens, counts = _token_layout(chunks, len(RECTS))
    q, k, v = (torch.randn(BATCH, heads, n, d, generator=g).to(device, dtype)
               for n in (pixels, tokens.numel(), tokens.numel()))
    regional = RegionalAttention(RECTS, tokens, _latent_for(pixels))
    masks90 = [m.to(device, dtype) for m in _masks90(RECTS)]
    fns = {'plain': lambda: F.scaled_dot_product_attention(q, k, v),
           'ours': lambda: regional.regional(q, k, v),
           'Omost': lambda: omost_processor(q, k, v, masks90, counts)}
    for name in warm:
        fns[name]()
    plan = regional.plan_for(pixels, tokens.numel(), q.device, q.dtype)
    plan_mb = plan.nbytes / 2 ** 20
    return fns, plan_mb


# --- UNet step ----------------------------------------------------------------------------------------------


def _sdp_class_forward(self, x, context=None, mask=None, **kwargs):
    """A1111's --opt-sdp-attention CrossAttention forward (what the class attribute is during a generation)."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, h = x.shape[0], self.heads
    q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], -1)
    return self.to_out(out)


def bench_unet_step(repeats, device, dtype, quick):
    from ldm.modules.attention import CrossAttention
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lib_omost.attention import RegionalAttention
    from omost_webui.hosts import a1111

    torch.manual_seed(0)
    latent, chunks = (32, 32) if quick else (64, 64), 9
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 4),
                     num_res_blocks=1, attention_resolutions=(1, 2, 4), use_spatial_transformer=True,
                     transformer_depth=1, context_dim=256, num_heads=8, legacy=False).to(device, dtype).eval()
    tokens, _ = _token_layout(chunks, len(RECTS))
    x = torch.randn(2, 4, *latent, device=device, dtype=dtype)
    context = torch.randn(2, tokens.numel(), 256, device=device, dtype=dtype)
    t = torch.full((2,), 500.0, device=device)
    params = types.SimpleNamespace(text_cond=context[:1], text_uncond=context[1:], sampling_step=0,
                                   total_sampling_steps=20)
    hooks = a1111.A1111RegionalHooks(RegionalAttention(RECTS, tokens, None), context_kv=lambda c: (c, c))
    original = CrossAttention.forward
    CrossAttention.forward = _sdp_class_forward
    try:
        def plain():
            with torch.no_grad():
                return unet(x, t, context=context)

        def regional():
            hooks.arm()
            hooks.on_cfg_denoiser(params)
            try:
                with torch.no_grad():
                    return unet(x, t, context=context)
            finally:
                hooks.disarm()

        hooks.install(unet, arm=False)
        regional(), plain()
        ms = _time_round_robin({'without': plain, 'with': regional}, repeats, device)
    finally:
        hooks.remove()
        CrossAttention.forward = original
    return {'latent': latent, 't': tokens.numel(), 'ms': ms}


# --- report ---------------------------------------------------------------------------------------------------


def _fmt(value, digits=1):
    return 'n/a' if math.isnan(value) else f'{value:.{digits}f}'


def main(args) -> int:
    quick = bool(getattr(args, 'quick', False))
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    repeats = 3 if quick else 9
    memory = PeakMemory(device)
    threads = torch.get_num_threads()
    if device.type == 'cpu':
        torch.set_num_threads(1)
    try:
        return _report(quick, device, dtype, repeats, memory)
    finally:
        torch.set_num_threads(threads)


def _report(quick, device, dtype, repeats, memory):
    clock = 'wall time' if device.type == 'cuda' else 'process CPU time, 1 thread'
    print(f'# attention benchmark: {device.type}, {dtype}, torch {torch.__version__}, {clock}, '
          f'batch {BATCH}, {len(RECTS)} regions, median of {repeats}')
    print(f'# peak memory: {memory.method}')
    print()
    rows = []
    for model, n, heads, d, chunks in _cases(quick):  # timings first: measuring memory slows allocations
        fns, plan_mb = attention_row(n, heads, d, chunks, device, dtype)
        ms = _time_round_robin(fns, repeats, device)
        rows.append({'model': model, 'n': n, 'heads': heads, 'd': d, 't': 77 * chunks, 'ms': ms, 'plan_mb': plan_mb,
                     'slow': ms['ours'] / ms['plain'], 'fast': ms['Omost'] / ms['ours']})
        del fns
    try:
        unet = bench_unet_step(repeats, device, dtype, quick)
    except ImportError as e:  # ldm (stable-diffusion-sdkit) or the omost_webui package next to lib_omost
        unet = f'# UNet step skipped: {e}'
    memory.start()
    for r, (model, n, heads, d, chunks) in zip(rows, _cases(quick)):
        fns, _ = attention_row(n, heads, d, chunks, device, dtype, warm=('ours',))
        r['mb'] = {name: memory.measure(fn) for name, fn in fns.items()}
        r['less'] = r['mb']['Omost'] / r['mb']['ours'] if r['mb']['ours'] > 0 else float('nan')
        del fns

    print('| model | N | heads x d | T | plain ms | ours ms | Omost ms | ours/plain | Omost/ours '
          '| plain MB | ours MB | Omost MB | Omost/ours MB | plan MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['n']} | {r['heads']}x{r['d']} | {r['t']} | {_fmt(r['ms']['plain'])} "
              f"| {_fmt(r['ms']['ours'])} | {_fmt(r['ms']['Omost'])} | {_fmt(r['slow'], 2)} | {_fmt(r['fast'], 2)} "
              f"| {_fmt(r['mb']['plain'])} | {_fmt(r['mb']['ours'])} | {_fmt(r['mb']['Omost'])} "
              f"| {_fmt(r['less'], 1)} | {_fmt(r['plan_mb'])} |")
    big = [r for r in rows if r['n'] == 4096 and r['t'] >= 1232]
    if big:
        print()
        print(f"# N=4096, T>=1232: ours/plain x{_fmt(max(r['slow'] for r in big), 2)} (worst), "
              f"vs Omost x{_fmt(min(r['fast'] for r in big), 2)} faster (worst), "
              f"x{_fmt(min(r['less'] for r in big), 1)} less memory (worst)")
    print()
    if isinstance(unet, str):
        print(unet)
    else:
        _print_unet(unet)
    print()
    slow = statistics.median(r['slow'] for r in rows)
    fast = statistics.median(r['fast'] for r in rows)
    less = statistics.median(r['less'] for r in rows) if memory.available else float('nan')
    print(f'attention: regional/plain x{slow:.2f}, vs Omost x{fast:.1f} faster, x{_fmt(less, 1)} less memory')
    sys.stdout.flush()
    return 0


def _print_unet(unet):
    print('| UNet step (small ldm UNet, A1111 hooks) | latent | T | without ms | with regions ms | with/without |')
    print('|---|---|---|---|---|---|')
    ratio = unet['ms']['with'] / unet['ms']['without']
    print(f"| batch 2 (cond + uncond) | {unet['latent'][0]}x{unet['latent'][1]} | {unet['t']} "
          f"| {_fmt(unet['ms']['without'])} | {_fmt(unet['ms']['with'])} | {_fmt(ratio, 2)} |")
