"""Building the vision pipeline from configuration: models once, one pipeline per camera.

Models are loaded once and shared by every camera's pipeline (one
onnxruntime session per model). The object detector is required: without it
there is nothing to see, and :class:`~models.registry.ModelError` says which
file is missing. The face and plate models are what redaction needs: if one
is missing or broken the pipeline still runs, counts and reports, but keeps
no image (fail closed) and says why in its stats, its logs and its events.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from concurrent.futures import ThreadPoolExecutor

import structlog

from gateway.tmpfs import temp_files_in_memory
from gateway.vision.config import VisionConfig
from gateway.vision.pipeline import LocationProvider, PlateCallback, StatsSource, VisionParts, VisionPipeline
from gateway.vision.plates import PlateReader
from gateway.vision.privacy import PlatePolicy
from hal.camera.base import CameraConfig
from hal.camera.factory import open_camera
from models.detection import FaceDetector
from models.detector import NanoDetDetector
from models.faces import CenterFaceDetector
from models.ocr import PaddleRecogniser, PlateRecogniser, TesseractRecogniser
from models.plates import PaddleTextPlateFinder, PlateFinder
from models.redact import Redactor
from models.registry import ModelRegistry
from models.runtime import InferenceCallback
from models.simulated import SimulatedFaceDetector, SimulatedObjectDetector, SimulatedPlateFinder
from sync.events import EventSink

log = structlog.get_logger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD = 256 * 1024


def return_large_buffers_to_the_system() -> None:
    """Serve allocations of 256 KiB and more (frames, tensors) by mmap, so freeing them returns memory.

    glibc otherwise raises this threshold as large blocks are freed, and the
    heap then keeps a frame's worth of memory per thread: about 150 MB more peak
    RSS on the benchmark, on a 4 GB pole. No-op without glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def make_executor(config: VisionConfig) -> ThreadPoolExecutor:
    """The inference pool shared by all cameras' pipelines."""
    return ThreadPoolExecutor(max_workers=config.inference.workers, thread_name_prefix="inference")


def load_parts(config: VisionConfig, on_inference: InferenceCallback | None = None) -> VisionParts:
    """Load and verify the models. Raises ``ModelError`` if the object detector cannot be loaded."""
    return_large_buffers_to_the_system()
    if config.inference.backend == "simulated":
        return VisionParts(
            detector=SimulatedObjectDetector(),
            redactor=Redactor(SimulatedFaceDetector(), SimulatedPlateFinder(), config.redaction),
            plate_reader=None,
            loaded=["simulated"],
        )
    registry = ModelRegistry(config.inference.models_dir)
    threads = config.inference.threads
    suffix = "_int8" if config.inference.precision == "int8" else ""
    detector = NanoDetDetector(
        registry.verified_path("nanodet" + suffix),
        threads,
        threshold=config.detection.threshold,
        nms_iou=config.detection.nms_iou,
        labels=tuple(config.detection.classes),
        on_inference=on_inference,
    )
    timed: list[StatsSource] = [detector]
    problems: list[str] = []
    faces: FaceDetector | None = None
    finder: PlateFinder | None = None
    try:
        faces = CenterFaceDetector(
            registry.verified_path("centerface" + suffix),
            threads,
            max_side=config.redaction.face_max_side,
            on_inference=on_inference,
        )
        timed.append(faces)
    except Exception as exc:
        problems.append(f"face detector unavailable: {exc}")
    try:
        finder = PaddleTextPlateFinder(registry.verified_path("ppocr_det"), threads, on_inference=on_inference)
        timed.append(finder)
    except Exception as exc:
        problems.append(f"plate detector unavailable: {exc}")
    redactor = Redactor(faces, finder, config.redaction, "; ".join(problems) or None)
    if problems:
        log.error("redaction_unavailable", problems=problems, detail="snapshots are withheld: metadata only")

    reader = None
    loaded = list(registry.loaded)
    if finder is not None and config.plates.enabled:
        recognisers: list[PlateRecogniser] = []
        for name in config.plates.recognisers:
            if name == "tesseract" and not temp_files_in_memory():
                # pytesseract passes the plate crop through a temporary file: only in memory.
                log.error("plate_recogniser_unavailable", recogniser=name, error="temporary files would go to disk")
                continue
            try:
                recogniser: PlateRecogniser = (
                    TesseractRecogniser(on_inference=on_inference)
                    if name == "tesseract"
                    else PaddleRecogniser(registry.verified_path("ppocr_rec"), threads, on_inference=on_inference)
                )
            except Exception as exc:
                log.error("plate_recogniser_unavailable", recogniser=name, error=str(exc))
                continue
            recognisers.append(recogniser)
            timed.append(recogniser)
            if isinstance(recogniser, TesseractRecogniser):
                loaded.append(f"tesseract {recogniser.version}")
            elif "ppocr_rec" not in loaded:
                loaded.append("ppocr_rec")
        if recognisers:
            reader = PlateReader(finder, recognisers, config.plates, config.redaction)
    return VisionParts(detector=detector, redactor=redactor, plate_reader=reader, timed=timed, loaded=loaded)


def build_pipeline(
    camera: CameraConfig,
    config: VisionConfig,
    parts: VisionParts,
    plate_policy: PlatePolicy,
    sink: EventSink,
    executor: ThreadPoolExecutor,
    on_plate: PlateCallback | None = None,
    location: LocationProvider | None = None,
) -> VisionPipeline:
    """One camera's pipeline for the daemon (its camera is opened when the pipeline runs); its events
    commit behind the frame loop."""
    return VisionPipeline(
        open_camera(camera), parts, config, plate_policy, sink, executor, on_plate, location, commit_behind=True
    )
