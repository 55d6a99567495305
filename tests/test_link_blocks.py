"""The link device's framing blocks on their own (``hw/link.py``): the frame receiver and the frame
transmitter against the protocol module's frames, with and without stalls on both sides; the CRC
unit they share against the software CRC; every protocol layout's two views (struct and
``lib.data``) against each other."""

import numpy as np
import pytest

from tritium.hw import protocol as P
from tritium.hw.link import FrameReceiver, FrameTransmitter
from tritium.sim.amaranth_tb import Stalls, stream_get, stream_put

f = P.encode_frame


# -- the CRC and the layouts: one definition, two views ------------------------------------------------

def test_the_crc_is_amaranths_catalogue_entry():
    params = P.crc_parameters()
    algorithm = params.algorithm
    # the software CRC's constants are the catalogue entry's, and the entry has no reflection and no
    # final XOR (what lets crc16 continue from a given value)
    assert (algorithm.crc_width, algorithm.polynomial, algorithm.initial_crc) == (16, P.CRC_POLYNOMIAL, P.CRC_INITIAL)
    assert not algorithm.reflect_input and not algorithm.reflect_output and algorithm.xor_output == 0
    # and the two compute the same CRC of random messages
    rng = np.random.default_rng(1)
    for n in [0, 1, 2, 5, 64, 300]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert params.compute(data) == P.crc16(data)


LAYOUTS = {name: value for name, value in vars(P).items() if isinstance(value, P.Layout)}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_layouts_struct_and_gateware_views_agree(name):
    layout = LAYOUTS[name]
    shape = layout.shape
    # the same number of bits ...
    assert shape.size == 8 * layout.size
    rng = np.random.default_rng(len(name))
    for _ in range(5):
        values = {}
        for field, spec in layout.fields.items():
            if isinstance(spec, str):
                values[field] = rng.integers(0, 256, int(spec[:-1]), dtype=np.uint8).tobytes()
            else:
                values[field] = int(rng.integers(0, 1 << spec, dtype=np.uint64))
        # ... and the bytes the host packs are the bits the gateware's fields hold
        packed = layout.pack(*values.values())
        bits = shape.const({k: list(v) if isinstance(v, bytes) else v for k, v in values.items()}).as_bits()
        assert bits.to_bytes(layout.size, "little") == packed
        assert layout.unpack(packed) == tuple(values.values())


def test_a_layout_refuses_fields_it_cannot_pack():
    with pytest.raises(ValueError, match="field x: width 12 must be 8, 16 or 32 bits"):
        P.Layout(x=12)
    with pytest.raises(ValueError, match="field y: 'q' is not a byte-string code"):
        P.Layout(y="q")


# -- the transmitter -------------------------------------------------------------------------------------

def random_frames(rng, n, longest=40):
    frames = []
    for i in range(n):
        length = 0 if i % 4 == 0 else int(rng.integers(1, longest + 1))
        payload = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        if length > 2:
            payload = payload[:1] + bytes([P.SYNC]) + payload[2:]   # a SYNC inside a payload is just data
        frames.append((int(rng.integers(0, 256)), int(rng.integers(0, 256)), payload))
    return frames


def transmit(simulate, frames, stall_prob, seed=0):
    dut = FrameTransmitter()
    in_stalls = Stalls(np.random.default_rng(seed), stall_prob)
    out_stalls = Stalls(np.random.default_rng(seed + 1), stall_prob)
    want = b"".join(f(*frame) for frame in frames)
    got = bytearray()

    async def sender(ctx):
        for seq, op, payload in frames:
            await stream_put(ctx, dut.reply.header,
                             P.FRAME_HEADER.shape.const({"seq": seq, "op": op, "length": len(payload)}).as_bits(),
                             in_stalls)
            for b in payload:
                await stream_put(ctx, dut.reply.payload, b, in_stalls)

    async def receiver(ctx):
        while len(got) < len(want):
            got.append(await stream_get(ctx, dut.tx, out_stalls))

    simulate(dut, sender, receiver)
    return bytes(got), want


@pytest.mark.parametrize("stall_prob", [0.0, 0.5])
def test_transmitter_sends_the_protocols_frames(simulate, stall_prob):
    frames = random_frames(np.random.default_rng(2), 12)
    got, want = transmit(simulate, frames, stall_prob, seed=3)
    # every frame is SYNC, header, payload and CRC exactly as the host's encoder writes it
    assert got == want
    assert P.FrameDecoder().feed(got) == frames


def test_transmitter_timing(simulate):
    # with the payload offered and tx ready every cycle, a frame of n payload bytes leaves in n + 7
    # consecutive cycles, from the cycle after its header is taken; idle rises after the last byte
    dut = FrameTransmitter()
    payload = bytes(range(10, 15))
    trace = {}

    async def tb(ctx):
        ctx.set(dut.tx.ready, 1)
        ctx.set(dut.reply.header.valid, 1)
        ctx.set(dut.reply.header.payload.as_value(),
                P.FRAME_HEADER.shape.const({"seq": 3, "op": 0x84, "length": len(payload)}).as_bits())
        # taken at once: the transmitter is idle
        assert ctx.get(dut.reply.header.ready) and not ctx.get(dut.reply.idle)
        await ctx.tick()
        ctx.set(dut.reply.header.valid, 0)
        sent, idle, k = [], [], 0
        for _ in range(len(payload) + 9):
            # the payload offered every cycle, byte by byte as the transmitter takes them
            ctx.set(dut.reply.payload.valid, k < len(payload))
            ctx.set(dut.reply.payload.payload, payload[k] if k < len(payload) else 0)
            if ctx.get(dut.tx.valid):
                sent.append(ctx.get(dut.tx.payload))
            idle.append(ctx.get(dut.reply.idle))
            k += ctx.get(dut.reply.payload.ready) and k < len(payload)
            await ctx.tick()
        trace["sent"], trace["idle"] = bytes(sent), idle

    simulate(dut, tb)
    assert trace["sent"] == f(3, 0x84, payload)
    n = len(payload) + 7
    assert trace["idle"] == [0] * n + [1] * 2


# -- the receiver ----------------------------------------------------------------------------------------

MAX_PAYLOAD, HEAD_BYTES, WORD_BYTES, TIMEOUT = 24, 7, 3, 30


def event(seq, op, payload=b"", error=0, length=None):
    """What the receiver should report: header fields, error, and for a good frame its payload."""
    return {"seq": seq, "op": op, "length": len(payload) if length is None else length, "error": int(error),
            "payload": payload if not error else None}


def receive(simulate, chunks, stall_prob, seed=0):
    """Feed ``chunks`` (bytes, or ``("idle", cycles)``) to a receiver; return its events, each
    with the payload read back from its buffer (good frames) and the head and whole_words it
    reported."""
    dut = FrameReceiver(max_payload=MAX_PAYLOAD, head_bytes=HEAD_BYTES, word_bytes=WORD_BYTES,
                        timeout_cycles=TIMEOUT)
    in_stalls = Stalls(np.random.default_rng(seed), stall_prob)
    hold = Stalls(np.random.default_rng(seed + 1), stall_prob, longest=20)
    events, done = [], [False]

    async def sender(ctx):
        for chunk in chunks:
            if isinstance(chunk, tuple):
                await ctx.tick().repeat(chunk[1])
            for b in chunk if isinstance(chunk, bytes) else ():
                await stream_put(ctx, dut.rx, b, in_stalls)
        await ctx.tick().repeat(2 * TIMEOUT)
        done[0] = True

    async def consumer(ctx):
        while not done[0]:
            if not ctx.get(dut.frame.valid):
                await ctx.tick()
                continue
            ev = dut.frame.payload
            got = {"seq": ctx.get(ev.header.seq), "op": ctx.get(ev.header.op), "length": ctx.get(ev.header.length),
                   "error": ctx.get(ev.error), "payload": None}
            if not got["error"]:
                data = bytearray()
                for i in range(got["length"]):
                    ctx.set(dut.buffer.addr, i)
                    await ctx.tick()
                    data.append(ctx.get(dut.buffer.data))
                got["payload"] = bytes(data)
                got["head"] = ctx.get(ev.head).to_bytes(HEAD_BYTES, "little")
                got["whole_words"] = ctx.get(ev.whole_words)
            # the event stays put, and no byte is taken, for as long as it is not taken
            for _ in range(hold()):
                assert not ctx.get(dut.rx.ready) and ctx.get(dut.frame.valid)
                await ctx.tick()
            ctx.set(dut.frame.ready, 1)
            await ctx.tick()
            ctx.set(dut.frame.ready, 0)
            events.append(got)

    simulate(dut, sender, consumer, max_cycles=50_000)
    return events


@pytest.mark.parametrize("stall_prob", [0.0, 0.5])
def test_receiver_reports_good_and_refused_frames(simulate, stall_prob):
    good = f(7, P.Op.MATVEC, bytes([P.SYNC]) + bytes(range(1, 12)))
    bad_crc = bytearray(f(8, P.Op.STATUS, b"ab"))
    bad_crc[-2] ^= 0x10
    hidden = f(1, P.Op.IDENTIFY)
    oversize = bytes([P.SYNC, 9, P.Op.WRITE_WEIGHTS, MAX_PAYLOAD + 1, 0])
    chunks = [
        b"\x00\x13\x37",                                   # noise: never reported
        good,
        f(0x80, P.Op.STATUS),                             # an empty payload
        bytes(bad_crc),
        oversize + hidden + bytes(MAX_PAYLOAD + 3 - len(hidden)),   # a frame inside a skipped payload
        f(10, P.Op.WRITE_WEIGHTS, bytes(2 + 2 * WORD_BYTES)),        # whole words after the address
        f(11, P.Op.WRITE_WEIGHTS, bytes(2 + 2 * WORD_BYTES + 1)),    # not
        bytes([P.SYNC, 12, P.Op.SET_SLOT]), ("idle", TIMEOUT + 5),   # stops part-way
        oversize, ("idle", TIMEOUT + 5),                             # silence during the skip
        f(13, P.Op.SET_SLOT, bytes(range(7))),
    ]
    events = receive(simulate, chunks, stall_prob, seed=4)
    want = [
        event(7, P.Op.MATVEC, bytes([P.SYNC]) + bytes(range(1, 12))),
        event(0x80, P.Op.STATUS),
        event(8, P.Op.STATUS, error=P.Err.BAD_CRC, length=2),
        # refused from its header, then its declared payload and CRC are skipped unread
        event(9, P.Op.WRITE_WEIGHTS, error=P.Err.BAD_LENGTH, length=MAX_PAYLOAD + 1),
        event(10, P.Op.WRITE_WEIGHTS, bytes(2 + 2 * WORD_BYTES)),
        event(11, P.Op.WRITE_WEIGHTS, bytes(2 + 2 * WORD_BYTES + 1)),
        # the fields received before the silence; 0 for the rest
        event(12, P.Op.SET_SLOT, error=P.Err.TIMEOUT, length=0),
        event(9, P.Op.WRITE_WEIGHTS, error=P.Err.BAD_LENGTH, length=MAX_PAYLOAD + 1),
        event(9, P.Op.WRITE_WEIGHTS, error=P.Err.TIMEOUT, length=MAX_PAYLOAD + 1),
        event(13, P.Op.SET_SLOT, bytes(range(7))),
    ]
    assert [{k: e[k] for k in ("seq", "op", "length", "error", "payload")} for e in events] == want
    # a good frame's event carries its first bytes, and says whether the words after 2 are whole
    good_events = [e for e in events if not e["error"]]
    for e in good_events:
        n = min(len(e["payload"]), HEAD_BYTES)
        assert e["head"][:n] == e["payload"][:n]
    assert [e["whole_words"] for e in good_events if e["op"] == P.Op.WRITE_WEIGHTS] == [1, 0]


def test_receiver_timing(simulate):
    # bytes offered every cycle: one taken per cycle, the event valid the cycle after the last CRC
    # byte, and taking it lets the next SYNC in on the cycle after
    dut = FrameReceiver(max_payload=MAX_PAYLOAD, head_bytes=HEAD_BYTES, word_bytes=WORD_BYTES,
                        timeout_cycles=TIMEOUT)
    frame = f(5, P.Op.MATVEC, b"xyz")
    trace = {}

    async def tb(ctx):
        ctx.set(dut.rx.valid, 1)
        taken = []
        for cycle in range(len(frame)):
            ctx.set(dut.rx.payload, frame[cycle])
            assert ctx.get(dut.rx.ready) and not ctx.get(dut.frame.valid)
            # idle (hunting) until SYNC is taken; in_frame from then on
            assert ctx.get(dut.idle) == (cycle == 0) and ctx.get(dut.in_frame) == (cycle > 0)
            taken.append(cycle)
            await ctx.tick()
        ctx.set(dut.rx.payload, P.SYNC)
        trace["valid_now"] = ctx.get(dut.frame.valid)
        trace["ready_while_valid"] = ctx.get(dut.rx.ready)
        ctx.set(dut.frame.ready, 1)
        await ctx.tick()
        ctx.set(dut.frame.ready, 0)
        trace["hunting_next"] = (ctx.get(dut.idle), ctx.get(dut.rx.ready), ctx.get(dut.frame.valid))

    simulate(dut, tb)
    assert trace == {"valid_now": 1, "ready_while_valid": 0, "hunting_next": (1, 1, 0)}


def test_receiver_parameters_validated():
    with pytest.raises(ValueError, match="timeout_cycles = 1 must be an integer >= 2"):
        FrameReceiver(max_payload=8, head_bytes=1, word_bytes=1, timeout_cycles=1)
    with pytest.raises(ValueError, match="max_payload = 70000 does not fit the 16-bit length field"):
        FrameReceiver(max_payload=70000, head_bytes=1, word_bytes=1, timeout_cycles=10)
