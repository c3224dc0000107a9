"""Choosing the camera implementation for a configuration."""

from __future__ import annotations

from hal.camera.base import Camera, CameraConfig
from hal.camera.opencv import OpenCVCamera
from hal.camera.simulated import SimulatedCamera


def open_camera(config: CameraConfig) -> Camera:
    """The camera implementation for a configuration (not started)."""
    if config.resolved_kind() == "simulated":
        return SimulatedCamera(config)
    return OpenCVCamera(config)
