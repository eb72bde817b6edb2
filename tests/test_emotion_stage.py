"""The emotion stage on real faces: found, tracked with stable ids, read as happy, detection every Nth frame."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch
from media_kit import make_face_clip

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.media import MediaSource
from pipeline.io.sinks import NullSink

pytest.importorskip("skimage", reason="the test faces come from scikit-image")


def run_emotion(clip, tmp_path, **options) -> list[dict]:
    config = parse_config(
        {"name": "emotion-test", "stages": [{"name": "emotion", "type": "emotion", "options": options}]}
    )
    analytics = tmp_path / "faces.jsonl"
    pipeline = Pipeline(build_graph(config), MediaSource(clip), AnalyticsSink(NullSink(), analytics))
    report = asyncio.run(pipeline.run())
    assert report["stages"]["emotion"]["errors"] == 0
    return [json.loads(line)["emotion"] for line in analytics.read_text().splitlines()]


def test_the_astronaut_is_found_tracked_and_happy_on_every_frame(tmp_path):
    records = run_emotion(make_face_clip(tmp_path / "face.mp4", frames=10), tmp_path)
    assert len(records) == 10
    tracks = {face["track"] for record in records for face in record["faces"]}
    assert tracks == {1}, "one face, one track, the same id throughout"
    for index, record in enumerate(records):
        (face,) = record["faces"]
        assert face["label"] == "happy" and face["probs"]["happy"] > 0.5
        assert face["detected"] is True
        x0, y0, x1, y1 = face["box"]
        assert 40 < x1 - x0 < 200 and 40 < y1 - y0 < 200
        assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-3)
        assert len(face["landmarks"]) == 5
        if index:
            previous = records[index - 1]["faces"][0]["box"]
            assert abs(x0 - previous[0]) < 12  # the face drifts 2 px a frame, the box with it


@pytest.mark.parametrize("rotation", [90, -90])
def test_a_face_in_portrait_phone_video_is_found_upright(tmp_path, rotation):
    """A phone stores portrait video sideways and tags it to be turned: MTCNN finds no sideways
    face, so the pictures are turned upright as they are decoded, and boxes are where players
    show the face."""
    clip = make_face_clip(tmp_path / "phone.mp4", frames=4, size=(240, 320), rotation=rotation)
    records = run_emotion(clip, tmp_path)
    for record in records:
        (face,) = record["faces"]
        assert face["label"] == "happy"
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 320 and y1 < 200  # her face, in the upper part


def test_detection_every_third_frame_holds_boxes_and_still_reads_expressions(tmp_path):
    records = run_emotion(make_face_clip(tmp_path / "face.mp4", frames=9), tmp_path, detect_every=3)
    detected = [record["faces"][0]["detected"] for record in records]
    assert detected == [True, False, False] * 3
    for index in (1, 2, 4, 5, 7, 8):
        assert records[index]["faces"][0]["box"] == records[index - 1]["faces"][0]["box"]  # held
    assert all(record["faces"][0]["label"] == "happy" for record in records)


def test_between_searches_of_the_whole_frame_it_finds_the_face_near_its_box(tmp_path):
    """search_every 3: detections 0, 3, 6 and 9 search the whole frame, the others look near the
    tracked box; the drifting face is found on every frame, in one track, where a search finds it."""
    clip = make_face_clip(tmp_path / "face.mp4", frames=10)
    searched = run_emotion(clip, tmp_path)
    config = parse_config(
        {"name": "emotion-test", "stages": [{"name": "emotion", "type": "emotion", "options": {"search_every": 3}}]}
    )
    analytics = tmp_path / "near.jsonl"
    pipeline = Pipeline(build_graph(config), MediaSource(clip), AnalyticsSink(NullSink(), analytics))
    asyncio.run(pipeline.run())
    stage = pipeline._running["emotion"].runner.stage
    assert (stage.detections, stage.searches) == (10, 4)
    records = [json.loads(line)["emotion"] for line in analytics.read_text().splitlines()]
    assert len(records) == 10
    for record, reference in zip(records, searched, strict=True):
        (face,) = record["faces"]
        assert face["track"] == 1 and face["detected"] is True and face["label"] == "happy"
        (want,) = reference["faces"]
        assert max(abs(a - b) for a, b in zip(face["box"], want["box"], strict=True)) <= 6  # px, a ~90 px face


def test_two_faces_get_two_tracks(tmp_path):
    clip = make_face_clip(tmp_path / "two.mp4", frames=4, size=(480, 240), mirrored=True)
    records = run_emotion(clip, tmp_path)
    for record in records:
        assert len(record["faces"]) == 2
        assert {face["label"] for face in record["faces"]} == {"happy"}
    assert {face["track"] for record in records for face in record["faces"]} == {1, 2}


def test_a_face_that_leaves_is_dropped_after_the_allowed_misses(tmp_path):
    clip = make_face_clip(tmp_path / "leaves.mp4", frames=8, blank_from=3)
    records = run_emotion(clip, tmp_path, max_missed=2)
    counts = [len(record["faces"]) for record in records]
    assert counts[:3] == [1, 1, 1]
    assert counts[3:5] == [1, 1]  # held, unseen, while the misses are allowed
    assert counts[5:] == [0, 0, 0]
    assert records[3]["faces"][0]["detected"] is False


def test_a_frame_without_pixels_is_marked_missing():
    from pipeline.stages.emotion.stage import Emotion

    class Dropped:
        index = 0
        has_image = False

    stage = Emotion("emotion")
    assert stage.compute(Dropped())["missing"] is True  # type: ignore[arg-type]


def test_options_are_checked():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="detect_every"):
        build_graph(
            parse_config({"name": "x", "stages": [{"name": "e", "type": "emotion", "options": {"detect_every": 0}}]})
        )


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_lower_precision_still_reads_the_astronaut_as_happy(tmp_path, precision):
    records = run_emotion(make_face_clip(tmp_path / "face.mp4", frames=4), tmp_path, precision=precision)
    assert [record["faces"][0]["label"] for record in records] == ["happy"] * 4


def test_a_face_that_grows_keeps_its_track(tmp_path):
    clip = make_face_clip(tmp_path / "zoom.mp4", frames=8, zoom=0.05)  # 35% bigger by the end
    records = run_emotion(clip, tmp_path)
    widths = [record["faces"][0]["box"][2] - record["faces"][0]["box"][0] for record in records]
    assert widths[-1] > widths[0] * 1.2
    assert {face["track"] for record in records for face in record["faces"]} == {1}


def test_the_detection_size_can_be_turned_down_at_run_time():
    from fractions import Fraction

    from pipeline.io.base import StreamInfo
    from pipeline.stage import StageContext
    from pipeline.stages.emotion.stage import Emotion

    cpu = torch.device("cpu")
    stage = Emotion("emotion")
    stage.setup(StageContext.standalone(stage, cpu, stream=StreamInfo(1280, 720, Fraction(30), Fraction(1, 30))))
    assert stage._detect_size == (180, 320)
    stage.set_detect_width(160)
    assert stage._detect_size == (90, 160)
    stage.set_detect_width(4000)  # never above the frame's own
    assert stage._detect_size == (720, 1280)


def test_several_frames_per_call_give_what_one_at_a_time_gives(tmp_path):
    clip = make_face_clip(tmp_path / "face.mp4", frames=12, blank_from=9)
    one = run_emotion(clip, tmp_path, detect_every=2)
    (tmp_path / "faces.jsonl").unlink()
    several = run_emotion(clip, tmp_path, detect_every=2, batch_frames=4)
    assert len(one) == len(several) == 12
    for a, b in zip(one, several, strict=True):
        assert [f["track"] for f in a["faces"]] == [f["track"] for f in b["faces"]]
        assert [f["label"] for f in a["faces"]] == [f["label"] for f in b["faces"]]
        assert [f["box"] for f in a["faces"]] == [f["box"] for f in b["faces"]]
        for fa, fb in zip(a["faces"], b["faces"], strict=True):
            assert fa["probs"] == pytest.approx(fb["probs"], abs=1e-4)


def test_a_stage_behind_takes_the_frames_waiting_in_one_call(tmp_path):
    """In a file run the executor hands a batching stage whatever is queued (never waiting to fill a batch)."""
    from pipeline.stages.emotion.stage import Emotion

    calls = []
    original = Emotion.compute_batch

    def counting(self, frames):
        calls.append(len(frames))
        return original(self, frames)

    Emotion.compute_batch = counting
    try:
        run_emotion(make_face_clip(tmp_path / "face.mp4", frames=12), tmp_path, batch_frames=4)
    finally:
        Emotion.compute_batch = original
    assert sum(calls) == 12 and max(calls) <= 4


def test_the_schedulers_knobs_hold_results_shrink_the_detector_and_lower_precision(tmp_path):
    """At the `lower_precision` rung (every 3rd frame, half the detector width, int8 on a CPU) the face is
    still found and read; the frames between carry the last result; back at `full`, all is restored."""
    from pipeline.scheduling.ladder import DEFAULT_LADDER, FULL, settings_at

    settings = settings_at(DEFAULT_LADDER, DEFAULT_LADDER.index("lower_precision"))
    config = parse_config({"name": "emotion-test", "stages": [{"name": "emotion", "type": "emotion"}]})
    analytics = tmp_path / "faces.jsonl"
    pipeline = Pipeline(
        build_graph(config),
        MediaSource(make_face_clip(tmp_path / "face.mp4", frames=9)),
        AnalyticsSink(NullSink(), analytics),
    )
    start_stages = pipeline._start_stages

    def start_at_the_rung() -> None:  # as the scheduler puts a rung: the stage's knobs, the runner's cadence
        start_stages()
        runner = pipeline._running["emotion"].runner
        runner.stage.apply_quality(settings)
        runner.set_cadence(settings.inference_every)

    pipeline._start_stages = start_at_the_rung
    report = asyncio.run(pipeline.run())
    stage = pipeline._running["emotion"].runner.stage
    assert stage.precision == "int8" and stage._detect_size[1] == 160
    assert stage.models.entries[stage._detector_name].precision == "int8"  # the manager converted it
    records = [json.loads(line)["emotion"] for line in analytics.read_text().splitlines()]
    assert [bool(r.get("held")) for r in records] == [False, True, True] * 3
    for index, record in enumerate(records):
        (face,) = record["faces"]
        assert face["label"] == "happy"
        if record.get("held"):
            assert record["faces"] == records[index - 1]["faces"]
    assert stage.detections == 3  # detect_every 1 of the frames it looked at: 0, 3, 6
    assert report["stages"]["emotion"]["held"] == 6
    stage.apply_quality(FULL)
    assert stage.precision == "fp32" and stage._detect_size[1] == 320

    # On a CUDA run whose detector fell back to the CPU, reduced precision follows where the model
    # runs: int8 for it (fp16 would save nothing on a CPU), and no fp16 for a classifier there.
    stage.ctx.device = torch.device("cuda", 0)
    for name in (stage._detector_name, "fer"):  # back at fp32: rebuilt from their files, on the CPU
        with stage.models.use(name):
            pass
    assert stage.models.device_of(stage._detector_name) == torch.device("cpu")
    stage.apply_quality(settings)
    precisions = {name: entry.precision for name, entry in stage.models.entries.items()}
    assert precisions == {stage._detector_name: "int8", "fer": "fp32"} and stage.precision == "int8"


def test_the_classifiers_batcher_takes_its_wait_and_row_limit_from_the_config(tmp_path):
    from pipeline.model_manager.manager import ModelManager

    config = parse_config(
        {
            "name": "emotion-batching",
            "stages": [{"name": "emotion", "type": "emotion", "options": {"batch_wait_ms": 7.5, "batch_rows": 3}}],
        }
    )
    models = ModelManager.for_device(torch.device("cpu"))
    clip = make_face_clip(tmp_path / "face.mp4", frames=2)
    report = asyncio.run(Pipeline(build_graph(config), MediaSource(clip), NullSink(), models=models).run())
    assert report["stages"]["emotion"]["errors"] == 0
    batcher = models.status()["batchers"]["fer"]
    assert batcher["wait_ms"] == 7.5 and batcher["max_rows"] == 3 and batcher["calls"] >= 1
    from pipeline.stages.emotion.stage import EmotionOptions

    defaults = EmotionOptions()
    assert (defaults.batch_wait_ms, defaults.batch_rows) == (2.0, 64)  # unchanged when not given


def test_at_every_2nd_frame_a_source_thinned_to_odd_frames_is_still_read(tmp_path):
    """A live source at twice `targets.fps` keeps only odd indices; at `inference_every_2` the stage must
    still look at every other frame it is given, not skip every odd index (which would be all of them)."""
    from conftest import RecordingSink

    from pipeline.io.synthetic import SyntheticSource
    from pipeline.scheduling.ladder import DEFAULT_LADDER, settings_at

    config = parse_config(
        {
            "name": "emotion-test",
            "stages": [{"name": "emotion", "type": "emotion"}],
            "targets": {"fps": 15, "latency_ms": 10_000},  # a budget no frame misses: only the thinning drops
        }
    )
    sink = RecordingSink()
    source = SyntheticSource(fps=30, frames=16, live=True, scene="face", width=320, height=180, pixel_format="rgb24")
    pipeline = Pipeline(build_graph(config), source, sink)
    start_stages = pipeline._start_stages

    def start_at_the_rung() -> None:
        start_stages()
        assert pipeline.scheduler is not None
        pipeline.scheduler.apply(settings_at(DEFAULT_LADDER, DEFAULT_LADDER.index("inference_every_2")))

    pipeline._start_stages = start_at_the_rung
    report = asyncio.run(pipeline.run())
    assert report["frames"]["dropped"] == {"over_target_fps": 8}
    kept = [r for r in sink.records if not r["dropped"]]
    assert [r["index"] for r in kept] == list(range(1, 16, 2))
    assert [bool(r["annotations"]["emotion"].get("held")) for r in kept] == [False, True] * 4
    # Its models beside the frames slow down with it: half their share of the wall time.
    from pipeline.side_work import CPU_SHARE

    for job in ("emotion.detect", "emotion.read"):
        assert report["side_work"][job]["share"] == round(CPU_SHARE / 2, 4)


@pytest.mark.parametrize("side_work", ["auto", "inline"])
def test_on_a_live_run_no_frame_waits_for_the_detector(monkeypatch, side_work):
    """A detector made slow (150 ms a call): on a live run frames go on with the tracked boxes and
    the faces are matched in when found; with the detector in line each detection frame waits."""
    from conftest import RecordingSink

    from models.mtcnn import MTCNN
    from pipeline.io.synthetic import SyntheticSource
    from pipeline.stages.emotion.stage import Emotion

    slow_ms = 150.0
    detect = MTCNN.detect

    def slow_detect(self, image, **kwargs):
        threading.Event().wait(slow_ms / 1000)
        return detect(self, image, **kwargs)

    monkeypatch.setattr(MTCNN, "detect", slow_detect)
    preparing = set()  # threads that scaled and converted a picture for the detector
    prepare = Emotion._detector_input

    def recording_prepare(self, image, size=None):
        preparing.add(threading.current_thread().name)
        return prepare(self, image, size)

    monkeypatch.setattr(Emotion, "_detector_input", recording_prepare)
    config = parse_config(
        {
            "name": "emotion-live",
            "stages": [{"name": "emotion", "type": "emotion"}],
            "side_work": side_work,
            "quality": {"mode": "off"},  # every frame reaches the stage: this measures the stage, not the scheduler
        }
    )
    sink = RecordingSink()
    source = SyntheticSource(fps=30, frames=45, live=True, scene="face", width=320, height=180, pixel_format="rgb24")
    pipeline = Pipeline(build_graph(config), source, sink)
    report = asyncio.run(pipeline.run())
    stage = report["stages"]["emotion"]
    assert stage["errors"] == 0
    # In line, frames pile up behind the detector and a live ring lets some go: those carry nothing.
    faces = [r["annotations"]["emotion"].get("faces") for r in sink.records if "emotion" in r["annotations"]]
    assert faces[-1] and faces[-1][0]["label"] == "happy"  # found either way
    if side_work == "auto":  # the default: beside the frames on a live source
        assert stage["latency_ms"]["p95"] < slow_ms / 2  # no frame waited for a detection
        assert not faces[0]  # the first frame went on before its detection was done
        assert preparing == {"emotion.detect-side"}  # even its input is made on the side job's thread
        assert report["side_work"]["emotion.detect"]["run"] >= 1
    else:
        assert stage["latency_ms"]["max"] >= slow_ms  # a detection frame waits for the detector


@pytest.mark.parametrize("side_work", ["auto", "inline"])
def test_on_a_live_run_expressions_are_read_beside_the_frames(monkeypatch, side_work):
    """A classifier made slow (200 ms a batch): on a live run frames go on with each face's last
    reading, and the readings land on later frames; in line, every frame with a face waits for it."""
    from conftest import RecordingSink

    from pipeline.io.synthetic import SyntheticSource
    from pipeline.stages.emotion.stage import Emotion

    slow_ms = 200.0
    classify = Emotion._classify
    reading = set()  # threads the classifier ran on

    def slow_classify(self, pictures):
        reading.add(threading.current_thread().name)
        threading.Event().wait(slow_ms / 1000)
        return classify(self, pictures)

    monkeypatch.setattr(Emotion, "_classify", slow_classify)
    config = parse_config(
        {
            "name": "emotion-live",
            "stages": [{"name": "emotion", "type": "emotion"}],
            "side_work": side_work,
            "quality": {"mode": "off"},
        }
    )
    sink = RecordingSink()
    source = SyntheticSource(fps=30, frames=30, live=True, scene="face", width=320, height=180, pixel_format="rgb24")
    report = asyncio.run(Pipeline(build_graph(config), source, sink).run())
    stage = report["stages"]["emotion"]
    assert stage["errors"] == 0
    annotations = [r["annotations"].get("emotion", {}) for r in sink.records]  # a frame the ring let go has none
    faces = [annotation["faces"][0] for annotation in annotations if annotation.get("faces")]
    assert faces[-1]["label"] == "happy" and faces[-1]["probs"]["happy"] > 0.5
    if side_work == "auto":  # the default: beside the frames on a live source
        assert reading == {"emotion.read-side"}
        assert faces[0]["probs"] is None and faces[0]["label"] is None  # its reading came on a later frame
        assert stage["latency_ms"]["p95"] < slow_ms / 2  # no frame waited for the classifier
    else:
        assert not any("-side" in name for name in reading)
        assert faces[0]["label"] == "happy"  # read on its own frame
        assert stage["latency_ms"]["p50"] >= slow_ms


def test_readings_from_beside_reach_only_the_faces_still_tracked():
    """A reading lands a frame or more after its picture: a face lost since is passed over, and the
    next reading starts on this frame's faces (copies: the tracker moves them on meanwhile)."""
    import numpy as np

    from pipeline.stages.emotion.face_tracker import FaceTracker, Track
    from pipeline.stages.emotion.stage import Emotion

    class Reader:
        beside, busy = True, False

        def __init__(self, readings):
            self.readings, self.started = readings, []

        def take(self):
            readings, self.readings = self.readings, None
            return readings

        def submit(self, picture, faces, made):
            self.started.append((picture, faces))

    happy = np.eye(7, dtype=np.float32)[3]
    stage = Emotion("emotion")
    stage._tracker = FaceTracker(smoothing=0.0)
    stage.reading = Reader([(1, happy), (2, happy)])  # face 2 has gone since its picture
    face = Track(1, np.array([10, 10, 50, 50], dtype=np.float32), np.zeros((5, 2), np.float32), 0.9)
    picture = torch.zeros(8, 8)
    stage._read_beside(picture, [face])
    assert face.probs is not None and face.label == 3
    ((copy_of_picture, faces),) = stage.reading.started
    assert copy_of_picture is not picture and torch.equal(copy_of_picture, picture)
    assert [f.id for f in faces] == [1] and faces[0] is not face


def test_the_expression_crop_is_the_original_pipelines_whole_pixel_square_grown_by_its_margin():
    from pipeline.stages.emotion.stage import expression_crops

    # 80.5 wide, 100.2 tall (taller than wide, as MTCNN boxes): fer cuts it to whole pixels
    # (100, 50)–(180, 150), squares it to 100 about its centre (x from 90) and adds 10 px around.
    box = np.array([[100.4, 50.7, 180.9, 150.9]])
    (crop,) = expression_crops(box)
    assert crop.tolist() == [80.0, 40.0, 200.0, 160.0]
    (odd,) = expression_crops(np.array([[0.0, 0.0, 81.0, 100.0]]))  # 19 px to add: 9 before, 10 after
    assert odd.tolist() == [-19.0, -10.0, 101.0, 110.0]
    (grown,) = expression_crops(np.array([[100.0, 50.0, 180.0, 150.0]]), scale=1.1, margin=0.0, shift=0.03)
    side = grown[2] - grown[0]
    assert side == pytest.approx(110.0) and grown[3] - grown[1] == pytest.approx(side)  # square, 1.1 × 100
    assert (grown[0] + grown[2]) / 2 == pytest.approx(140.0)  # centred across
    assert (grown[1] + grown[3]) / 2 == pytest.approx(100.0 - 0.03 * 110.0)  # moved up by 0.03 of its side
    (far,) = expression_crops(np.array([[-90.0, -90.0, -10.0, -30.0]]))
    assert far[2] - far[0] == pytest.approx(far[3] - far[1])  # off the picture it stays square


def test_past_the_pictures_edge_the_crop_reads_the_pictures_own_grey_not_black():
    """On a plain grey picture a crop half off the edge reads the same as one inside it: the
    fill is the grey of the picture's bottom rows, as the original pipeline pads."""
    from fractions import Fraction

    from kernels.colour import rgb_to_i420
    from pipeline.frames import Frame
    from pipeline.io.base import StreamInfo
    from pipeline.ringbuffer import RingBuffer
    from pipeline.stage import StageContext
    from pipeline.stages.emotion.stage import Emotion, EmotionOptions

    device = torch.device("cpu")
    info = StreamInfo(160, 120, Fraction(30), Fraction(1, 30))
    stage = Emotion("emotion", options=EmotionOptions())
    stage.setup(StageContext.standalone(stage, device, stream=info))
    ring = RingBuffer(1, info.frame_shape)
    lease = ring.try_acquire()
    lease.tensor.copy_(rgb_to_i420(torch.full((120, 160, 3), 150, dtype=torch.uint8)))
    frame = Frame(0, 0, Fraction(1, 30), 0, lease)
    try:
        inside, over_edge = stage.read_crops(frame.image, np.array([[40, 20, 100, 80], [-30, -30, 30, 30]]))
    finally:
        frame.release()
        stage.teardown()
    assert np.abs(inside - over_edge).max() < 1e-4
