"""cocotb: serve the simulated device (:class:`LinkDevice`) on a pseudo-terminal.

Run by ``python -m tritium.sim.runner --serve-device NAME``. Bytes the host writes to the pty
go to the device's ``rx`` stream; bytes on ``tx`` go back to the host. Simulated time only
advances while there is something to do, so a slow host never trips the device's inter-byte
timeout; if the host goes quiet in the middle of a frame, the simulation runs the timeout out,
as a board would when its host disconnects.
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
    while True:
        busy = bool(dut.busy.value)
        if not pending and not out:
            ready, _, _ = select.select([master], [], [], QUIET_S if not busy else 0)
            if ready:
                try:
                    pending.extend(os.read(master, 4096))
                except BlockingIOError:
                    pass
                except OSError:
                    return  # the other side is gone
            elif busy:
                pass
            elif not pending:
                # quiet host: if a frame is part-way, let the device's timeout run out
                if dut.in_frame.value:
                    for _ in range(timeout_cycles + 2):
                        await FallingEdge(dut.clk)
                continue
        # run a burst of cycles
        for _ in range(256):
            await FallingEdge(dut.clk)
            dut.rx__valid.value = 1 if pending else 0
            if pending:
                dut.rx__payload.value = pending[0]
            await ReadOnly()
            if pending and dut.rx__ready.value:
                pending.popleft()
            if dut.tx__valid.value:
                out.append(int(dut.tx__payload.value))
            if not pending and not dut.busy.value:
                break
        if out and not dut.busy.value:
            os.write(master, bytes(out))
            out.clear()
        elif len(out) >= 4096:
            os.write(master, bytes(out))
            out.clear()
