"""Gate-level simulation (tritium.sim.gatesim): the iCEBreaker netlist Yosys synthesizes for the
bitstream, under Verilator with Yosys's cell models, reached only through its pins at the real
baud; and the DP16KD model (hw/cells/dp16kd.v) against the RTL memories it replaces.

The UART tests drive the whole path a board sees: host bytes -> 8N1 bits on the rx pin at
1 Mbaud -> UART PHY -> the 32-byte FIFO -> the link device -> the tx pin -> decoded bytes.
"""

import numpy as np
import pytest

from tritium.hw import protocol as P
from tritium.sim import gatesim, golden

pytestmark = pytest.mark.synth


@pytest.fixture(scope="module")
def board():
    """The iCEBreaker's gate-level simulator (synthesized and compiled once per session)."""
    link = gatesim.GateTransport("icebreaker", log=lambda *_: None)
    yield link
    link.close()


@pytest.fixture(scope="module")
def acc(board):
    from tritium.host.accelerator import Accelerator
    return Accelerator(board, timeout=600)


def _frames(data):
    frames, errors = P.FrameDecoder().feed_all(data)
    assert not errors
    return frames


def _request(board, seq, op, payload=b"", *, reply_frames=1, max_cycles=2_000_000):
    """Send one raw frame and return the decoded reply frames."""
    board.sim.send(P.encode_frame(seq, op, payload))
    out = b""
    frames = []
    while len(frames) < reply_frames:
        more = board.sim.run(4096, max_cycles, idle_cycles=40 * board.sim.divisor)
        assert more, f"no reply to op {op:#x} seq {seq}"
        out += more
        frames = _frames(out)
    return frames


def _slot_ready(acc, board, w, *, seq):
    """Load ``w`` into slot 0 through the host API, then take over the numbering with a raw RESET
    (accepted with any seq, weights kept) and SET_SLOT; returns the next seq."""
    acc.load(0, w, base=0)
    [(s, op, body)] = _request(board, seq, P.Op.RESET)
    assert (s, op) == (seq, P.Op.RESET | P.REPLY)
    m, k = w.shape
    chunks = -(-k // acc.params.trits)
    [(s, op, body)] = _request(board, seq + 1, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, m, chunks))
    assert (s, op) == (seq + 1, P.Op.SET_SLOT | P.REPLY)
    return seq + 2


def _matvec_payload(acc, x):
    """MATVEC on slot 0: the slot number, then ``x`` padded to whole chunks."""
    k = -(-len(x) // acc.params.trits) * acc.params.trits
    xs = np.zeros(k, dtype=np.int8)
    xs[:len(x)] = x
    return bytes([0]) + xs.tobytes()


def _matvec_frame(acc, seq, x):
    return P.encode_frame(seq, P.Op.MATVEC, _matvec_payload(acc, x))


def _results(acc, body):
    n = acc.acc_bytes
    return np.array([int.from_bytes(body[i:i + n], "little", signed=True) for i in range(0, len(body), n)])


def test_unknown_board_is_refused_in_one_line():
    # a board hw/boards.py does not build is named in the error, before anything is synthesized
    with pytest.raises(gatesim.GateSimError, match=r"unknown board 'icebreaker2'; choose from"):
        gatesim.GateTransport("icebreaker2")


def test_netlist_is_the_synthesized_board_top(board):
    # the simulated design is Yosys's cell netlist: LUTs, carries, flip-flops, the four SPRAMs and
    # the IO cells, and no RTL process left over
    cells = gatesim.cell_counts(gatesim.netlist("icebreaker", log=lambda *_: None))
    assert cells["SB_LUT4"] > 1000 and cells["SB_SPRAM256KA"] == 4 and cells["SB_IO"] >= 3
    assert not [c for c in cells if not c.startswith("SB_")]


def test_selftest_products_equal_golden(acc):
    # random products through the host API, over the serial pins of the netlist, each equal to
    # the golden model's
    passed, failed = gatesim.selftest(acc, products=8, seed=3)
    assert (passed, failed) == (8, 0)
    # the device counted every request as a good frame and no error
    st = acc.status()
    assert st["errors"] == 0 and st["last_error"] == 0


def test_a_request_of_at_most_32_bytes_may_follow_before_the_reply(acc, board):
    # protocol.md: the next request may be sent before the reply when it fits the 32-byte FIFO;
    # a 40-row product's reply (127 bytes) takes 127 byte times, during which the STATUS and
    # IDENTIFY requests sent right behind it wait in the FIFO
    rng = np.random.default_rng(5)
    w = rng.integers(-1, 2, (40, 30))
    x = rng.integers(-128, 128, 30)
    seq = _slot_ready(acc, board, w, seq=100)
    board.sim.send(_matvec_frame(acc, seq, x) + P.encode_frame(seq + 1, P.Op.STATUS)
                   + P.encode_frame(7, P.Op.IDENTIFY))
    out = b""
    while len(_frames(out)) < 3:
        more = board.sim.run(4096, 2_000_000, idle_cycles=40 * board.sim.divisor)
        assert more, f"only {len(_frames(out))} of 3 replies"
        out += more
    (s1, op1, b1), (s2, op2, b2), (s3, op3, b3) = _frames(out)
    # all three answered, in order, the product exact
    assert (s1, op1, s2, op2, s3, op3) == (seq, P.Op.MATVEC | P.REPLY, seq + 1, P.Op.STATUS | P.REPLY,
                                           7, P.Op.IDENTIFY | P.REPLY)
    assert np.array_equal(_results(acc, b1), golden.matvec(w, x))
    # STATUS counted SET_SLOT and MATVEC since the RESET, and no error: no byte was lost
    assert P.STATUS_LAYOUT.unpack(b2) == (2, 0, 0)
    assert P.parse_identify(b3) == acc.info


def test_fifo_overflow_drops_the_next_request_whole(acc, board):
    # protocol.md: a request sent behind a long reply that does not fit the FIFO overruns the
    # UART; the damaged frame is answered with an error and not executed
    rng = np.random.default_rng(6)
    w = rng.integers(-1, 2, (40, 120))
    x1, x2 = rng.integers(-128, 128, (2, 120))
    seq = _slot_ready(acc, board, w, seq=110)
    board.sim.send(_matvec_frame(acc, seq, x1) + _matvec_frame(acc, seq + 1, x2))
    out = b""
    while len(_frames(out)) < 2:
        more = board.sim.run(4096, 2_000_000, idle_cycles=100 * board.sim.divisor)
        assert more, f"only {len(_frames(out))} of 2 replies"
        out += more
    (s1, op1, b1), (s2, op2, b2) = _frames(out)
    # the first product is answered exactly
    assert (s1, op1) == (seq, P.Op.MATVEC | P.REPLY)
    assert np.array_equal(_results(acc, b1), golden.matvec(w, x1))
    # the second lost about 95 of its 130 bytes in the overrun, so it stopped short: TIMEOUT for
    # its seq, which was not used up
    code, op, expected = P.ERROR_LAYOUT.unpack(b2)
    assert s2 == seq + 1 and op2 == P.ERROR
    assert (code, op, expected) == (P.Err.TIMEOUT, P.Op.MATVEC, seq + 1)
    # nothing of it executed: the counters show one good MATVEC and this one error
    [(s, op, body)] = _request(board, seq + 1, P.Op.STATUS)
    assert P.STATUS_LAYOUT.unpack(body) == (2, 1, code)
    # and the device goes on: the same product sent alone now is answered exactly
    [(s, op, body)] = _request(board, seq + 2, P.Op.MATVEC, _matvec_payload(acc, x2))
    assert (s, op) == (seq + 2, P.Op.MATVEC | P.REPLY)
    assert np.array_equal(_results(acc, body), golden.matvec(w, x2))


def test_idle_timeout_as_a_board_sees_it(acc, board):
    # a frame that stops part-way is answered TIMEOUT after 64 silent byte times on the line
    # (7680 cycles at 12 MHz and 1 Mbaud), not before
    timeout = P.IDLE_TIMEOUT_BYTES * 10 * board.sim.divisor
    board.sim.send(P.encode_frame(0, P.Op.STATUS)[:3])
    assert board.sim.run(0, 100_000) == b""  # the three bytes sent; the line then idle 12 bit times
    sent = board.sim.cycle - 12 * board.sim.divisor
    # silence for all but 2 byte times of the timeout: no reply yet
    assert board.sim.cycles(timeout - 20 * board.sim.divisor - 12 * board.sim.divisor) == b""
    reply = board.sim.run(10, 10 * timeout)
    [(s, op, body)] = _frames(reply)
    assert op == P.ERROR and P.ERROR_LAYOUT.unpack(body)[0] == P.Err.TIMEOUT
    # the error frame (10 bytes) ended within 64 + 12 byte times of the last byte sent
    assert timeout <= board.sim.cycle - sent <= timeout + 12 * 10 * board.sim.divisor


@pytest.mark.slow
def test_generation_equals_golden(acc):
    # the shipped model's weights written over the serial pins, then a short generation: the
    # same tokens as through the golden device
    ids, expected = gatesim.generation(acc, tokens=2, clock_hz=acc.info["clock_hz"], prompt=b"The ")
    assert ids == expected


@pytest.mark.slow
def test_ulx3s_netlist_products_equal_golden():
    # the ULX3S's netlist, its 64 weight-memory DP16KDs simulated by hw/cells/dp16kd.v: random
    # products over its pins (25 MHz, 1 Mbaud) equal the golden model's
    from tritium.host.accelerator import Accelerator
    with gatesim.GateTransport("ulx3s-85f", log=lambda *_: None) as link:
        cells = gatesim.cell_counts(gatesim.netlist("ulx3s-85f", log=lambda *_: None))
        assert cells["DP16KD"] >= 64
        acc = Accelerator(link, timeout=600)
        assert gatesim.selftest(acc, products=6, seed=4) == (6, 0)


@pytest.mark.parametrize("mutant", [None, "outreg", pytest.param("init", marks=pytest.mark.slow),
                                    pytest.param("narrow", marks=pytest.mark.slow)])
def test_dp16kd_model_equals_rtl_memory(mutant, tmp_path):
    # the DP16KD model in every data width Yosys maps (1, 2, 4, 9, 18, 36) and the OUTREG mode of
    # RegisteredRAM reads what the RTL memories it replaces read, cycle for cycle, initial
    # contents included; a model with one documented behaviour broken must be caught
    text = gatesim.DP16KD_MODEL.read_text()
    broken = {"init": ("(k % 16) * 20", "(k % 16) * 18"),            # INITVAL word stride
              "outreg": ('REGMODE_B == "OUTREG" ? out_b', '0 ? out_b'),  # output register ignored
              "narrow": ("ad[3] ? 5'd9 : 5'd0", "ad[3] ? 5'd8 : 5'd0")}    # parity bit not skipped
    model = None
    if mutant:
        old, new = broken[mutant]
        assert old in text
        model = tmp_path / "dp16kd.v"
        model.write_text(text.replace(old, new))
    r = gatesim.check_dp16kd(cycles=20000, model=model, log=lambda *_: None)
    # the netlist holds DP16KDs in every width, and RegisteredRAM's in OUTREG
    assert {a for a, _, _ in r["modes"]} == {1, 2, 4, 9, 18, 36}
    assert any(mode == "OUTREG" for _, _, mode in r["modes"])
    if mutant is None:
        assert r["cycles"] == 20000 and r["mismatches"] == 0, r["log"][-1000:]
    else:
        assert r["mismatches"] > 0


def test_a_short_generation_equals_golden(acc):
    # A small MatMul-free LM (6,656 trits, so its weights cross the serial pins in a few seconds
    # of simulation) writes 3 tokens through the iCEBreaker's netlist: the same tokens as
    # through the golden device. The shipped model's generation is the slow test above.
    from test_models import random_mmfree
    from tritium.host.accelerator import Accelerator
    from tritium.host.generate import generate
    from tritium.host.models import MatrixRunner, MMFreeConfig, _load_mmfree
    from tritium.host.transport import GoldenTransport
    cfg = MMFreeConfig(vocab=256, hidden=16, layers=1, intermediate=32)
    model = _load_mmfree(random_mmfree(cfg, seed=1), cfg, "random", {})
    ids = generate(model.bind(MatrixRunner(acc)), list(b"The "), max_tokens=3, seed=0, temperature=0.8)
    with GoldenTransport(acc.params, clock_hz=acc.info["clock_hz"]) as gt:
        expected = generate(model.bind(MatrixRunner(Accelerator(gt))), list(b"The "), max_tokens=3, seed=0,
                            temperature=0.8)
    assert len(ids) == 3 and ids == expected


@pytest.mark.slow
def test_ulx3s_netlist_runs_the_whole_token_loop():
    # the ULX3S's netlist with the on-chip LM step, reached only through its UART pins: a small
    # MatMul-free model loaded (matrices, program, constants, embedding), then a sampled GENERATE
    # whose every token the device chooses itself: the golden device's tokens
    from test_lmcore import small_image
    from tritium.host.accelerator import Accelerator
    from tritium.host.lmdevice import generate_on_device, load_image
    from tritium.host.transport import GoldenTransport
    image, run = small_image(), dict(max_tokens=3, temperature=0.8, top_k=10, seed=3)
    with gatesim.GateTransport("ulx3s-85f", log=lambda *_: None) as link:
        acc = Accelerator(link, timeout=600)
        assert acc.lm is not None
        load_image(acc, image)
        got = generate_on_device(acc, [5, 17, 40], **run)
    with GoldenTransport(acc.params, clock_hz=acc.info["clock_hz"], lm=acc.lm) as gt:
        gold = Accelerator(gt)
        load_image(gold, image)
        assert got == generate_on_device(gold, [5, 17, 40], **run)
