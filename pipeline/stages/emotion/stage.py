"""Faces and their expressions: MTCNN on a downscaled frame, mini-Xception on every tracked face.

Each frame: on detection frames (every `detect_every`th; a new face is found within that many
frames), the frame is scaled to `detect_width` and converted to RGB in one kernel call, MTCNN
finds the faces, and the tracker matches them to the faces it follows. With `search_every` N,
only every Nth detection searches the whole frame; those between look only near the faces
already tracked (`MTCNN.detect_near`: R-Net and O-Net on their boxes, no pyramid, about a
quarter of the cost), so a new face is found within N detections. Then every tracked face is
cropped, resized to 64×64 gray and normalized — all of them in one kernel call, straight from
the frame's own layout — and classified in one batch. Between detections the boxes are held, so
expressions still update every frame at a fraction of the detector's cost.

Both models are latest-wins side jobs (`pipeline.side_work`). On live runs they run beside the
frames: a frame due a detection hands over a copy of its picture (scaling and converting it for
the detector is the job's work too) and goes on with the tracked boxes, and the faces found are
matched in on the first frame after they are ready, which the tracker's overlap matching already
allows for between detections; the classifier gets a copy of the picture and the tracked boxes,
and a frame carries each face's expression as last read (the probabilities are smoothed over
several readings anyway). No frame waits for either model. On file runs both run in line, so
the output is the same on every run.

Under load the scheduler lowers three things: it is an inference stage, so the runner calls it on
only every 2nd or 3rd frame and the frames between carry the last result, marked `"held": true`
(the avatar keeps animating from it); and through `apply_quality` the detector's input width is
scaled down and the models run at lower precision (fp16 on a GPU, int8 dynamic quantization on a
CPU).

Annotation, under the stage's name in the analytics line:
`{"faces": [{"track", "box": [x0, y0, x1, y1] (source pixels), "crop": [x0, y0, x1, y1] (the
square the expression model reads for the face's box on this frame, see `expression_crops`),
"landmarks": [[x, y] × 5], "score", "probs": {label: p}, "label", "detected"}]}`, faces in
track order. `probs` and `label` are null until a face's first reading (on live runs, its first frame or two).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from typing_extensions import TypedDict

from kernels import ops
from models.fer import INPUT_SIZE, LABELS, load_fer
from models.mtcnn import load_mtcnn
from models.precision import PRECISIONS
from pipeline.annotation import Annotation, missing
from pipeline.frames import Frame
from pipeline.model_manager.accounting import ModelSpec
from pipeline.model_manager.batching import DEFAULT_MAX_BATCH, DEFAULT_WAIT_S
from pipeline.model_manager.manager import ModelManager
from pipeline.scheduling.ladder import QualitySettings
from pipeline.side_work import JobKind, SideJob
from pipeline.stage import ComputeStage, StageContext, StageOptions
from pipeline.stages.emotion.face_tracker import LABEL_MARGIN, MATCH_IOU, MAX_MISSED, SMOOTHING, FaceTracker, Track

FER_NORMALIZE = {"mean": (0.5,), "std": (0.5,)}  # the model's (x/255 − 0.5)·2
# The crop the expression model reads: the original `fer` pipeline's, its box squared and grown by
# this many source pixels on each side (chosen by measurement: bench/emotion_agreement.py).
CROP_MARGIN = 10
CLASSIFIER = "fer"  # the expression model's name in the model manager
PIXELS_0_255 = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # MTCNN takes raw 0..255


class EmotionOptions(StageOptions):
    detect_every: int = Field(1, ge=1, le=300)  # frames between detections; tracked boxes in between
    detect_width: int = Field(320, ge=48, le=4096)  # px: the frame is scaled to this width to detect
    # Detections per search of the whole frame; those between look only near the tracked faces (a
    # quarter of the cost), so a new face is found within this many detections. 1: every one searches.
    search_every: int = Field(1, ge=1, le=300)
    min_face: int = Field(20, ge=12, le=1000)  # px at detection size: smaller faces are not looked for
    max_faces: int = Field(8, ge=1, le=64)  # the most confident faces kept per detection
    smoothing: float = Field(SMOOTHING, ge=0.0, lt=1.0)  # weight of the past in each face's probabilities
    label_margin: float = Field(LABEL_MARGIN, ge=0.0, le=1.0)  # lead another label needs to take over
    match_iou: float = Field(MATCH_IOU, gt=0.0, le=1.0)  # overlap that continues a track
    batch_frames: int = Field(1, ge=1, le=64)  # files: frames per call when behind, faces classified together
    # Sessions sharing a model manager: the classifier's batcher waits up to this long for other
    # sessions' crops, and takes at most this many crops per call. The first session to set the
    # stage up makes the batcher; all sessions of one server share one config.
    batch_wait_ms: float = Field(DEFAULT_WAIT_S * 1000, ge=0.0, le=100.0)
    batch_rows: int = Field(DEFAULT_MAX_BATCH, ge=1, le=4096)
    max_missed: int = Field(MAX_MISSED, ge=0, le=100)  # detection rounds a face may go unseen
    # fp16/bf16: both models on CUDA, the classifier only on CPU; int8 (CPU): the detector's dense layers.
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    # The expression model's crop (see `expression_crops`): the face box squared on its longer side,
    # times `crop_scale`, grown by `crop_margin` source px on each side, moved up by `crop_shift`
    # of its side. The defaults are the original pipeline's crop, which the model reads best.
    crop_scale: float = Field(1.0, ge=0.5, le=3.0)
    crop_margin: float = Field(CROP_MARGIN, ge=0.0, le=500.0)
    crop_shift: float = Field(0.0, ge=-0.5, le=0.5)


class Face(TypedDict):
    track: int
    box: list[float]  # x0, y0, x1, y1 in source pixels
    crop: list[float]  # the square the expression model reads
    landmarks: list[list[float]]  # 5 × [x, y]
    score: float
    probs: dict[str, float] | None  # None until the face's expression has been read
    label: str | None
    detected: bool  # found by the detector on this frame (else followed by the tracker)


class EmotionAnnotation(Annotation):
    faces: list[Face]


class Emotion(ComputeStage):
    """Annotation: every tracked face's box, landmarks, detector score, expression probabilities and label."""

    type_name = "emotion"
    Annotation = EmotionAnnotation
    Options = EmotionOptions
    quality_knobs = frozenset({"inference_scale", "precision"})
    inference = True  # the runner holds its result on the frames the scheduler's cadence skips

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        options = self.options
        stream = ctx.stream
        if stream is None or not stream.has_video:
            raise ValueError("needs video")
        self._layout = stream.pixel_format.kernel_layout
        self._colour = stream.colour.kernel_args(stream.height)
        self._frame_size = (stream.width, stream.height)
        self.set_detect_width(options.detect_width)
        # Both models live in the model manager, shared with other sessions of this process; each
        # frame pins them while it uses them, so they are never evicted under it.
        self.models = ctx.models if ctx.models is not None else ModelManager.for_device(ctx.device)
        self._detector_name = f"mtcnn(min_face={options.min_face})"
        self.models.ensure(
            ModelSpec(self._detector_name, functools.partial(load_mtcnn, "cpu", min_face=options.min_face), "high")
        )
        self.models.ensure(ModelSpec(CLASSIFIER, load_fer, "high"))
        # Face crops from every session sharing the manager go through the classifier together.
        self._batcher = self.models.batcher(
            CLASSIFIER, max_batch=options.batch_rows, wait_s=options.batch_wait_ms / 1000
        )
        self._batcher.join()
        self.set_precision(options.precision)
        self._tracker = FaceTracker(
            match_iou=options.match_iou,
            max_missed=options.max_missed,
            smoothing=options.smoothing,
            label_margin=options.label_margin,
        )
        self.detections = 0  # detector runs, for the report and tests
        self.searches = 0  # of them, searches of the whole frame
        self._rounds = 0  # detections started, which `search_every` counts
        self._seen = 0  # frames looked at: every `detect_every`th of them is a detection
        # Beside the frames: side jobs. In line the stage runs both models itself, so that a file
        # run that is behind can classify the faces of several frames in one batch.
        self.detecting: SideJob[Any] | None = None
        self.reading: SideJob[Any] | None = None
        if ctx.side_work.beside:
            # On a GPU the models work on their own stream, beside the frames; on a CPU they share
            # the cores with them, so each of their runs starts between frames.
            between = ctx.device.type != "cuda"
            self.detecting = ctx.side_job(self._detect_beside, "detect", kind=JobKind.LATEST, between_frames=between)
            self.reading = ctx.side_job(self._classify_beside, "read", kind=JobKind.LATEST, between_frames=between)

    def teardown(self) -> None:
        for job in (getattr(self, "detecting", None), getattr(self, "reading", None)):
            if job is not None:
                job.close()  # a running one holds its model pinned
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.leave()
            self._batcher = None

    def apply_quality(self, settings: QualitySettings) -> None:
        self.set_detect_width(round(self.options.detect_width * settings.inference_scale))
        if settings.precision != "reduced":
            self.set_precision(self.options.precision)
            return
        # Reduced precision follows where each model runs, not the run's device: a detector that
        # fell back to the CPU on a CUDA run is quantized to int8, as fp16 on a CPU saves no time.
        detector_gpu, classifier_gpu = self._on_gpu(self._detector_name), self._on_gpu(CLASSIFIER)
        self.models.set_precision(self._detector_name, "fp16" if detector_gpu else "int8")
        self.models.set_precision(CLASSIFIER, "fp16" if classifier_gpu else "fp32")  # int8 leaves its convs as they are
        self.precision = "fp16" if detector_gpu else "int8"

    def _on_gpu(self, model: str) -> bool:
        """Whether `model` runs on a GPU: where the manager placed it, else (not loaded yet) the run's device."""
        assert self.ctx is not None
        device = self.models.device_of(model) or self.ctx.device
        return device.type == "cuda"

    def set_detect_width(self, width: int) -> None:
        """Detect on the frame scaled to `width` px (never above its own) from the next detection on.

        The scheduler's inference-resolution knob: half the width is about a quarter of the
        detector's work, and faces under `min_face` px at that size are no longer found.
        """
        frame_w, frame_h = self._frame_size
        width = max(2, min(int(width), frame_w))
        self._detect_size = (max(2, round(frame_h * width / frame_w)), width)

    def set_precision(self, precision: str) -> None:
        """Run at `precision` from the next frame on (the scheduler's knob). The model manager
        converts the models (and accounts their new size); a model a frame is using changes
        when that frame is done with it.

        int8 quantizes the detector's dense layers (CPU) and leaves the all-convolutional
        classifier at fp32; fp16/bf16 convert both on a GPU, the classifier only on a CPU.
        Measured cost in accuracy: see `models.precision`.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        # The detector is converted only where that precision pays: int8 on a CPU, fp16/bf16 on a GPU.
        on_gpu = self._on_gpu(self._detector_name)
        pays = (precision == "int8" and not on_gpu) or (precision in ("fp16", "bf16") and on_gpu)
        self.models.set_precision(self._detector_name, precision if pays else "fp32")
        self.models.set_precision(CLASSIFIER, "fp32" if precision == "int8" else precision)
        self.precision = precision

    def compute(self, frame: Frame) -> dict[str, Any]:
        return self.compute_batch([frame])[0]

    def compute_batch(self, frames: list[Frame]) -> list[dict[str, Any]]:
        """Frames in index order. Detection and tracking go frame by frame (they carry state);
        the faces of all the frames are classified in one batch; the smoothed labels are then
        settled frame by frame, so the result is what one frame at a time gives."""
        work = [f for f in frames if f.has_image]  # frames without pixels get none
        seen, readings = self._look(work) if work else ([], None)
        records: dict[int, dict[str, Any]] = {}
        for frame, faces in seen:
            for track, face in faces:
                if readings is not None:  # read in line: this frame's own reading
                    self._tracker.observe(track, readings.pop(0))
                    face.probs, face.label = track.probs, track.label
            crops = self._crops(np.stack([face.box for _, face in faces])) if faces else np.zeros((0, 4))
            records[frame.index] = {
                "faces": [_face_record(face, crop) for (_, face), crop in zip(faces, crops, strict=True)]
            }
        return [records.get(frame.index, missing("no video")) for frame in frames]

    def _look(
        self, frames: list[Frame]
    ) -> tuple[list[tuple[Frame, list[tuple[Track, Track]]]], list[np.ndarray] | None]:
        """Detect (every `detect_every`th frame looked at) and track, frame by frame, and read every
        tracked face's expression in one classifier batch. The detector is pinned meanwhile; the
        classifier is pinned by its batcher for the call it makes.
        Returns, per frame, (track, the track as it was on that frame) for each face; and the readings
        (None when they are taken beside the frames: the tracks then carry them already)."""
        assert self.ctx is not None
        seen = []
        in_line = self.detecting is None
        pinned = self.models.use(self._detector_name, on=self.ctx.device) if in_line else contextlib.nullcontext()
        with torch.no_grad(), pinned as detector:
            for frame in frames:
                due = self._seen % self.options.detect_every == 0
                if in_line:
                    found = None
                    if due:
                        near = self._where_to_look()
                        found = self._find_faces(detector, self._detector_input(frame.image), near)
                else:
                    found = self._faces_from_beside(frame.image, due)
                tracks = self._tracker.update(*found) if found is not None else self._tracker.update(None)
                self._seen += 1
                if self.reading is not None:
                    self._read_beside(frame.image, tracks)
                seen.append((frame, [(track, copy.copy(track)) for track in tracks]))
            if self.reading is not None:
                return seen, None
            readings = self._classify([(frame.image, [face for _, face in faces]) for frame, faces in seen if faces])
        return seen, readings

    def _read_beside(self, image: torch.Tensor, tracks: list[Track]) -> None:
        """Fold in the expressions read beside the frames since the last frame (faces that have
        gone since are passed over), and ask for this frame's faces to be read when no reading is
        under way: at most one a frame, so under load the classifier does not run back to back."""
        assert self.reading is not None
        readings = self.reading.take()
        if readings is not None:
            by_id = {track.id: track for track in tracks}
            for track_id, reading in readings:
                track = by_id.get(track_id)
                if track is not None:
                    self._tracker.observe(track, reading)
        if tracks and not self.reading.busy:
            # A plain copy of the picture and of the boxes: the slot and the tracks move on meanwhile.
            self.reading.submit(image.clone(), [copy.copy(track) for track in tracks], _made_event(image))

    def _classify_beside(
        self, picture: torch.Tensor, faces: list[Track], made: torch.cuda.Event | None
    ) -> list[tuple[int, np.ndarray]]:
        """One classifier batch on a copy of a frame's picture, beside the frames: (track id, probabilities)."""
        _wait_made(picture, made)
        with torch.no_grad():
            readings = self._classify([(picture, faces)])
        return [(face.id, reading) for face, reading in zip(faces, readings, strict=True)]

    def _faces_from_beside(self, image: torch.Tensor, due: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The background detection that finished since the last frame, if any; and a new one
        requested on this frame's picture when one is due (it waits while one runs; a newer request
        replaces it)."""
        assert self.detecting is not None
        found = self.detecting.take()
        if due:
            # A plain copy of the picture (the frame's slot may go once the frame does): scaling
            # and converting it for the detector costs ten times the copy, and that work is the
            # side job's too.
            self.detecting.submit(image.clone(), self._detect_size, self._where_to_look(), _made_event(image))
        return found

    def _detect_beside(
        self, picture: torch.Tensor, size: tuple[int, int], near: np.ndarray | None, made: torch.cuda.Event | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One detection on a copy of a frame's picture, beside the frames, at the detector size and
        with the boxes to look near of when it was taken: the detector pinned meanwhile."""
        assert self.ctx is not None
        _wait_made(picture, made)
        small = self._detector_input(picture, size)
        # Each network pass lets the frames in flight go first (a search is several frame
        # intervals of work); a no-op where the job need not wait (a GPU's own stream).
        pause = self.detecting.pause if self.detecting is not None else None
        with torch.no_grad(), self.models.use(self._detector_name, on=self.ctx.device) as detector:
            return self._find_faces(detector, small, near, pause)

    def _where_to_look(self) -> np.ndarray | None:
        """Where the detection starting now looks: None for the whole frame (every `search_every`th
        detection, and any while no face is tracked), else near the tracked faces' boxes (source pixels)."""
        search = self._rounds % self.options.search_every == 0 or not self._tracker.tracks
        self._rounds += 1
        if search:
            return None
        return np.stack([track.box for track in self._tracker.tracks]).astype(np.float32)

    def _detector_input(self, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The picture at the detector's size (now, or `size`), RGB 0..255, 1×3×H×W: a new tensor,
        not a view of the slot."""
        size = size or self._detect_size
        return ops.prepare_input(image, layout=self._layout, size=size, **PIXELS_0_255, **self._colour)

    def _find_faces(
        self,
        detector: Any,
        small: torch.Tensor,
        near: np.ndarray | None = None,
        pause: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in source pixels (boxes K×4, scores K, landmarks K×5×2): searched for in the whole
        picture, or looked for `near` boxes (K×4, source pixels). `pause`: see `MTCNN.detect`."""
        height, width = small.shape[-2:]  # the size it was made at (the knob may have moved since)
        scale = np.array([self._frame_size[0] / width, self._frame_size[1] / height], dtype=np.float32)
        picture = small[0].to(_device_of(detector))  # a model that fell back to the CPU: a copy
        if near is None:
            faces = detector.detect(picture, pause=pause)
            self.searches += 1
        else:
            near_boxes = torch.from_numpy(near / np.tile(scale, 2)).to(picture.device)
            faces = detector.detect_near(picture, near_boxes, pause=pause)
        self.detections += 1
        order = torch.argsort(faces.scores, descending=True)[: self.options.max_faces].cpu()
        boxes = faces.boxes.cpu()[order].numpy() * np.tile(scale, 2)
        landmarks = faces.landmarks.cpu()[order].numpy() * scale
        return boxes, faces.scores.cpu()[order].numpy(), landmarks

    def _classify(self, pictures: list[tuple[torch.Tensor, list[Track]]]) -> list[np.ndarray]:
        """Class probabilities of every face, frame after frame, from one classifier batch.

        The crops are float32; the batcher brings them to the classifier's precision and device as
        the manager holds it at the moment of the call (the same values as preparing them in it).
        """
        if not pictures:
            return []
        crops = [
            self._prepared(image, self._crops(np.stack([face.box for face in faces]))) for image, faces in pictures
        ]
        return list(self._batcher(torch.cat(crops)).float().cpu().numpy())

    def read_crops(self, image: torch.Tensor, crops: np.ndarray) -> np.ndarray:
        """Class probabilities (N×7) for given crops (N×4 source pixels) of a picture, prepared and
        classified as the stage's own are: for checking the stage against another pipeline's crops."""
        return self._batcher(self._prepared(image, crops)).float().cpu().numpy()

    def _prepared(self, image: torch.Tensor, crops: np.ndarray) -> torch.Tensor:
        """The classifier's input for crops (N×4 source pixels) of a picture, in one kernel call."""
        return ops.prepare_input(
            image,
            layout=self._layout,
            size=(INPUT_SIZE, INPUT_SIZE),
            boxes=torch.from_numpy(np.asarray(crops, dtype=np.float32)).to(image.device),
            gray=True,
            fill=self._edge_grey(image),
            **FER_NORMALIZE,
            **self._colour,
        )

    def _crops(self, boxes: np.ndarray) -> np.ndarray:
        options = self.options
        return expression_crops(boxes, options.crop_scale, options.crop_margin, options.crop_shift)

    def _edge_grey(self, image: torch.Tensor) -> float:
        """The mean grey (0..255) of the picture's bottom two rows: what the original pipeline pads
        the picture with, so a crop over the edge reads that grey, not black."""
        width, height = self._frame_size
        rows = torch.tensor([[0.0, height - 2.0, float(width), float(height)]], device=image.device)
        bottom = ops.prepare_input(image, layout=self._layout, size=(2, width), boxes=rows, gray=True, **self._colour)
        return float(bottom.mean()) * 255.0


def expression_crops(
    boxes: np.ndarray, scale: float = 1.0, margin: float = CROP_MARGIN, shift: float = 0.0
) -> np.ndarray:
    """The square crops (N×4 x0, y0, x1, y1, float32) the expression model reads for face boxes (N×4).

    mini-Xception was trained on FER2013: square, centred faces with the forehead, chin and
    cheeks in the picture. MTCNN's boxes are tight and taller than wide; fed as they are, a face
    is squashed sideways and cut at the brow, and a neutral face reads as angry. The defaults
    give the original `fer` pipeline's crop exactly, whole pixels and all: the box cut to whole
    pixels, squared by lengthening its shorter side about the centre (the odd pixel to the far
    side), then `margin` px added on each side. On small faces the model's label turns on half a
    pixel of crop, so matching its rounding matters (bench/emotion_agreement.py measures it).
    `scale` grows the square about its centre first and `shift` moves it up by that share of its
    side, for cameras whose faces read better framed otherwise.

    Past the picture's edge the crop reads the picture's own grey (`Emotion._edge_grey`), as the
    original pads; it stays square however far out it reaches (the original cuts its padding at
    40 px, which squashes a face at the edge again).
    """
    boxes = np.trunc(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))  # fer: int() of each side
    x, y = boxes[:, 0], boxes[:, 1]
    w, h = boxes[:, 2] - x, boxes[:, 3] - y
    side = np.maximum(w, h)
    x = x - np.floor_divide(side - w, 2)
    y = y - np.floor_divide(side - h, 2)
    grown = side * scale + 2 * margin
    cx, cy = x + side / 2, y + side / 2 - shift * grown
    return np.stack([cx - grown / 2, cy - grown / 2, cx + grown / 2, cy + grown / 2], axis=1).astype(np.float32)


def _made_event(picture: torch.Tensor) -> torch.cuda.Event | None:
    """On a GPU, an event after the work that made `picture` on this thread's stream, for a side
    job's thread to wait for; None on a CPU."""
    if not picture.is_cuda:
        return None
    made = torch.cuda.Event()
    made.record()
    return made


def _wait_made(picture: torch.Tensor, made: torch.cuda.Event | None) -> None:
    if made is not None:
        torch.cuda.current_stream(picture.device).wait_event(made)


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device


def _face_record(track: Track, crop: np.ndarray) -> dict[str, Any]:
    probs = track.probs
    return {
        "track": track.id,
        "box": [round(float(v), 1) for v in track.box],
        "crop": [round(float(v), 1) for v in crop],  # the square the expression model reads for this box
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in track.landmarks],
        "score": round(track.score, 4),
        "probs": None if probs is None else {label: round(float(p), 4) for label, p in zip(LABELS, probs, strict=True)},
        "label": LABELS[track.label] if track.label is not None else None,
        "detected": track.detected,
    }
