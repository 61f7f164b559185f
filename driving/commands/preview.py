"""`driving preview --env ID --out FILE.png`: see the simulated world before recording it.

Writes one PNG: a strip of dashcam frames along an expert drive (top row), their depth
(middle row, near = bright), and the top-down debug view of the last frame (right).
"""

from __future__ import annotations

import argparse
import sys

from driving.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preview",
        help="write a PNG of dashcam frames, depth and the top-down view of an env",
        description=(
            "Drive an env with its expert and write a strip of dashcam frames with their "
            "per-pixel depth and the top-down view, so you can see what a policy will see."
        ),
    )
    p.add_argument(
        "--env",
        default="liquid_drive/Racetrack-v0",
        metavar="ID",
        help="gymnasium id (default liquid_drive/Racetrack-v0)",
    )
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument(
        "--frames", type=int, default=4, help="dashcam frames in the strip (1-12, default 4)"
    )
    p.add_argument(
        "--every",
        type=int,
        default=25,
        help="policy steps between shown frames (default 25 = 2.5 s at 10 Hz)",
    )
    p.add_argument("--scale", type=int, default=2, help="pixel enlargement (1-8, default 2)")
    p.set_defaults(func=run)


def preview_image(env_id: str, seed: int = 0, frames: int = 4, every: int = 25, scale: int = 2):
    """The preview as an RGB uint8 array (used by the CLI and by docs/asset scripts)."""
    import cv2
    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401  (registers the ids)
    from envs.topdown import depth_to_rgb, render_topdown

    if env_id not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("liquid_drive/")))
        raise UserError(f"unknown env {env_id!r}; known: {known}")
    if env_id.endswith("Carla-v0"):
        raise UserError("preview renders the highway-env worlds; CARLA needs its own server")
    env = gym.make(env_id)
    try:
        obs, info = env.reset(seed=seed)
        shots = []
        for i in range(frames):
            if i:
                for _ in range(every):
                    obs, _, term, trunc, info = env.step(
                        np.array([info["expert_steering"]], np.float32)
                    )
                    if term or trunc:
                        obs, info = env.reset(seed=seed + 1000 + i)
            shots.append((obs["image"], info["depth"]))
        H, W = shots[0][0].shape[:2]

        def big(a):
            return cv2.resize(a, (W * scale, H * scale), interpolation=cv2.INTER_NEAREST)

        gap = np.full((H * scale, 4, 3), 255, np.uint8)
        top = np.concatenate(sum([[big(img), gap] for img, _ in shots], [])[:-1], 1)
        mid = np.concatenate(sum([[big(depth_to_rgb(d)), gap] for _, d in shots], [])[:-1], 1)
        left = np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), mid], 0)
        td = render_topdown(env, size=left.shape[0])
        return np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), td], 1)
    finally:
        env.close()


#: A PNG file's first bytes: an earlier preview is replaced, any other file is kept.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(args: argparse.Namespace) -> int:
    from driving.outputs import check_out_file, writing
    from policies.atomicio import atomic_write_png

    out = check_out_file(args.out, suffixes=(".png",), overwrite_if=PNG_MAGIC, make_parents=True)
    if not 1 <= args.frames <= 12:
        raise UserError(f"--frames must be between 1 and 12, got {args.frames}")
    if not 1 <= args.scale <= 8:
        raise UserError(f"--scale must be between 1 and 8, got {args.scale}")
    if args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    img = preview_image(args.env, args.seed, args.frames, args.every, args.scale)
    with writing(out):
        atomic_write_png(out, img)
    print(f"wrote {out} ({img.shape[1]}x{img.shape[0]})", file=sys.stderr)
    return 0
