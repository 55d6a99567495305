"""The host runtime: the same tests over the golden device, the simulated gateware and a serial pty."""

import os
import struct
import threading
import time
import tty

import numpy as np
import pytest

from tritium.host.accelerator import Accelerator, DeviceError, LinkTimeout
from tritium.host.cli import main as cli
from tritium.host.transport import GoldenTransport, SerialTransport, SimTransport, Transport
from tritium.hw import protocol as P
from tritium.hw.params import CONFIGS
from tritium.sim import golden
from tritium.sim.device_model import DeviceModel
from tritium.sim.golden import TritiumValueError

PARAMS = CONFIGS["odd"]


@pytest.fixture(scope="module", params=["golden", pytest.param("sim", marks=pytest.mark.cocotb)])
def transport(request):
    t = GoldenTransport(PARAMS) if request.param == "golden" else SimTransport(PARAMS, name="host-tests")
    yield t
    t.close()


@pytest.fixture
def acc(transport):
    return Accelerator(transport, timeout=20)


def test_identify_reports_the_engine(acc):
    assert acc.params == PARAMS
    assert acc.info["slots"] == P.SLOTS and acc.info["acc_bytes"] == 2
    assert acc.capacity()["free_words"] == PARAMS.weight_depth


def test_products_are_exact(acc):
    rng = np.random.default_rng(4)
    mats = {s: rng.integers(-1, 2, (int(rng.integers(1, 12)), int(rng.integers(1, 40)))) for s in range(3)}
    for s, w in mats.items():
        acc.load(s, w)
    for _ in range(20):
        s = int(rng.integers(0, 3))
        x = rng.integers(-128, 128, mats[s].shape[1])
        assert np.array_equal(acc.matvec(s, x), golden.matvec(mats[s], x))
    # worst case for the accumulator: K = max_k, all -128 against all -1
    acc.reset()
    acc.load(0, -np.ones((2, PARAMS.max_k), int))
    assert acc.matvec(0, np.full(PARAMS.max_k, -128)).tolist() == [128 * PARAMS.max_k] * 2


def test_host_side_errors_change_nothing(acc):
    acc.load(1, np.ones((3, 5), int))
    before = acc.status()
    with pytest.raises(TritiumValueError, match="slot 4 is empty"):
        acc.matvec(4, np.zeros(5, int))
    with pytest.raises(TritiumValueError, match=r"activations\[0\] = 300 is out of int8 range"):
        acc.matvec(1, np.array([300, 0, 0, 0, 0]))
    with pytest.raises(TritiumValueError, match="do not match slot 1's 3x5 matrix"):
        acc.matvec(1, np.zeros(4, int))
    with pytest.raises(TritiumValueError, match="K = 201 exceeds the engine's max_k = 200"):
        acc.load(2, np.zeros((1, 201), int))
    with pytest.raises(TritiumValueError, match=r"weights\[0, 0\] = 2 is not ternary"):
        acc.load(2, np.full((1, 3), 2))
    with pytest.raises(TritiumValueError, match=r"would overwrite slot 1"):
        acc.load(2, np.ones((3, 5), int), base=acc.slots[1][0])
    # nothing reached the device, and what was loaded still works
    assert acc.status() == {**before, "frames_ok": before["frames_ok"] + 1}
    assert acc.matvec(1, np.arange(5)).tolist() == [10, 10, 10]


def test_device_errors_name_command_and_error(acc):
    with pytest.raises(DeviceError, match="device rejected MATVEC: EMPTY_SLOT"):
        acc._request(P.Op.MATVEC, bytes([6]))
    with pytest.raises(DeviceError, match="device rejected SET_SLOT: OUT_OF_RANGE"):
        acc._request(P.Op.SET_SLOT, struct.pack("<BHHH", 0, 0, 1, 999))
    with pytest.raises(DeviceError, match=r"device rejected op 0x42: UNKNOWN_OP"):
        acc._request(0x42)
    assert acc.status()["last_error"] == P.Err.UNKNOWN_OP
    acc.load(0, np.eye(3, dtype=int))
    assert acc.matvec(0, np.array([1, 2, 3])).tolist() == [1, 2, 3]


def test_a_clean_link_needs_no_retries(acc):
    # over an undamaged link every reply matches its request at the first attempt
    before = dict(acc.stats)
    acc.load(0, np.ones((2, 4), int))
    assert [acc.matvec(0, np.arange(4)).tolist() for _ in range(5)] == [[6, 6]] * 5
    assert acc.stats == before and before["retries"] == 0


class Silent(Transport):
    def write(self, data):
        pass

    def read(self, n, timeout):
        time.sleep(min(timeout, 0.01))
        return b""


def test_a_silent_device_times_out():
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout, match="no reply from the device within 0.2 s"):
        Accelerator(Silent(), timeout=0.2)
    assert time.monotonic() - t0 < 2


def test_serial_transport_over_a_pty():
    # a device model on the far side of a pseudo-terminal, as a board is behind its FTDI UART
    master, slave = os.openpty()
    tty.setraw(slave)
    model = DeviceModel(PARAMS)
    stop = threading.Event()

    def peer():
        os.set_blocking(master, False)
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                return
            reply = model.feed(data)
            if reply:
                os.write(master, reply)

    th = threading.Thread(target=peer, daemon=True)
    th.start()
    try:
        with SerialTransport(os.ttyname(slave)) as t:
            acc = Accelerator(t, timeout=5)
            w = np.random.default_rng(2).integers(-1, 2, (7, 30))
            acc.load(2, w)
            x = np.arange(-15, 15)
            assert np.array_equal(acc.matvec(2, x), golden.matvec(w, x))
    finally:
        stop.set()
        th.join(2)
        os.close(slave)
        os.close(master)


def malformed_frames(rng, n, max_payload):
    """Corrupted, mislabelled, oversized and out-of-order frames, and line noise."""
    ops = [int(o) for o in P.Op] + [0x00, 0x7F, 0x42, 0xFF]
    out = []
    for i in range(n):
        payload = bytes(rng.integers(0, 256, int(rng.integers(0, 12))).astype(np.uint8))
        frame = bytearray(P.encode_frame(int(rng.integers(0, 256)), ops[int(rng.integers(0, len(ops)))], payload))
        kind = i % 6
        if kind == 0:                       # a flipped bit anywhere after SYNC
            j = int(rng.integers(1, len(frame)))
            frame[j] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:                     # length field says more than is there, or over max_payload
            # (an oversize length makes the device skip that many bytes: kept within the padding)
            frame[3:5] = struct.pack("<H", int(rng.integers(len(payload) + 1, 2 * max_payload)))
        elif kind == 2:                     # truncated, the rest lost
            frame = frame[:int(rng.integers(1, len(frame)))]
        elif kind == 3:                     # random noise
            frame = bytearray(rng.integers(0, 256, int(rng.integers(1, 20))).astype(np.uint8))
        # kinds 4, 5: well-formed but out of order, unknown op or wrong length for the op
        # padding returns the parser to hunting whatever the frame left it expecting
        out.append(bytes(frame) + bytes((2 if kind == 1 else 1) * max_payload + 8))
    return out


@pytest.mark.cocotb
def test_fuzz_simulated_device_with_malformed_frames():
    # 1200 malformed frames to the simulated gateware: its replies equal the golden device's byte
    # for byte, and afterwards a correct product still works
    rng = np.random.default_rng(1234)
    maxp = P.max_payload(PARAMS)
    frames = malformed_frames(rng, 1200, maxp)
    model = DeviceModel(PARAMS)
    want = bytearray()
    with SimTransport(PARAMS, name="fuzz") as t:
        got = bytearray()
        for i in range(0, len(frames), 50):
            batch = b"".join(frames[i:i + 50])
            t.write(batch)
            # then the host waits: a frame (or an oversize frame's skip) left part-way times out
            want += model.feed(batch) + model.idle_timeout()
            deadline = time.monotonic() + 30
            while len(got) < len(want) and time.monotonic() < deadline:
                got += t.read(1 << 16, 0.05)
        assert bytes(got) == bytes(want)
        errors = [body[0] for _, op, body in P.FrameDecoder().feed(bytes(want)) if op == P.ERROR]
        assert len(errors) >= 600 and {P.Err.BAD_CRC, P.Err.BAD_LENGTH, P.Err.BAD_SEQ} <= set(errors)
        # a host that disconnects mid-frame: the device times the frame out and answers TIMEOUT
        t.write(P.encode_frame(0, P.Op.STATUS)[:4])
        time.sleep(1.0)
        tail = t.read(1 << 10, 5.0)
        assert P.FrameDecoder().feed(tail)[0][2][0] == P.Err.TIMEOUT
        acc = Accelerator(t, timeout=20)
        acc.load(3, np.ones((4, 9), int))
        assert acc.matvec(3, np.arange(9)).tolist() == [36] * 4


@pytest.mark.cocotb
def test_selftest_cli_golden_and_sim_agree(capsys):
    assert cli(["selftest", "--backend", "golden", "--config", "odd", "--matrices", "4"]) == 0
    golden_out = capsys.readouterr().out
    assert cli(["selftest", "--backend", "sim", "--config", "odd", "--matrices", "4"]) == 0
    sim_out = capsys.readouterr().out
    # identical products, results and link traffic; both end with the summary line
    digest = [line.split("sha256 ")[1].split(",")[0] for line in (golden_out, sim_out)]
    assert digest[0] == digest[1]
    assert golden_out.strip().endswith("32 passed, 0 failed") and sim_out.strip().endswith("32 passed, 0 failed")


def test_cli_reports_bad_input_in_one_line(capsys, monkeypatch):
    from serial.tools import list_ports
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    # no --port and no board on USB: one line saying what was looked for
    assert cli(["selftest", "--backend", "serial"]) == 2
    assert capsys.readouterr().err.strip() == ("tritium: error: no board found on USB (looked for FTDI iCEBreaker "
                                               "0403:6010, ULX3S 0403:6015); plug it in or give --port")


def test_cli_info_identifies_the_device(capsys):
    assert cli(["info", "--backend", "golden", "--config", "odd", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["lanes"] == 3 and out["trits"] == 3 and out["capacity"]["weight_words"] == 128


@pytest.mark.cocotb
def test_closing_a_sim_transport_ends_the_simulator_process_too():
    import subprocess

    def live(group):  # members of the process group that are not zombies
        ps = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
        return [line for line in ps.splitlines() if line.split()[0] == str(group) and not line.split()[1].startswith("Z")]
    for engine, members in (("cocotb", 2), ("verilator", 1)):
        t = SimTransport(PARAMS, name="host-tests", engine=engine)
        group = t._proc.pid
        try:
            # cocotb: the server and its simulator; verilator: the harness, in their own process group
            assert len(live(group)) >= members
        finally:
            t.close()
        deadline = time.monotonic() + 10
        while live(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live(group), engine

