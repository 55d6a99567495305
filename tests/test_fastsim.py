"""The fast device simulation (Verilator's C++ harness, ``sim/harness/``): byte-exact with the golden
device, cycle for cycle the Amaranth simulation, the same replies as the cocotb harness, generic over
device tops with byte-stream ports, and waveforms on demand."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from tritium.host.accelerator import Accelerator
from tritium.host.transport import SimTransport, TransportError
from tritium.hw import protocol as P
from tritium.hw.device import LinkDevice
from tritium.hw.engine import TernaryMatVec
from tritium.hw.params import CONFIGS
from tritium.sim import golden
from tritium.sim.device_model import DeviceModel
from tritium.sim.golden import TritiumValueError
from tritium.sim.runner import (DEVICE_TIMEOUT_CYCLES, DeviceTopError, build_fast_device_sim, device_ports,
                                run_fast_device_batch)

PARAMS = CONFIGS["odd"]
NAME = "host-tests"   # the simulator builds test_host.py uses (same device): built once for both
f = P.encode_frame


def session(params, rng, products=6):
    """Request bytes of one host session: IDENTIFY, a matrix written and bound, products, then
    malformed frames (bad CRC, unknown op, oversize length, wrong seq) and a product after them."""
    m, k = 2 * params.lanes + 1, min(params.max_k, 5 * params.trits + 2)
    w = rng.integers(-1, 2, (m, k))
    words = golden.weight_words(w, lanes=params.lanes, trits=params.trits, packing=params.packing)
    wb = -(-params.word_bits // 8)
    chunks = -(-k // params.trits)
    frames = [f(0, P.Op.IDENTIFY)]
    seq = 1
    for i in range(0, len(words), 32):
        frames.append(f(seq, P.Op.WRITE_WEIGHTS,
                        i.to_bytes(2, "little") + b"".join(x.to_bytes(wb, "little") for x in words[i:i + 32])))
        seq += 1
    frames.append(f(seq, P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(3, 0, m, chunks)))
    seq += 1
    for _ in range(products):
        x = np.zeros(chunks * params.trits, np.int8)
        x[:k] = rng.integers(-128, 128, k)
        frames.append(f(seq, P.Op.MATVEC, bytes([3]) + x.tobytes()))
        seq += 1
    bad_crc = bytearray(f(seq, P.Op.STATUS))
    bad_crc[-1] ^= 0x40
    frames += [b"\x00\x13noise", bytes(bad_crc), f(seq, 0x6E, b"??"), f(seq + 1, P.Op.STATUS),
               P.SYNC.to_bytes(1, "little") + bytes([seq, P.Op.MATVEC]) + (0xFFF0).to_bytes(2, "little") + b"\x00" * 9,
               f(seq, P.Op.STATUS)]
    return frames


@pytest.fixture(scope="module")
def exe():
    return build_fast_device_sim(PARAMS, name=NAME)


@pytest.mark.cocotb
def test_fast_sim_replies_equal_the_golden_device(exe):
    rng = np.random.default_rng(7)
    data = b"".join(session(PARAMS, rng, products=30))
    # the session ends inside the skip of the oversize frame: the device then times it out
    model = DeviceModel(PARAMS)
    want = model.feed(data) + model.idle_timeout()
    r = run_fast_device_batch(exe, data)
    # every request byte was taken and every reply byte equals the golden device's
    assert r["rx_bytes"] == len(data)
    assert r["replies"] == want
    # the replies include products and the error frames of the malformed requests
    frames = P.FrameDecoder().feed(r["replies"])
    assert [op for _, op, _ in frames].count(P.Op.MATVEC | P.REPLY) == 30
    codes = {body[0] for _, op, body in frames if op == P.ERROR}
    assert {P.Err.BAD_CRC, P.Err.BAD_LENGTH, P.Err.TIMEOUT} <= codes


def amaranth_stamps(device, data, limit=200_000):
    """The reply bytes of ``device`` under the Amaranth simulator, with the cycle of each, driven
    by the harness's rules: ``data`` offered back to back from reset, ``tx`` always ready, until
    everything is taken and the device is no longer busy."""
    out, stamps, ran = bytearray(), [], [0]

    async def tb(ctx):
        ctx.set(device.tx.ready, 1)
        i = 0
        for cycle in range(limit):
            offered = i < len(data)
            ctx.set(device.rx.valid, offered)
            if offered:
                ctx.set(device.rx.payload, data[i])
            took = offered and ctx.get(device.rx.ready)
            if ctx.get(device.tx.valid):
                out.append(ctx.get(device.tx.payload))
                stamps.append(cycle)
            busy = ctx.get(device.busy)
            await ctx.tick()
            i += bool(took)
            if not offered and not busy:
                ran[0] = cycle + 1
                return

    sim = Simulator(device)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return bytes(out), stamps, ran[0]


@pytest.mark.cocotb
def test_fast_sim_is_cycle_for_cycle_the_amaranth_simulation(exe):
    rng = np.random.default_rng(3)
    data = b"".join(session(PARAMS, rng, products=2))
    want, want_stamps, want_cycles = amaranth_stamps(LinkDevice(params=PARAMS, timeout_cycles=DEVICE_TIMEOUT_CYCLES), data)
    r = run_fast_device_batch(exe, data, stamps=True)
    # the same reply bytes, each sent in the same clock cycle
    assert r["replies"] == want
    assert r["stamps"] == want_stamps
    # and both ended in the same cycle, once the device was idle again
    assert r["cycles"] == want_cycles


def read_replies(t, n, seconds=60):
    got = bytearray()
    deadline = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < deadline:
        got += t.read(1 << 16, 0.05)
    return bytes(got)


@pytest.mark.cocotb
def test_cocotb_and_verilator_engines_send_the_same_bytes():
    # the same requests through both harnesses behind the pty, in pieces as a host writes them,
    # with one frame abandoned part-way (the device times it out) and a request after it
    rng = np.random.default_rng(11)
    frames = session(PARAMS, rng, products=8)
    pieces = [b"".join(frames[i:i + 3]) for i in range(0, len(frames), 3)]
    model = DeviceModel(PARAMS)
    want = [model.feed(p) for p in pieces] + [model.feed(f(0, P.Op.IDENTIFY)[:5]) + model.idle_timeout(),
                                              model.feed(f(0, P.Op.IDENTIFY))]
    got = {}
    for engine in ("cocotb", "verilator"):
        with SimTransport(PARAMS, name=NAME, engine=engine) as t:
            replies = []
            for p, w in zip(pieces, want):
                t.write(p)
                replies.append(read_replies(t, len(w)))
            t.write(f(0, P.Op.IDENTIFY)[:5])   # SYNC and half a header, then silence
            replies.append(read_replies(t, len(want[-2]), seconds=30))
            t.write(f(0, P.Op.IDENTIFY))
            replies.append(read_replies(t, len(want[-1])))
        got[engine] = replies
    # both engines answered every piece with the same bytes, and those are the golden device's
    assert got["verilator"] == got["cocotb"]
    assert got["verilator"] == want
    # the abandoned frame was answered with TIMEOUT by both
    assert P.FrameDecoder().feed(got["cocotb"][-2])[0][2][0] == P.Err.TIMEOUT


@pytest.mark.cocotb
def test_fast_transport_reports_its_cycles():
    with SimTransport(PARAMS, name=NAME) as t:
        acc = Accelerator(t, timeout=20)
        acc.load(0, np.ones((5, 7), int))
        # a product through the pty: exact
        assert acc.matvec(0, np.arange(7)).tolist() == [21] * 5
    # after close the harness's counts are there: cycles simulated, bytes each way
    assert t.engine == "verilator"
    assert t.stats["cycles"] > 0 and t.stats["rx_bytes"] == acc.link_bytes - t.stats["tx_bytes"]


class Echo(wiring.Component):
    """A device top with only the byte streams (no busy, no in_frame): replies with each byte + 1,
    one cycle later."""

    def __init__(self):
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.tx.ready | ~self.tx.valid):
            m.d.sync += [self.tx.valid.eq(self.rx.valid), self.tx.payload.eq(self.rx.payload + 1)]
            m.d.comb += self.rx.ready.eq(1)
        return m


class Wide(wiring.Component):
    def __init__(self):
        super().__init__({"rx": In(stream.Signature(16)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        return Module()


@pytest.mark.cocotb
def test_any_top_with_byte_streams_can_be_wrapped():
    # a different top, without the LinkDevice's status outputs: the harness still carries its bytes
    top = Echo()
    assert device_ports(top) == {"busy": False, "in_frame": False, "activity": False}
    exe = build_fast_device_sim(top, name="echo")
    r = run_fast_device_batch(exe, b"Tritium\xff")
    assert r["replies"] == b"Usjujvn\x00"


def test_tops_without_byte_streams_are_refused():
    # the engine has no rx/tx byte streams: a one-line error naming what is missing
    engine, wide = TernaryMatVec(params=PARAMS), Wide()
    engine._MustUse__silence = wide._MustUse__silence = True   # checked, never elaborated
    with pytest.raises(DeviceTopError, match=r"no byte stream 'rx: In\(stream.Signature\(8\)\)'"):
        device_ports(engine)
    # a 16-bit rx stream is not a byte stream
    with pytest.raises(DeviceTopError, match="the device top's 'rx' is"):
        device_ports(wide)
    with pytest.raises(DeviceTopError, match="must be an Amaranth wiring.Component"):
        device_ports(object())


def test_bad_engine_and_wave_arguments_are_refused():
    # each is refused before anything is built or started
    with pytest.raises(TritiumValueError, match="engine 'icarus' is not one of verilator, cocotb"):
        SimTransport(PARAMS, engine="icarus")
    with pytest.raises(TritiumValueError, match="from the verilator engine"):
        SimTransport(PARAMS, engine="cocotb", waves=True)
    with pytest.raises(TritiumValueError, match="waves_cycles must be a non-negative integer"):
        SimTransport(PARAMS, waves=True, waves_cycles=-1)


def test_a_missing_compiler_is_named(monkeypatch):
    # no C++ compiler: one line saying so, before Verilator runs
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(TransportError, match="needs a C\\+\\+ compiler: no-such-c\\+\\+ is not on PATH"):
        SimTransport(PARAMS, name="no-compiler")


def test_the_environment_chooses_the_engine_and_the_wave_window(monkeypatch):
    # the default engine and the waves window come from the environment (what make passes)
    monkeypatch.setenv("TRITIUM_SIM_ENGINE", "modelsim")
    with pytest.raises(TritiumValueError, match="engine 'modelsim' is not one of"):
        SimTransport(PARAMS)
    monkeypatch.delenv("TRITIUM_SIM_ENGINE")
    monkeypatch.setenv("TRITIUM_WAVES", "1")
    monkeypatch.setenv("TRITIUM_WAVES_CYCLES", "lots")
    with pytest.raises(TritiumValueError, match="^TRITIUM_WAVES_CYCLES=lots must be a non-negative integer$"):
        SimTransport(PARAMS)
    # TRITIUM_WAVES asks for waves, which cocotb does not write
    monkeypatch.delenv("TRITIUM_WAVES_CYCLES")
    with pytest.raises(TritiumValueError, match="from the verilator engine"):
        SimTransport(PARAMS, engine="cocotb")


@pytest.mark.cocotb
def test_waves_record_the_link_signals(tmp_path):
    path = tmp_path / "run.vcd"
    with SimTransport(PARAMS, name=NAME, waves=path, waves_cycles=400) as t:
        Accelerator(t, timeout=20)   # IDENTIFY: a request and its reply on the link
    data = path.read_bytes()
    # a waveform file with the device's byte-stream ports in it (VCD text, or FST's header)
    if t.waves_path.suffix == ".vcd":
        head, _, body = data.partition(b"$enddefinitions")
        assert b"rx__valid" in head and b"tx__payload" in head
        # changes were recorded, and none after the window's end (cycle 400 = 4000 ns)
        times = [int(line[1:]) for line in body.splitlines() if line.startswith(b"#")]
        assert len(times) > 10 and max(times) < 4000
    else:
        assert data[:1] == b"\x00" and len(data) > 100


@pytest.mark.cocotb
def test_the_harness_ends_when_its_host_dies(tmp_path):
    # a host killed without closing the transport: its simulator does not outlive it
    code = ("import sys, time; from tritium.host.transport import SimTransport; from tritium.hw.params import "
            f"CONFIGS; t = SimTransport(CONFIGS['odd'], name={NAME!r}); print(t._proc.pid, flush=True); "
            "time.sleep(60)")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    harness = int(host.stdout.readline())
    host.kill()
    host.wait()
    host.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{harness}/stat") as st:
                if st.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break   # exited, not yet reaped by its new parent
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(harness, signal.SIGKILL)
        pytest.fail("the harness outlived its host by 5 s")


@pytest.mark.cocotb
def test_closing_the_transport_ends_the_harness():
    t = SimTransport(PARAMS, name=NAME)
    pid = t._proc.pid
    # the harness is the transport's one child process, running until the transport is closed
    assert t._proc.poll() is None
    t.close()
    assert t._proc.poll() is not None
    # it ended on SIGTERM by itself (exit status 0, its counts written), not killed
    assert t._proc.returncode == 0 and t.stats["mode"] == "serve"
    assert not os.path.exists(f"/proc/{pid}/stat")
