"""A diffusers pipeline for the default video model: pixel-space clips, MiniLM-conditioned.

`GenstackVideoPipeline` is the image pipeline (services.image.pipeline.GenstackPixelPipeline: the
prompt encoding from MiniLM layers, the packaged text encoder, the synonym table) with a video
`__call__`: the UNet is a `GenstackVideoUNet` (services.video.model) that denoises
[batch, 3, frames, height, width] RGB directly, and the output follows diffusers' text-to-video
pipelines (`.frames`, [batch, frames, height, width, 3] for output_type="np"). Like those, it
accepts `latents=` (the starting noise), which is how the service's coherence technique
(noise correlated across frames) reaches any pipeline. Importing this module registers the
pipeline and the UNet class with diffusers, so `DiffusionPipeline.from_pretrained(folder)` works.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import diffusers
import numpy as np
import torch
from diffusers.pipelines.animatediff.pipeline_output import AnimateDiffPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

import services.video.model  # noqa: F401 - registers GenstackVideoUNet
from services.image.pipeline import GenstackPixelPipeline


class GenstackVideoPipeline(GenstackPixelPipeline):
    """Text-to-video in pixel space: prompt -> MiniLM token states -> video UNet denoising -> RGB frames."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 16,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.5,
        height: int | None = None,
        width: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **unused,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt or ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        size = self.unet.sample_size
        height, width = height or size, width or size
        device = self._execution_device
        batch = len(prompts) * num_videos_per_prompt
        self._interrupt = False

        cond, cond_mask = self.encode_prompt(prompts, device)
        cond = cond.repeat_interleave(num_videos_per_prompt, 0)
        cond_mask = cond_mask.repeat_interleave(num_videos_per_prompt, 0)
        guided = guidance_scale > 1.0
        if guided:
            uncond, uncond_mask = self.encode_prompt(negatives, device)
            uncond = uncond.repeat_interleave(num_videos_per_prompt, 0)
            uncond_mask = uncond_mask.repeat_interleave(num_videos_per_prompt, 0)
            states, masks = torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])
        else:
            states, masks = cond, cond_mask

        shape = (batch, self.unet.in_channels, num_frames, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (got {tuple(latents.shape)})")
        latents = latents.to(device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator

        self._num_timesteps = len(self.scheduler.timesteps)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                if self.interrupt:
                    break
                model_in = torch.cat([latents] * 2) if guided else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                out = self.unet(model_in, t, encoder_hidden_states=states, encoder_attention_mask=masks).sample
                if guided:
                    out_uncond, out_cond = out.chunk(2)
                    out = out_uncond + guidance_scale * (out_cond - out_uncond)
                latents = self.scheduler.step(out, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": cond}
                    wanted = callback_on_step_end_tensor_inputs or []
                    result = callback_on_step_end(self, i, t, {k: local[k] for k in wanted}) or {}
                    latents = result.get("latents", latents)
                bar.update()

        video = (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)  # B, F, H, W, 3
        self.maybe_free_model_hooks()
        if output_type == "pt":
            frames = video
        else:
            frames = video.float().cpu().numpy()
            if output_type == "pil":
                from PIL import Image

                frames = [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in frames]
        if not return_dict:
            return (frames,)
        return AnimateDiffPipelineOutput(frames=frames)


if getattr(diffusers, GenstackVideoPipeline.__name__, None) is None:
    setattr(diffusers, GenstackVideoPipeline.__name__, GenstackVideoPipeline)
