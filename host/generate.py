"""Text generation: a loaded model, an accelerator backend, a sampler and the statistics.

:func:`sample` is the whole sampling rule (so golden and sim give the same tokens for a seed);
:func:`generate` runs a prompt and yields tokens; :func:`run` is ``tritium generate``.
"""

import codecs
import json
import sys
import time

import numpy as np

from ..sim.cost import board_model  # the one cost model (``tritium plan`` and the benchmark use it too)
from ..sim.golden import TritiumValueError

__all__ = ["sample", "generate", "IntegerStepLM", "board_model", "run"]


def sample(logits, rng, *, temperature, top_k):
    """One token id from float32 ``logits``. ``temperature == 0``: the arg-max (lowest id on a
    tie). Otherwise keep the ``top_k`` largest (all if 0; ties broken by lower id), softmax of
    ``logits / temperature`` in float64, and pick with one ``rng.random()`` draw against the
    cumulative sum (ids ascending)."""
    logits = np.asarray(logits, np.float32)
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.size:
        keep = np.sort(np.argsort(-z, kind="stable")[:top_k])
    else:
        keep = np.arange(z.size)
    p = np.exp(z[keep] - z[keep].max())
    c = np.cumsum(p / p.sum())
    return int(keep[min(np.searchsorted(c, rng.random(), side="right"), keep.size - 1)])


class IntegerStepLM:
    """A MatMul-free model run with the on-chip integer arithmetic (:mod:`tritium.sim.lmstep`):
    the fixed-point program on the host, every ternary product on ``runner``'s device (the
    weights ``runner`` already holds). ``step(token)`` -> Q16.16 int logits; :func:`generate`
    chooses tokens with the on-chip rule (:func:`tritium.sim.lmstep.choose_token`)."""

    integer = True

    def __init__(self, model, runner):
        from ..sim import lmstep
        self.image = lmstep.compile_mmfree(model)
        self._lm = lmstep.IntegerLM(self.image, matvec=runner.matvec)

    def reset(self):
        self._lm.reset()

    def step(self, token):
        return self._lm.step(token)


def generate(lm, prompt_ids, *, max_tokens, temperature=0.5, top_k=40, seed=0, on_token=None):
    """Feed ``prompt_ids`` then sample ``max_tokens`` more; returns the generated ids.
    ``on_token(id)`` is called as each is produced. Float models sample with :func:`sample`;
    an :class:`IntegerStepLM` with the on-chip rule (xorshift32 seeded by :func:`rng_seed`)."""
    from ..sim import lmstep
    rng = np.random.default_rng(seed)
    integer = getattr(lm, "integer", False)
    if integer:
        rule, state = lmstep.SamplingParams.from_float(temperature, top_k), lmstep.rng_seed(seed)
    lm.reset()
    logits = None
    for t in prompt_ids:
        logits = lm.step(t)
    out = []
    for _ in range(max_tokens):
        if integer:
            tok, state = lmstep.choose_token(logits, rule, state)
        else:
            tok = sample(logits, rng, temperature=temperature, top_k=top_k)
        out.append(tok)
        if on_token:
            on_token(tok)
        if len(out) < max_tokens:
            logits = lm.step(tok)
    return out


class _Progress:
    def __init__(self, stream, total, enabled):
        self.stream, self.total, self.enabled, self.t0, self.n = stream, total, enabled, time.monotonic(), 0

    def tick(self):
        self.n += 1
        if self.enabled:
            dt = time.monotonic() - self.t0
            self.stream.write(f"\r\x1b[2K[{self.n}/{self.total} tokens, {self.n / dt:.2f} tok/s]\r")
            self.stream.flush()

    def clear(self):
        if self.enabled:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def run(args, open_accelerator):
    """``tritium generate``: returns the exit status."""
    from .models import DEFAULT_MODEL, MatrixRunner, load_model
    if args.max_tokens < 1:
        raise TritiumValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.temperature < 0:
        raise TritiumValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise TritiumValueError(f"--top-k must be >= 0, got {args.top_k}")
    model = load_model(args.model or DEFAULT_MODEL)
    vocab = model.tokenizer
    if args.prompt_ids:
        try:
            prompt = [int(t) for t in args.prompt_ids.split(",")]
        except ValueError:
            raise TritiumValueError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
        bad = [t for t in prompt if not 0 <= t < model.vocab_size]
        if bad:
            raise TritiumValueError(f"prompt token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})")
    else:
        if args.prompt is None or args.prompt == "":
            raise TritiumValueError("the prompt is empty: give --prompt TEXT (or --prompt-ids)")
        try:
            raw = args.prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise TritiumValueError("the prompt is not valid UTF-8") from None
        prompt = vocab.encode(raw)
    err = sys.stderr
    show = not args.quiet and err.isatty()
    t_load = time.monotonic()
    acc, transport = open_accelerator(args)
    with transport:
        runner = MatrixRunner(acc, label=f"the {args.config} engine ({args.backend})")
        if not args.quiet:
            err.write(f"loading {model.describe()} onto {args.backend} ({args.config}): "
                      f"{model.ternary_params:,} trits...\n")
            err.flush()
        lm = model.bind(runner)
        if getattr(args, "arith", "float") == "integer":
            if model.arch != "mmfreelm":
                raise TritiumValueError(f"--arith integer runs MatMul-free LMs; this model is {model.arch}")
            lm = IntegerStepLM(model, runner)
        load_s = time.monotonic() - t_load
        load_bytes = acc.link_bytes
        if not args.quiet:
            err.write(f"loaded in {load_s:.1f} s ({load_bytes:,} link bytes, {runner.weight_words:,} of "
                      f"{acc.params.weight_depth:,} weight words)\n")
        out_stream = sys.stdout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        progress = _Progress(err, args.max_tokens, show)
        if not args.json:
            out_stream.write(vocab.decode_text(prompt))
            out_stream.flush()

        def on_token(tok):
            if not args.json:
                progress.clear()
                out_stream.write(vocab.piece(tok, decoder))
                out_stream.flush()
            progress.tick()

        t0 = time.monotonic()
        tokens = generate(lm, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=args.seed, on_token=on_token)
        dt = time.monotonic() - t0
        progress.clear()
        steps = len(prompt) + len(tokens) - 1
    link_per_token = (acc.link_bytes - load_bytes) / steps
    shapes = [l.wq.shape for l in model.linears.values()]
    board = board_model(acc.params, shapes, link_per_token)
    stats = {"backend": args.backend, "config": args.config, "model": model.source,
             "prompt_tokens": len(prompt), "generated_tokens": len(tokens), "seconds": round(dt, 3),
             "model_steps": steps, "tokens_per_s": round(steps / dt, 3), "load_seconds": round(load_s, 2),
             "load_link_bytes": load_bytes, "link_bytes_per_token": round(link_per_token, 1),
             "products_per_token": runner.products / steps,
             "engine_cycles_per_token": round(runner.engine_cycles / steps, 1),
             "device_cycles_per_token": board["device_cycles_per_token"], "modeled_board": board}
    text = vocab.decode_text(tokens)
    if args.json:
        print(json.dumps({"prompt": vocab.decode_text(prompt), "tokens": tokens, "text": text,
                          "seed": args.seed, "temperature": args.temperature, "top_k": args.top_k, **stats},
                         indent=1))
    else:
        out_stream.write(vocab.piece_flush(decoder) + "\n")
        at_fmax = (f", {board['tokens_per_s_at_fmax']:.1f} at Fmax {board['fmax_mhz']} MHz"
                   if board.get("tokens_per_s_at_fmax") else " (make bitstream BOARD=icebreaker adds the Fmax figure)")
        err.write(f"-- {len(prompt)} prompt + {len(tokens)} generated tokens ({steps} model steps) in {dt:.2f} s: "
                  f"{stats['tokens_per_s']:.2f} tok/s on {args.backend}; "
                  f"{link_per_token:,.0f} link bytes and {board['device_cycles_per_token']:,} device cycles per token; "
                  f"modeled iCEBreaker: {board['tokens_per_s_at_clock']:.1f} tok/s at {board['clock_mhz']} MHz"
                  f"{at_fmax}, {board['bound']}-bound ({board['baud']:,} baud)\n")
    return 0
