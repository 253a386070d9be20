"""Train the default video model: motion modules on top of the shipped image UNet, on procedural clips.

    python -m services.video.train --out models/video --init-from models/image      (`make train-video`)

Design (see models/video/README.md): the spatial UNet is the project's image model
(models/image: it already draws the shape and colours a prompt names), run frame by frame and
kept frozen by default; the trainer learns only the motion modules of services.video.model (and
the prompt summary they read the direction from). Clips come from services.video.scenes (16
frames of 32x32, one shape moving steadily), prompts from its grammar, encoded by MiniLM layers
2, 4 and 6 as for the image model; 10 % empty prompts for classifier-free guidance; v-prediction
on the image model's cosine schedule (uniform weights by default, --snr-gamma for min-SNR). The
velocity head, which the motion modules' warp reads the direction from, is supervised directly:
first on prompts alone (--velocity-pretrain), then by an auxiliary loss towards each clip's known
velocity (--velocity-weight); through the denoising loss alone it learnt nothing in 165 steps.
Half the clips are noised with noise partly shared across frames (a random share up to
--max-shared), so that the service's coherence technique (shared noise at sampling time) stays in
distribution while plain noise does too.

Checkpoints: the EMA weights are scored every --eval-minutes on validation prompts (held-out
scenes in VALIDATION_TEMPLATES, never the benchmark's); --out receives the best-scoring one, and
the last one goes to <state folder>/last as a diffusers folder as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("services.video.train")
TEXT_LAYERS = [2, 4, 6]


def build_pipeline(unet, scheduler, text_encoder=None, tokenizer=None, text_layers=None):
    from services.video import scenes
    from services.video.pipeline import GenstackVideoPipeline

    return GenstackVideoPipeline(
        unet=unet,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        max_prompt_tokens=scenes.MAX_PROMPT_TOKENS,
        prompt_aliases=scenes.PROMPT_ALIASES,
        text_encoder_layers=list(text_layers or TEXT_LAYERS),
    )


def correlated_noise(shape, shared: torch.Tensor, generator=None) -> torch.Tensor:
    """Noise [B, C, F, H, W] whose per-clip share `shared` (in [0, 1), one per clip) of the variance is
    the same in every frame; unit variance per element whatever the share."""
    b, c, f, h, w = shape
    common = torch.randn((b, c, 1, h, w), generator=generator)
    own = torch.randn(shape, generator=generator)
    a = shared.view(b, 1, 1, 1, 1).sqrt()
    return a * common + (1 - a * a).sqrt() * own


@torch.no_grad()
def quick_eval(pipe, n: int, steps: int = 15, guidance: float = 1.5, seed: int = 0, shared: float = 0.0,
               batch: int = 8) -> dict[str, float]:
    """Share of validation prompts (held-out scenes, unseen wording) whose clip shows each attribute right."""
    from services.video import scenes

    items = scenes.validation_prompts(n)
    tracks = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, batch):
        chunk = items[i:i + batch]
        shape = (len(chunk), 3, scenes.FRAMES, scenes.SIZE, scenes.SIZE)
        latents = correlated_noise(shape, torch.full((len(chunk),), shared), gen)
        frames = pipe([it.prompt for it in chunk], num_frames=scenes.FRAMES, num_inference_steps=steps,
                      guidance_scale=guidance, latents=latents, output_type="np").frames
        tracks += [scenes.track((clip * 255).round().astype(np.uint8)) for clip in frames]
    acc = scenes.accuracy(zip((it.scene for it in items), tracks, strict=True))
    acc["smoothness"] = float(np.nanmedian([t.smoothness for t in tracks]))
    return acc


def velocity_targets(scenes_: list, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 2] the clips' mean velocity in pixels per frame, [B] 1 where the prompt names it, 0 for empty prompts)."""
    from services.video import scenes

    speed = sum(scenes.SPEED) / 2
    target = torch.tensor([scenes.STEP[sc.direction] for sc in scenes_], dtype=torch.float32) * speed
    return target, torch.tensor([1.0 if t else 0.0 for t in texts])


def velocity_loss(unet, states, masks, target, named) -> torch.Tensor:
    pred = unet.predict_velocity(unet.prompt_summary(states, masks))
    return ((pred - target) ** 2).sum(-1).mul(named).sum() / named.sum().clamp(min=1)


def pretrain_velocity(unet, pipe, train_scenes, rng, args) -> None:
    """Teach the prompt summary and velocity head the direction a prompt names, on prompts alone (no clips):
    a few hundred cheap steps, so that the motion modules' warp moves the right way from the first
    diffusion step instead of waiting for the denoising loss to find the direction through the warp."""
    from services.video import scenes

    params = list(unet.prompt_summary.parameters()) + list(unet.velocity.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    val = scenes.validation_prompts(48)
    with torch.no_grad():
        val_states, val_masks = pipe.encode_prompt([it.prompt for it in val], device="cpu")
    for step in range(args.velocity_pretrain):
        picked = [train_scenes[i] for i in rng.integers(len(train_scenes), size=64)]
        texts = [scenes.sample_train_prompt(sc, rng) for sc in picked]
        with torch.no_grad():
            states, masks = pipe.encode_prompt(texts, device="cpu")
        target, named = velocity_targets(picked, texts)
        loss = velocity_loss(unet, states.float(), masks, target, named)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == args.velocity_pretrain:
            with torch.no_grad():
                v = unet.predict_velocity(unet.prompt_summary(val_states.float(), val_masks))
            want = torch.tensor([scenes.STEP[it.scene.direction] for it in val])
            right = ((v * want).sum(-1) > (v.abs().max(-1).values * 0.5)).float().mean()
            log.info("velocity pre-training step %d loss %.4f, validation direction %.3f", step + 1, loss.item(),
                     right.item())


def train(args) -> None:  # noqa: C901 - one loop, read top to bottom
    from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline

    import services.image.pipeline  # noqa: F401 - registers the image pipeline
    from services.video import scenes
    from services.video.model import GenstackVideoUNet

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    state_dir = Path(args.state).parent
    state_dir.mkdir(parents=True, exist_ok=True)

    image = DiffusionPipeline.from_pretrained(args.init_from, dtype=torch.float32, local_files_only=True)
    unet = GenstackVideoUNet.from_image_unet(image.unet.float(), prompt_dim=args.prompt_dim, warp=args.warp)
    schedule = dict(image.scheduler.config)
    scheduler = DDIMScheduler.from_config(schedule)
    noise_sched = DDPMScheduler.from_config(schedule)
    pipe = build_pipeline(unet, scheduler, image.text_encoder, image.tokenizer, image.config.text_encoder_layers)
    pipe.set_progress_bar_config(disable=True)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # min-SNR for v-prediction; --snr-gamma 0: every timestep weighs the same (min-SNR all but ignores the
    # noisiest steps, which are where the frames' layout, and so the motion, is decided)
    weights = torch.clamp(snr, max=args.snr_gamma) / (snr + 1) if args.snr_gamma else torch.ones_like(snr)

    unet.requires_grad_(False)
    motion = unet.motion_parameters()
    for p in motion:
        p.requires_grad_(True)
    groups = [{"params": motion, "lr": args.lr, "base_lr": args.lr}]
    if args.spatial_lr:
        spatial = unet.spatial_parameters()
        for p in spatial:
            p.requires_grad_(True)
        groups.append({"params": spatial, "lr": args.spatial_lr, "base_lr": args.spatial_lr})
    if args.velocity_pretrain and unet.velocity is not None and not args.resume:
        pretrain_velocity(unet, pipe, scenes.split_scenes()[0], rng, args)
    trainable = [p for g in groups for p in g["params"]]
    log.info("trainable parameters: %d (motion %d)", sum(p.numel() for p in trainable),
             sum(p.numel() for p in motion))
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_pairs = [(pe, p) for pe, p in zip(ema.parameters(), unet.parameters(), strict=True) if p.requires_grad]
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    step = 0
    best = -1.0
    state_path = Path(args.state)
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, best = state["step"], state.get("best", -1.0)
        rng = np.random.default_rng(args.seed + step)
        torch.manual_seed(args.seed + step)
        log.info("resumed at step %d (best validation %.3f)", step, best)
    train_scenes, _ = scenes.split_scenes()

    start = time.time()

    def lr_scale(s: int) -> float:
        if s < args.warmup:
            return (s + 1) / args.warmup
        by_time = (time.time() - start) / (args.max_minutes * 60) if args.max_minutes else 0.0
        frac = max(0.0, min(1.0, max(s / args.steps, by_time)) - 0.5) / 0.5
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    def write(folder: Path, tag: str, scores: dict | None) -> None:
        stored = copy.deepcopy(ema).to(getattr(torch, args.save_dtype))
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_pipeline(stored, scheduler, pipe.text_encoder, pipe.tokenizer).save_pretrained(tmp)
        info = {"step": step, "tag": tag, "validation": scores, "args": vars(args)}
        (tmp / "training.json").write_text(json.dumps(info, indent=2, default=str))
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("unet", "scheduler"):
            (folder / sub).mkdir(exist_ok=True)
            for f in (tmp / sub).iterdir():
                os.replace(f, folder / sub / f.name)
        for f in ("model_index.json", "training.json"):
            os.replace(tmp / f, folder / f)
        shutil.rmtree(tmp, ignore_errors=True)

    def save_state() -> None:
        torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "best": best}, state_path)

    def evaluate(tag: str) -> None:
        nonlocal best
        eval_pipe = build_pipeline(ema, scheduler, pipe.text_encoder, pipe.tokenizer)
        eval_pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        scores = quick_eval(eval_pipe, args.eval_prompts, steps=args.eval_steps)
        score = float(np.mean([scores[k] for k in ("direction", "colour", "background", "shape")]))
        log.info("%s at step %d: %s (mean %.3f, %.0f s)", tag, step,
                 {k: round(v, 3) for k, v in scores.items()}, score, time.time() - t0)
        write(state_dir / "last", tag, scores)
        if score > best:
            best = score
            write(out, tag, scores)
            log.info("new best on validation: wrote %s", out)
        save_state()

    last_save = last_eval = time.time()
    window_loss, window_t = [], time.time()
    unet.train()
    while step < args.steps:
        if args.max_minutes and time.time() - start > args.max_minutes * 60:
            log.info("time budget reached")
            break
        idx = rng.integers(len(train_scenes), size=args.batch)
        clips = np.stack([scenes.render(train_scenes[i], rng) for i in idx])  # B, F, H, W, 3
        if args.frames < scenes.FRAMES:  # a window of the 16-frame clip: same motion per frame, cheaper steps
            first = int(rng.integers(scenes.FRAMES - args.frames + 1))
            clips = clips[:, first:first + args.frames]
        x0 = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # B, 3, F, H, W
        texts = ["" if rng.random() < args.p_uncond else scenes.sample_train_prompt(train_scenes[i], rng)
                 for i in idx]
        with torch.no_grad():
            states, masks = pipe.encode_prompt(texts, device="cpu")
        shared = torch.from_numpy(np.where(rng.random(args.batch) < 0.5, 0.0,
                                           rng.uniform(0, args.max_shared, args.batch))).float()
        noise = correlated_noise(x0.shape, shared)
        steps_total = noise_sched.config.num_train_timesteps
        t = torch.randint(0, steps_total, (args.batch,))
        high = torch.rand(args.batch) < args.p_high  # the spatial model already knows the low-noise end
        t = torch.where(high, torch.randint(int(steps_total * 0.4), steps_total, (args.batch,)), t)
        tt = t.view(-1, 1, 1, 1, 1)
        a = alphas[tt].sqrt()
        s = (1 - alphas[tt]).sqrt()
        xt = a * x0 + s * noise
        target = a * noise - s * x0
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_scale(step)
        pred = unet(xt, t, encoder_hidden_states=states.float(), encoder_attention_mask=masks).sample
        loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3, 4)) * weights[t]).mean()
        if args.velocity_weight and unet.velocity is not None:
            vel_target, named = velocity_targets([train_scenes[i] for i in idx], texts)
            loss = loss + args.velocity_weight * velocity_loss(unet, states.float(), masks, vel_target, named)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, p in ema_pairs:
                pe.lerp_(p, 1 - decay)
        step += 1
        window_loss.append(loss.item())
        if step % args.log_every == 0:
            now = time.time()
            log.info("step %d loss %.4f lr %.2e %.2f clips/s elapsed %.1f min", step, float(np.mean(window_loss)),
                     args.lr * lr_scale(step), args.log_every * args.batch / (now - window_t), (now - start) / 60)
            window_loss, window_t = [], now
        if time.time() - last_save > args.save_minutes * 60:
            save_state()
            last_save = time.time()
        if args.eval_minutes and time.time() - last_eval > args.eval_minutes * 60:
            evaluate("eval")
            last_eval = window_t = time.time()
    evaluate("final")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/video", help="diffusers folder to write (the best checkpoint)")
    p.add_argument("--init-from", default="models/image", help="image pipeline folder whose UNet is the spatial part")
    p.add_argument("--state", default=".cache/video-train/state.pt", help="optimizer/EMA state for --resume")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time; 0: none")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8,
                   help="frames per training clip: a window of the 16-frame render (the motion modules are local "
                        "in time, so they run on 16 frames after training on 8 at half the cost)")
    p.add_argument("--lr", type=float, default=1e-3, help="motion modules' learning rate")
    p.add_argument("--spatial-lr", type=float, default=0.0, help="spatial UNet's learning rate; 0: frozen")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--snr-gamma", type=float, default=0.0, help="min-SNR gamma; 0: uniform weights")
    p.add_argument("--p-high", type=float, default=0.5,
                   help="share of clips whose timestep is drawn from the noisiest 60 %% only")
    p.add_argument("--prompt-dim", type=int, default=128)
    p.add_argument("--warp", action=argparse.BooleanOptionalAction, default=True,
                   help="motion modules translate each frame's features by a velocity read from the prompt")
    p.add_argument("--velocity-weight", type=float, default=1.0,
                   help="weight of the auxiliary loss on the velocity head (the training clip's known motion)")
    p.add_argument("--velocity-pretrain", type=int, default=400,
                   help="prompt-only steps (64 prompts each) that train the velocity head before the clips")
    p.add_argument("--max-shared", type=float, default=0.8, help="largest share of frame-shared noise in training")
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--save-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--save-minutes", type=float, default=5)
    p.add_argument("--eval-minutes", type=float, default=15)
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--eval-steps", type=int, default=15)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train(args)


if __name__ == "__main__":
    main()
