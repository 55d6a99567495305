"""The whole LM step on the device: load a compiled model once, then generate with one request.

:func:`load_image` writes an :class:`~tritium.sim.lmstep.LMImage` (a MatMul-free model compiled by
:func:`tritium.sim.lmstep.compile_mmfree`) to a device that runs the on-chip token loop: every
ternary matrix into the slot its ``quant`` / ``matvec`` instructions name, the program, the
constants, the embedding and its row scales (WRITE_MEM), then LM_CONFIG. :func:`generate_on_device`
sends one GENERATE per prompt and streams the tokens back: the device runs every step and chooses
every token itself (:func:`tritium.sim.lmstep.choose_token`), so the tokens equal
``generate(IntegerStepLM(...), ...)`` on the host for the same seed, temperature, top-k and stop.
"""

import dataclasses

import numpy as np

from ..hw import protocol as P
from ..sim import lmstep
from ..sim.golden import TritiumValueError

__all__ = ["LoadedImage", "check_image", "load_image", "generate_on_device"]


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """What :func:`load_image` armed on the device: the LM_CONFIG fields, the instruction count
    and the link bytes the load took."""
    step_start: int
    prog_end: int
    logits: int
    vocab: int
    link_bytes: int


def check_image(lm, image):
    """Raise :class:`TritiumValueError` naming the first limit of the device's LM step ``lm``
    (:class:`LMParams`, ``None``: a device without it) that ``image`` passes: its vector memory,
    constants, program, embedding, vocabulary, or more matrices than slots."""
    if lm is None:
        raise TritiumValueError("the device has no on-chip LM step (IDENTIFY reports none): "
                                "run the model on the host instead (--mode host)")
    program = len(image.reset_program) + len(image.program)
    vocab = image.vectors["logits"][1]
    for what, need, have in (("vector memory words", image.vmem_words, lm.vmem_depth),
                             ("constant bytes", len(image.cmem), lm.cmem_depth),
                             ("program instructions", program, lm.prog_depth),
                             ("embedding values", int(image.embed.size), lm.embed_depth),
                             ("vocabulary tokens", vocab, lm.max_vocab),
                             ("ternary matrices (slots)", len(image.matrices), P.SLOTS)):
        if need > have:
            raise TritiumValueError(f"the model needs {need:,} {what}; the device's LM step has {have:,}")
    m, _ = image.embed_scale
    m = np.asarray(m)
    if m.size and (m.min() < -(1 << 15) or m.max() >= 1 << 15):
        raise TritiumValueError("the embedding's row scales do not fit the device's 16-bit scale memory")


def load_image(acc, image):
    """Load ``image`` onto the :class:`~tritium.host.accelerator.Accelerator` ``acc`` and arm
    GENERATE; returns a :class:`LoadedImage`.

    Everything is checked before anything is written: :func:`check_image` against ``acc.lm``,
    and the matrices against the engine and its weight memory (``ModelTooLarge``). The device is
    RESET first (its slots and LM configuration cleared), matrix ``i`` goes to slot ``i`` (the
    program's ``quant`` / ``matvec`` ``c``), and LM_CONFIG comes last.
    """
    from ..hw.vector import encode, instruction_layout   # the gateware's own instruction encoding
    from .models import MatrixRunner
    check_image(acc.lm, image)
    MatrixRunner(acc, label="the device").plan({name: w.shape for name, w in zip(image.matrix_names,
                                                                                 image.matrices)})
    lm, start = acc.lm, acc.link_bytes
    layout = instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits)
    program = list(image.reset_program) + list(image.program)
    size = P.instruction_bytes(lm)
    code = b"".join(encode(op, layout).to_bytes(size, "little") for op in program)
    acc.reset()
    for slot, w in enumerate(image.matrices):
        acc.load(slot, w)
    acc.write_mem(P.Space.PROGRAM, 0, code)
    acc.write_mem(P.Space.CONST, 0, np.asarray(image.cmem, np.int8).tobytes())
    acc.write_mem(P.Space.EMBED, 0, np.ascontiguousarray(image.embed, np.int8).tobytes())
    acc.write_mem(P.Space.SCALE, 0, np.asarray(image.embed_scale[0]).astype("<i2").tobytes())
    logits, vocab = image.vectors["logits"]
    acc.lm_config(len(image.reset_program), len(program), logits, vocab)
    return LoadedImage(len(image.reset_program), len(program), logits, vocab, acc.link_bytes - start)


def generate_on_device(acc, prompt_ids, *, max_tokens, temperature, top_k, seed, stop=None, on_token=None):
    """Generate on the device armed by :func:`load_image`: feed ``prompt_ids``, then choose up to
    ``max_tokens`` tokens with the on-chip rule (``temperature`` 0: greedy; ``top_k`` 0: all
    tokens; xorshift32 seeded by ``seed``), ending early after the ``stop`` token (emitted, as
    the last token). ``on_token(id)`` is called as each token arrives. Returns ``(tokens,
    reason)`` with ``reason`` a :class:`~tritium.hw.protocol.Stop`.

    Raises :class:`TritiumValueError` (nothing sent) when no image is loaded, for a prompt that
    is empty, longer than one request holds or outside the vocabulary, a stop token outside it,
    ``max_tokens`` outside 1..65535 or a temperature or top-k the device cannot take.
    """
    if acc.lm_state is None:
        raise TritiumValueError("no model is loaded on the device's LM step: load_image() first")
    vocab = acc.lm_state[3]
    rule = lmstep.SamplingParams.from_float(temperature, top_k)
    prompt = [int(t) for t in prompt_ids]
    longest = acc.max_payload - P.GENERATE_LAYOUT.size
    if not 1 <= len(prompt) <= longest:
        raise TritiumValueError(f"a prompt of {len(prompt)} tokens; one GENERATE takes 1 to {longest}")
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise TritiumValueError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 0 <= stop < vocab):
        raise TritiumValueError(f"stop token {stop!r} is outside the vocabulary (0..{vocab - 1})")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 0xFFFF:
        raise TritiumValueError(f"max_tokens = {max_tokens!r} must be an integer in 1..65535 on the device")
    if not 0 <= rule.top_k <= 0xFFFF:
        raise TritiumValueError(f"top_k = {top_k} must be in 0..65535 on the device")
    payload = P.generate_payload(prompt, max_tokens=max_tokens, seed=int(seed), inv_temperature=rule.inv_temperature,
                                 top_k=rule.top_k, stop=P.NO_STOP if stop is None else stop)
    return acc.generate(payload, on_token=on_token)
