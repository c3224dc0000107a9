"""Cameras behind one interface: OpenCV devices, streams and files, still images, a simulated street."""
