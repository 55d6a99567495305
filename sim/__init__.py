"""The golden model (arithmetic spec), cocotb testbenches and simulator runners."""
