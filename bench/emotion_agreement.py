#!/usr/bin/env python3
"""How often our emotion stage reads a face as the original `fer` pipeline does.

The original's readings are recorded once (`models/record_fer_pipeline_reference.py`) on the
pictures of `models/fer_faces.py`: the astronaut in thirteen variants and 100 faces of Labeled
Faces in the Wild at two sizes. They are recorded with each of `fer`'s two detectors:

- **mtcnn** (`FER(mtcnn=True)`, tests/fixtures/fer_mtcnn_pipeline_reference.json):
  facenet-pytorch's MTCNN, the network our detector ports, so the two pipelines box a face
  alike and what is compared is the crop and the model;
- **haar** (its default, tests/fixtures/fer_pipeline_reference.json): OpenCV's Haar cascade,
  which boxes a face differently from MTCNN, so this adds the detectors' difference.

Here each picture goes through our stage as a short clip (three frames of it, I420, as a decoded
file gives them; the stage's own `compute`, tracker and classifier batch), and each face the
original found is paired with ours by the overlap of their boxes. Per reference and group:

- **agreement**: the share of paired faces given the same label;
- **probabilities**: where both classified nearly the same crop (crop IoU ≥ `SAME_CROP_IOU`),
  the largest difference of any class's probability, median and maximum;
- **detection**: faces the original found and we did not (those of at least 40 px must be
  none), and faces only we found; each picture holds one face, so a box of the original's far
  from it is a false detection, counted apart;
- **their crops**: the original's own crop of each face through our preparation and model
  (what the port does on its own, with the detector out of the comparison): the share of
  labels that agree and the largest difference of a probability.

    python bench/emotion_agreement.py [--device cpu]

Last line: one JSON object {reference: {"groups": {group: {...}}, "overall": {...}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from kernels.colour import rgb_to_i420
from models.fer import LABELS
from models.fer_faces import face_at, is_the_face, pictures
from pipeline.frames import Frame
from pipeline.io.base import StreamInfo
from pipeline.model_manager.manager import ModelManager
from pipeline.ringbuffer import RingBuffer
from pipeline.stage import StageContext
from pipeline.stages.emotion.stage import Emotion, EmotionOptions

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = {
    "mtcnn": ROOT / "tests" / "fixtures" / "fer_mtcnn_pipeline_reference.json",
    "haar": ROOT / "tests" / "fixtures" / "fer_pipeline_reference.json",
}
FRAMES = 3  # a short clip of each picture
PAIR_IOU = 0.3  # two detectors' boxes of one face (Haar and MTCNN) overlap at least this much
SAME_CROP_IOU = 0.8  # crops this alike count as the same crop for comparing probabilities
MIN_FACE_PX = 40  # faces the original finds at this size or larger, we must find too


def iou(a: list[float], b: list[float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def our_faces(
    rgb: np.ndarray, models: ModelManager, device: torch.device, crops: list[list[float]] = ()
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The faces the stage reports on the last frame of a short clip of the picture, and the
    probabilities its preparation and classifier give for `crops` (the original's)."""
    height, width = rgb.shape[:2]
    info = StreamInfo(width, height, Fraction(30), Fraction(1, 30))
    stage = Emotion("emotion", options=EmotionOptions())
    stage.setup(StageContext.standalone(stage, device, stream=info, models=models))
    ring = RingBuffer(1, info.frame_shape, device=device)
    picture = rgb_to_i420(torch.from_numpy(rgb)).to(device)
    record: dict[str, Any] = {"faces": []}
    try:
        for index in range(FRAMES):
            lease = ring.try_acquire()
            lease.tensor.copy_(picture)
            frame = Frame(index, index, Fraction(1, 30), time.monotonic_ns(), lease)
            record = stage.compute(frame)
            if index == FRAMES - 1 and crops:
                given = stage.read_crops(frame.image, np.asarray(crops, dtype=np.float32))
            frame.release()
    finally:
        stage.teardown()
    return record["faces"], (list(given) if crops else [])


def compare(device: torch.device, fixtures: dict[str, Path] = FIXTURES) -> dict[str, dict[str, Any]]:
    """Per reference, per group and overall: pairs, agreement, probability differences and
    detection counts. Our stage runs once per picture for all the references."""
    recorded = {
        reference: {entry["name"]: entry for entry in json.loads(path.read_text())["pictures"]}
        for reference, path in fixtures.items()
    }
    models = ModelManager.for_device(device)
    where = face_at()
    groups: dict[str, dict[str, dict[str, Any]]] = {reference: {} for reference in fixtures}
    for group, name, rgb in pictures():
        # Each picture holds one face: a box of theirs elsewhere is a false detection, counted apart.
        found = {reference: faces[name]["faces"] for reference, faces in recorded.items()}
        theirs = {
            ref: [face for face in faces if is_the_face(face["box"], where[name])] for ref, faces in found.items()
        }
        crops = [face["crop"] for faces in theirs.values() for face in faces]
        ours, on_their_crops = our_faces(rgb, models, device, crops)
        for reference, faces in theirs.items():
            tally = groups[reference].setdefault(group, _empty_tally())
            tally["false"] += len(found[reference]) - len(faces)
            mine, on_their_crops = on_their_crops[: len(faces)], on_their_crops[len(faces) :]
            _count(tally, name, faces, ours, mine)
    return {reference: _results(tallies) for reference, tallies in groups.items()}


def _empty_tally() -> dict[str, Any]:
    keys = ("pictures", "theirs", "ours", "false", "paired", "agree")
    return {**dict.fromkeys(keys, 0), "missed": [], "deltas": [], "same": []}


def _count(
    tally: dict[str, Any], name: str, theirs: list[dict], ours: list[dict], on_their_crops: list[np.ndarray]
) -> None:
    """Adds one picture's faces: theirs, ours, and ours read on their crops."""
    for face, probs in zip(theirs, on_their_crops, strict=True):  # their crop, our preparation and model
        ours_probs = dict(zip(LABELS, probs.tolist(), strict=True))
        delta = max(abs(ours_probs[k] - p) for k, p in face["probs"].items())
        tally["same"].append((LABELS[int(np.argmax(probs))] == face["label"], delta))
    tally["pictures"] += 1
    tally["theirs"] += len(theirs)
    tally["ours"] += len(ours)
    free = list(ours)
    for face in theirs:
        best = max(free, key=lambda o: iou(o["box"], face["box"]), default=None)
        if best is None or iou(best["box"], face["box"]) < PAIR_IOU:
            side = min(face["box"][2] - face["box"][0], face["box"][3] - face["box"][1])
            tally["missed"].append({"picture": name, "size_px": side})
            continue
        free.remove(best)
        tally["paired"] += 1
        tally["agree"] += best["label"] == face["label"]
        if best.get("crop") is not None and iou(best["crop"], face["crop"]) >= SAME_CROP_IOU:
            tally["deltas"].append(max(abs(best["probs"][k] - p) for k, p in face["probs"].items()))


def _results(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary = {group: _summary(tally) for group, tally in groups.items()}
    overall = {
        k: sum(t[k] for t in groups.values()) for k in ("pictures", "theirs", "ours", "false", "paired", "agree")
    }
    overall["missed"] = [m for t in groups.values() for m in t["missed"]]
    overall["deltas"] = [d for t in groups.values() for d in t["deltas"]]
    overall["same"] = [x for t in groups.values() for x in t["same"]]
    return {"groups": summary, "overall": _summary(overall)}


def _summary(tally: dict[str, Any]) -> dict[str, Any]:
    deltas, same = tally["deltas"], tally["same"]
    return {
        # The original's own crops through our preparation and model: what the port does alone.
        "their_crop_agreement": round(sum(a for a, _ in same) / len(same), 4) if same else None,
        "their_crop_prob_delta_max": round(max(d for _, d in same), 4) if same else None,
        "pictures": tally["pictures"],
        "faces_theirs": tally["theirs"],
        "faces_ours": tally["ours"],
        "false_detections_theirs": tally["false"],
        "paired": tally["paired"],
        "agreement": round(tally["agree"] / tally["paired"], 4) if tally["paired"] else None,
        "missed": len(tally["missed"]),
        "missed_at_40px": [m for m in tally["missed"] if m["size_px"] >= MIN_FACE_PX],
        "same_crop": len(deltas),
        "prob_delta_median": round(float(np.median(deltas)), 4) if deltas else None,
        "prob_delta_max": round(float(np.max(deltas)), 4) if deltas else None,
    }


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'group':<10} {'pictures':>8} {'theirs':>6} {'false':>5} {'ours':>5} {'paired':>6} {'agree':>6} {'missed':>6}"
    )
    head += f" {'≥40px':>5} {'same crop':>9} {'Δp median':>9} {'Δp max':>7} | {'their crops':>11} {'Δp max':>7}"
    lines = [head]
    for name, s in [*result["groups"].items(), ("all", result["overall"])]:
        agreement = f"{s['agreement']:.1%}" if s["agreement"] is not None else "–"
        median = f"{s['prob_delta_median']:.3f}" if s["prob_delta_median"] is not None else "–"
        top = f"{s['prob_delta_max']:.3f}" if s["prob_delta_max"] is not None else "–"
        theirs = f"{s['their_crop_agreement']:.1%}" if s["their_crop_agreement"] is not None else "–"
        their_top = f"{s['their_crop_prob_delta_max']:.3f}" if s["their_crop_prob_delta_max"] is not None else "–"
        lines.append(
            f"{name:<10} {s['pictures']:>8} {s['faces_theirs']:>6} {s['false_detections_theirs']:>5} "
            f"{s['faces_ours']:>5} {s['paired']:>6} "
            f"{agreement:>6} {s['missed']:>6} {len(s['missed_at_40px']):>5} {s['same_crop']:>9} {median:>9} {top:>7}"
            f" | {theirs:>11} {their_top:>7}"
        )
    return "\n".join(lines)


def describe(results: dict[str, dict[str, Any]]) -> str:
    """A table per reference, with what it was recorded with."""
    detectors = {"mtcnn": "its MTCNN (as ours)", "haar": "its default Haar cascade"}
    return "\n\n".join(
        f"our emotion stage against fer with {detectors.get(reference, reference)}, same pictures\n{table(result)}"
        for reference, result in results.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = compare(torch.device(args.device))
    print(describe(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
