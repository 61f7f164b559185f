"""`driving export --checkpoint RUN --out FILE.onnx`: one policy step as an ONNX graph."""

from __future__ import annotations

import argparse
import json
import sys

from driving.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained policy's control step to ONNX",
        description=(
            "Write one closed-loop step of a trained policy (uint8 camera frame, state and "
            "elapsed seconds in; steering and the new state out) as an ONNX file, and check it "
            "against PyTorch with onnxruntime when that is installed."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="checkpoint directory written by `driving train` (model.safetensors + config.json)")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the onnxruntime comparison with PyTorch")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from driving.outputs import check_out_file, writing
    from policies.checkpoint import load_policy
    from policies.export import PolicyStep, check_onnx, export_onnx

    # --out first: under a file, onto a folder, an earlier file without --force, unwritable
    out = check_out_file(args.out, suffixes=(".onnx",), force=args.force)
    if not 9 <= args.opset <= 21:
        raise UserError(f"--opset must be between 9 and 21, got {args.opset}")
    try:
        policy, _ = load_policy(args.checkpoint)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with writing(out):  # a full disk: one line, and no partial .onnx (temp file + rename)
        export_onnx(policy, out, opset=args.opset)
    step = PolicyStep(policy)
    summary = {
        "policy": policy.name,
        "checkpoint": str(args.checkpoint),
        "onnx": str(out),
        "bytes": out.stat().st_size,
        "inputs": step.input_names(),
        "outputs": step.output_names(),
        "image_hw": list(policy.image_hw),
        "state_size": policy.state_size,
        "time_unit_s": policy.time_unit_s,
        "max_abs_diff_vs_torch": None,
    }
    if not args.no_check:
        try:
            summary["max_abs_diff_vs_torch"] = check_onnx(policy, out)
        except ImportError:
            summary["check"] = "skipped: onnxruntime is not installed (pip install onnxruntime)"
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {out} ({summary['bytes'] / 1e3:.0f} kB): {policy.name} step, "
              f"inputs {', '.join(summary['inputs'])} -> outputs {', '.join(summary['outputs'])}")
        if summary["max_abs_diff_vs_torch"] is not None:
            print(f"onnxruntime vs PyTorch over 4 chained steps: max |diff| = "
                  f"{summary['max_abs_diff_vs_torch']:.2e}")
        elif "check" in summary:
            print(summary["check"])
    diff = summary["max_abs_diff_vs_torch"]
    if diff is not None and diff > 1e-4:
        print(f"driving export: error: the exported graph differs from PyTorch by {diff:.2e} "
              "(> 1e-4); please report this with the checkpoint's config.json", file=sys.stderr)
        return 1
    return 0
