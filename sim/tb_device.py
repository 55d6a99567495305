"""cocotb: serve the simulated device (:class:`LinkDevice`) on a pseudo-terminal.

Run by ``python -m tritium.sim.runner --serve-device NAME``. Bytes the host writes to the pty
go to the device's ``rx`` stream; bytes on ``tx`` go back to the host. Simulated time only
advances while there is something to do, so a slow host never trips the device's inter-byte
timeout; if the host goes quiet in the middle of a frame (or while the device skips the payload
of a frame refused for its length), the simulation runs the timeout out, as a board would when
its host disconnects. Hosts resynchronise by staying quiet for longer than :data:`QUIET_S`
(``SimTransport.quiet_s``).
"""

import collections
import os
import pathlib
import select
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly


#: host silence (seconds of real time) after which a frame part-way is treated as abandoned
QUIET_S = 0.5


@cocotb.test()
async def serve(dut):
    run_dir = pathlib.Path(os.environ["TRITIUM_RUN_DIR"])
    timeout_cycles = int(os.environ["TRITIUM_TIMEOUT_CYCLES"])
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.rx__valid.value = 0
    dut.tx__ready.value = 1
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    (run_dir / "pty.path").write_text(os.ttyname(slave))
    dut._log.info(f"device on {os.ttyname(slave)}")
    pending = collections.deque()
    out = bytearray()
    # the device waits on the host: idle between frames, or part-way through one (in_frame) with
    # no byte offered in the last cycle; only then does the host's pace matter
    waiting = True
    while True:
        in_frame = bool(dut.in_frame.value)
        if waiting and not pending and out:
            os.write(master, bytes(out))
            out.clear()
        timing_out = False
        if not pending:
            ready, _, _ = select.select([master], [], [], QUIET_S if waiting else 0)
            if ready:
                try:
                    pending.extend(os.read(master, 4096))
                except BlockingIOError:
                    pass
                except OSError:
                    return  # the other side is gone
            elif waiting and not in_frame:
                continue    # idle device, quiet host
            elif waiting:
                timing_out = True  # quiet host part-way through a frame: run the timeout out
        # run a burst of cycles (or, timing out, until the device is idle again)
        for _ in range(timeout_cycles + 256 if timing_out else 256):
            await FallingEdge(dut.clk)
            offered = bool(pending)
            dut.rx__valid.value = 1 if offered else 0
            if offered:
                dut.rx__payload.value = pending[0]
            await ReadOnly()
            if offered and dut.rx__ready.value:
                pending.popleft()
            if dut.tx__valid.value:
                out.append(int(dut.tx__payload.value))
            busy = bool(dut.busy.value)
            waiting = not offered and (not busy or bool(dut.in_frame.value))
            if waiting and not timing_out:
                break
            if timing_out and not busy:
                break
        if len(out) >= 4096:
            os.write(master, bytes(out))
            out.clear()
