"""The default video model's denoiser: the shipped image UNet run per frame, plus trained motion layers.

`GenstackVideoUNet` wraps a `UNet2DConditionModel` (the spatial model; for the default, the
project's image model, which already draws the right shape and colours) and puts a motion module
after every resnet of its mid block and decoder, AnimateDiff-style. It is a standard diffusers
model (`ModelMixin` + `ConfigMixin`): `save_pretrained` / `from_pretrained` work on a folder, and
the pipeline folder's model_index.json names it like any other component.

Why not `UNetMotionModel.from_unet2d`: it drops the image UNet's `encoder_hid_dim_type="text_proj"`
and `addition_embed_type="text"` (its forward then fails on `encoder_hid_proj`), and its motion
layers are temporal self-attention only, which cannot read the direction from the prompt. Here
the image UNet runs unchanged (frames folded into the batch, text states repeated per frame, as
UNetMotionModel expects), and each motion module reads both the noise level (the resnet's time
embedding, which includes the image model's pooled prompt) and a direction-aware prompt summary.

A motion module: GroupNorm -> depthwise 3x3x3 conv over (frame, y, x) -> pointwise conv ->
FiLM from the prompt summary and time embedding -> SiLU -> temporal conv (3 frames) whose weights
start at zero, added to the input. A depthwise 3x3x3 kernel can express "this feature one pixel
to the right in the previous frame", the building block of a steady translation, and the FiLM
chooses which channels (which directions) are active for a prompt. Being convolutional in time,
the modules run on any number of frames. With the output convs at zero the model starts exactly
as the image model applied frame by frame.

Input/output layout is diffusers' video convention: [batch, channels, frames, height, width].
"""

from __future__ import annotations

import copy

import diffusers
import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn


class PromptSummary(nn.Module):
    """Attention pooling of the prompt's token states (learned queries), to one vector per prompt."""

    def __init__(self, text_dim: int, dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(text_dim, heads, bias=False)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim * heads, dim))

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.key(states)  # B, T, heads
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[..., None], torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1)
        values = self.value(states)  # B, T, dim
        pooled = torch.einsum("bth,btd->bhd", weights, values).flatten(1)
        return self.out(pooled)


class MotionModule(nn.Module):
    def __init__(self, channels: int, temb_dim: int, cond_dim: int, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.spatiotemporal = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.mix = nn.Conv3d(channels, channels, 1)
        self.film = nn.Linear(temb_dim + cond_dim, 2 * channels)
        self.out = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.context: dict | None = None  # set by GenstackVideoUNet.forward for each call

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        ctx = self.context
        batch = ctx["batch"]
        frames = h.shape[0] // batch
        _, c, height, width = h.shape
        x = h.reshape(batch, frames, c, height, width).transpose(1, 2)  # B, C, F, H, W
        y = self.mix(self.spatiotemporal(self.norm(x)))
        cond = torch.cat([F.silu(temb.reshape(batch, frames, -1)[:, 0]), ctx["prompt"]], dim=-1)
        scale, shift = self.film(cond).to(y.dtype)[:, :, None, None, None].chunk(2, dim=1)
        y = self.out(F.silu(y * (1 + scale) + shift))
        return (x + y).transpose(1, 2).reshape(batch * frames, c, height, width)


class _ResnetWithMotion(nn.Module):
    """A spatial resnet followed by a motion module (same call signature as the resnet)."""

    def __init__(self, resnet: nn.Module, motion: MotionModule):
        super().__init__()
        self.resnet = resnet
        self.motion = motion

    def forward(self, hidden_states, temb=None, *args, **kwargs):
        return self.motion(self.resnet(hidden_states, temb, *args, **kwargs), temb)


class GenstackVideoUNet(ModelMixin, ConfigMixin):
    """Text-to-video denoiser: a 2D conditional UNet per frame with motion modules in mid block and decoder."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        spatial_config: dict | None = None,
        text_dim: int = 1152,
        prompt_dim: int = 128,
        motion_groups: int = 8,
        max_frames: int = 64,
    ):
        super().__init__()
        cfg = {k: v for k, v in (spatial_config or {}).items() if not k.startswith("_")}
        self.spatial = UNet2DConditionModel(**cfg)
        temb_dim = self.spatial.time_embedding.linear_2.out_features
        self.prompt_summary = PromptSummary(text_dim, prompt_dim)
        # The modules live inside the wrapped resnets (that is where their weights are saved); this
        # plain list (not registered, so not saved twice) is for setting their per-call context.
        self.motion_modules: list[MotionModule] = []
        blocks = [self.spatial.mid_block, *self.spatial.up_blocks]
        for block in blocks:
            for i, resnet in enumerate(block.resnets):
                module = MotionModule(resnet.out_channels, temb_dim, prompt_dim, motion_groups)
                self.motion_modules.append(module)
                block.resnets[i] = _ResnetWithMotion(resnet, module)

    # diffusers pipelines read these from a UNet's config
    @property
    def in_channels(self) -> int:
        return self.spatial.config.in_channels

    @property
    def sample_size(self) -> int:
        return self.spatial.config.sample_size

    @classmethod
    def from_image_unet(cls, unet: UNet2DConditionModel, **kwargs) -> GenstackVideoUNet:
        """A video UNet whose spatial part is a copy of `unet` (motion modules start as identity)."""
        config = dict(unet.config)
        text_dim = config.get("encoder_hid_dim") or config["cross_attention_dim"]
        model = cls(spatial_config=config, text_dim=text_dim, **kwargs)
        missing, unexpected = model.spatial.load_state_dict(_wrapped_keys(unet.state_dict(), model.spatial),
                                                            strict=False)
        assert not unexpected, unexpected
        assert all(".motion." in k for k in missing), missing
        return model.to(unet.dtype)

    def spatial_parameters(self):
        return [p for n, p in self.spatial.named_parameters() if ".motion." not in n]

    def motion_parameters(self):
        return [p for m in self.motion_modules for p in m.parameters()] + list(self.prompt_summary.parameters())

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **unused,
    ):
        batch, channels, frames, height, width = sample.shape
        if frames > self.config.max_frames:
            raise ValueError(f"at most {self.config.max_frames} frames (got {frames})")
        prompt = self.prompt_summary(encoder_hidden_states.to(sample.dtype), encoder_attention_mask)
        for module in self.motion_modules:
            module.context = {"batch": batch, "prompt": prompt}
        x = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        timestep = timestep.repeat_interleave(frames)
        states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        mask = encoder_attention_mask.repeat_interleave(frames, dim=0) if encoder_attention_mask is not None else None
        try:
            out = self.spatial(x, timestep, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        finally:
            for module in self.motion_modules:
                module.context = None
        out = out.reshape(batch, frames, -1, height, width).transpose(1, 2)
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)

    def __deepcopy__(self, memo):
        # nn.Module deep-copies fine; the override only keeps `context` (per call) out of copies.
        for module in self.motion_modules:
            module.context = None
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        return new


def _wrapped_keys(state: dict, spatial: nn.Module) -> dict:
    """Map a plain UNet2DConditionModel state dict onto one whose resnets are wrapped."""
    wanted = set(spatial.state_dict())
    out = {}
    for key, value in state.items():
        if key in wanted:
            out[key] = value
            continue
        parts = key.split(".")
        for i in range(len(parts) - 1):
            if parts[i] == "resnets" and parts[i + 1].isdigit():
                candidate = ".".join([*parts[: i + 2], "resnet", *parts[i + 2:]])
                if candidate in wanted:
                    out[candidate] = value
                    break
        else:
            out[key] = value
    return out


# Registration: DiffusionPipeline.from_pretrained resolves ("diffusers", class name) on the module.
if getattr(diffusers, GenstackVideoUNet.__name__, None) is None:
    setattr(diffusers, GenstackVideoUNet.__name__, GenstackVideoUNet)
