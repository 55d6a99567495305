"""Host runtime and command-line interface."""
