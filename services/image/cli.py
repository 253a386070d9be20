"""`genstack image "prompt" -o out.png`: generate images with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCHEDULER_CHOICES = {"ddim": "SCHEDULER_DDIM", "dpm-solver++": "SCHEDULER_DPM_SOLVER_PP", "euler": "SCHEDULER_EULER"}


def register(sub) -> None:
    p = sub.add_parser("image", help="generate an image from a prompt, with a progress bar")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("-o", "--output", default="image.png", help="PNG file to write (several images: name-1.png, ...)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: configured)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (>= 0)")
    p.add_argument("--seed", type=int, default=None, help="seed; the same seed gives the same pixels")
    p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's size)")
    p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's size)")
    p.add_argument("-n", "--num-images", type=int, default=None, help="images to generate (default 1)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULER_CHOICES), default=None,
                   help="sampler (default: GENSTACK_IMAGE_DEFAULT_SCHEDULER, ddim)")
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the image service (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_request(args: argparse.Namespace):
    from genstack.image.v1 import image_pb2 as pb

    request = pb.GenerateImageRequest(prompt=args.prompt, negative_prompt=args.negative)
    for name, field in (("steps", "steps"), ("guidance", "guidance_scale"), ("seed", "seed"), ("width", "width"),
                        ("height", "height"), ("num_images", "num_images")):
        value = getattr(args, name)
        if value is not None:
            setattr(request, field, value)
    if args.scheduler:
        request.scheduler = pb.Scheduler.Value(SCHEDULER_CHOICES[args.scheduler])
    return pb.GenerateImageStreamRequest(request=request)


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.png'}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    from genstack.image.v1 import image_pb2 as pb
    from shared.artifacts import get_store
    from shared.clients.image import ImageClient
    from shared.progress import follow_steps

    with ImageClient(args.transport) as client:
        stream = client.generate_image_stream(build_request(args), timeout=args.timeout)
        result = follow_steps(stream, disable=args.no_progress)
    if result is None:
        print("error: the stream ended without a result", file=sys.stderr)
        return 1
    paths = output_paths(args.output, len(result.images))
    for img, path in zip(result.images, paths, strict=True):
        data = img.png if img.png else get_store().get(img.artifact.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    m = result.metadata
    scheduler = pb.Scheduler.Name(m.scheduler).removeprefix("SCHEDULER_").lower()
    print(
        f"wrote {', '.join(map(str, paths))} [{m.width}x{m.height} · seed {m.seed} · {m.steps} steps {scheduler} · "
        f"guidance {m.guidance_scale:g} · {m.seconds_per_image:.2f} s/image · {m.steps_per_second:.1f} steps/s]",
        file=sys.stderr,
    )
    return 0
