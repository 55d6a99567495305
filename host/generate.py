"""Text generation: a loaded model, an accelerator backend, a sampler and the statistics.

:func:`sample` is the whole sampling rule (so golden and sim give the same tokens for a seed);
:func:`generate` runs a prompt and yields tokens; :func:`run` is ``tritium generate``, on the host
(products on the device) or with the whole LM step on the device (:mod:`tritium.host.lmdevice`).
"""

import codecs
import json
import sys
import time

import numpy as np

from ..hw import protocol as P
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


def generate(lm, prompt_ids, *, max_tokens, temperature=0.5, top_k=40, seed=0, on_token=None, stop=None):
    """Feed ``prompt_ids`` then sample up to ``max_tokens`` more; returns the generated ids.
    ``on_token(id)`` is called as each is produced. Float models sample with :func:`sample`;
    an :class:`IntegerStepLM` with the on-chip rule (xorshift32 seeded by :func:`rng_seed`).
    ``stop`` (a token id, or ``None``): generation ends once it is produced (it is emitted, as
    the last token), as GENERATE on the device does."""
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
        if stop is not None and tok == stop:
            break
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


def _on_chip_image(model, mode, arith):
    """The :class:`~tritium.sim.lmstep.LMImage` to run on the device for ``--mode`` ``mode``, or
    ``(None, reason)`` when the host path runs instead; ``--mode device`` raises the reason."""
    from ..sim import lmstep
    if mode == "host":
        return None, "--mode host"
    if arith is not None:
        if mode == "device":
            raise TritiumValueError("--arith chooses the host's arithmetic; --mode device runs the on-chip integer "
                                    "step (drop --arith, or use --mode host)")
        return None, f"--arith {arith} runs on the host"
    try:
        if model.arch != "mmfreelm":
            raise TritiumValueError(f"the on-chip LM step runs MatMul-free LMs; this model is {model.arch}")
        return lmstep.compile_mmfree(model), None
    except TritiumValueError as e:
        if mode == "device":
            raise TritiumValueError(f"--mode device: {e}") from None
        return None, str(e)


def run(args, open_accelerator):
    """``tritium generate``: returns the exit status.

    ``--mode``: ``device`` runs the whole LM step on the device (:mod:`tritium.host.lmdevice`: the
    model compiled and loaded once, then one GENERATE); ``host`` runs the model on the host with
    every ternary product on the device (``--arith`` float or integer); ``auto`` (the default) is
    ``device`` for a MatMul-free model on a device with the LM step (the golden and sim devices are
    opened with :data:`~tritium.hw.params.LM_DEFAULT`), else ``host``. ``open_accelerator(args,
    lm=...)`` returns ``(accelerator, transport)``."""
    from .models import DEFAULT_MODEL, load_model
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
    stop = getattr(args, "stop", None)
    if stop is not None and not 0 <= stop < model.vocab_size:
        raise TritiumValueError(f"--stop {stop} is outside the vocabulary (0..{model.vocab_size - 1})")
    mode = getattr(args, "mode", "host")
    image, why_host = _on_chip_image(model, mode, getattr(args, "arith", None))
    lm = None
    if image is not None and args.backend != "serial":
        # a golden or simulated device is built with the LM step when it will run it
        from ..hw.params import LM_DEFAULT
        from .lmdevice import check_image
        try:
            check_image(LM_DEFAULT, image)
            lm = LM_DEFAULT
        except TritiumValueError as e:
            if mode == "device":
                raise TritiumValueError(f"--mode device: {e}") from None
            image, why_host = None, str(e)
    if getattr(args, "config", None) is None:
        # the golden / simulated device is the board that runs the mode: the ULX3S runs the whole
        # LM step, the iCEBreaker is the coprocessor
        args.config = "ulx3s" if lm is not None else "up5k-spram"
    err = sys.stderr
    t_load = time.monotonic()
    acc, transport = open_accelerator(args, lm=lm)
    with transport:
        if image is not None:
            # the device's own LM step (a board's from IDENTIFY), and a prompt one GENERATE holds
            from .lmdevice import check_image
            try:
                check_image(acc.lm, image)
                longest = acc.max_payload - P.GENERATE_LAYOUT.size
                if len(prompt) > longest:
                    raise TritiumValueError(f"a prompt of {len(prompt)} tokens; one GENERATE takes at most {longest}")
            except TritiumValueError as e:
                if mode == "device":
                    raise TritiumValueError(f"--mode device: {e}") from None
                image, why_host = None, str(e)
        if mode == "auto" and image is None and not args.quiet and model.arch == "mmfreelm":
            err.write(f"running the model on the host, products on the device ({why_host})\n")
        if image is not None:
            return _run_on_device(args, model, image, prompt, stop, acc, t_load)
        return _run_on_host(args, model, prompt, stop, acc, t_load)


def _text_output(args, vocab, prompt, total):
    """``(on_token, finish)``: stream each token's text to stdout as today (or nothing with
    ``--json``), with the progress line on a terminal's stderr."""
    err, out_stream = sys.stderr, sys.stdout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    progress = _Progress(err, total, not args.quiet and err.isatty())
    if not args.json:
        out_stream.write(vocab.decode_text(prompt))
        out_stream.flush()

    def on_token(tok):
        if not args.json:
            progress.clear()
            out_stream.write(vocab.piece(tok, decoder))
            out_stream.flush()
        progress.tick()

    def finish():
        progress.clear()
        if not args.json:
            out_stream.write(vocab.piece_flush(decoder) + "\n")
    return on_token, finish


def _run_on_host(args, model, prompt, stop, acc, t_load):
    from .models import MatrixRunner
    err, vocab = sys.stderr, model.tokenizer
    runner = MatrixRunner(acc, label=f"the {args.config} engine ({args.backend})")
    if not args.quiet:
        err.write(f"loading {model.describe()} onto {args.backend} ({args.config}): "
                  f"{model.ternary_params:,} trits...\n")
        err.flush()
    lm = model.bind(runner)
    if getattr(args, "arith", None) == "integer":
        if model.arch != "mmfreelm":
            raise TritiumValueError(f"--arith integer runs MatMul-free LMs; this model is {model.arch}")
        lm = IntegerStepLM(model, runner)
    load_s = time.monotonic() - t_load
    load_bytes = acc.link_bytes
    if not args.quiet:
        err.write(f"loaded in {load_s:.1f} s ({load_bytes:,} link bytes, {runner.weight_words:,} of "
                  f"{acc.params.weight_depth:,} weight words)\n")
    on_token, finish = _text_output(args, model.tokenizer, prompt, args.max_tokens)
    t0 = time.monotonic()
    tokens = generate(lm, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed, on_token=on_token, stop=stop)
    dt = time.monotonic() - t0
    finish()
    steps = len(prompt) + len(tokens) - 1
    link_per_token = (acc.link_bytes - load_bytes) / steps
    shapes = [l.wq.shape for l in model.linears.values()]
    board = board_model(acc.params, shapes, link_per_token)
    stats = {"mode": "host", "backend": args.backend, "config": args.config, "model": model.source,
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
        at_fmax = (f", {board['tokens_per_s_at_fmax']:.1f} at Fmax {board['fmax_mhz']} MHz"
                   if board.get("tokens_per_s_at_fmax") else " (make bitstream BOARD=icebreaker adds the Fmax figure)")
        err.write(f"-- {len(prompt)} prompt + {len(tokens)} generated tokens ({steps} model steps) in {dt:.2f} s: "
                  f"{stats['tokens_per_s']:.2f} tok/s on {args.backend}; "
                  f"{link_per_token:,.0f} link bytes and {board['device_cycles_per_token']:,} device cycles per token; "
                  f"modeled iCEBreaker: {board['tokens_per_s_at_clock']:.1f} tok/s at {board['clock_mhz']} MHz"
                  f"{at_fmax}, {board['bound']}-bound ({board['baud']:,} baud)\n")
    return 0


def _run_on_device(args, model, image, prompt, stop, acc, t_load):
    """The whole LM step on the device: load the compiled image, then one GENERATE."""
    from .lmdevice import generate_on_device, load_image
    err, vocab = sys.stderr, model.tokenizer
    if not args.quiet:
        err.write(f"loading {model.describe()} onto {args.backend} ({args.config}) to run the whole LM step "
                  f"there: {model.ternary_params:,} trits, {len(image.reset_program) + len(image.program)} "
                  f"instructions...\n")
        err.flush()
    loaded = load_image(acc, image)
    load_s = time.monotonic() - t_load
    load_bytes = acc.link_bytes
    words = sum(acc.params.words_for(*w.shape) for w in image.matrices)
    if not args.quiet:
        err.write(f"loaded in {load_s:.1f} s ({load_bytes:,} link bytes, {words:,} of "
                  f"{acc.params.weight_depth:,} weight words, {loaded.prog_end} instructions)\n")
    show, finish = _text_output(args, vocab, prompt, args.max_tokens)
    first = []

    def on_token(tok):
        if not first:
            first.append(time.monotonic())
        show(tok)

    t0 = time.monotonic()
    tokens, reason = generate_on_device(acc, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                        top_k=args.top_k, seed=args.seed, stop=stop, on_token=on_token)
    dt = time.monotonic() - t0
    finish()
    steps = len(prompt) + len(tokens) - 1
    link_per_token = (acc.link_bytes - load_bytes) / len(tokens)
    stats = {"mode": "device", "backend": args.backend, "config": args.config, "model": model.source,
             "prompt_tokens": len(prompt), "generated_tokens": len(tokens), "stop_reason": reason.name.lower(),
             "seconds": round(dt, 3), "time_to_first_token_s": round(first[0] - t0, 3),
             "tokens_per_s": round(len(tokens) / dt, 3) if dt > 0 else None, "model_steps": steps,
             "load_seconds": round(load_s, 2), "load_link_bytes": load_bytes,
             "link_bytes_per_token": round(link_per_token, 1), "products_per_token": image.cost()["products"],
             "instructions_per_token": len(image.program)}
    if args.json:
        print(json.dumps({"prompt": vocab.decode_text(prompt), "tokens": tokens, "text": vocab.decode_text(tokens),
                          "seed": args.seed, "temperature": args.temperature, "top_k": args.top_k,
                          "stop": stop, **stats}, indent=1))
    else:
        rate = f"{stats['tokens_per_s']:.2f} tok/s" if stats["tokens_per_s"] is not None else "instant"
        err.write(f"-- {len(prompt)} prompt + {len(tokens)} generated tokens ({steps} model steps) in {dt:.2f} s, "
                  f"the whole LM step on {args.backend}: {rate}, first token after "
                  f"{stats['time_to_first_token_s']:.3f} s; {link_per_token:,.1f} link bytes per generated token; "
                  f"ended by {'the stop token' if reason == P.Stop.STOP_TOKEN else '--max-tokens'}\n")
    return 0
