"""Copy a trained checkpoint into the package as the built-in demo model, weights in float16.

    python examples/ship_model.py ~/.cache/edgemoe/tiny-moe-out edgemoe/assets/tiny-moe

float16 halves the repo and wheel size; the shipped float16 model is the reference every quality
figure is measured against.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

KEEP = ("config.json", "generation_config.json", "tokenizer.json", "MODEL_CARD.md", "heldout.txt",
        "train_log.jsonl")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args(argv)
    args.dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(args.src / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(args.dst / "model.safetensors"),
              metadata={"format": "pt"})
    for name in KEEP:
        if (args.src / name).exists():
            shutil.copyfile(args.src / name, args.dst / name)
    print(f"shipped {sum(v.size for v in tensors.values()) / 1e6:.1f}M parameters to {args.dst}")


if __name__ == "__main__":
    main()
