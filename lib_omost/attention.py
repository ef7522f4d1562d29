"""Omost's regional cross-attention as ONE `scaled_dot_product_attention` call.

Omost (`OmostCrossAttnProcessor`) renders regions by editing cross-attention scores. For key token j owned by
region r and query pixel n of a layer with h x w pixels:

    score[n, j] = q_n . k_j / sqrt(d) * (h * w / area(r))     and -inf where pixel n lies outside r

The multiplier depends only on the key, so it folds into k, and the mask is the same for every batch row and head:
one SDPA call with a broadcast (N, T) mask, no (B, heads, N, T) score matrix. k is multiplied by
scale_j / max_scale (<= 1, keys never grow) and max_scale goes into SDPA's own `scale` argument.

Strength s is Omost's area emphasis as an exponent, in the same single call:

    score[n, j] = q_n . k_j / sqrt(d) * scale_j ** s     and -inf where pixel n lies outside region(j), for s > 0

s = 0 switches regions off: exactly plain attention (plain SDPA is called). s = 1 is exactly Omost. Between them
the regions keep their masks with less emphasis (softer local prompts); above 1 the emphasis grows. (A soft mask
that fades in with s was rejected: with the emphasis applied to every pixel, a small region's boosted tokens
would leak over the whole image unless the mask is hard.) Token columns that no region owns (token_region == -1,
e.g. the padding A1111 appends to the cond when the negative prompt is longer) are never attended by regional
rows.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from lib_omost.canvas import region_masks as canvas_region_masks

log = logging.getLogger(__name__)

UNOWNED = -1  # token_region value of a column that no region owns: masked out for regional rows
# Plans are cached per layer size and context length for the job and freed at its end. A plan's mask is one byte
# per (pixel, token): 7.5 MB at SDXL 1024 px (64 x 64 level) with 24 bags, 20 MB with 64. The cache stays under
# this many bytes (oldest plans go first; a job needs a handful: one per attn2 level and context length).
_MAX_PLAN_BYTES = 256 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the single SDPA call needs for one layer size and context length."""
    key_scale: torch.Tensor  # (T, 1): scale_j / max_scale, in the compute dtype
    max_scale: float
    attn_mask: torch.Tensor  # (N, T) bool, True = attend, broadcast over batch rows and heads

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.key_scale, self.attn_mask))


def make_plan(region_masks, token_region, strength: float, dtype: torch.dtype, device=None) -> Plan:
    """The key scales and the mask for masks (R, N) of one layer and the token->region map (T,)."""
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # half precision is computed in float32, see attend()
    masks = torch.as_tensor(region_masks, device=device).bool()
    tokens = torch.as_tensor(token_region, dtype=torch.long, device=masks.device)
    if masks.dim() != 2 or tokens.dim() != 1:
        raise ValueError(f'region_masks must be (R, N) and token_region (T,), got {tuple(masks.shape)} and '
                         f'{tuple(tokens.shape)}')
    if tokens.numel() and (int(tokens.max()) >= masks.shape[0] or int(tokens.min()) < UNOWNED):
        raise ValueError(f'token_region values must lie in [-1, {masks.shape[0] - 1}]')
    pixels = masks.shape[1]
    owned = tokens >= 0
    region_of = tokens.clamp(min=0)

    # Omost: h*w / area. A region can vanish at a coarse level: clamp its area so the scale stays finite.
    area = masks.sum(dim=1, dtype=torch.float64).clamp(min=1.0)
    scale = ((pixels / area) ** strength)[region_of]
    scale = torch.where(owned, scale, torch.ones_like(scale))
    max_scale = float(scale.max()) if scale.numel() else 1.0

    allowed = (masks.t()[:, region_of] & owned[None, :]).contiguous()  # (N, T), True = attend
    # A pixel outside every region (no global region, or it vanished at this level) would softmax over
    # nothing (NaN): let it see every owned token instead.
    stranded = ~allowed.any(dim=1)
    if bool(stranded.any()):
        allowed[stranded] = owned if bool(owned.any()) else True
    # Kept as bool (1 byte per entry, a quarter of an additive float mask): SDPA gives the same result for a bool
    # mask as for 0 / -inf, at the same speed (it builds the additive form per call, not kept between calls).
    key_scale = (scale / max_scale).to(dtype)[:, None]
    return Plan(key_scale=key_scale, max_scale=max_scale, attn_mask=allowed)


def attend(q, k, v, plan: Plan):
    """Regional attention for q (B, heads, N, d), k/v (B, heads, T, d) with a plan for (N, T).

    Half precision is computed in float32: the region scales make logits up to h*w/area times larger, and
    rounding the scaled keys to fp16/bf16 would amplify into errors ~3x the output's own rounding (still 3x
    smaller than Omost's fp16 path, but avoidable). It costs one upcast of the cond rows of attn2 only."""
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k * plan.key_scale, v, attn_mask=plan.attn_mask,
                                         scale=plan.max_scale / math.sqrt(q.shape[-1]))
    return out.to(dtype)


def omost_attention(q, k, v, region_masks, token_region, strength: float = 1.0):
    """Omost's regional cross-attention. region_masks (R, N) bool of this layer (row-major h x w),
    token_region (T,) long (region index per key token, -1 = unowned) -> (B, heads, N, d)."""
    if strength <= 0:
        return F.scaled_dot_product_attention(q, k, v)
    return attend(q, k, v, make_plan(region_masks, token_region, strength, q.dtype, q.device))


def layer_size(pixels: int, height: int, width: int):
    """(h, w) of the UNet level with `pixels` = h*w for a latent of height x width, or None.
    Each stride-2 downsampling rounds up, so the sizes are repeated ceil-halvings."""
    h, w = int(height), int(width)
    while h * w > pixels and (h > 1 or w > 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (h, w) if h * w == pixels else None


class RegionalAttention:
    """Per-generation state the host hooks share: the canvas rects, the cond token map, the latent size, the
    strength and the step window. Masks and plans are built once per layer size, device and dtype."""

    def __init__(self, rects, token_region, latent_size, strength: float = 1.0, start: float = 0.0,
                 end: float = 1.0):
        self.rects = [tuple(int(v) for v in r) for r in rects]
        self.token_region = torch.as_tensor(token_region, dtype=torch.long).flatten().cpu()
        if not self.rects:
            raise ValueError('RegionalAttention needs at least one region')
        if self.token_region.numel() == 0:
            raise ValueError('the token map is empty')
        if int(self.token_region.max()) >= len(self.rects) or int(self.token_region.min()) < UNOWNED:
            raise ValueError(f'token map values must lie in [-1, {len(self.rects) - 1}]')
        self.strength = float(strength)
        self.start, self.end = float(start), float(end)
        self.latent_size = None  # (H, W) of the latent; hooks update it per UNet call
        if latent_size is not None:
            self.set_latent_size(*latent_size)
        self.image_size = None   # (H, W) of the latent the sampler denoises; see set_image_size
        self.notify = None       # callable(message): where the job tells the user (console, status, infotext)
        self.progress = 0.0
        self._masks = {}
        self._plans = {}
        self._logged = set()

    @property
    def cond_length(self) -> int:
        return self.token_region.numel()

    def set_latent_size(self, height: int, width: int):
        self.latent_size = (int(height), int(width))

    def clear_plans(self):
        """Forget the plans and masks (a model switch: other layers; the job's end: free them)."""
        self._plans.clear()
        self._masks.clear()

    def set_image_size(self, height: int, width: int):
        """The latent of the whole image this pass samples. A UNet call on another size sees a tile of it (tiled
        diffusion: Forge's built-in MultiDiffusion, A1111's Tiled Diffusion extension), and nothing says where the
        tile lies: such calls get plain attention, never the whole canvas squeezed into the tile."""
        self.image_size = (int(height), int(width))

    def _tile(self):
        """Message for a UNet call on a tile of the image, or None."""
        if self.image_size is None or self.latent_size is None or self.latent_size == self.image_size:
            return None
        (th, tw), (h, w) = self.latent_size, self.image_size
        return (f'tiled diffusion is on (the UNet sees {th * 8}x{tw * 8} px tiles of the {h * 8}x{w * 8} px image): '
                'regions are not applied to tiles, the region prompts act on every tile as one prompt. Turn '
                'tiled diffusion off for regional prompting.')

    def set_progress(self, fraction: float):
        self.progress = float(fraction)

    @property
    def active(self) -> bool:
        """Regions apply now: strength above 0 and the sampling inside the step window."""
        inside = self.start <= self.progress < self.end or (self.end >= 1.0 and self.progress >= self.start)
        return self.strength > 0 and inside

    def _log_once(self, message: str):
        if message not in self._logged:
            self._logged.add(message)
            if self.notify is not None:
                self.notify(message)
            else:
                log.warning('Omost: %s', message)

    def layer_masks(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._masks:
            masks = canvas_region_masks(self.rects, h, w).reshape(len(self.rects), h * w)
            self._masks[key] = torch.from_numpy(masks).to(device)
        return self._masks[key]

    def columns(self, length: int, tiled: bool):
        """The token map for a context of `length` columns, or None when it does not fit."""
        own = self.cond_length
        if length == own:
            return self.token_region
        if tiled and length % own == 0:  # Forge repeats cond and uncond to their LCM length
            return self.token_region.repeat(length // own)
        if length > own:  # padded cond: the extra columns belong to no region
            pad = torch.full((length - own,), UNOWNED, dtype=torch.long)
            return torch.cat([self.token_region, pad])
        return None

    def plan_for(self, pixels: int, length: int, device, dtype, tiled: bool = True):
        """The plan for a layer with `pixels` queries and `length` keys, or None for plain attention."""
        if not self.active:
            return None
        key = (pixels, length, self.latent_size, str(device), dtype, tiled)
        if key in self._plans:
            return self._plans[key]
        plan = None
        size = layer_size(pixels, *self.latent_size) if self.latent_size else None
        columns = self.columns(length, tiled)
        tile = self._tile()
        if tile:
            self._log_once(tile)
        elif self.latent_size is None:
            self._log_once('the latent size is unknown; plain attention')
        elif size is None:
            self._log_once(f'no UNet level of the {self.latent_size[0]}x{self.latent_size[1]} latent has '
                           f'{pixels} pixels; plain attention there')
        elif columns is None:
            self._log_once(f'context of {length} tokens is shorter than the {self.cond_length}-token region '
                           f'prompt; plain attention there')
        else:
            plan = make_plan(self.layer_masks(*size, device), columns.to(device), self.strength, dtype)
        self._plans[key] = plan
        while len(self._plans) > 1 and sum(p.nbytes for p in self._plans.values() if p is not None) > _MAX_PLAN_BYTES:
            del self._plans[next(iter(self._plans))]  # the oldest
        return plan

    @property
    def plan_bytes(self) -> int:
        """Bytes held by the cached plans."""
        return sum(p.nbytes for p in self._plans.values() if p is not None)

    def regional(self, q, k, v, cond_rows=None, tiled: bool = True, plain=None):
        """Attention for q (B, heads, N, d), k/v (B, heads, T, d): rows in cond_rows (None = all; a slice, a
        list or a bool/long tensor of batch rows) regional, the other rows `plain(q, k, v)` (default: SDPA; a
        host passes its own attention function)."""
        plain = plain or F.scaled_dot_product_attention
        rows = _row_selection(cond_rows, q.shape[0])
        plan = None if rows is None else self.plan_for(q.shape[2], k.shape[2], q.device, q.dtype, tiled)
        if plan is None:
            return plain(q, k, v)
        if isinstance(rows, slice):  # the usual case (A1111: cond first; Forge: uncond first): views, no sync
            start, stop = rows.start, rows.stop
            parts = [attend(q[start:stop], k[start:stop], v[start:stop], plan)]
            if start > 0:
                parts.insert(0, plain(q[:start], k[:start], v[:start]))
            if stop < q.shape[0]:
                parts.append(plain(q[stop:], k[stop:], v[stop:]))
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        if isinstance(rows, torch.Tensor):
            rows = rows.to(q.device)
        others = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
        others[rows] = False
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        out[rows] = attend(q[rows], k[rows], v[rows], plan)
        if bool(others.any()):
            out[others] = plain(q[others], k[others], v[others])
        return out


def _row_selection(cond_rows, batch: int):
    """cond_rows as a slice or a long index tensor; None when no row is regional."""
    if cond_rows is None:
        return slice(0, batch)
    if isinstance(cond_rows, slice):
        start, stop, step = cond_rows.indices(batch)
        if step == 1:
            return slice(start, stop) if stop > start else None
        cond_rows = list(range(start, stop, step))
    index = torch.as_tensor(cond_rows)
    if index.dtype == torch.bool:
        index = index.nonzero().flatten()
    index = index.long().flatten()
    if index.numel() == 0:
        return None
    if torch.equal(index, torch.arange(int(index[0]), int(index[0]) + index.numel())):
        return slice(int(index[0]), int(index[0]) + index.numel())
    return index
