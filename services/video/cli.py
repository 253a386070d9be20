"""`genstack video "prompt" -o out.mp4`: generate a clip with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCHEDULER_CHOICES = {"ddim": "SCHEDULER_DDIM", "dpm-solver++": "SCHEDULER_DPM_SOLVER_PP", "euler": "SCHEDULER_EULER"}
FORMAT_CHOICES = {"mp4": "VIDEO_FORMAT_MP4", "gif": "VIDEO_FORMAT_GIF", "png": "VIDEO_FORMAT_PNG_FRAMES"}
NOISE_CHOICES = {"shared": "FRAME_NOISE_SHARED", "independent": "FRAME_NOISE_INDEPENDENT"}


def register(sub) -> None:
    p = sub.add_parser("video", help="generate a short clip from a prompt, with a progress bar")
    p.add_argument("prompt", help="what to show")
    p.add_argument("-o", "--output", default="video.mp4",
                   help="file to write; its suffix picks the format unless --format says (.mp4, .gif; a folder "
                        "or .png for PNG frames: name-000.png, ...)")
    p.add_argument("--format", choices=sorted(FORMAT_CHOICES), default=None, help="container (default: from -o)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: configured, 16)")
    p.add_argument("--fps", type=int, default=None, help="frames per second (default: configured, 8)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: configured)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (>= 0)")
    p.add_argument("--seed", type=int, default=None, help="seed; the same seed gives the same frames")
    p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's size)")
    p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's size)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULER_CHOICES), default=None,
                   help="sampler (default: GENSTACK_VIDEO_DEFAULT_SCHEDULER, ddim)")
    p.add_argument("--frame-noise", choices=sorted(NOISE_CHOICES), default=None,
                   help="starting noise across frames (default: configured, shared)")
    p.add_argument("--noise-share", type=float, default=None, help="share of the noise common to all frames")
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the video service (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower()
    return {".gif": "gif", ".png": "png", "": "png"}.get(suffix, "mp4")


def build_request(args: argparse.Namespace):
    from genstack.video.v1 import video_pb2 as pb

    request = pb.GenerateVideoRequest(prompt=args.prompt, negative_prompt=args.negative)
    for name, field in (("frames", "num_frames"), ("fps", "fps"), ("steps", "steps"), ("guidance", "guidance_scale"),
                        ("seed", "seed"), ("width", "width"), ("height", "height"), ("noise_share", "noise_share")):
        value = getattr(args, name)
        if value is not None:
            setattr(request, field, value)
    if args.scheduler:
        request.scheduler = pb.Scheduler.Value(SCHEDULER_CHOICES[args.scheduler])
    if args.frame_noise:
        request.frame_noise = pb.FrameNoise.Value(NOISE_CHOICES[args.frame_noise])
    request.format = pb.VideoFormat.Value(FORMAT_CHOICES[output_format(args)])
    return pb.GenerateVideoStreamRequest(request=request)


def frame_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() != ".png":
        return [path / f"frame-{i:03d}.png" for i in range(count)]
    return [path.with_name(f"{path.stem}-{i:03d}.png") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    from genstack.video.v1 import video_pb2 as pb
    from shared.artifacts import get_store
    from shared.clients.video import VideoClient
    from shared.progress import follow_steps

    with VideoClient(args.transport) as client:
        stream = client.generate_video_stream(build_request(args), timeout=args.timeout)
        result = follow_steps(stream, disable=args.no_progress)
    if result is None:
        print("error: the stream ended without a result", file=sys.stderr)
        return 1
    v = result.video
    store = None
    if v.frames or v.frame_artifacts:
        frames = list(v.frames) or [(store := store or get_store()).get(a.uri) for a in v.frame_artifacts]
        paths = frame_paths(args.output, len(frames))
        for data, path in zip(frames, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        written = f"{paths[0]} … {paths[-1].name}"
    else:
        data = v.data if v.data else get_store().get(v.artifact.uri)
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written = str(path)
    m, c = result.metadata, result.coherence
    scheduler = pb.Scheduler.Name(m.scheduler).removeprefix("SCHEDULER_").lower()
    track = f" · track smoothness {c.track_smoothness:.2f} px" if c.object_tracked else ""
    print(
        f"wrote {written} [{v.num_frames} frames {v.width}x{v.height} @ {v.fps} fps · seed {m.seed} · {m.steps} steps "
        f"{scheduler} · guidance {m.guidance_scale:g} · {m.seconds_per_clip:.1f} s · "
        f"{m.steps_per_second:.2f} steps/s]\n"
        f"coherence: background flicker {c.background_flicker:.2f} · SSIM {c.mean_ssim:.3f}{track}",
        file=sys.stderr,
    )
    return 0
