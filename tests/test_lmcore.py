"""The whole token on the chip: the link device with the LM core generates, from prompt to end
frame, exactly the tokens of the integer spec (:mod:`tritium.sim.lmstep`), and refuses bad
programs with the golden device's errors."""

import numpy as np
import pytest

from tritium.hw import protocol as P
from tritium.hw.params import EngineParams, LMParams
from tritium.hw.vector import encode, instruction_layout
from tritium.sim import golden, lmstep
from tritium.sim.lmstep import Op

f = P.encode_frame
#: an engine and LM sizes that hold the small model below (22,016 trits, 48 tokens)
SMALL_ENGINE = EngineParams(lanes=4, trits=4, max_k=256, weight_depth=2048)
SMALL_LM = LMParams(vmem_depth=512, cmem_depth=2048, prog_depth=128, embed_depth=2048, max_vocab=64)
TIMEOUT = 4000


def small_image(seed=3):
    from test_models import random_mmfree
    from tritium.host.models import MMFreeConfig, _load_mmfree
    cfg = MMFreeConfig(vocab=48, hidden=32, layers=2, intermediate=64)
    return lmstep.compile_mmfree(_load_mmfree(random_mmfree(cfg, seed=seed), cfg, "random", {}))


class Frames:
    """Request frames with consecutive sequence numbers (the first after an IDENTIFY)."""

    def __init__(self):
        self.seq = 0
        self.frames = [f(0, P.Op.IDENTIFY)]

    def add(self, op, payload=b""):
        self.seq = (self.seq + 1) & 0xFF
        self.frames.append(f(self.seq, op, payload))
        return self


def load_frames(fr, params, lm, img, *, program=None, config=None):
    """The frames that load ``img``: every matrix in slot i, the program, constants, embedding,
    scales and LM_CONFIG (``program``/``config`` override what is written)."""
    p = params
    wb = -(-p.word_bits // 8)
    base = 0
    for slot, w in enumerate(img.matrices):
        words = golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)
        for i in range(0, len(words), 32):
            chunk = words[i:i + 32]
            fr.add(P.Op.WRITE_WEIGHTS, (base + i).to_bytes(2, "little") + b"".join(int(x).to_bytes(wb, "little") for x in chunk))
        fr.add(P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(slot, base, w.shape[0], -(-w.shape[1] // p.trits)))
        base += len(words)
    layout = instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits)
    ib = P.instruction_bytes(lm)
    ops = program if program is not None else img.reset_program + img.program
    code = b"".join(encode(op, layout).to_bytes(ib, "little") for op in ops)
    spaces = [(P.Space.PROGRAM, code, ib), (P.Space.CONST, img.cmem.astype(np.int8).tobytes(), 1),
              (P.Space.EMBED, img.embed.astype(np.int8).tobytes(), 1),
              (P.Space.SCALE, np.asarray(img.embed_scale[0], "<i2").tobytes(), 2)]
    for space, blob, eb in spaces:
        step = 256 // eb * eb
        for i in range(0, len(blob), step):
            fr.add(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(space, i // eb) + blob[i:i + step])
    cfg = config or (len(img.reset_program), len(ops), img.vectors["logits"][0], img.config.vocab)
    fr.add(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(*cfg))
    return fr


def spec_tokens(img, prompt, *, max_tokens, inv_temperature=0, top_k=0, seed=0, stop=P.NO_STOP):
    """What GENERATE must answer, from the spec alone: (tokens, reason)."""
    lm = lmstep.IntegerLM(img)
    rule, state = lmstep.SamplingParams(inv_temperature, top_k), lmstep.rng_seed(seed)
    for t in prompt:
        logits = lm.step(t)
    out = []
    while True:
        tok, state = lmstep.choose_token(logits, rule, state)
        out.append(tok)
        if tok == stop:
            return out, P.Stop.STOP_TOKEN
        if len(out) == max_tokens:
            return out, P.Stop.MAX_TOKENS
        logits = lm.step(tok)


def gateware_replies(frames, *, params=SMALL_ENGINE, lm=SMALL_LM, seed=0, stall_prob=0.2):
    from tritium.hw.device import LinkDevice
    from tritium.sim.amaranth_tb import run_device_session
    dev = LinkDevice(params=params, clock_hz=1_000_000, timeout_cycles=TIMEOUT, lm=lm)
    got = run_device_session(dev, frames, seed=seed, stall_prob=stall_prob)
    return P.FrameDecoder().feed(got)


def generation(frames, seq):
    """The token frames and the end (or error) frame answering GENERATE ``seq``."""
    mine = [(op, payload) for s, op, payload in frames if s == seq]
    tokens = [payload[0] for op, payload in mine if op == P.Op.GENERATE | P.REPLY and len(payload) == 1]
    return tokens, mine[-1]


@pytest.fixture(scope="module")
def image():
    return small_image()


@pytest.mark.parametrize("lanes", [1, 2])
def test_the_device_generates_the_spec_tokens_greedy(image, lanes):
    # one- and two-lane vector units: the same tokens (the lanes change the speed only)
    prompt = [5, 17, 40]
    want, reason = spec_tokens(image, prompt, max_tokens=4)
    lm = LMParams(**{**SMALL_LM.as_dict(), "vector_lanes": lanes})
    fr = load_frames(Frames(), SMALL_ENGINE, lm, image)
    fr.add(P.Op.GENERATE, P.generate_payload(bytes(prompt), max_tokens=4))
    frames = gateware_replies(fr.frames, lm=lm)
    assert all(op != P.ERROR for _, op, _ in frames), frames
    tokens, (op, end) = generation(frames, fr.seq)
    assert tokens == want
    assert P.GENERATE_END_LAYOUT.unpack(end) == (len(want), reason)


def both_devices(frames, *, params=SMALL_ENGINE, lm=SMALL_LM, seed=0):
    """The gateware's reply frames (Amaranth simulation, random stalls) equal the golden device's,
    byte for byte; returns them decoded."""
    from tritium.hw.device import LinkDevice
    from tritium.sim.amaranth_tb import run_device_session
    from tritium.sim.device_model import DeviceModel
    dev = LinkDevice(params=params, clock_hz=1_000_000, timeout_cycles=TIMEOUT, lm=lm)
    got = run_device_session(dev, frames, seed=seed, stall_prob=0.2)
    model = DeviceModel(params, clock_hz=1_000_000, lm=lm)
    want = b"".join(model.feed(fr) for fr in frames)
    assert P.FrameDecoder().feed(got) == P.FrameDecoder().feed(want)
    assert got == want
    return P.FrameDecoder().feed(got)


def _errors(frames):
    return {seq: P.Err(payload[0]) for seq, op, payload in frames if op == P.ERROR}


def test_bad_requests_get_the_golden_devices_errors():
    lm = SMALL_LM
    ib = P.instruction_bytes(lm)
    fr = Frames()
    expect = {}

    def bad(op, payload, err):
        fr.add(op, payload)
        expect[fr.seq] = err

    bad(P.Op.GENERATE, P.generate_payload(b"\x01", max_tokens=1), P.Err.NOT_LOADED)
    bad(P.Op.WRITE_MEM, b"\x00\x00\x00", P.Err.BAD_LENGTH)                          # short header
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(4, 0) + b"\x00", P.Err.OUT_OF_RANGE)  # no such space
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.PROGRAM, 0), P.Err.BAD_LENGTH)  # no element
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.PROGRAM, 0) + bytes(ib + 1), P.Err.BAD_LENGTH)
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, 0) + bytes(3), P.Err.BAD_LENGTH)
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, lm.max_vocab - 1) + bytes(4), P.Err.OUT_OF_RANGE)
    bad(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.EMBED, 1 << 31) + bytes(1), P.Err.OUT_OF_RANGE)
    bad(P.Op.LM_CONFIG, bytes(7), P.Err.BAD_LENGTH)
    bad(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(3, 3, 0, 8), P.Err.OUT_OF_RANGE)       # empty step
    bad(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(0, lm.prog_depth + 1, 0, 8), P.Err.OUT_OF_RANGE)
    bad(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(0, 4, 0, lm.max_vocab + 1), P.Err.OUT_OF_RANGE)
    bad(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(0, 4, lm.vmem_depth - 7, 8), P.Err.OUT_OF_RANGE)
    fr.add(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, 0) + bytes(range(8)))   # fine
    fr.add(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(0, 4, lm.vmem_depth - 8, 8))           # fine
    bad(P.Op.GENERATE, P.GENERATE_LAYOUT.pack(1, 0, 0, 0, 0), P.Err.BAD_LENGTH)           # no prompt
    bad(P.Op.GENERATE, P.generate_payload(b"\x01", max_tokens=1)[:2].replace(b"\x01\x00", b"\x00\x00")
        + P.generate_payload(b"\x01", max_tokens=1)[2:], P.Err.OUT_OF_RANGE)               # max_tokens 0
    bad(P.Op.GENERATE, P.generate_payload(b"\x01\x08", max_tokens=1), P.Err.OUT_OF_RANGE)  # token 8 >= vocab
    fr.add(P.Op.RESET)
    fr.seq = 0
    fr.frames[-1] = f(0, P.Op.RESET)
    bad(P.Op.GENERATE, P.generate_payload(b"\x01", max_tokens=1), P.Err.NOT_LOADED)       # RESET disarms
    frames = both_devices(fr.frames)
    assert _errors(frames) == expect


def _faulting_program(img, fault):
    """The small image's program with one fault put in (:func:`test_faults_in_a_program...`)."""
    prog = list(img.reset_program + img.program)
    q = next(i for i, op in enumerate(prog) if op.code == "quant")
    op = prog[q]
    if fault == "unknown":
        return prog[:q] + [None] + prog[q:]
    if fault == "vector range":
        return prog[:q] + [Op("add", SMALL_LM.vmem_depth - 4, 0, 0, n=5)] + prog[q:]
    if fault == "embed range":     # the prompt's token 5: (5 + 1) * 400 > embed_depth
        return prog[:q] + [Op("embed", 0, n=400)] + prog[q:]
    if fault == "const range":
        return prog[:q] + [Op("mulc", 0, 0, n=8, c=SMALL_LM.cmem_depth - 4)] + prog[q:]
    if fault == "overlap":
        return prog[:q] + [Op("mul", 10, 8, 8, n=4)] + prog[q:]
    if fault == "reduction":
        return prog[:q] + [Op("gain", red=1)] + prog[q:]
    if fault == "unpaired quant":      # (elementwise instructions may come before its matvec)
        return prog[:q + 1] + [Op("add", 0, 0, 0, n=1), Op("gain")] + prog[q + 1:]
    if fault == "unpaired matvec":
        return prog[:q] + prog[q + 1:]
    if fault == "empty slot":
        return prog[:q] + [Op("quant", a=op.a, n=op.n, c=30), Op("matvec", 0, n=4, c=30)] + prog[q:]
    if fault == "bad slot":
        return prog[:q] + [Op("quant", a=op.a, n=op.n, c=40)] + prog[q:]
    if fault == "too many activations":
        return prog[:q] + [Op("quant", a=op.a, n=img.matrices[op.c].shape[1] + 4, c=op.c)] + prog[q + 1:]
    if fault == "wrong rows":
        return prog[:q + 1] + [Op("matvec", prog[q + 1].dst, n=prog[q + 1].n - 1, c=op.c)] + prog[q + 2:]
    raise ValueError(fault)


FAULTS = {"unknown": P.Err.UNKNOWN_OP, "vector range": P.Err.OUT_OF_RANGE, "const range": P.Err.OUT_OF_RANGE,
          "embed range": P.Err.OUT_OF_RANGE,
          "overlap": P.Err.OUT_OF_RANGE, "reduction": P.Err.OUT_OF_RANGE, "unpaired quant": P.Err.OUT_OF_RANGE,
          "unpaired matvec": P.Err.OUT_OF_RANGE, "empty slot": P.Err.EMPTY_SLOT, "bad slot": P.Err.BAD_SLOT,
          "too many activations": P.Err.OUT_OF_RANGE, "wrong rows": P.Err.OUT_OF_RANGE}


def raw_program(ops, lm):
    """Instruction words as the device reads them, without :func:`encode`'s refusals (``None``:
    an opcode outside VOp)."""
    layout = instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits)
    ib = P.instruction_bytes(lm)
    words = []
    for op in ops:
        if op is None:
            bits = layout.const({"op": 0}).as_bits() | 15 << layout["op"].offset   # no VOp
        else:
            from tritium.hw.vector import VOp
            bits = layout.const({"op": VOp[op.code.upper()], "red": op.red, "dst": op.dst, "a": op.a, "b": op.b,
                                 "n": op.n, "c": op.c, "shift": op.shift, "imm": op.imm}).as_bits()
        words.append(bits.to_bytes(ib, "little"))
    return b"".join(words)


def test_faults_in_a_program_end_generate_with_the_golden_devices_error(image):
    # every run-time check, each in its own program; the device stays usable after each (a
    # started product is drained), and the intact program then generates the spec's tokens
    fr = load_frames(Frames(), SMALL_ENGINE, SMALL_LM, image)
    ib = P.instruction_bytes(SMALL_LM)
    expect = {}
    for fault, err in FAULTS.items():
        code = raw_program(_faulting_program(image, fault), SMALL_LM)
        for i in range(0, len(code), 22 * ib):
            fr.add(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.PROGRAM, i // ib) + code[i:i + 22 * ib])
        fr.add(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(len(image.reset_program), len(code) // ib,
                                                       image.vectors["logits"][0], image.config.vocab))
        fr.add(P.Op.GENERATE, P.generate_payload(b"\x05", max_tokens=2))
        expect[fr.seq] = err
    code = raw_program(image.reset_program + image.program, SMALL_LM)
    for i in range(0, len(code), 22 * ib):
        fr.add(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.PROGRAM, i // ib) + code[i:i + 22 * ib])
    fr.add(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(len(image.reset_program), len(code) // ib,
                                                   image.vectors["logits"][0], image.config.vocab))
    fr.add(P.Op.GENERATE, P.generate_payload(b"\x05\x11", max_tokens=2))
    frames = both_devices(fr.frames)
    assert _errors(frames) == expect
    tokens, (_, end) = generation(frames, fr.seq)
    want, reason = spec_tokens(image, [5, 17], max_tokens=2)
    assert tokens == want and P.GENERATE_END_LAYOUT.unpack(end) == (2, reason)


# -- the shipped model on the simulated board device, through the host runtime --------------------

RUNS = [  # (prompt, temperature, top_k, seed): greedy, top-k sampling, full-vocabulary sampling
    (b"The return statement", 0.0, 0, 0),
    (b"def main():\n    ", 0.8, 40, 1),
    (b"A loop repeats while", 1.2, 0, 7),
]


@pytest.fixture(scope="module")
def shipped():
    from tritium.host.models import DEFAULT_MODEL, load_model
    return lmstep.compile_mmfree(load_model(DEFAULT_MODEL))


def _generate_on(transport, image, runs, tokens):
    from tritium.host.accelerator import Accelerator
    from tritium.host.lmdevice import generate_on_device, load_image
    with transport:
        acc = Accelerator(transport, timeout=60)
        load_image(acc, image)
        return [generate_on_device(acc, list(prompt), max_tokens=tokens, temperature=t, top_k=k, seed=s)
                for prompt, t, k, s in runs]


@pytest.mark.cocotb
def test_the_simulated_ulx3s_device_generates_64_tokens_like_the_golden(shipped):
    # The board's device (LinkDevice with the LM step, the ULX3S's engine) as Verilog under
    # Verilator (the fast C++ harness, behind the pty): 64 tokens for each prompt / sampling
    # setting, every token equal to the golden device's and to the host's integer spec.
    from tritium.host.transport import GoldenTransport, SimTransport
    from tritium.hw.boards import BOARDS
    from tritium.hw.params import CONFIGS, LM_DEFAULT
    _, params, _, lm, _ = BOARDS["ulx3s-85f"]
    assert params == CONFIGS["ulx3s"] and lm == LM_DEFAULT
    sim = _generate_on(SimTransport(params, name="ulx3s", lm=lm, engine="verilator"), shipped, RUNS, 64)
    gold = _generate_on(GoldenTransport(params, lm=lm), shipped, RUNS, 64)
    assert sim == gold
    for (prompt, t, k, s), (tokens, reason) in zip(RUNS, sim):
        spec, _ = spec_tokens(shipped, list(prompt), max_tokens=64,
                              inv_temperature=lmstep.SamplingParams.from_float(t, k).inv_temperature, top_k=k,
                              seed=s)
        assert tokens == spec and reason == P.Stop.MAX_TOKENS
    assert len({tuple(t) for t, _ in sim}) == len(RUNS)


@pytest.mark.cocotb
def test_the_device_under_cocotb_generates_like_the_golden(shipped):
    # the same device under cocotb (the verification harness, sim/tb_device.py): a short generation
    from tritium.host.transport import GoldenTransport, SimTransport
    from tritium.hw.params import CONFIGS, LM_DEFAULT
    params, runs = CONFIGS["ulx3s"], [(b"Th", 0.7, 10, 3)]
    sim = _generate_on(SimTransport(params, name="ulx3s", lm=LM_DEFAULT, engine="cocotb"), shipped, runs, 2)
    assert sim == _generate_on(GoldenTransport(params, lm=LM_DEFAULT), shipped, runs, 2)
