"""Amaranth gateware: the ternary matrix-vector engine and its memories."""
