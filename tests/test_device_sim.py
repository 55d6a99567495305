"""The gateware device against the golden device model, byte for byte (Amaranth simulator)."""

import struct

import numpy as np
import pytest

from tritium.hw import protocol as P
from tritium.hw.device import LinkDevice
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import golden
from tritium.sim.amaranth_tb import run_device_session
from tritium.sim.device_model import DeviceModel

TIMEOUT = 40


def model_replies(params, events):
    model = DeviceModel(params, clock_hz=1_000_000)
    out = bytearray()
    for ev in events:
        if isinstance(ev, tuple):
            if ev[1] >= TIMEOUT:
                out += model.idle_timeout()
        else:
            out += model.feed(ev)
    return bytes(out)


def check_session(params, events, seed, stall_prob=0.3):
    dev = LinkDevice(params=params, clock_hz=1_000_000, timeout_cycles=TIMEOUT)
    got = run_device_session(dev, events, seed=seed, stall_prob=stall_prob)
    want = model_replies(params, events)
    # decode both for a readable diff, then demand byte equality
    assert P.FrameDecoder().feed(got) == P.FrameDecoder().feed(want)
    assert got == want
    return got


def session(params, rng):
    p = params
    f = P.encode_frame
    m, k = 2 * p.lanes + 1, min(p.max_k, 3 * p.trits + 2)
    w = rng.integers(-1, 2, (m, k))
    words = golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)
    wb = -(-p.word_bits // 8)
    chunks = -(-k // p.trits)
    ev = [f(0, P.Op.IDENTIFY), f(1, P.Op.STATUS)]
    ev.append(f(2, P.Op.WRITE_WEIGHTS, struct.pack("<H", 0) + b"".join(x.to_bytes(wb, "little") for x in words)))
    ev.append(f(3, P.Op.SET_SLOT, struct.pack("<BHHH", 5, 0, m, chunks)))
    x = np.zeros(chunks * p.trits, np.int8)
    for s in range(4, 7):
        x[:k] = rng.integers(-128, 128, k)
        ev.append(f(s, P.Op.MATVEC, bytes([5]) + x.tobytes()))
    x[:k] = -128
    ev.append(f(7, P.Op.MATVEC, bytes([5]) + x.tobytes()))
    ev.append(f(8, P.Op.STATUS))
    return ev


@pytest.mark.parametrize("name", ["tiny", "odd", "default", "base3"])
def test_session_matches_model(name):
    p = CONFIGS[name]
    rng = np.random.default_rng(3)
    events = session(p, rng)
    got = check_session(p, events, seed=5)
    # and the session really computed: read the matrix and vectors back out of the request frames
    # (with the golden unpacker) and compute each product with the golden model
    requests = P.FrameDecoder().feed(b"".join(events))
    (write,) = [body for _, op, body in requests if op == P.Op.WRITE_WEIGHTS]
    (set_slot,) = [body for _, op, body in requests if op == P.Op.SET_SLOT]
    _, base, rows, chunks = P.SET_SLOT_LAYOUT.unpack(set_slot)
    wb = -(-p.word_bits // 8)
    addr = int.from_bytes(write[:2], "little")
    words = [int.from_bytes(write[i:i + wb], "little") for i in range(2, len(write), wb)]
    w = golden.weights_from_words(words[base - addr:], rows, chunks * p.trits, lanes=p.lanes, trits=p.trits,
                                  packing=p.packing)
    products = {seq: golden.matvec(w, np.frombuffer(body[1:], np.int8))
                for seq, op, body in requests if op == P.Op.MATVEC}
    # every MATVEC was answered with its own seq, and each reply's values are that golden product
    replies = {seq: body for seq, op, body in P.FrameDecoder().feed(got) if op == P.Op.MATVEC | P.REPLY}
    assert sorted(replies) == sorted(products) and len(products) == 4
    ab = P.acc_bytes(p)
    for seq, body in replies.items():
        values = [int.from_bytes(body[i:i + ab], "little", signed=True) for i in range(0, len(body), ab)]
        assert values == products[seq].tolist(), f"MATVEC seq {seq}"


def test_errors_match_model_and_device_stays_usable():
    p = CONFIGS["odd"]
    f = P.encode_frame
    rng = np.random.default_rng(8)
    good = session(p, rng)
    bad_crc = bytearray(f(9, P.Op.STATUS))
    bad_crc[-1] ^= 0x55
    ev = good + [
        bytes(bad_crc),                                             # wrong CRC
        f(9, 0x42),                                                 # unknown op
        f(10, P.Op.STATUS, b"x"),                                   # wrong length for the op
        f(3, P.Op.STATUS),                                          # out of order
        f(11, P.Op.MATVEC, bytes([2]) + bytes(6)),                  # empty slot
        f(12, P.Op.MATVEC, bytes([P.SLOTS])),                       # bad slot
        f(13, P.Op.SET_SLOT, struct.pack("<BHHH", 1, 120, 9, 9)),   # past the memory
        f(14, P.Op.WRITE_WEIGHTS, struct.pack("<H", 127) + bytes(6)),  # past the memory
        f(15, P.Op.WRITE_WEIGHTS, struct.pack("<H", 0) + bytes(4)),    # not whole words
        f(16, P.Op.MATVEC, bytes([5]) + bytes(3)),                  # activation count wrong
        bytes([P.SYNC, 17, P.Op.MATVEC, 0xFF, 0xFF]),               # oversized
        b"\x00\x13\x37",                                            # noise between frames
        f(17, P.Op.STATUS)[:6], ("idle", TIMEOUT + 10),             # truncated, then silence
        f(17, P.Op.STATUS),
        f(4, P.Op.MATVEC, bytes([5]) + bytes(12)),                  # a stale seq is refused
        f(18, P.Op.MATVEC, bytes([5]) + bytes(range(12))),          # and a correct product still works
    ]
    got = check_session(p, ev, seed=9)
    frames = P.FrameDecoder().feed(got)
    assert frames[-1][1] == P.Op.MATVEC | P.REPLY
    errors = [P.Err(body[0]) for _, op, body in frames if op == P.ERROR]
    assert set(errors) == set(P.Err) - {P.Err.NOT_LOADED}   # (NOT_LOADED: devices with the LM step, test_lmcore)


def test_reset_clears_slots():
    p = CONFIGS["tiny"]
    f = P.encode_frame
    rng = np.random.default_rng(1)
    ev = session(p, rng) + [f(40, P.Op.RESET), f(41, P.Op.MATVEC, bytes([5]) + bytes(p.trits)), f(42, P.Op.STATUS)]
    got = check_session(p, ev, seed=2)
    frames = P.FrameDecoder().feed(got)
    assert frames[-2][1] == P.ERROR and frames[-2][2][0] == P.Err.EMPTY_SLOT


def test_device_params_validated():
    with pytest.raises(TypeError, match="params must be an EngineParams"):
        LinkDevice(params=None)
    with pytest.raises(ValueError, match="weight_depth = 70000 does not fit the link protocol's 16-bit fields"):
        LinkDevice(params=EngineParams(lanes=1, trits=1, weight_depth=70000))
    with pytest.raises(ValueError, match="timeout_cycles = 1"):
        LinkDevice(params=EngineParams(lanes=1, trits=1), timeout_cycles=1)
