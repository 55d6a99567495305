"""The on-chip token loop: the golden device's WRITE_MEM / LM_CONFIG / GENERATE rules, the host API
that loads a compiled model and generates with one request, and the shipped model's tokens on the
device equal to the integer spec's on the host."""

import json
import re

import numpy as np
import pytest
from amaranth.hdl import Shape

from tritium.host import lmdevice
from tritium.host.accelerator import Accelerator, DeviceError, LinkError
from tritium.host.cli import main as cli
from tritium.host.generate import IntegerStepLM, generate
from tritium.host.models import DEFAULT_MODEL, load_model
from tritium.host.transport import GoldenTransport, Transport
from tritium.hw import protocol as P
from tritium.hw.boards import BOARDS
from tritium.hw.params import CONFIGS, LM_DEFAULT, LMParams
from tritium.hw.vector import VOp, instruction_layout
from tritium.sim import lmstep
from tritium.sim.device_model import DeviceModel
from tritium.sim.golden import TritiumValueError

UP5K = CONFIGS["up5k-spram"]
TINY = CONFIGS["tiny"]   # 1 lane x 1 trit: a weight word per weight, one byte on the link
#: a toy LM step: 16 vector words, 64 constants (so c reaches past the 32 slots), 8 instructions,
#: a 2 x 2 embedding, a vocabulary of 2
TOY = LMParams(vmem_depth=16, cmem_depth=64, prog_depth=8, embed_depth=4, max_vocab=2)
f = P.encode_frame


# -- a raw session with the golden device ------------------------------------------------------------

class Raw:
    """Request frames to a golden device; each call returns the decoded reply frames."""

    def __init__(self, params=TINY, lm=TOY):
        self.dev = DeviceModel(params, lm=lm)
        self.lm = lm
        self.seq = 0
        self.layout = instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits) if lm else None
        assert self(P.Op.IDENTIFY)[0][1] == P.Op.IDENTIFY | P.REPLY

    def __call__(self, op, payload=b""):
        frames = P.FrameDecoder().feed(self.dev.feed(f(self.seq, op, payload)))
        self.seq = (self.seq + 1) & 0xFF
        return frames

    def ok(self, op, payload=b""):
        frames = self(op, payload)
        assert [(o, b) for _, o, b in frames] == [(op | P.REPLY, b"")], frames
        return frames

    def error(self, op, payload=b""):
        """The code of the one error frame that answers this request."""
        frames = self(op, payload)
        assert len(frames) == 1 and frames[0][1] == P.ERROR, frames
        code, req_op, expected = P.ERROR_LAYOUT.unpack(frames[0][2])
        assert req_op == op and expected == self.seq   # the seq was used up
        return P.Err(code)

    def write(self, space, addr, data):
        return self(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(space, addr) + bytes(data))

    def program(self, addr, *words):
        size = P.instruction_bytes(self.lm)
        return self.write(P.Space.PROGRAM, addr, b"".join(w.to_bytes(size, "little") for w in words))

    def word(self, code, **fields):
        """The bits of an instruction, whatever its fields (no check: the device's are tested)."""
        values = {"op": VOp[code.upper()], "red": 0, "dst": 0, "a": 0, "b": 0, "n": 0, "c": 0, "shift": 0,
                  "imm": 0, **fields}
        return self.layout.const(values).as_bits()

    def generate(self, prompt=b"\x00", **fields):
        return self(P.Op.GENERATE, P.generate_payload(prompt, **{"max_tokens": 5, **fields}))


def stream(frames):
    """``(tokens, end)`` of GENERATE reply frames: the token frames and the last frame (op, payload)."""
    tokens = [b[0] for _, op, b in frames[:-1] if op == P.Op.GENERATE | P.REPLY and len(b) == 1]
    assert len(tokens) == len(frames) - 1
    return tokens, frames[-1][1:]


def toy_loop(raw, embed=(0, 1, 1, 0)):
    """Arm the toy model: the reset program zeroes words 4..5, the step embeds the token at the
    logits (address 0, 2 words). With the embedding rows [0, 1] and [1, 0] greedy alternates
    1, 0, 1, ... after a prompt of token 0."""
    assert raw.write(P.Space.EMBED, 0, bytes(np.array(embed, np.int8)))[0][1] == P.Op.WRITE_MEM | P.REPLY
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, 0) + np.array([1, 1], "<i2").tobytes())
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.CONST, 0) + bytes(8))
    raw.program(0, raw.word("mulc", dst=4, a=4, n=2, c=0, shift=63), raw.word("embed", dst=0, n=2))
    raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(1, 2, 0, 2))


# -- IDENTIFY version 3 ------------------------------------------------------------------------------

@pytest.mark.parametrize("lm", [None, LM_DEFAULT, TOY,
                                LMParams(vmem_depth=65536, cmem_depth=65536, prog_depth=65536,
                                         embed_depth=1 << 24, max_vocab=256)])
def test_identify_reports_the_lm_step(lm):
    # the reply is 36 bytes of version 3; the LM sizes come back exactly (the largest ones too),
    # and a device without the step says so with its flag clear
    payload = P.identify_payload(UP5K, 12_000_000, lm)
    assert len(payload) == 36 and payload[4] == 3
    assert bool(payload[21] & P.FLAG_LM) == (lm is not None)
    assert P.parse_identify(payload)["lm"] == lm
    # the host's accelerator sees the same
    if lm is None or lm.embed_depth <= LM_DEFAULT.embed_depth:
        assert Accelerator(GoldenTransport(UP5K, lm=lm)).lm == lm


def test_identify_of_version_2_is_named():
    v2 = P.identify_payload(UP5K, 12_000_000)[:24]
    with pytest.raises(P.ProtocolError, match=r"IDENTIFY reply of 24 bytes, expected 36 \(protocol version 2\?\)"):
        P.parse_identify(v2)


# -- the commands on a device without the step --------------------------------------------------------

def test_a_device_without_the_lm_step_answers_unknown_op():
    raw = Raw(lm=None)
    # well-formed requests of each new command: UNKNOWN_OP, the seq used up, as any unknown op
    assert raw.error(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.CONST, 0) + b"\x01") == P.Err.UNKNOWN_OP
    assert raw.error(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(0, 1, 0, 2)) == P.Err.UNKNOWN_OP
    assert raw.error(P.Op.GENERATE, P.generate_payload(b"\x00", max_tokens=1)) == P.Err.UNKNOWN_OP
    # and the host refuses before sending anything
    acc = Accelerator(GoldenTransport(TINY))
    sent = acc.link_bytes
    with pytest.raises(TritiumValueError, match="WRITE_MEM needs a device with the on-chip LM step"):
        acc.write_mem(P.Space.CONST, 0, b"\x01")
    with pytest.raises(TritiumValueError, match="the device has no on-chip LM step"):
        lmdevice.load_image(acc, lmstep.compile_mmfree(load_model(DEFAULT_MODEL)))
    assert acc.link_bytes == sent


# -- WRITE_MEM ---------------------------------------------------------------------------------------

def test_write_mem_writes_each_memory():
    raw = Raw()
    width = Shape.cast(raw.layout).width   # 58 bits for the toy's 4-bit addresses and 6-bit constants
    size = P.instruction_bytes(TOY)
    assert size == 8
    # a program word is masked to the layout's width; scales are signed 16-bit; int8 elsewhere
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.PROGRAM, 6) + ((1 << 64) - 1).to_bytes(size, "little")
           + (5).to_bytes(size, "little"))
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.CONST, 62) + bytes([0x80, 0x7F]))
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.EMBED, 1) + bytes([0xFF, 3, 4]))
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, 0) + np.array([-32768, 32767], "<i2").tobytes())
    assert raw.dev.program[6:8] == [(1 << width) - 1, 5] and raw.dev.program[:6] == [0] * 6
    assert raw.dev.cmem[62:].tolist() == [-128, 127] and raw.dev.embed.tolist() == [0, -1, 3, 4]
    assert raw.dev.scale.tolist() == [-32768, 32767]


@pytest.mark.parametrize("space, addr, body, code", [
    (P.Space.CONST, 0, b"", P.Err.BAD_LENGTH),                              # no element
    (P.Space.SCALE, 0, b"\x01\x02\x03", P.Err.BAD_LENGTH),                  # half a scale
    (P.Space.PROGRAM, 0, bytes(P.instruction_bytes(TOY) + 1), P.Err.BAD_LENGTH),
    (P.Space.PROGRAM, 0, b"\x01", P.Err.BAD_LENGTH),                        # part of an instruction
    (4, 0, b"\x01", P.Err.OUT_OF_RANGE),                                    # no such space
    (255, 0, b"", P.Err.OUT_OF_RANGE),                                      # (checked before the elements)
    (P.Space.CONST, 63, b"\x01\x02", P.Err.OUT_OF_RANGE),                   # one past the end
    (P.Space.EMBED, 4, b"\x01", P.Err.OUT_OF_RANGE),
    (P.Space.SCALE, 1, b"\x01\x00\x02\x00", P.Err.OUT_OF_RANGE),
    (P.Space.PROGRAM, 8, bytes(P.instruction_bytes(TOY)), P.Err.OUT_OF_RANGE),
    (P.Space.CONST, 0xFFFFFFFF, b"\x01", P.Err.OUT_OF_RANGE),               # no wrap of addr + n
])
def test_write_mem_refusals(space, addr, body, code):
    raw = Raw()
    before = (list(raw.dev.program), raw.dev.cmem.copy(), raw.dev.embed.copy(), raw.dev.scale.copy())
    assert raw.error(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(space, addr) + body) == code
    # nothing was written
    after = (list(raw.dev.program), raw.dev.cmem, raw.dev.embed, raw.dev.scale)
    assert before[0] == after[0] and all(np.array_equal(a, b) for a, b in zip(before[1:], after[1:]))


def test_write_mem_shorter_than_its_header_is_bad_length():
    raw = Raw()
    assert raw.error(P.Op.WRITE_MEM, b"\x01\x00\x00") == P.Err.BAD_LENGTH


def test_write_mem_at_the_last_element_is_accepted():
    raw = Raw()
    for space in P.Space:
        size, depth = P.space_element_bytes(TOY, space), P.space_depth(TOY, space)
        raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(space, depth - 1) + bytes(size))


# -- LM_CONFIG ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, code", [
    ((1, 1, 0, 2), P.Err.OUT_OF_RANGE),      # empty step program
    ((2, 1, 0, 2), P.Err.OUT_OF_RANGE),
    ((0, 9, 0, 2), P.Err.OUT_OF_RANGE),      # past the program memory (8)
    ((0, 1, 0, 0), P.Err.OUT_OF_RANGE),      # no vocabulary
    ((0, 1, 0, 3), P.Err.OUT_OF_RANGE),      # above max_vocab
    ((0, 1, 15, 2), P.Err.OUT_OF_RANGE),     # logits past the vector memory (16)
    ((0, 8, 14, 2), None),                   # the limits themselves
])
def test_lm_config_ranges(fields, code):
    raw = Raw()
    if code is None:
        raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(*fields))
        assert raw.dev.lm_config == fields
    else:
        assert raw.error(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(*fields)) == code
        assert raw.dev.lm_config is None


def test_lm_config_length():
    raw = Raw()
    for n in (0, 7, 9):
        assert raw.error(P.Op.LM_CONFIG, bytes(n)) == P.Err.BAD_LENGTH


# -- GENERATE ----------------------------------------------------------------------------------------

def test_generate_streams_tokens_then_the_end_frame():
    raw = Raw()
    toy_loop(raw)
    status = P.STATUS_LAYOUT.unpack(raw(P.Op.STATUS)[0][2])
    # greedy after token 0: 1, 0, 1, 0, 1 -- then max_tokens
    frames = raw.generate(max_tokens=5)
    assert stream(frames) == ([1, 0, 1, 0, 1], (P.Op.GENERATE | P.REPLY, P.GENERATE_END_LAYOUT.pack(5, P.Stop.MAX_TOKENS)))
    # every frame carries the request's seq; the end frame alone counts in frames_ok (+ STATUS itself)
    assert {s for s, _, _ in frames} == {raw.seq - 1}
    after = P.STATUS_LAYOUT.unpack(raw(P.Op.STATUS)[0][2])
    assert after[0] == status[0] + 2 and after[1] == status[1]
    # the stop token ends it once it has been sent
    assert stream(raw.generate(max_tokens=5, stop=0)) == (
        [1, 0], (P.Op.GENERATE | P.REPLY, P.GENERATE_END_LAYOUT.pack(2, P.Stop.STOP_TOKEN)))
    # a stop above 255 is none; one token is the least
    assert stream(raw.generate(max_tokens=1, stop=256))[0] == [1]


def test_generate_refusals():
    raw = Raw()
    # shorter than the header and one prompt token
    assert raw.error(P.Op.GENERATE, P.generate_payload(b"\x00", max_tokens=1)[:-1]) == P.Err.BAD_LENGTH
    # before LM_CONFIG
    assert raw.error(P.Op.GENERATE, P.generate_payload(b"\x00", max_tokens=1)) == P.Err.NOT_LOADED
    toy_loop(raw)
    # max_tokens 0, a prompt token outside the vocabulary (2)
    assert raw.error(P.Op.GENERATE, P.GENERATE_LAYOUT.pack(0, 1, 0, 0, P.NO_STOP) + b"\x00") == P.Err.OUT_OF_RANGE
    assert raw.error(P.Op.GENERATE, P.generate_payload(b"\x00\x02", max_tokens=1)) == P.Err.OUT_OF_RANGE
    assert stream(raw.generate(b"\x01", max_tokens=2))[0] == [0, 1]


def test_reset_disarms_generate_but_keeps_the_memories():
    raw = Raw()
    toy_loop(raw)
    first = raw.generate(max_tokens=4)
    memories = (list(raw.dev.program), raw.dev.cmem.copy(), raw.dev.embed.copy(), raw.dev.scale.copy(),
                raw.dev.vmem.copy())
    raw.dev.feed(f(0, P.Op.RESET))
    raw.seq = 1
    # GENERATE is refused until LM_CONFIG again; nothing the RESET touched was a memory
    assert raw.error(P.Op.GENERATE, P.generate_payload(b"\x00", max_tokens=4)) == P.Err.NOT_LOADED
    assert memories[0] == raw.dev.program
    assert all(np.array_equal(a, b) for a, b in zip(memories[1:], (raw.dev.cmem, raw.dev.embed, raw.dev.scale,
                                                                    raw.dev.vmem)))
    raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(1, 2, 0, 2))
    assert [(o, b) for _, o, b in raw.generate(max_tokens=4)] == [(o, b) for _, o, b in first]


def _run_check(raw, word, prompt=b"\x00", **fields):
    # put `word` where the toy's step instruction is and generate: the frames
    raw.program(1, word)
    return raw.generate(prompt, **fields)


def _refused(raw, word, code):
    # GENERATE ends at once with `code` (the word is the step program; nothing streamed)
    return _refused_program(raw, [word], code)


@pytest.mark.parametrize("code, fields", [
    ("mulc", {"dst": 15, "a": 0, "n": 2}),          # dst past the vector memory
    ("mulc", {"dst": 0, "a": 15, "n": 2}),          # a
    ("mulc", {"dst": 0, "a": 0, "n": 2, "c": 63}),  # constants past the constant memory
    ("fgate", {"dst": 0, "a": 0, "n": 2, "c": 63}),
    ("add", {"dst": 0, "a": 0, "b": 15, "n": 2}),   # b
    ("mul", {"dst": 0, "a": 0, "b": 15, "n": 2}),
    ("sigmoid", {"dst": 0, "a": 15, "n": 2}),
    ("silu", {"dst": 0, "a": 15, "n": 2}),
    ("rsub", {"dst": 0, "a": 15, "n": 2}),
    ("rescale", {"dst": 0, "a": 15, "n": 2}),
    ("quant", {"a": 15, "n": 2}),                   # quant reads a
    ("matvec", {"dst": 15, "n": 2, "c": 40}),       # range checks come before the slot checks
    ("embed", {"dst": 15, "n": 2}),
    ("embed", {"dst": 0, "n": 5}),                  # the token's row passes the embedding (4 values)
    ("mulc", {"dst": 0, "a": 0, "n": 2, "red": 3}),  # reduction 3 does not exist
    ("quant", {"a": 0, "n": 1, "red": 1}),          # a reduction on a non-elementwise instruction
    ("mulc", {"dst": 0, "a": 0, "n": 0, "red": 2}),  # ... or with n = 0
    ("mulc", {"dst": 2, "a": 1, "n": 2}),           # dst inside a part-way
    ("add", {"dst": 2, "a": 0, "b": 1, "n": 2}),    # dst inside b part-way
])
def test_run_time_checks_out_of_range(code, fields):
    raw = Raw()
    toy_loop(raw)
    _refused(raw, raw.word(code, **fields), P.Err.OUT_OF_RANGE)


def test_run_time_checks_that_pass_at_the_limits():
    raw = Raw()
    toy_loop(raw)
    # an operand ending at the last word, dst equal to a source, a gain with any n: all run
    for word in (raw.word("mulc", dst=14, a=14, n=2, c=62), raw.word("add", dst=0, a=0, b=14, n=2),
                 raw.word("gain", n=1023), raw.word("mulc", dst=0, a=2, n=2, red=1)):
        assert stream(_run_check(raw, word, max_tokens=1))[1][0] == P.Op.GENERATE | P.REPLY


def _refused_program(raw, words, code):
    # the toy's step program replaced by `words`: GENERATE ends at once with `code`
    raw.program(1, *words)
    raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(1, 1 + len(words), 0, 2))
    frames = raw.generate()
    assert [op for _, op, _ in frames] == [P.ERROR], (frames, code)
    got, op, _ = P.ERROR_LAYOUT.unpack(frames[0][2])
    assert (P.Err(got), op) == (code, P.Op.GENERATE)
    return P.Err(got)


def test_run_time_checks_of_the_products():
    raw = Raw()
    toy_loop(raw)
    # slots 0 and 1: a 2 x 3 matrix on the 1-lane, 1-trit engine (6 words), and a 1 x 1
    raw.ok(P.Op.WRITE_WEIGHTS, (0).to_bytes(2, "little") + bytes([2, 1, 0, 0, 1, 2, 2]))
    raw.ok(P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, 2, 3))
    raw.ok(P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(1, 6, 1, 1))
    w = raw.word
    quant, matvec = w("quant", a=0, n=3, c=0), w("matvec", dst=0, n=2, c=0)
    seen = {_refused_program(raw, [w("quant", a=0, n=1, c=32)], P.Err.BAD_SLOT),
            _refused_program(raw, [w("quant", a=0, n=1, c=5)], P.Err.EMPTY_SLOT),
            _refused_program(raw, [w("quant", a=0, n=4, c=0)], P.Err.OUT_OF_RANGE),   # more than chunks * trits
            _refused_program(raw, [quant, w("matvec", dst=0, n=3, c=0)], P.Err.OUT_OF_RANGE),  # not its rows
            # a quant and its matvec go together: a matvec alone, one of another slot, a quant
            # followed by anything else or ending the program
            _refused_program(raw, [matvec], P.Err.OUT_OF_RANGE),
            _refused_program(raw, [quant, w("matvec", dst=0, n=1, c=1)], P.Err.OUT_OF_RANGE),
            _refused_program(raw, [quant, w("embed", dst=0, n=2)], P.Err.OUT_OF_RANGE),
            _refused_program(raw, [w("embed", dst=0, n=2), quant], P.Err.OUT_OF_RANGE),
            # a word with an opcode outside VOp, whatever else it holds
            _refused_program(raw, [w("matvec", dst=15, n=1023, c=63) & ~0xF | 15], P.Err.UNKNOWN_OP)}
    # every error a run can end with was produced
    assert seen == {P.Err.UNKNOWN_OP, P.Err.OUT_OF_RANGE, P.Err.BAD_SLOT, P.Err.EMPTY_SLOT}
    # the product with its counts right runs: quant 3 (the slot's K), then its matvec of 2 rows
    raw.program(1, w("embed", dst=0, n=2), w("mulc", dst=4, a=0, n=2, c=0, red=1), quant, matvec)
    raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(1, 5, 0, 2))
    assert stream(raw.generate(max_tokens=2))[1][0] == P.Op.GENERATE | P.REPLY


def test_the_product_is_the_slots_matrix_times_the_quantized_vector():
    raw = Raw()
    toy_loop(raw)
    # W = [[1, 0, -1], [-1, 0, 1]] (codes 2 1 0 / 0 1 2); x = the embedding row [0, 1] (token 0,
    # scale 3) and a zero: quant makes [0, 127] (max 3), padded with 0 to K = 3: W x = [0, 0]. With
    # token 1's row [1, 0]: [127, 0] -> W x = [127, -127] -> greedy picks token 0
    raw.ok(P.Op.WRITE_WEIGHTS, (0).to_bytes(2, "little") + bytes([2, 1, 0, 0, 1, 2]))
    raw.ok(P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, 2, 3))
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.SCALE, 0) + np.array([3, 3], "<i2").tobytes())
    raw.ok(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(P.Space.CONST, 0) + bytes([1, 1]))
    w = raw.word
    raw.program(1, w("embed", dst=4, n=2), w("mulc", dst=6, a=4, n=2, c=0, red=1), w("quant", a=6, n=2, c=0),
                w("matvec", dst=0, n=2, c=0))
    raw.ok(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(1, 5, 0, 2))
    # prompt 1: logits [127, -127] -> 0; then token 0: logits [0, 0] -> 0 (lowest id on a tie)
    assert stream(raw.generate(b"\x01", max_tokens=3))[0] == [0, 0, 0]
    assert raw.dev.vmem[:2].tolist() == [0, 0] and raw.dev.vmem[6:8].tolist() == [0, 3]
    raw.generate(b"\x01", max_tokens=1)
    assert raw.dev.vmem[:2].tolist() == [127, -127]


def test_an_error_part_way_keeps_the_tokens_already_sent():
    raw = Raw(lm=LMParams(vmem_depth=16, cmem_depth=64, prog_depth=8, embed_depth=3, max_vocab=2))
    # embedding [0, 1, 1]: token 0 reads row [0, 1] and makes token 1, whose row passes the 3 values
    toy_loop(raw, embed=(0, 1, 1))
    errors = P.STATUS_LAYOUT.unpack(raw(P.Op.STATUS)[0][2])[1]
    frames = raw.generate(max_tokens=5)
    assert [(op, b) for _, op, b in frames] == [
        (P.Op.GENERATE | P.REPLY, b"\x01"), (P.ERROR, P.ERROR_LAYOUT.pack(P.Err.OUT_OF_RANGE, P.Op.GENERATE, raw.seq))]
    # counted as an error, as any
    assert P.STATUS_LAYOUT.unpack(raw(P.Op.STATUS)[0][2])[1:] == (errors + 1, P.Err.OUT_OF_RANGE)


def test_the_reset_program_sees_token_0():
    raw = Raw()
    toy_loop(raw)
    # a reset program that embeds: token 0's row [0, 1] (row 1 would be [1, 0]); the step program
    # then does nothing to the logits, so the first token is the reset program's arg-max
    raw.program(0, raw.word("embed", dst=0, n=2), raw.word("mulc", dst=4, a=4, n=2, c=0))
    assert stream(raw.generate(b"\x01", max_tokens=1))[0] == [1]


# -- the shipped model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def on_device(model):
    """An accelerator on the golden UP5K device with the LM step, the shipped model loaded."""
    acc = Accelerator(GoldenTransport(UP5K, lm=LM_DEFAULT))
    image = lmstep.compile_mmfree(model)
    loaded = lmdevice.load_image(acc, image)
    return acc, image, loaded


@pytest.fixture(scope="module")
def spec(model):
    # the integer step on the host, its products by the spec's numpy runner (not the device)
    return IntegerStepLM(model, lmstep.NumpyRunner({n: l.wq for n, l in model.linears.items()}))


def test_load_image_arms_the_device(on_device):
    acc, image, loaded = on_device
    dev = acc.transport.device
    # LM_CONFIG: the reset program first, then the step; logits where the image keeps them
    assert (loaded.step_start, loaded.prog_end, loaded.logits, loaded.vocab) == (
        len(image.reset_program), len(image.reset_program) + len(image.program), *image.vectors["logits"])
    assert dev.lm_config == acc.lm_state == (loaded.step_start, loaded.prog_end, loaded.logits, loaded.vocab)
    # the program decodes back to the image's instructions; constants, embedding and scales as compiled
    ops = [dev._decode(w, dev.layout) for w in dev.program[:loaded.prog_end]]
    assert ops == image.reset_program + image.program
    assert np.array_equal(dev.cmem[:len(image.cmem)], image.cmem)
    assert np.array_equal(dev.embed[:image.embed.size], image.embed.ravel())
    assert np.array_equal(dev.scale[:len(image.embed_scale[0])], image.embed_scale[0])
    # matrix i is slot i, with its shape
    assert [s[1:] if s else None for s in acc.slots[:len(image.matrices)]] == [w.shape for w in image.matrices]


@pytest.mark.parametrize("temperature, top_k, seed", [(0, 40, 0), (0.5, 40, 0), (0.7, 40, 5), (1.0, 0, 3),
                                                      (1.3, 5, 123456789), (0.8, 1, 7)])
def test_on_device_tokens_equal_the_integer_spec(on_device, spec, temperature, top_k, seed):
    # one GENERATE on the device gives the tokens of generate(IntegerStepLM) on the host, token for
    # token; the device runs these one after another, never cleared between them
    acc, _, _ = on_device
    prompt = list(b"The return statement")
    streamed = []
    tokens, reason = lmdevice.generate_on_device(acc, prompt, max_tokens=16, temperature=temperature, top_k=top_k,
                                                 seed=seed, on_token=streamed.append)
    want = generate(spec, prompt, max_tokens=16, temperature=temperature, top_k=top_k, seed=seed)
    assert tokens == want and streamed == want and reason == P.Stop.MAX_TOKENS


def test_a_stop_token_ends_both_alike(on_device, spec):
    acc, _, _ = on_device
    prompt = list(b"def f(x):")
    free = generate(spec, prompt, max_tokens=24, temperature=0.7, top_k=40, seed=2)
    # a stop token first produced at position 5 (or later): the stream ends with it, on both
    stop = next(t for i, t in enumerate(free) if i >= 5 and t not in free[:i])
    end = free.index(stop) + 1
    tokens, reason = lmdevice.generate_on_device(acc, prompt, max_tokens=24, temperature=0.7, top_k=40, seed=2,
                                                 stop=stop)
    assert tokens == free[:end] and reason == P.Stop.STOP_TOKEN
    assert generate(spec, prompt, max_tokens=24, temperature=0.7, top_k=40, seed=2, stop=stop) == free[:end]
    # a stop token that never comes changes nothing
    unused = next(t for t in range(256) if t not in free)
    assert lmdevice.generate_on_device(acc, prompt, max_tokens=24, temperature=0.7, top_k=40, seed=2,
                                       stop=unused) == (free, P.Stop.MAX_TOKENS)


def test_the_link_carries_a_few_bytes_per_token(on_device):
    acc, _, _ = on_device
    before = acc.link_bytes
    tokens, _ = lmdevice.generate_on_device(acc, [1, 2, 3], max_tokens=10, temperature=0, top_k=0, seed=0)
    # the request (7 + 12 + 3 bytes), ten 8-byte token frames and the 10-byte end frame
    assert acc.link_bytes - before == (7 + 12 + 3) + 10 * 8 + 10


def test_host_side_refusals_send_nothing(model, on_device):
    acc, image, _ = on_device
    sent = acc.link_bytes
    kw = dict(max_tokens=4, temperature=0, top_k=0, seed=0)
    for call, message in [
        (lambda: lmdevice.generate_on_device(acc, [], **kw), "a prompt of 0 tokens"),
        (lambda: lmdevice.generate_on_device(acc, [0] * 3000, **kw), "a prompt of 3000 tokens; one GENERATE takes 1 "
                                                                      "to 2037"),
        (lambda: lmdevice.generate_on_device(acc, [256], **kw), r"prompt token id 256 is outside the vocabulary \(0..255\)"),
        (lambda: lmdevice.generate_on_device(acc, [1], **kw, stop=256), "stop token 256 is outside the vocabulary"),
        (lambda: lmdevice.generate_on_device(acc, [1], **{**kw, "max_tokens": 0}), "max_tokens = 0"),
        (lambda: lmdevice.generate_on_device(acc, [1], **{**kw, "temperature": 1e-6}), "outside the device's range"),
        (lambda: acc.write_mem(P.Space.SCALE, 0, b"\x01"), "1 bytes are not whole SCALE elements of 2 bytes"),
        (lambda: acc.write_mem(P.Space.SCALE, 255, b"\x01\x00\x02\x00"), "do not fit its 256 elements"),
        (lambda: acc.write_mem(7, 0, b"\x01"), "space 7 is not one of"),
        (lambda: acc.lm_config(5, 5, 0, 2), "needs 0 <= step_start < prog_end <= 256"),
        (lambda: acc.lm_config(0, 5, 2047, 2), "logits \\+ vocab <= 2048"),
    ]:
        with pytest.raises(TritiumValueError, match=message):
            call()
    assert acc.link_bytes == sent
    # an image that does not fit the device's LM step is named by the limit it passes
    small = Accelerator(GoldenTransport(UP5K, lm=LMParams(vmem_depth=1024)))
    with pytest.raises(TritiumValueError, match="the model needs 1,408 vector memory words; the device's LM step "
                                                "has 1,024"):
        lmdevice.load_image(small, image)
    for lm, what in [(LMParams(cmem_depth=4096), "constant bytes"), (LMParams(prog_depth=64), "program instructions"),
                     (LMParams(embed_depth=32767), "embedding values"), (LMParams(max_vocab=255), "vocabulary tokens")]:
        with pytest.raises(TritiumValueError, match=what):
            lmdevice.check_image(lm, image)
    # with nothing loaded (after a RESET) the host says so before sending
    fresh = Accelerator(GoldenTransport(UP5K, lm=LM_DEFAULT))
    with pytest.raises(TritiumValueError, match="no model is loaded on the device's LM step"):
        lmdevice.generate_on_device(fresh, [1], **kw)
    # and the device, asked anyway, answers NOT_LOADED
    with pytest.raises(DeviceError, match="device rejected GENERATE: NOT_LOADED"):
        fresh.generate(P.generate_payload([1], max_tokens=1))


# -- the stream over a damaged link ----------------------------------------------------------------------

class Edit(Transport):
    """The golden device with each write's reply bytes rewritten by ``edit(frames) -> bytes``."""

    def __init__(self, inner, edit):
        self.inner, self.edit, self.requests, self._rx = inner, edit, [], bytearray()

    def write(self, data):
        self.requests.append(bytes(data))
        self._rx += self.edit(P.FrameDecoder().feed(self.inner.device.feed(data)))

    def read(self, n, timeout):
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out


def _frames(frames):
    return b"".join(f(*fr) for fr in frames)


@pytest.mark.parametrize("edit, message", [
    (lambda fr: _frames(fr[:-1]) if fr[-1][1] == P.Op.GENERATE | P.REPLY and len(fr) > 1 else _frames(fr),
     r"^GENERATE \(seq \d+\): no reply within 0.2 s after 6 tokens; not retried because GENERATE is not idempotent"),
    (lambda fr: _frames(fr[:2] + fr[3:]) if len(fr) > 3 else _frames(fr),
     r"the end frame reports 6 tokens \(reason 0\), but 5 token frames arrived: frames were lost on the link"),
    (lambda fr: _frames(fr)[:-2] + b"\x00\x00" if len(fr) > 3 else _frames(fr),
     r"no reply within 0.2 s after 6 tokens"),
])
def test_a_damaged_stream_is_a_link_error_and_never_resent(model, edit, message):
    link = Edit(GoldenTransport(UP5K, lm=LM_DEFAULT), edit)
    acc = Accelerator(link, timeout=0.2)
    lmdevice.load_image(acc, lmstep.compile_mmfree(model))
    with pytest.raises(LinkError, match=message):
        lmdevice.generate_on_device(acc, [1, 2], max_tokens=6, temperature=0, top_k=0, seed=0)
    # the GENERATE went out exactly once
    assert [r[2] for r in link.requests].count(P.Op.GENERATE) == 1


def test_a_generate_refused_as_damaged_is_sent_again(model):
    # the first GENERATE arrives with a broken CRC: the device proves it did not run it, so it is safe
    link = Edit(GoldenTransport(UP5K, lm=LM_DEFAULT), _frames)
    acc = Accelerator(link, timeout=0.2)
    lmdevice.load_image(acc, lmstep.compile_mmfree(model))
    write, damaged = link.write, [True]

    def damage_first_generate(data):
        if damaged[0] and data[2] == P.Op.GENERATE:
            damaged[0] = False
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        write(data)
    link.write = damage_first_generate
    tokens, _ = lmdevice.generate_on_device(acc, [1, 2], max_tokens=3, temperature=0, top_k=0, seed=0)
    assert len(tokens) == 3 and acc.stats["retries"] == 1


def test_a_device_error_part_way_carries_the_tokens():
    link = GoldenTransport(TINY, lm=LMParams(vmem_depth=16, cmem_depth=64, prog_depth=8, embed_depth=3, max_vocab=2))
    acc = Accelerator(link)
    raw = Raw(lm=TOY)   # only for its instruction words
    acc.write_mem(P.Space.EMBED, 0, bytes([0, 1, 1]))
    acc.write_mem(P.Space.SCALE, 0, np.array([1, 1], "<i2").tobytes())
    size = P.instruction_bytes(acc.lm)
    acc.write_mem(P.Space.PROGRAM, 0, b"".join(w.to_bytes(size, "little") for w in (
        raw.word("mulc", dst=4, a=4, n=2, c=0, shift=63), raw.word("embed", dst=0, n=2))))
    acc.lm_config(1, 2, 0, 2)
    with pytest.raises(DeviceError, match="device rejected GENERATE: OUT_OF_RANGE") as e:
        lmdevice.generate_on_device(acc, [0], max_tokens=5, temperature=0, top_k=0, seed=0)
    assert e.value.tokens == [1]


# -- tritium generate ---------------------------------------------------------------------------------------

def _cli_json(capsys, *argv):
    assert cli(["generate", "--prompt", "The result", "--max-tokens", "10", "--seed", "5", "--json", "--quiet",
                "--backend", "golden", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_device_mode_is_the_integer_spec(capsys, spec):
    out = _cli_json(capsys, "--mode", "device", "--temperature", "0.7")
    want = generate(spec, list(b"The result"), max_tokens=10, temperature=0.7, top_k=40, seed=5)
    assert out["tokens"] == want and out["text"] == bytes(want).decode("utf-8", "replace")
    assert out["mode"] == "device" and out["stop_reason"] == "max_tokens"
    # the stats: a few link bytes per generated token, the time to the first one, the rate
    assert out["link_bytes_per_token"] == round((7 + 12 + 10 + 10 * 8 + 10) / 10, 1)
    assert 0 <= out["time_to_first_token_s"] <= out["seconds"] and out["tokens_per_s"] > 0
    # auto picks the device for the shipped (MatMul-free) model: the same run
    auto = _cli_json(capsys, "--temperature", "0.7")
    assert auto["mode"] == "device" and auto["tokens"] == want
    # --arith (host arithmetic) or --mode host keep the host path
    host = _cli_json(capsys, "--arith", "integer", "--temperature", "0.7")
    assert host["mode"] == "host" and host["tokens"] == want and host["link_bytes_per_token"] > 10_000
    assert _cli_json(capsys, "--mode", "host")["mode"] == "host"


def test_cli_stop_token(capsys, spec):
    free = generate(spec, list(b"The result"), max_tokens=10, temperature=0, top_k=40, seed=5)
    # the first token new at position 3 or later
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    end = free.index(stop) + 1
    assert end < 10
    for mode in ("device", "host"):
        out = _cli_json(capsys, "--mode", mode, "--temperature", "0", "--stop", str(stop),
                        *(["--arith", "integer"] if mode == "host" else []))
        assert out["tokens"] == free[:end], mode


def test_cli_device_mode_prints_the_text(capsys, spec):
    assert cli(["generate", "--prompt", "The result", "--max-tokens", "6", "--seed", "1", "--backend", "golden",
                "--mode", "device", "--temperature", "0"]) == 0
    out = capsys.readouterr()
    want = generate(spec, list(b"The result"), max_tokens=6, temperature=0, top_k=40, seed=1)
    assert out.out == "The result" + bytes(want).decode("utf-8", "replace") + "\n"
    assert "the whole LM step on golden" in out.err and "first token after" in out.err


@pytest.mark.parametrize("argv, message", [
    (["--mode", "device", "--arith", "integer"], "--arith chooses the host's arithmetic; --mode device runs"),
    (["--stop", "256"], r"--stop 256 is outside the vocabulary \(0..255\)"),
    (["--mode", "device", "--config", "tiny"], "takes at most K = 64"),
])
def test_cli_device_mode_bad_input_is_one_line(capsys, argv, message):
    assert cli(["generate", "--quiet", "--prompt", "ok", "--backend", "golden", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_info_reports_the_lm_step(capsys, monkeypatch):
    # `tritium info` on a device with the LM step shows its sizes (JSON-clean)
    from tritium.host import cli as C
    real = C._open
    monkeypatch.setattr(C, "_open", lambda args, lm=None: real(args, lm=LM_DEFAULT))
    assert cli(["info", "--backend", "golden", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lm"] == LM_DEFAULT.as_dict()
    monkeypatch.setattr(C, "_open", real)
    assert cli(["info", "--backend", "golden", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lm"] is None



def test_cli_auto_runs_on_the_host_what_the_device_cannot(capsys, monkeypatch):
    # a prompt longer than one GENERATE holds (2038 tokens on the ULX3S device, whose 64-byte weight
    # words set the payload limit): --mode device refuses it in one line, before loading anything
    limit = P.max_payload(BOARDS["ulx3s-85f"][1]) - P.GENERATE_LAYOUT.size
    assert limit == 2038
    assert cli(["generate", "--prompt-ids", ",".join(["65"] * 3000), "--max-tokens", "1", "--backend", "golden",
                "--quiet", "--mode", "device"]) == 2
    assert capsys.readouterr().err == ("tritium: error: --mode device: a prompt of 3000 tokens; one GENERATE "
                                       f"takes at most {limit}\n")
    # a model that does not fit the device's LM step: auto says why and runs it on the host
    import tritium.hw.params
    monkeypatch.setattr(tritium.hw.params, "LM_DEFAULT", LMParams(vmem_depth=1024))
    assert cli(["generate", "--prompt", "Hi", "--max-tokens", "2", "--backend", "golden", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["mode"] == "host"
    assert ("running the model on the host, products on the device (the model needs 1,408 vector memory words; "
            "the device's LM step has 1,024)") in out.err


def test_a_sum_of_squares_is_bounded_to_512_elements():
    # the 64-bit sum of squares holds at most golden.MAX_VECTOR (512) int32 values: n = 513 with
    # red = 2 is refused (with red = 1, a max, it runs)
    raw = Raw(lm=LMParams(vmem_depth=1024, cmem_depth=1024, prog_depth=8, embed_depth=4, max_vocab=2))
    toy_loop(raw)
    for n, red, ends in ((512, 2, P.Op.GENERATE | P.REPLY), (513, 1, P.Op.GENERATE | P.REPLY), (513, 2, P.ERROR)):
        frames = _run_check(raw, raw.word("mulc", dst=8, a=8, n=n, c=0, red=red), max_tokens=1)
        assert frames[-1][1] == ends, (n, red)
    assert P.ERROR_LAYOUT.unpack(frames[-1][2])[0] == P.Err.OUT_OF_RANGE
