"""The denoising U-Net, predicting ε or v as its schedule says (Ho et al. 2020, with the improvements
of Dhariwal & Nichol 2021).

A `UNetConfig` fully describes the network; it is stored in every checkpoint and rebuilds the
model with `UNet(config)`. Residual blocks use GroupNorm and receive the sinusoidal time
embedding as a scale-and-shift of the normalised activations ("AdaGN", Dhariwal & Nichol, §3);
self-attention runs at the resolutions listed in `attention_resolutions`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .limits import check_float, check_int, check_int_list, shown


# Limits on a config read from a file, generous above the presets (at most 64 px, 24 channels,
# 4 levels, 1 block per level, 8 groups); `checkpoint.MEMORY_BUDGET` then bounds their combination.
MAX_IMAGE_SIZE = 1024  # 16× the shipped model's 64 px
MAX_IN_CHANNELS = 16  # images have 1 (grey) to 4 (RGBA)
MAX_BASE_CHANNELS = 1024  # ADM's ImageNet U-Nets use 192 to 256 (Dhariwal & Nichol 2021)
MAX_LEVELS = 8  # a 1,024 px image downsampled 7 times is 8 px; kitty-64 has 4 levels
MAX_CHANNEL_MULT = 16  # the widest level at most 16× the first (kitty-64: 8×)
MAX_RES_BLOCKS = 8  # per level; the presets use 1, ADM 2 to 3
MAX_HEAD_CHANNELS = 1024  # channels per attention head; kitty-64 uses 32
MAX_NORM_GROUPS = 1024  # GroupNorm groups; they must divide every level's channel count anyway


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    attention_head_channels: int = 32
    dropout: float = 0.0
    norm_groups: int = 32

    def __post_init__(self) -> None:
        """Check every field's type and bounds (a config may come from an edited file), then
        that the levels fit together. JSON turns tuples into lists; store tuples so that configs
        compare equal."""
        check_int("image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        check_int("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        check_int("base_channels", self.base_channels, 1, MAX_BASE_CHANNELS)
        mults = check_int_list("channel_mults", self.channel_mults, MAX_LEVELS, 1, MAX_CHANNEL_MULT)
        if not mults:
            raise ValueError("channel_mults must list at least one level")
        object.__setattr__(self, "channel_mults", mults)
        check_int("num_res_blocks", self.num_res_blocks, 1, MAX_RES_BLOCKS)
        resolutions = check_int_list("attention_resolutions", self.attention_resolutions, MAX_LEVELS, 1, MAX_IMAGE_SIZE)
        object.__setattr__(self, "attention_resolutions", resolutions)
        check_int("attention_head_channels", self.attention_head_channels, 1, MAX_HEAD_CHANNELS)
        if not 0 <= check_float("dropout", self.dropout) < 1:
            raise ValueError(f"dropout must be from 0 to below 1, not {shown(self.dropout)}")
        check_int("norm_groups", self.norm_groups, 1, MAX_NORM_GROUPS)

        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"image size {self.image_size} is not divisible by {factor}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.norm_groups:
                raise ValueError("every level's channel count must be divisible by norm_groups")
        for channels, resolution in self.attention_levels():
            heads = attention_heads(channels, self.attention_head_channels)
            if channels % heads:
                raise ValueError(f"{channels} channels do not split into {heads} attention heads")

    def levels(self) -> list[tuple[int, int]]:
        """(channels, resolution) of each level, from the full image size down."""
        return [(self.base_channels * mult, self.image_size >> level) for level, mult in enumerate(self.channel_mults)]

    def attention_levels(self) -> list[tuple[int, int]]:
        """(channels, resolution) of every level with self-attention, the middle block included."""
        levels = [(ch, res) for ch, res in self.levels() if res in self.attention_resolutions]
        return levels + [self.levels()[-1]]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        if not isinstance(data, dict):
            raise ValueError(f"the model config must be a JSON object, not {shown(data)}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def attention_heads(channels: int, head_channels: int) -> int:
    return max(1, channels // head_channels)


PRESETS: dict[str, UNetConfig] = {
    # For tests and CPU demos: well under 1 M parameters, trains in minutes on a laptop.
    "tiny": UNetConfig(
        image_size=32,
        base_channels=24,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        norm_groups=8,
    ),
    # The shipped model: 6.3 M parameters (12 MiB in fp16), 2.4 GFLOP per image, with little
    # width at full resolution so that 16 cats in 20 steps take seconds on a 2-core CPU.
    "kitty-64": UNetConfig(
        image_size=64,
        base_channels=24,
        channel_mults=(1, 2, 4, 8),
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        attention_head_channels=32,
        norm_groups=8,
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, §3.5)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch's last layer at zero so every block begins as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, then AdaGN: norm(h)·(1 + scale) + shift from the time embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, as a residual block."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = attention_heads(channels, head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (b, heads, hw, c/heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε_θ(x_t, t): predicts the noise in x_t at integer timestep t."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        emb_dim = 4 * c.base_channels
        groups = c.norm_groups
        self.time_embed = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)

        def res(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, c.dropout, groups)

        def attn(ch: int, resolution: int) -> nn.Module:
            if resolution in c.attention_resolutions:
                return SelfAttention(ch, c.attention_head_channels, groups)
            return nn.Identity()

        # Encoder: remember the channel count of every activation pushed onto the skip stack.
        self.down = nn.ModuleList()
        skip_channels = [c.base_channels]
        ch, resolution = c.base_channels, c.image_size
        for level, mult in enumerate(c.channel_mults):
            out_ch = c.base_channels * mult
            for _ in range(c.num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, out_ch), attn(out_ch, resolution)]))
                ch = out_ch
                skip_channels.append(ch)
            if level < len(c.channel_mults) - 1:
                self.down.append(Downsample(ch))
                resolution //= 2
                skip_channels.append(ch)

        self.mid = nn.ModuleList([res(ch, ch), SelfAttention(ch, c.attention_head_channels, groups), res(ch, ch)])

        # Decoder: one more block per level than the encoder, each consuming one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            out_ch = c.base_channels * mult
            for _ in range(c.num_res_blocks + 1):
                self.up.append(nn.ModuleList([res(ch + skip_channels.pop(), out_ch), attn(out_ch, resolution)]))
                ch = out_ch
            if level > 0:
                self.up.append(Upsample(ch))
                resolution *= 2

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, c.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.time_embed[0].in_features))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                block, attention = layer
                h = attention(block(h, emb))
            skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                block, attention = layer
                h = attention(block(torch.cat([h, skips.pop()], dim=1), emb))
        return self.conv_out(F.silu(self.norm_out(h)))


def activation_estimate(config: UNetConfig) -> int:
    """An upper estimate of the activation values alive at once in a forward pass for one image:
    the whole skip stack, plus the working set of the largest layer. A residual block holds its
    input, the normalised input, the convolutions' outputs, the shortcut and the sum (3·in + 5·out
    per pixel, counting the concatenated decoder input twice); self-attention holds q, k, v, the
    output and the heads × (HW)² score matrix before and after the softmax."""
    c = config

    def block(in_ch: int, out_ch: int, res: int) -> int:
        return (3 * in_ch + 5 * out_ch) * res * res

    def attention(ch: int, res: int) -> int:
        return 9 * ch * res * res + 2 * attention_heads(ch, c.attention_head_channels) * res**4

    skips = [(c.base_channels, c.image_size)]  # (channels, resolution) of each skip, as in UNet
    layers = [c.base_channels * c.image_size**2]
    ch = c.base_channels
    levels = c.levels()
    for level, (out_ch, res) in enumerate(levels):
        for _ in range(c.num_res_blocks):
            layers.append(block(ch, out_ch, res) + (attention(out_ch, res) if res in c.attention_resolutions else 0))
            ch = out_ch
            skips.append((ch, res))
        if level < len(levels) - 1:
            skips.append((ch, res // 2))
    stack = sum(channels * res * res for channels, res in skips)
    res = levels[-1][1]
    layers.append(block(ch, ch, res) + attention(ch, res))
    for level, (out_ch, res) in reversed(list(enumerate(levels))):
        for _ in range(c.num_res_blocks + 1):
            layers.append(block(ch + skips.pop()[0], out_ch, res) + (attention(out_ch, res) if res in c.attention_resolutions else 0))
            ch = out_ch
        if level > 0:
            layers.append(2 * ch * (2 * res) ** 2)  # nearest upsampling, then a convolution
    return stack + max(layers)


def saved_for_backward(config: UNetConfig, batch: int) -> int:
    """Bytes of the float32 tensors autograd keeps from a forward pass of `batch` images for the
    backward pass, counted on the meta device (nothing is allocated); a tensor saved by two
    operations counts twice, so this errs high."""
    with torch.device("meta"):
        model = UNet(config)
        x = torch.empty(batch, config.in_channels, config.image_size, config.image_size)
        t = torch.zeros(batch, dtype=torch.long)
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, nn.Parameter):
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t)
    return sum(saved)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
