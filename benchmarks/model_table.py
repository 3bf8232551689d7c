"""Print the Markdown table of the five architectures for ``docs/models.md``.

Parameters and GFLOP per 512 x 512 slice (FLOPs of convolutions and transposed convolutions as
counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add; norms and ReLUs are
not counted). Models are built on the ``meta`` device, so counting costs no arithmetic.

Usage: ``python benchmarks/model_table.py [--size 512] [--widths 32 16]``
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from src_models import ARCHITECTURES, build_model


def gflop(model: torch.nn.Module, size: int, reconstruct: bool) -> float:
    """GFLOP of one forward pass on a (1, 1, size, size) slice."""
    x = torch.empty(1, 1, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, reconstruct=reconstruct)
    return counter.get_total_flops() / 1e9


def table(size: int, widths: list[int]) -> str:
    """The Markdown table, one row per architecture."""
    header = ["Model", "Skip module", "Restoration decoder"]
    for width in widths:
        header += [f"Params (w{width})", f"GFLOP (w{width})", f"GFLOP labels only (w{width})"]
    rows = [header, ["---"] * len(header)]
    for name in ARCHITECTURES:
        row = []
        for width in widths:
            with torch.device("meta"):
                model = build_model(name, width=width)
            params = sum(p.numel() for p in model.parameters())
            full, labels_only = gflop(model, size, True), gflop(model, size, False)
            row += [f"{params / 1e6:.2f} M", f"{full:.1f}", f"{labels_only:.1f}"]
        skip = model.config.get("skip_module", "none (FCN score fusion)")
        restores = "yes" if model.config.get("restoration", False) else "no"
        rows.append([name, skip, restores, *row])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="slice edge in pixels")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 16], help="base widths")
    args = parser.parse_args()
    print(table(args.size, args.widths))


if __name__ == "__main__":
    main()
