"""The face tracker: stable ids, matching by overlap, held boxes, dropped tracks, labels that do not flicker."""

from __future__ import annotations

import numpy as np

from pipeline.stages.emotion.face_tracker import FaceTracker, box_iou


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_ids_stay_with_faces_that_move_a_little_and_swap_order():
    tracker = FaceTracker()
    first = tracker.update(boxes((0, 0, 10, 10), (50, 50, 60, 60)))
    ids = {tuple(t.box[:2]): t.id for t in first}
    moved = tracker.update(boxes((52, 51, 62, 61), (1, 1, 11, 11)))  # same faces, listed the other way round
    assert {t.id for t in moved} == set(ids.values())
    left = next(t for t in moved if t.box[0] < 20)
    assert left.id == ids[(0.0, 0.0)] and left.detected


def test_a_new_face_gets_a_new_id_and_a_lost_one_is_dropped_after_its_misses():
    tracker = FaceTracker(max_missed=1)
    tracker.update(boxes((0, 0, 10, 10)))
    tracks = tracker.update(boxes((100, 100, 110, 110)))  # the old face unseen once, a new one appears
    assert sorted(t.id for t in tracks) == [1, 2]
    assert not next(t for t in tracks if t.id == 1).detected
    tracks = tracker.update(boxes((100, 100, 110, 110)))
    assert [t.id for t in tracks] == [2]


def test_between_detections_boxes_are_held():
    tracker = FaceTracker()
    tracker.update(boxes((0, 0, 10, 10)))
    (held,) = tracker.update(None)
    assert held.box.tolist() == [0, 0, 10, 10] and not held.detected and held.missed == 0


def test_labels_do_not_flicker_between_two_close_classes():
    tracker = FaceTracker(smoothing=0.6, label_margin=0.05)
    (track,) = tracker.update(boxes((0, 0, 10, 10)))
    happy, neutral = np.zeros(7, np.float32), np.zeros(7, np.float32)
    happy[[3, 6]] = (0.52, 0.48)
    neutral[[3, 6]] = (0.48, 0.52)
    for reading in [happy, neutral] * 10:  # the raw top class alternates every frame
        tracker.observe(track, reading)
    assert set(track.history) == {3}
    for _ in range(10):  # a clear, lasting change does come through
        tracker.observe(track, np.eye(7, dtype=np.float32)[6])
    assert track.history[-1] == 6


def test_box_iou():
    iou = box_iou(boxes((0, 0, 10, 10)), boxes((0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]], rtol=1e-6)
    assert box_iou(np.zeros((0, 4)), boxes((0, 0, 1, 1))).shape == (0, 1)
