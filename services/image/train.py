"""Train the default image model: a small pixel-space UNet on procedural scenes, MiniLM-conditioned.

    python -m services.image.train --out models/image --text-layers 2 4 6      (base run)
    python -m services.image.train --out models/image --text-layers 2 4 6 \
        --init-from models/image --batch 32 --lr 5e-4 --warmup 100             (fine-tune)
`make train-image` runs both stages with the shipped weights' step counts.

Design (measured on 2 CPU threads before this script was written; see models/image/README.md):
32x32 RGB scenes from services.image.scenes; prompts drawn from its sentence grammar and encoded
per batch by MiniLM into 16 token states from the layers --text-layers names, side by side
(padding zeroed, masked in cross-attention), and pooled into the time embedding by diffusers'
addition_embed_type="text"; 10% empty prompts so classifier-free guidance works; v-prediction,
min-SNR loss weighting (gamma 5), cosine noise schedule, AdamW, EMA of the weights, bf16 autocast
where the CPU computes bf16 natively.
Every run with the same arguments draws the same batches (seeded), and the result is written as
a standard diffusers folder that `DiffusionPipeline.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("services.image.train")

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=384,
    attention_head_dim=8,
    addition_embed_type="text",
)
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions. Without them autocast emulates bf16 and is slower than
    float32: measured 14 against 44 images/s on an AVX-512 Xeon lacking avx512_bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def unet_config(text_layers: list[int]) -> dict:
    """UNET_CONFIG for prompts encoded from `text_layers` of MiniLM side by side (none: the last):
    a linear projection (diffusers' text_proj) maps them to the cross-attention width."""
    if not text_layers:
        return dict(UNET_CONFIG)
    width = UNET_CONFIG["cross_attention_dim"] * len(text_layers)
    return dict(UNET_CONFIG, encoder_hid_dim=width, encoder_hid_dim_type="text_proj")


def build_pipeline(unet=None, text_encoder=None, tokenizer=None, text_layers: list[int] | None = None):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from services.image import scenes
    from services.image.pipeline import GenstackPixelPipeline

    unet = unet or UNet2DConditionModel(**unet_config(text_layers or []))
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    return GenstackPixelPipeline(
        unet=unet,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        prompt_aliases=scenes.PROMPT_ALIASES,
        text_encoder_layers=text_layers,
    )


@torch.no_grad()
def warm_start(unet, source, text_layers: list[int]) -> None:
    """Load `source`'s weights into `unet`. When `unet` reads more MiniLM layers than `source` (which
    read the last one only), the new projection starts as "take the last layer" and the pooled-prompt
    embedding is widened to read the last layer as before, so the model begins close to `source`."""
    old = source.state_dict()
    new = unet.state_dict()
    same = {k: v for k, v in old.items() if k in new and new[k].shape == v.shape}
    unet.load_state_dict(same, strict=False)
    if text_layers and source.config.encoder_hid_dim is None:
        width = source.config.cross_attention_dim
        proj = unet.encoder_hid_proj
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[:, -width:] = torch.eye(width)  # the last listed layer must be the last layer
        _embed_pooled_prompt(unet.add_embedding, source.add_embedding, width)
        return
    skipped = sorted(set(new) - set(same))
    if skipped:
        log.info("warm start: %d tensors start fresh: %s", len(skipped), ", ".join(skipped))


@torch.no_grad()
def _embed_pooled_prompt(wide, narrow, width: int) -> None:
    """Set a TextTimeEmbedding over [other layers | last layer] to compute what `narrow` computed
    over the last layer alone: the other layers get zero weights, and each attention head's
    dimensions sit in the first slots of the wider head. Not exact: the first LayerNorm now takes
    its statistics over all layers."""
    assert wide.pool.num_heads == narrow.pool.num_heads
    small, big = narrow.pool.dim_per_head, wide.pool.dim_per_head
    last = slice(wide.norm1.normalized_shape[0] - width, None)  # the last layer's columns
    slots = torch.tensor([(j // small) * big + j % small for j in range(width)])  # head layout
    for p in wide.parameters():
        p.zero_()
    wide.norm1.weight[last] = narrow.norm1.weight
    wide.norm1.bias[last] = narrow.norm1.bias
    wide.pool.positional_embedding[:, last] = narrow.pool.positional_embedding
    # queries and keys are both scaled by dim_per_head ** -0.25: the wider heads need a factor back
    gain = {"q_proj": (big / small) ** 0.5, "k_proj": 1.0, "v_proj": 1.0}
    for name, g in gain.items():
        w, n = getattr(wide.pool, name), getattr(narrow.pool, name)
        w.weight[slots.unsqueeze(1), torch.arange(width)[None] + last.start] = n.weight * g
        w.bias[slots] = n.bias * g
    wide.proj.weight[:, slots] = narrow.proj.weight
    wide.proj.bias.copy_(narrow.proj.bias)
    wide.norm2.load_state_dict(narrow.norm2.state_dict())


@torch.no_grad()
def quick_eval(pipe, n: int, steps: int = 20, guidance: float = 1.5, seed: int = 0) -> dict[str, float]:
    """Share of validation prompts (held-out scenes, unseen wording) showing each attribute right.
    The benchmark's own prompts stay out of training-time decisions."""
    from services.image import scenes

    items = scenes.validation_prompts(n)
    images = pipe(
        [item.prompt for item in items],
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images
    seen = [scenes.check((img * 255).round().astype(np.uint8)) for img in images]
    return scenes.accuracy(zip((item.scene for item in items), seen, strict=True))


def train(args) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from services.image import scenes

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    state_path = Path(args.state)
    state_path.parent.mkdir(parents=True, exist_ok=True)

    pipe = build_pipeline(text_layers=args.text_layers)
    unet = pipe.unet
    noise_sched = DDPMScheduler(**SCHEDULE)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=args.snr_gamma) / (snr + 1)  # min-SNR for v-prediction

    train_scenes, _ = scenes.split_scenes()
    if args.init_from:
        # Fine-tune: start from an earlier model's weights (a diffusers folder) with a fresh optimizer.
        warm_start(unet, UNet2DConditionModel.from_pretrained(args.init_from, subfolder="unet"), args.text_layers)
        log.info("initialised the UNet from %s", args.init_from)

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Prompts are drawn per batch from hundreds of sentence shapes, so they are encoded as
        # they come (MiniLM on 16 short prompts costs a few ms, far less than the UNet step).
        states, mask = pipe.encode_prompt(prompts, device="cpu")
        return states.float(), mask

    if args.freeze_pooled:
        # After a widening warm start most pooled-prompt weights are zeros that Adam would move by ~lr
        # each step (measured: colours fell from 77 % to 40 % in 1300 steps at 5e-4).
        unet.add_embedding.requires_grad_(False)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-2)
    step = 0
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng = np.random.default_rng(args.seed + step)
        torch.manual_seed(args.seed + step)
        log.info("resumed at step %d", step)

    def progress(s: int) -> float:
        # With a wall-time budget the run may end before --steps: decay on whichever comes first.
        by_time = (time.time() - start) / (args.max_minutes * 60) if args.max_minutes else 0.0
        return min(1.0, max(s / args.steps, by_time))

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        # Constant for the first half of the run, then cosine decay to a tenth of the peak.
        frac = max(0.0, progress(s) - 0.5) / 0.5
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def save(tag: str) -> None:
        # Stored in float16 to keep the shipped folder small; diffusers loads it as float32.
        stored = copy.deepcopy(ema).to(getattr(torch, args.save_dtype))
        eval_pipe = build_pipeline(stored, pipe.text_encoder, pipe.tokenizer, args.text_layers)
        tmp = out.with_name(out.name + ".tmp")
        eval_pipe.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({"step": step, "args": vars(args)}, indent=2, default=str))
        for sub in ("unet", "scheduler"):
            target = out / sub
            target.mkdir(parents=True, exist_ok=True)
            for f in (tmp / sub).iterdir():
                os.replace(f, target / f.name)
        for f in ("model_index.json", "training.json"):
            os.replace(tmp / f, out / f)
        state = {"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step}
        torch.save(state, state_path)
        log.info("saved %s at step %d to %s", tag, step, out)

    def evaluate(tag: str) -> None:
        eval_pipe = build_pipeline(ema, pipe.text_encoder, pipe.tokenizer, args.text_layers)
        eval_pipe.set_progress_bar_config(disable=True)
        log.info("%s at step %d: %s", tag, step, quick_eval(eval_pipe, args.eval_prompts))

    start = time.time()
    last_save = last_eval = start
    seen = 0
    window_loss, window_t = [], time.time()
    unet.train()
    while step < args.steps:
        if args.max_minutes and time.time() - start > args.max_minutes * 60:
            log.info("time budget reached")
            break
        idx = rng.integers(len(train_scenes), size=args.batch)
        images = np.stack([scenes.render(train_scenes[i], rng) for i in idx])
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        texts = [
            "" if rng.random() < args.p_uncond
            else scenes.sample_train_prompt(train_scenes[i], rng, args.family_weights)
            for i in idx
        ]
        states, masks = encode(texts)
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (args.batch,))
        xt = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            pred = unet(xt, t, encoder_hidden_states=states, encoder_attention_mask=masks).sample
        loss = (F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3)) * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        step += 1
        seen += args.batch
        window_loss.append(loss.item())
        if step % args.log_every == 0:
            now = time.time()
            log.info(
                "step %d loss %.4f lr %.2e %.1f img/s elapsed %.1f min",
                step, float(np.mean(window_loss)), lr_at(step), args.log_every * args.batch / (now - window_t),
                (now - start) / 60,
            )
            window_loss, window_t = [], now
        if time.time() - last_save > args.save_minutes * 60:
            save("checkpoint")
            last_save = time.time()
        if args.eval_minutes and time.time() - last_eval > args.eval_minutes * 60:
            evaluate("eval")
            last_eval = window_t = time.time()
    save("final")
    evaluate("final eval")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/image", help="diffusers folder to write")
    p.add_argument("--state", default=".cache/image-train/state.pt", help="optimizer/EMA state for --resume")
    p.add_argument("--resume", action="store_true", help="continue from the saved state")
    p.add_argument("--init-from", default="", help="diffusers folder whose UNet weights to start from (fine-tune)")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time; 0: none")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument("--family-weights", type=float, nargs=5, default=None,
                   metavar=("HAND", "NOUNS", "MIXED", "CLAUSES_SHAPE_FIRST", "CLAUSES_BACKGROUND_FIRST"),
                   help="how often each family of sentence shapes is drawn (default: scenes.FAMILY_WEIGHTS)")
    p.add_argument("--text-layers", type=int, nargs="*", default=[],
                   help="MiniLM hidden-state layers to condition on side by side, the last one last "
                        "(0: embeddings, 6: last); none: the last layer only")
    p.add_argument("--save-dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the saved weights (loading casts them to the service's dtype)")
    p.add_argument("--freeze-pooled", action="store_true",
                   help="keep the pooled-prompt embedding (add_embedding) fixed, e.g. after a widening warm start")
    p.add_argument("--p-uncond", type=float, default=0.1, help="share of empty prompts (for guidance)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: when the CPU has bf16 instructions)")
    # One thread: on a shared 2-core machine a second thread mostly waits (measured 17 vs 3 img/s).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--eval-minutes", type=float, default=10, help="quick held-out eval interval; 0: off")
    p.add_argument("--eval-prompts", type=int, default=48)
    args = p.parse_args(argv)
    if args.family_weights is None:
        from services.image import scenes

        args.family_weights = scenes.FAMILY_WEIGHTS
    if args.bf16 is None:
        args.bf16 = native_bf16()
    args.family_weights = tuple(w / sum(args.family_weights) for w in args.family_weights)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train(args)


if __name__ == "__main__":
    main()
