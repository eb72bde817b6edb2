"""Faces followed from frame to frame: stable ids, held boxes between detections, steady labels.

Detection runs every Nth frame at most; in between, each face keeps its last box and only its
expression is read again. Detections are matched to tracks by box overlap (IoU), best pairs
first. Class probabilities are smoothed per track (exponential moving average) and the label
changes only when another class leads the current one by a margin, so a face whose expression
sits between two classes does not flicker between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MATCH_IOU = 0.3  # a detection continues a track when their boxes overlap at least this much
MAX_MISSED = 2  # detection rounds a track may go unmatched before it is dropped
SMOOTHING = 0.6  # weight of the past in the probability average (0: no smoothing)
LABEL_MARGIN = 0.05  # how far another class must lead before the label changes


@dataclass(eq=False)
class Track:
    """One face over time."""

    id: int
    box: np.ndarray  # x0, y0, x1, y1 in source pixels
    landmarks: np.ndarray  # 5×2 (x, y)
    score: float  # the detector's, at the last match
    detected: bool = True  # matched a detection on this frame (False: box held from an earlier one)
    missed: int = 0  # detection rounds since the last match
    probs: np.ndarray | None = None  # smoothed class probabilities
    label: int | None = None  # index of the current label
    history: list[int] = field(default_factory=list)  # labels shown, for tests and debugging


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (M×4) with every box in `b` (N×4): M×N."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class FaceTracker:
    """Keeps tracks across frames; `update` with detections (or None between detections), then `observe`."""

    def __init__(
        self,
        *,
        match_iou: float = MATCH_IOU,
        max_missed: int = MAX_MISSED,
        smoothing: float = SMOOTHING,
        label_margin: float = LABEL_MARGIN,
    ):
        self.match_iou = match_iou
        self.max_missed = max_missed
        self.smoothing = smoothing
        self.label_margin = label_margin
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(
        self, boxes: np.ndarray | None, scores: np.ndarray | None = None, landmarks: np.ndarray | None = None
    ) -> list[Track]:
        """Match this frame's detections (K×4, K, K×5×2) to the tracks; None: no detection ran, hold the boxes."""
        if boxes is None:
            for track in self.tracks:
                track.detected = False
            return self.tracks
        scores = scores if scores is not None else np.ones(len(boxes), dtype=np.float32)
        landmarks = landmarks if landmarks is not None else np.zeros((len(boxes), 5, 2), dtype=np.float32)
        overlap = box_iou(np.stack([t.box for t in self.tracks]) if self.tracks else np.zeros((0, 4)), boxes)
        matched_tracks: set[int] = set()
        matched_boxes: set[int] = set()
        for flat in np.argsort(-overlap, axis=None):  # best pairs first
            t, d = np.unravel_index(flat, overlap.shape)
            if overlap[t, d] < self.match_iou:
                break
            if t in matched_tracks or d in matched_boxes:
                continue
            matched_tracks.add(int(t))
            matched_boxes.add(int(d))
            track = self.tracks[t]
            track.box, track.landmarks, track.score = boxes[d], landmarks[d], float(scores[d])
            track.detected, track.missed = True, 0
        survivors = []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.detected = False
                track.missed += 1
                if track.missed > self.max_missed:
                    continue
            survivors.append(track)
        for d in range(len(boxes)):
            if d not in matched_boxes:
                survivors.append(Track(self._next_id, boxes[d], landmarks[d], float(scores[d])))
                self._next_id += 1
        self.tracks = survivors
        return self.tracks

    def observe(self, track: Track, probs: np.ndarray) -> None:
        """Fold a new reading of the track's class probabilities in, and settle its label."""
        if track.probs is None:
            track.probs = probs.astype(np.float32)
        else:
            track.probs = self.smoothing * track.probs + (1.0 - self.smoothing) * probs
        leader = int(np.argmax(track.probs))
        if track.label is None or track.probs[leader] > track.probs[track.label] + self.label_margin:
            track.label = leader
        track.history.append(track.label)
