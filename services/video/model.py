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

A motion module: GroupNorm -> temporal shift (a quarter of the channels from the previous frame,
a quarter from the next) -> depthwise 3x3 conv -> pointwise conv -> FiLM from the prompt summary
and time embedding -> SiLU -> temporal shift -> pointwise conv whose weights start at zero, added
to the input. A shifted channel filtered by a 3x3 kernel can express "this feature one pixel to the
right in the previous frame", the building block of a steady translation, and the FiLM chooses
which channels (which directions) are active for a prompt. Stacked, the modules see many frames;
being local in time, they run on any number of frames. With the output convs at zero the model
starts exactly as the image model applied frame by frame. (3-D convolutions did the same job 5x
slower on this CPU: a depthwise 3x3x3 Conv3d took 1.3 s forward+backward where the shift and 2-D
convs take ~0.25 s.)

Input/output layout is diffusers' video convention: [batch, channels, frames, height, width].
"""

from __future__ import annotations

import copy
import re

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


def shift_frames(x: torch.Tensor, share: int) -> torch.Tensor:
    """Temporal shift (TSM, Lin et al. 2019) on [B, F, C, H, W]: the first `share` channels come from the
    previous frame, the next `share` from the following one (zeros past the ends), the rest stay."""
    b, f, c, h, w = x.shape
    zero = x.new_zeros((b, 1, share, h, w))
    back = torch.cat([zero, x[:, :-1, :share]], dim=1)
    fwd = torch.cat([x[:, 1:, share:2 * share], zero], dim=1)
    return torch.cat([back, fwd, x[:, :, 2 * share:]], dim=2)


class MotionModule(nn.Module):
    def __init__(self, channels: int, temb_dim: int, cond_dim: int, groups: int = 8, warp: bool = False):
        super().__init__()
        self.share = max(1, channels // 4)
        # Steady-motion warp: translate frame f's features by (f - centre) * velocity * gate(noise level);
        # the gate starts small (sigmoid(-2) ~ 0.12) so that the velocity head gets a gradient at once.
        self.warp_gate = None
        if warp:
            self.warp_gate = nn.Linear(temb_dim, 1)
            nn.init.zeros_(self.warp_gate.weight)
            nn.init.constant_(self.warp_gate.bias, -2.0)
        self.norm = nn.GroupNorm(groups, channels)
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.film = nn.Linear(temb_dim + cond_dim, 2 * channels)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.context: dict | None = None  # set by GenstackVideoUNet.forward for each call

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        batch = self.context["batch"]
        n, c, height, width = h.shape
        frames = n // batch
        if self.warp_gate is not None:
            h = self._warp(h, temb, batch, frames)
        y = self.norm(h).reshape(batch, frames, c, height, width)
        y = shift_frames(y, self.share).reshape(n, c, height, width)
        y = self.mix(self.spatial(y))
        cond = torch.cat([F.silu(temb.reshape(batch, frames, -1)[:, 0]), self.context["prompt"]], dim=-1)
        scale, shift = self.film(cond).to(y.dtype).repeat_interleave(frames, 0)[:, :, None, None].chunk(2, dim=1)
        y = F.silu(y * (1 + scale) + shift).reshape(batch, frames, c, height, width)
        y = self.out(shift_frames(y, self.share).reshape(n, c, height, width))
        return h + y

    def _warp(self, h: torch.Tensor, temb: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        ctx = self.context
        gate = torch.sigmoid(self.warp_gate(F.silu(temb.reshape(batch, frames, -1)[:, 0])))  # B, 1
        rel = torch.arange(frames, device=h.device, dtype=h.dtype) - (frames - 1) / 2
        offset = rel[None, :, None] * ctx["velocity"][:, None, :] * gate[:, None, :]  # B, F, 2 pixels (x, y)
        # content moves by +offset: sample at x - offset, in normalised coordinates (2 / size per pixel)
        theta = torch.zeros(batch * frames, 2, 3, device=h.device, dtype=h.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = -2 * offset[..., 0].reshape(-1) / ctx["width"]
        theta[:, 1, 2] = -2 * offset[..., 1].reshape(-1) / ctx["height"]
        grid = F.affine_grid(theta, list(h.shape), align_corners=False)
        return F.grid_sample(h, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _PerClip(nn.Module):
    """Wraps a prompt-only module of the spatial UNet (the text projection, the pooled-prompt embedding)
    so that it runs once per clip instead of once per frame: GenstackVideoUNet.forward computes it on
    the clip's prompt states and sets `value` (repeated per frame), which this returns as is."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.value: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        if self.value is not None:
            return self.value
        return self.inner(*args, **kwargs)


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
        warp: bool = False,
        max_speed: float = 1.5,
    ):
        super().__init__()
        cfg = {k: v for k, v in (spatial_config or {}).items() if not k.startswith("_")}
        self.spatial = UNet2DConditionModel(**cfg)
        temb_dim = self.spatial.time_embedding.linear_2.out_features
        self.prompt_summary = PromptSummary(text_dim, prompt_dim)
        # With warp: the prompt's steady velocity (pixels per frame at the sample's size, x right, y down)
        self.velocity = None
        if warp:
            self.velocity = nn.Sequential(nn.Linear(prompt_dim, 64), nn.SiLU(), nn.Linear(64, 2))
            nn.init.normal_(self.velocity[2].weight, std=0.01)
            nn.init.zeros_(self.velocity[2].bias)
        # The modules live inside the wrapped resnets (that is where their weights are saved); this
        # plain list (not registered, so not saved twice) is for setting their per-call context.
        self.motion_modules: list[MotionModule] = []
        blocks = [self.spatial.mid_block, *self.spatial.up_blocks]
        for block in blocks:
            for i, resnet in enumerate(block.resnets):
                module = MotionModule(resnet.out_channels, temb_dim, prompt_dim, motion_groups, warp)
                self.motion_modules.append(module)
                block.resnets[i] = _ResnetWithMotion(resnet, module)
        # The image UNet pools and projects the prompt; per frame that is the same work 16 times over
        # (the pooled embedding alone is 4 M parameters over 1152-wide states): once per clip instead.
        self._per_clip = []
        for name in ("add_embedding", "encoder_hid_proj"):
            if getattr(self.spatial, name, None) is not None:
                wrapped = _PerClip(getattr(self.spatial, name))
                setattr(self.spatial, name, wrapped)
                self._per_clip.append(wrapped)

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
        extra = list(self.velocity.parameters()) if self.velocity is not None else []
        return [p for m in self.motion_modules for p in m.parameters()] + list(self.prompt_summary.parameters()) + extra

    def predict_velocity(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt's steady velocity [B, 2] (pixels per frame, x right, y down) from its summary."""
        return self.config.max_speed * torch.tanh(self.velocity(prompt))

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
        context = {"batch": batch, "prompt": prompt, "height": height, "width": width}
        if self.velocity is not None:
            context["velocity"] = self.predict_velocity(prompt)
        for module in self.motion_modules:
            module.context = context
        for module in self._per_clip:
            module.value = module.inner(encoder_hidden_states).repeat_interleave(frames, dim=0)
        states = encoder_hidden_states
        if not self._per_clip or getattr(self.spatial, "encoder_hid_proj", None) is None:
            states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        x = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        timestep = timestep.repeat_interleave(frames)
        mask = encoder_attention_mask.repeat_interleave(frames, dim=0) if encoder_attention_mask is not None else None
        try:
            out = self.spatial(x, timestep, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        finally:
            for module in self.motion_modules:
                module.context = None
            for module in self._per_clip:
                module.value = None
        out = out.reshape(batch, frames, -1, height, width).transpose(1, 2)
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)

    def __deepcopy__(self, memo):
        # nn.Module deep-copies fine; the override only keeps per-call state out of copies.
        for module in self.motion_modules:
            module.context = None
        for module in self._per_clip:
            module.value = None
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        return new


def _plain_key(key: str) -> str:
    """A wrapped spatial UNet's state-dict key as the plain UNet2DConditionModel names it."""
    key = re.sub(r"(resnets\.\d+)\.resnet\.", r"\1.", key)
    return key.replace("add_embedding.inner.", "add_embedding.").replace("encoder_hid_proj.inner.", "encoder_hid_proj.")


def _wrapped_keys(state: dict, spatial: nn.Module) -> dict:
    """Map a plain UNet2DConditionModel state dict onto one whose resnets and prompt modules are wrapped."""
    names = {_plain_key(k): k for k in spatial.state_dict()}
    return {names.get(k, k): v for k, v in state.items()}


# Registration: DiffusionPipeline.from_pretrained resolves ("diffusers", class name) on the module.
if getattr(diffusers, GenstackVideoUNet.__name__, None) is None:
    setattr(diffusers, GenstackVideoUNet.__name__, GenstackVideoUNet)
