"""Tritium: ternary (1.58-bit) language-model inference on FPGAs.

Subpackages: :mod:`tritium.hw` (Amaranth gateware), :mod:`tritium.sim` (golden model,
cocotb testbenches and runners), :mod:`tritium.host` (runtime and CLI).
"""

__version__ = "0.1.0"
