"""onnxruntime sessions with explicit thread counts, and timing of every inference.

One session per model, shared by every caller: ``InferenceSession.run`` is
thread-safe, and one set of weights in memory is what a 4 GB pole can afford.
Thread counts are always set: onnxruntime's default (one thread per core, with
spinning) would starve the capture threads and the event loop on a small board.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

InferenceCallback = Callable[[str, float], None]
"""Called as ``on_inference(model_name, seconds)`` after each inference."""

_RECENT = 200  # durations kept per model for the medians on the status page


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Recent inference timings of one model."""

    name: str
    inferences: int
    last_ms: float | None
    median_ms: float | None
    p95_ms: float | None


class InferenceTimer:
    """Counts and times inferences of one model; thread-safe."""

    def __init__(self, name: str, on_inference: InferenceCallback | None = None) -> None:
        self.name = name
        self.on_inference = on_inference
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._count = 0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self._count += 1
        if self.on_inference is not None:
            self.on_inference(self.name, seconds)

    def stats(self) -> ModelStats:
        with self._lock:
            recent = sorted(self._recent)
            count = self._count
            last = self._recent[-1] if self._recent else None
        if last is None:
            return ModelStats(self.name, count, None, None, None)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))]
        return ModelStats(self.name, count, last * 1000, statistics.median(recent) * 1000, p95 * 1000)


class OnnxModel:
    """A CPU onnxruntime session for one model, timed.

    ``fixed_shapes`` says whether the caller feeds the model few distinct
    input sizes (then its memory arena is kept).
    """

    def __init__(
        self,
        name: str,
        model: Path,
        threads: int,
        on_inference: InferenceCallback | None = None,
        fixed_shapes: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn a core between inferences that the camera and the loop need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # The arena keeps activation memory at its high-water mark, which is cheap (about 60% faster
        # than allocating per run) when a model always sees one input size, and grows without bound
        # in practice when every call has another size; those models allocate per run instead.
        options.enable_cpu_mem_arena = fixed_shapes
        self.name = name
        # From the path, not bytes: onnxruntime then holds one copy of the weights instead of two.
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.timer = InferenceTimer(name, on_inference)

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        inputs = {self.input_name: feeds} if isinstance(feeds, np.ndarray) else dict(feeds)
        start = time.perf_counter()
        result = self.session.run(outputs, inputs)
        self.timer.record(time.perf_counter() - start)
        return result

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)
