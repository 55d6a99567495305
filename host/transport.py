"""Byte transports under the host API: the same host code drives each of them.

* :class:`GoldenTransport` -- the golden device model (:class:`tritium.sim.device_model.DeviceModel`)
  in-process.
* :class:`SerialTransport` -- a serial port (a real board's FTDI UART, or any pty), via pyserial.
* :class:`SimTransport` -- the gateware device simulated under Verilator by cocotb in a child
  process, reached through a pseudo-terminal, so the host speaks exactly the bytes it would send
  to a board.
"""

import abc
import os
import pathlib
import subprocess
import sys
import time

__all__ = ["Transport", "TransportError", "GoldenTransport", "SerialTransport", "SimTransport"]


class TransportError(Exception):
    """The link failed: a timeout, a closed port, or a simulator that did not start."""


class Transport(abc.ABC):
    """A byte pipe to a device. ``read`` returns at most ``n`` bytes, waiting up to ``timeout`` s."""

    @abc.abstractmethod
    def write(self, data): ...

    @abc.abstractmethod
    def read(self, n, timeout): ...

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GoldenTransport(Transport):
    """The golden device model behind a byte pipe. ``idle_timeout()`` delivers the device's
    inter-byte timeout (a real link gets it by waiting)."""

    def __init__(self, params, *, clock_hz=12_000_000):
        from ..sim.device_model import DeviceModel
        self.device = DeviceModel(params, clock_hz=clock_hz)
        self._rx = bytearray()

    def write(self, data):
        self._rx += self.device.feed(data)

    def read(self, n, timeout):
        if not self._rx and timeout > 0:
            self._rx += self.device.idle_timeout()
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out


class SerialTransport(Transport):
    """A serial port (``/dev/ttyUSB1`` for an iCEBreaker's FTDI UART, or a pty path)."""

    def __init__(self, port, *, baudrate=1_000_000):
        try:
            import serial
        except ImportError:
            raise TransportError("the serial backend needs pyserial (pip install pyserial)") from None
        try:
            self._port = serial.Serial(port, baudrate=baudrate, timeout=0)
        except (OSError, serial.SerialException) as e:
            raise TransportError(f"cannot open serial port {port}: {e}") from None

    def write(self, data):
        self._port.write(data)
        self._port.flush()

    def read(self, n, timeout):
        deadline = time.monotonic() + timeout
        out = bytearray()
        while len(out) < n:
            chunk = self._port.read(n - len(out))
            if chunk:
                out += chunk
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(0.0005)
        return bytes(out)

    def close(self):
        self._port.close()


class SimTransport(SerialTransport):
    """Start the simulated device (cocotb + Verilator, :mod:`tritium.sim.tb_device`) and talk
    to it over the pseudo-terminal it opens. The first start builds the simulator (about half
    a minute); later starts reuse the build."""

    def __init__(self, params, *, name="device", start_timeout=600):
        from ..sim.runner import build_device_sim
        import tempfile
        run_dir = pathlib.Path(build_device_sim(params, name=name))
        # each running instance gets its own folder, so several can share one simulator build
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix="serve-", dir=run_dir))
        ptyfile = run_dir / "pty.path"
        self._log = open(run_dir / "serve.log", "w")
        self._proc = subprocess.Popen([sys.executable, "-m", "tritium.sim.runner", "--serve-device", name,
                                       "--serve-dir", str(run_dir)],
                                      stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ),
                                      start_new_session=True)  # its own group: the simulator goes with it
        deadline = time.monotonic() + start_timeout
        while not ptyfile.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise TransportError(f"the simulated device did not start; see {run_dir / 'serve.log'}")
            time.sleep(0.05)
        try:
            super().__init__(ptyfile.read_text().strip())
        except BaseException:
            self._stop()
            raise

    def _stop(self):
        """End the server and the simulator it started: SIGTERM to their process group, then
        SIGKILL to whatever of it is left once the server has gone (or after 10 s)."""
        import signal
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._log.close()

    def close(self):
        super().close()
        self._stop()
