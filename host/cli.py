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


def _open(args, *, lm=None):
    """``(Accelerator, transport)`` for ``--backend``; a golden or simulated device gets the on-chip
    LM step of sizes ``lm`` (an :class:`LMParams`) when given; a board has what it was built with."""
    from .accelerator import Accelerator
    from .transport import GoldenTransport, SerialTransport, SimTransport
    params = CONFIGS[args.config]
    if args.backend == "golden":
        transport = GoldenTransport(params, lm=lm)
    elif args.backend == "sim":
        transport = SimTransport(params, name=args.config, lm=lm)
    else:
        # without --port: the one attached board's FTDI UART, found by USB VID:PID
        transport = SerialTransport(args.port, baudrate=args.baud)
    try:
        return Accelerator(transport, timeout=args.timeout), transport
    except BaseException:
        transport.close()
        raise


def _device_info(args):
    acc, transport = _open(args)
    with transport:
        out = {"backend": args.backend, **acc.info, "capacity": acc.capacity()}
    out["lm"] = out["lm"].as_dict() if out["lm"] is not None else None
    print(json.dumps(out, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def _selftest(args):
    """Random products on the device, each checked against the golden model."""
    import hashlib
    import time

    import numpy as np

    from ..sim import golden
    acc, transport = _open(args)
    rng = np.random.default_rng(args.seed)
    p = acc.params
    digest = hashlib.sha256()
    passed = failed = 0
    t0 = time.monotonic()
    with transport:
        for trial in range(args.matrices):
            m = int(rng.integers(1, 3 * p.lanes + 2))
            k = int(rng.integers(1, min(p.max_k, 8 * p.trits) + 1))
            while p.words_for(m, k) > p.weight_depth // 2:
                m, k = max(1, m // 2), max(1, k // 2)
            w = rng.integers(-1, 2, (m, k))
            slot = trial % 2  # two resident matrices, each slot replaced in its own half of the memory
            acc.load(slot, w, base=slot * (p.weight_depth // 2))
            for _ in range(args.products):
                x = rng.integers(-128, 128, k)
                y = acc.matvec(slot, x)
                ok = np.array_equal(y, golden.matvec(w, x))
                passed += ok
                failed += not ok
                digest.update(y.astype("<i8").tobytes())
        status = acc.status()
    dt = time.monotonic() - t0
    print(f"selftest on {args.backend}: {passed + failed} products, results sha256 {digest.hexdigest()[:16]}, "
          f"{acc.link_bytes} link bytes, {dt:.2f} s, device status {status}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _generate(args):
    from .generate import run
    return run(args, _open)


def _plan(args):
    """Where a model's matrices go on a configuration, and what a token costs there."""
    from ..sim.cost import board_model
    from .models import DEFAULT_MODEL, MatrixRunner, load_model
    from .transport import GoldenTransport
    from .accelerator import Accelerator
    model = load_model(args.model or DEFAULT_MODEL)
    params = CONFIGS[args.config]
    runner = MatrixRunner(Accelerator(GoldenTransport(params)), label=f"the {args.config} engine")
    shapes = {n: l.wq.shape for n, l in model.linears.items()}
    layout = runner.plan(shapes)
    board = board_model(params, list(shapes.values()))  # the link bytes the model predicts
    link = board["link_bytes_per_token"]
    out = {"model": model.describe(), "config": args.config, "engine": params.describe(),
           "ternary_params": model.ternary_params, "host_float_params": model.float_params,
           "weight_words_used": sum(params.words_for(m, k) for m, k in shapes.values()),
           "weight_words": params.weight_depth, "products_per_token": len(shapes), "link_bytes_per_token": link,
           "modeled_icebreaker": board,
           "matrices": [{"name": n, "rows": m, "cols": k, "first_word": b, "words": params.words_for(m, k)}
                        for n, (b, m, k) in layout.items()]}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['model']} on {args.config}: {params.describe()}")
    print(f"{out['ternary_params']:,} trits in {out['weight_words_used']:,} of {out['weight_words']:,} weight words; "
          f"{out['host_float_params']:,} float parameters on the host")
    for r in out["matrices"]:
        print(f"  {r['name']:40s} {r['rows']:>5}x{r['cols']:<5} words {r['first_word']:>6}..{r['first_word'] + r['words'] - 1}")
    print(f"per token: {len(shapes)} products, {link:,} link bytes, {board['device_cycles_per_token']:,} device cycles; "
          f"modeled iCEBreaker link at {board['baud']:,} baud: {board['tokens_per_s_at_clock']:.1f} tok/s, "
          f"{board['bound']}-bound")
    return 0


def _flash(args):
    """Load a board's bitstream with openFPGALoader: SRAM, or the SPI flash with --flash."""
    from .program import program
    program(args.board, bitstream=args.bitstream, flash=args.flash, log=None if args.quiet else sys.stdout)
    print(f"loaded {args.board}'s bitstream into its {'SPI flash' if args.flash else 'SRAM'}")
    return 0


def _verilog(args):
    from ..sim.runner import emit_verilog
    path = emit_verilog(CONFIGS[args.config], args.output, name=args.name)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tritium", description="Ternary LLM inference on FPGAs")
    sub = ap.add_subparsers(dest="command", required=True)
    p_cfg = sub.add_parser("configs", help="the named engine configurations and their capacity")
    p_cfg.add_argument("--config", choices=list(CONFIGS))
    p_cfg.add_argument("--json", action="store_true")
    p_cfg.set_defaults(func=_info)
    def backend_args(sp, default_config="default", config_help="engine configuration of the golden/sim device"):
        sp.add_argument("--backend", choices=["golden", "sim", "serial"], default="golden")
        sp.add_argument("--config", default=default_config, choices=list(CONFIGS), help=config_help)
        sp.add_argument("--port", help="serial port of a board (serial backend); default: the attached "
                                       "iCEBreaker's or ULX3S's FTDI UART, found by USB VID:PID")
        sp.add_argument("--baud", type=int, default=1_000_000)
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")

    p_dev = sub.add_parser("info", help="identify a device (version, engine parameters) and show its capacity")
    backend_args(p_dev)
    p_dev.add_argument("--json", action="store_true")
    p_dev.set_defaults(func=_device_info)
    p_st = sub.add_parser("selftest", help="random products on a device, checked against the golden model")
    backend_args(p_st)
    p_st.add_argument("--matrices", type=int, default=8)
    p_st.add_argument("--products", type=int, default=8, help="products per matrix")
    p_st.add_argument("--seed", type=int, default=1)
    p_st.set_defaults(func=_selftest)
    p_g = sub.add_parser("generate", help="generate text with a ternary model on a device (the main job)")
    backend_args(p_g, default_config=None,
                 config_help="engine configuration of the golden/sim device; default: the board that runs the mode "
                             "(ulx3s with the whole LM step on the device, up5k-spram, the iCEBreaker's, otherwise)")
    p_g.add_argument("--model", help="model file (.safetensors or .gguf); default: the shipped MatMul-free LM")
    p_g.add_argument("--prompt", help="prompt text (UTF-8)")
    p_g.add_argument("--prompt-ids", help="prompt as comma-separated token ids (models without a byte vocabulary)")
    p_g.add_argument("--max-tokens", type=int, default=64)
    p_g.add_argument("--temperature", type=float, default=0.5, help="0: greedy")
    p_g.add_argument("--top-k", type=int, default=40, help="0: no top-k cut")
    p_g.add_argument("--seed", type=int, default=0)
    p_g.add_argument("--mode", choices=["auto", "device", "host"], default="auto",
                     help="device: the whole LM step on the device (MatMul-free models; one request per "
                          "generation); host: the model on the host, every ternary product on the device; "
                          "auto (default): device where the model and the device allow it, else host")
    p_g.add_argument("--arith", choices=["float", "integer"], default=None,
                     help="host mode's arithmetic (giving it selects host mode): float (default), the host's "
                          "float32 runtime; integer, the on-chip step's fixed-point program and token rule on "
                          "the host (MatMul-free models), products still on the device")
    p_g.add_argument("--stop", type=int, help="a token id that ends the generation (it is emitted, as the last token)")
    p_g.add_argument("--json", action="store_true", help="print one JSON object (tokens, text, stats) at the end")
    p_g.add_argument("--quiet", action="store_true", help="no progress or loading messages on stderr")
    p_g.set_defaults(func=_generate)
    p_p = sub.add_parser("plan", help="a model's memory map on an engine configuration, and its cost per token")
    p_p.add_argument("--model", help="model file; default: the shipped MatMul-free LM")
    p_p.add_argument("--config", default="up5k-spram", choices=list(CONFIGS))
    p_p.add_argument("--json", action="store_true")
    p_p.set_defaults(func=_plan)
    p_v = sub.add_parser("verilog", help="write an engine's Verilog (reproducible)")
    p_v.add_argument("--config", default="default", choices=list(CONFIGS))
    p_v.add_argument("--name", default="tmv", help="top module name")
    p_v.add_argument("-o", "--output", default="build/tmv.v")
    p_v.set_defaults(func=_verilog)
    p_f = sub.add_parser("flash", help="load a board's bitstream with openFPGALoader (SRAM; --flash for SPI flash)")
    p_f.add_argument("--board", default="icebreaker", choices=["icebreaker", "ulx3s-85f"])
    p_f.add_argument("--flash", action="store_true",
                     help="write the board's SPI flash (configures at every power-up) instead of its SRAM")
    p_f.add_argument("--bitstream", help="bitstream file; default: the one make bitstream BOARD=... built")
    p_f.add_argument("--quiet", action="store_true", help="do not show openFPGALoader's output")
    p_f.set_defaults(func=_flash)
    args = ap.parse_args(argv)
    from ..hw.protocol import ProtocolError
    from .accelerator import DeviceError
    from .transport import TransportError
    try:
        return args.func(args)
    except (TritiumValueError, DeviceError, TransportError, ProtocolError) as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the transport is closed by its `with`; no traceback for Ctrl-C
        print("\ntritium: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
