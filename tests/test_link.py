"""The hardened link: reply matching by seq, retries and resynchronisation under injected faults,
the oversize-length skip (gateware and golden, byte for byte), seq rules and IDENTIFY."""

import time

import numpy as np
import pytest

from tritium.host.accelerator import Accelerator, DeviceError, LinkError, LinkTimeout
from tritium.host.faults import FaultyTransport, fault_campaign
from tritium.host.transport import GoldenTransport, SimTransport, Transport
from tritium.hw import protocol as P
from tritium.hw.device import LinkDevice
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import golden
from tritium.sim.amaranth_tb import run_device_session
from tritium.sim.device_model import DeviceModel
from tritium.sim.golden import TritiumValueError

PARAMS = CONFIGS["odd"]
TIMEOUT = 40   # the gateware's idle timeout in these sessions (cycles)
f = P.encode_frame


def both_devices(params, events, seed=0):
    """Replies of the gateware (Amaranth simulator, random stalls) and of the golden device to
    the same events; asserts they are equal byte for byte and returns the decoded frames."""
    dev = LinkDevice(params=params, clock_hz=1_000_000, timeout_cycles=TIMEOUT)
    got = run_device_session(dev, events, seed=seed)
    model = DeviceModel(params, clock_hz=1_000_000)
    want = bytearray()
    for ev in events:
        if isinstance(ev, tuple):
            if ev[1] >= TIMEOUT:
                want += model.idle_timeout()
        else:
            want += model.feed(ev)
    assert P.FrameDecoder().feed(got) == P.FrameDecoder().feed(bytes(want))
    assert got == bytes(want)
    return P.FrameDecoder().feed(got)


def weights_frames(params, w, seq, slot=5):
    p = params
    words = golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)
    wb = -(-p.word_bits // 8)
    chunks = -(-w.shape[1] // p.trits)
    return [f(seq, P.Op.WRITE_WEIGHTS, (0).to_bytes(2, "little") + b"".join(x.to_bytes(wb, "little") for x in words)),
            f(seq + 1, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(slot, 0, w.shape[0], chunks))]


# -- IDENTIFY ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_host_params_equal_the_device_params_for_every_config(name):
    # the host rebuilds EngineParams from IDENTIFY alone: memory kind and read register included
    acc = Accelerator(GoldenTransport(CONFIGS[name]))
    assert acc.params == CONFIGS[name]
    # so its cycle accounting is the device's (pipeline depth follows read_register)
    assert acc.params.pipeline_depth == CONFIGS[name].pipeline_depth


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gateware_identify_reports_every_engine_parameter(name):
    # the gateware's IDENTIFY reply, parsed, gives back the very EngineParams it was built from
    frames = both_devices(CONFIGS[name], [f(9, P.Op.IDENTIFY)])
    info = P.parse_identify(frames[0][2])
    assert EngineParams(**{k: info[k] for k in ("lanes", "trits", "packing", "max_k", "weight_depth",
                                                "memory", "read_register")}) == CONFIGS[name]


def test_identify_rejects_unknown_codes_and_old_versions():
    good = bytearray(P.identify_payload(PARAMS, 12_000_000))
    # a version-1 reply (20 bytes) and a version-2 reply (24 bytes) are named as such
    with pytest.raises(P.ProtocolError, match=r"IDENTIFY reply of 20 bytes, expected 36 \(protocol version 1\?\)"):
        P.parse_identify(bytes(good[:20]))
    with pytest.raises(P.ProtocolError, match=r"IDENTIFY reply of 24 bytes, expected 36 \(protocol version 2\?\)"):
        P.parse_identify(bytes(good[:24]))
    # a reply of this length but another version is refused by its version byte
    old = bytearray(good)
    old[4] = 2
    with pytest.raises(P.ProtocolError, match="device speaks protocol version 2, this host speaks 3"):
        P.parse_identify(bytes(old))
    # memory code 7 is not a memory kind (the memory byte is at offset 20, after clock_hz)
    assert good[20] == P.MEMORY_CODES.index(PARAMS.memory)
    bad = bytearray(good)
    bad[20] = 7
    with pytest.raises(P.ProtocolError, match="memory code 7"):
        P.parse_identify(bytes(bad))
    # packing code 9 is not a packing
    bad = bytearray(good)
    bad[7] = 9
    with pytest.raises(P.ProtocolError, match="packing code 9"):
        P.parse_identify(bytes(bad))


# -- decoder and reply queue --------------------------------------------------------------------------

def test_decoder_keeps_good_frames_around_a_corrupt_one():
    a, c = f(1, P.Op.STATUS | P.REPLY, b"abc"), f(3, P.Op.RESET | P.REPLY)
    b = bytearray(f(2, P.Op.MATVEC | P.REPLY, b"xyz"))
    b[6] ^= 0x10
    # one read with good, corrupt, good: both good frames come out, the corrupt one is reported
    frames, errors = P.FrameDecoder().feed_all(a + bytes(b) + c)
    assert frames == [(1, P.Op.STATUS | P.REPLY, b"abc"), (3, P.Op.RESET | P.REPLY, b"")]
    assert len(errors) == 1 and "CRC" in str(errors[0])


class Tamper(Transport):
    """The golden device, with the replies rewritten by ``edit(reply_bytes, index) -> bytes``."""

    def __init__(self, params, edit):
        self.inner, self.edit, self.n, self._rx = GoldenTransport(params), edit, 0, bytearray()
        self.requests = []

    def write(self, data):
        self.requests.append(bytes(data))
        before = len(self.inner._rx)
        self.inner.write(data)
        reply = bytes(self.inner._rx[before:])
        del self.inner._rx[before:]
        self._rx += self.edit(reply, self.n)
        self.n += 1

    def read(self, n, timeout):
        if not self._rx:
            self._rx += self.inner.read(n, timeout)
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out


def test_late_and_duplicated_replies_are_discarded_by_seq():
    # every reply arrives twice, and each one is preceded by a copy of the previous reply (late):
    # the host takes exactly the frame with its request's seq from the same read
    previous = [b""]

    def edit(reply, i):
        out = previous[0] + reply + reply
        previous[0] = reply
        return out
    link = Tamper(PARAMS, edit)
    acc = Accelerator(link, timeout=1)
    w = np.random.default_rng(0).integers(-1, 2, (5, 11))
    acc.load(0, w)
    for i in range(300):   # past a seq wrap (mod 256)
        x = np.random.default_rng(i).integers(-128, 128, 11)
        assert np.array_equal(acc.matvec(0, x), golden.matvec(w, x))
    # nothing was retried; the late and duplicate frames were counted and dropped
    assert acc.stats["retries"] == 0
    assert acc.stats["stale_replies"] >= 2 * 300


def test_a_corrupt_frame_in_the_same_read_does_not_lose_the_reply():
    # before each real reply: a corrupt frame carrying the expected seq; the good one still counts
    def edit(reply, i):
        bad = bytearray(reply)
        if len(bad) > 6:
            bad[5] ^= 1
        return bytes(bad) + reply
    acc = Accelerator(Tamper(PARAMS, edit), timeout=1)
    acc.load(1, np.eye(4, dtype=int))
    # the product is right, with no retry, and the corrupt frames were seen
    assert acc.matvec(1, np.array([1, -2, 3, -4])).tolist() == [1, -2, 3, -4]
    assert acc.stats["retries"] == 0 and acc.stats["corrupt_frames"] > 0


# -- retries ---------------------------------------------------------------------------------------

def drop_reply(at):
    # lose the whole reply to request number ``at``
    return lambda reply, i: b"" if i == at else reply


def test_an_idempotent_request_whose_reply_is_lost_is_retried():
    link = Tamper(PARAMS, drop_reply(6))   # 0 IDENTIFY, 1 RESET, 2 WRITE, 3 SET_SLOT, 4 and 5 MATVEC
    acc = Accelerator(link, timeout=0.2)
    w = np.ones((2, 3), int)
    acc.load(0, w)
    results = [acc.matvec(0, np.array([1, 2, 3])).tolist() for _ in range(3)]
    # the third product's reply was lost: the host resynchronised and asked again, same answer
    assert results == [[6, 6]] * 3
    assert acc.stats == {**acc.stats, "retries": 1, "resyncs": 1}
    # the retry went out with a fresh seq after an IDENTIFY
    ops = [r[2] for r in link.requests]
    assert ops[-3:] == [P.Op.MATVEC, P.Op.IDENTIFY, P.Op.MATVEC]


def test_a_non_idempotent_request_whose_reply_is_lost_ends_in_a_clear_error():
    link = Tamper(PARAMS, drop_reply(4))
    acc = Accelerator(link, timeout=0.2)
    acc.load(0, np.ones((2, 3), int))
    before = link.inner.device.frames_ok
    # sent as if it were not idempotent: the lost reply is an error, not a second execution
    with pytest.raises(LinkError, match=r"^MATVEC \(seq \d+\): no reply within 0.2 s; not retried because "
                                        r"MATVEC is not idempotent, so whether the device executed it is unknown$"):
        acc._request(P.Op.MATVEC, bytes([0, 1, 2, 3]), idempotent=False)
    # the device executed it exactly once
    assert link.inner.device.frames_ok == before + 1
    assert acc.stats["retries"] == 0


def test_a_request_the_device_refused_as_damaged_is_sent_again_even_if_not_idempotent():
    # the device answers BAD_CRC to a damaged frame: it was not executed, so repeating it is safe
    link = Tamper(PARAMS, lambda reply, i: reply)
    acc = Accelerator(link, timeout=0.2)
    real_write = link.inner.write
    damaged = [True]

    def write_once_damaged(data):
        if damaged[0] and data[2] == P.Op.STATUS:
            damaged[0] = False
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        real_write(data)
    link.inner.write = write_once_damaged
    assert acc._request(P.Op.STATUS, idempotent=False) is not None
    assert acc.stats["retries"] == 1


def test_device_errors_are_not_retried():
    link = Tamper(PARAMS, lambda reply, i: reply)
    acc = Accelerator(link, timeout=0.2)
    n = len(link.requests)
    # EMPTY_SLOT is the device's answer to a good frame: raised once, nothing sent again
    with pytest.raises(DeviceError, match="device rejected MATVEC: EMPTY_SLOT"):
        acc._request(P.Op.MATVEC, bytes([7, 0, 0, 0]))
    assert len(link.requests) == n + 1


def test_a_silent_device_gives_up_after_the_retries():
    from test_host import Silent   # a transport that never answers
    t0 = time.monotonic()
    # one attempt and two retries, each waiting 0.1 s
    with pytest.raises(LinkTimeout, match=r"no reply from the device within 0.1 s \(3 attempts\)"):
        Accelerator(Silent(), timeout=0.1, retries=2)
    assert time.monotonic() - t0 < 2


def test_bad_retry_and_fault_arguments_are_refused():
    with pytest.raises(TritiumValueError, match=r"retries = -1 must be a non-negative integer"):
        Accelerator(GoldenTransport(PARAMS), retries=-1)
    with pytest.raises(TritiumValueError, match=r"fault rate = 1.5 must be a number in \[0, 1\]"):
        FaultyTransport(GoldenTransport(PARAMS), 1.5)
    with pytest.raises(TritiumValueError, match=r"fault kinds \['melt'\] must be a non-empty subset"):
        FaultyTransport(GoldenTransport(PARAMS), 0.1, kinds=["melt"])


def test_faulty_transport_injects_each_kind():
    # all bytes damaged, one kind at a time: flip changes a byte, drop loses it, dup doubles it,
    # delay moves it later
    data = bytes(range(1, 41))
    for kind, check in [("flip", lambda out: len(out) == 40 and all(a != b for a, b in zip(out, data))),
                        ("drop", lambda out: out == b""),
                        ("dup", lambda out: out == bytes(b for x in data for b in (x, x))),
                        ("delay", lambda out: sorted(out) == sorted(data) and out != data)]:
        sink = Tamper(PARAMS, lambda r, i: r)
        got = []
        sink.write = got.append
        link = FaultyTransport(sink, 1.0, kinds=[kind], directions=["to_device"], seed=3)
        link.write(data)
        link.write(b"")   # delayed bytes still held come out with the next write
        assert check(b"".join(got)), kind
        assert link.counts[kind] == 40


# -- the link under faults ---------------------------------------------------------------------------

def test_products_under_faults_are_correct_or_clear_errors():
    # 1% of bytes damaged both ways (ten times the figure in docs/protocol.md): never a wrong number
    fig = fault_campaign(GoldenTransport(PARAMS), products=400, rate=0.01, seed=7)
    assert fig["wrong"] == 0
    assert fig["correct"] + fig["clear_errors"] == 400
    # faults really happened and were recovered from
    assert fig["retries"] >= 20 and sum(fig[f"injected_{k}"] for k in ("flip", "drop", "dup", "delay")) >= 100
    assert fig["correct"] >= 360


@pytest.mark.slow
def test_ten_thousand_products_at_a_tenth_of_a_percent():
    # the figure quoted in docs/protocol.md
    fig = fault_campaign(GoldenTransport(PARAMS), products=10_000, rate=0.001, seed=0)
    assert fig["wrong"] == 0 and fig["correct"] + fig["clear_errors"] == 10_000
    assert fig["retries"] > 100


@pytest.mark.cocotb
def test_products_under_faults_on_the_simulated_gateware():
    # the same fault injection between the host and the gateware under Verilator
    fig = fault_campaign(SimTransport(PARAMS, name="host-tests"), products=40, rate=0.005, seed=11,
                         timeout=3.0, matrices=2)
    assert fig["wrong"] == 0 and fig["correct"] + fig["clear_errors"] == 40
    assert fig["correct"] >= 36
    assert sum(fig[f"injected_{k}"] for k in ("flip", "drop", "dup", "delay")) >= 3


# -- the device: oversize-length skip, seq rules, code 3 ------------------------------------------------

def test_a_frame_hidden_in_an_oversize_payload_is_not_executed():
    p = PARAMS
    maxp = P.max_payload(p)
    rng = np.random.default_rng(5)
    w = rng.integers(-1, 2, (4, 6))
    setup = [f(0, P.Op.IDENTIFY)] + weights_frames(p, w, 1)
    # an oversize request whose payload holds a RESET and a MATVEC, valid frames in themselves
    hidden = f(3, P.Op.RESET) + f(3, P.Op.MATVEC, bytes([5]) + bytes(6))
    payload = hidden + bytes(maxp + 1 - len(hidden))
    oversize = bytes([P.SYNC, 3, P.Op.MATVEC]) + len(payload).to_bytes(2, "little") + payload + b"\x00\x00"
    x = rng.integers(-128, 128, 6).astype(np.int8)
    frames = both_devices(p, setup + [oversize, f(3, P.Op.MATVEC, bytes([5]) + x.tobytes())], seed=1)
    # one BAD_LENGTH for the oversize frame, seq not used up; nothing hidden ran (no RESET reply,
    # the slot survives); the next real product is right
    assert [op for _, op, _ in frames[3:]] == [P.ERROR, P.Op.MATVEC | P.REPLY]
    assert P.ERROR_LAYOUT.unpack(frames[3][2]) == (P.Err.BAD_LENGTH, P.Op.MATVEC, 3)
    y = np.frombuffer(frames[4][2], "<i2")
    assert np.array_equal(y, golden.matvec(w, x))


def test_the_skip_ends_at_the_idle_timeout():
    p = PARAMS
    hidden = f(1, P.Op.STATUS)
    # length 0xFFFF, but the sender stops after a hidden frame: silence ends the skip with TIMEOUT
    ev = [f(0, P.Op.IDENTIFY), bytes([P.SYNC, 1, P.Op.MATVEC, 0xFF, 0xFF]) + hidden, ("idle", 3 * TIMEOUT),
          f(1, P.Op.STATUS)]
    frames = both_devices(p, ev, seed=2)
    codes = [(op, body[0] if op == P.ERROR else None) for _, op, body in frames]
    assert codes == [(P.Op.IDENTIFY | P.REPLY, None), (P.ERROR, P.Err.BAD_LENGTH), (P.ERROR, P.Err.TIMEOUT),
                     (P.Op.STATUS | P.REPLY, None)]
    # the STATUS that did run counts one good frame (IDENTIFY) and two errors
    assert P.STATUS_LAYOUT.unpack(frames[3][2]) == (1, 2, P.Err.TIMEOUT)


def test_which_errors_use_up_a_seq():
    p = PARAMS
    bad_crc = bytearray(f(1, P.Op.STATUS))
    bad_crc[-1] ^= 1
    ev = [f(0, P.Op.IDENTIFY),
          bytes(bad_crc),                                 # BAD_CRC: seq 1 still expected
          f(1, 0x42),                                     # UNKNOWN_OP: uses seq 1
          f(1, P.Op.STATUS),                              # BAD_SEQ: 2 expected, still expected
          f(2, P.Op.STATUS, b"x"),                        # BAD_LENGTH for the op: uses seq 2
          bytes([P.SYNC, 3, P.Op.STATUS, 0xFF, 0x7F]),    # oversize: seq 3 still expected
          ("idle", 3 * TIMEOUT),                          # (its skip ends at the timeout: TIMEOUT)
          f(3, P.Op.STATUS)[:4], ("idle", 3 * TIMEOUT),   # TIMEOUT part-way: seq 3 still expected
          f(3, P.Op.MATVEC, bytes([9])),                  # EMPTY_SLOT: uses seq 3
          f(4, P.Op.STATUS)]
    frames = both_devices(p, ev, seed=3)
    errors = [P.ERROR_LAYOUT.unpack(body) for _, op, body in frames if op == P.ERROR]
    # (code, op, expected seq after the error): exactly the SEQ_CONSUMING_ERRORS moved it on
    assert [(P.Err(c), e) for c, _, e in errors] == [
        (P.Err.BAD_CRC, 1), (P.Err.UNKNOWN_OP, 2), (P.Err.BAD_SEQ, 2), (P.Err.BAD_LENGTH, 3),
        (P.Err.BAD_LENGTH, 3), (P.Err.TIMEOUT, 3), (P.Err.TIMEOUT, 3), (P.Err.EMPTY_SLOT, 4)]
    assert frames[-1][:2] == (4, P.Op.STATUS | P.REPLY)
    assert {P.Err.UNKNOWN_OP, P.Err.EMPTY_SLOT} <= P.SEQ_CONSUMING_ERRORS
    assert not {P.Err.BAD_CRC, P.Err.BAD_SEQ, P.Err.TIMEOUT} & P.SEQ_CONSUMING_ERRORS


def test_trit2_code_3_reads_as_zero_on_both_devices():
    p = PARAMS   # 3 lanes x 3 trits: a 18-bit word, lane 0 trits at bits 0..5
    word = 0b11_10_00 | (0b01_01_01 << 6) | (0b01_01_01 << 12)   # lane 0: -1, +1, code 3
    chunks = 1
    ev = [f(0, P.Op.IDENTIFY), f(1, P.Op.WRITE_WEIGHTS, (0).to_bytes(2, "little") + word.to_bytes(3, "little")),
          f(2, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, 1, chunks)),
          f(3, P.Op.MATVEC, bytes([0]) + np.array([10, 20, 100], np.int8).tobytes())]
    frames = both_devices(p, ev, seed=4)
    # -10 + 20 + 0 * 100: code 3 contributes nothing
    assert int.from_bytes(frames[-1][2], "little", signed=True) == 10


def test_rows_whose_reply_would_not_fit_a_frame_are_out_of_range():
    # 32 lanes x 2048 words allow 65536 rows, but 2-byte results cap a reply at 32767 rows
    p = EngineParams(lanes=32, trits=1, max_k=16, weight_depth=2048)
    assert P.max_link_rows(p) == 32767 < p.max_rows
    ev = [f(0, P.Op.IDENTIFY), f(1, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, 32768, 1)),
          f(2, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(0, 0, 32767, 1))]
    frames = both_devices(p, ev, seed=5)
    assert frames[1][1] == P.ERROR and frames[1][2][0] == P.Err.OUT_OF_RANGE
    assert frames[2][1] == P.Op.SET_SLOT | P.REPLY
    # the host refuses the same shape before sending anything
    acc = Accelerator(GoldenTransport(p))
    with pytest.raises(TritiumValueError, match="M = 32768 rows exceeds the link's max_rows = 32767"):
        acc.bind(0, 0, 32768, 1)
