#!/usr/bin/env python3
"""Convert facenet-pytorch's MTCNN weights (pnet.pt, rnet.pt, onet.pt) into one safetensors file for `models.mtcnn`.

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/wheels
    python models/convert_mtcnn.py /tmp/wheels/facenet_pytorch-2.6.0-py3-none-any.whl

Reads the three state dicts straight out of the wheel (tensors only: `weights_only=True`, no
code from the package runs), checks they fill `models.mtcnn.MTCNN` exactly, and writes
`models/weights/mtcnn.safetensors` with the source, licence and each file's sha256 as metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.mtcnn import MTCNN, WEIGHTS

NETWORKS = ("pnet", "rnet", "onet")
SOURCE = "facenet-pytorch==2.6.0 (PyPI wheel), facenet_pytorch/data/{pnet,rnet,onet}.pt; MIT licence"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="facenet_pytorch-2.6.0-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=WEIGHTS, help=f"Default: {WEIGHTS}")
    args = parser.parse_args()
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    metadata = {"source": SOURCE, "converter": "models/convert_mtcnn.py"}
    with zipfile.ZipFile(args.wheel) as wheel:
        for name in NETWORKS:
            data = wheel.read(f"facenet_pytorch/data/{name}.pt")
            metadata[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
            for key, tensor in torch.load(io.BytesIO(data), map_location="cpu", weights_only=True).items():
                state[f"{name}.{key}"] = tensor.float().contiguous()
    model = MTCNN()
    model.load_state_dict(state)  # every parameter accounted for, shapes checked
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.output), metadata)
    args.output.chmod(0o644)
    print(json.dumps({"written": str(args.output), "tensors": len(state), **metadata}))


if __name__ == "__main__":
    main()
