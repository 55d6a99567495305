"""The ``tritium`` command line."""

import argparse
import json
import sys

from ..hw.params import CONFIGS
from ..sim.golden import TritiumValueError

__all__ = ["main"]


def _info(args):
    rows = []
    for name, p in CONFIGS.items():
        if args.config and name != args.config:
            continue
        rows.append({"config": name, **p.as_dict(), "word_bits": p.word_bits, "acc_width": p.acc_width,
                     "macs_per_cycle": p.trits_per_cycle, "capacity_trits": p.capacity_trits,
                     "max_rows": p.max_rows})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            p = CONFIGS[r["config"]]
            print(f"{r['config']:12s} {p.describe()}; {r['macs_per_cycle']} MAC/cycle")
    return 0


def _verilog(args):
    from ..sim.runner import emit_verilog
    path = emit_verilog(CONFIGS[args.config], args.output, name=args.name)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tritium", description="Ternary LLM inference on FPGAs")
    sub = ap.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="engine configurations and their capacity")
    p_info.add_argument("--config", choices=list(CONFIGS))
    p_info.add_argument("--json", action="store_true")
    p_info.set_defaults(func=_info)
    p_v = sub.add_parser("verilog", help="write an engine's Verilog (reproducible)")
    p_v.add_argument("--config", default="default", choices=list(CONFIGS))
    p_v.add_argument("--name", default="tmv", help="top module name")
    p_v.add_argument("-o", "--output", default="build/tmv.v")
    p_v.set_defaults(func=_verilog)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except TritiumValueError as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
