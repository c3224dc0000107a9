"""The ``smartpole`` command and the demo: the one package that wires the pole and the receiver together."""
