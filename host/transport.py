"""Byte transports under the host API: the same host code drives each of them.

* :class:`GoldenTransport` -- the golden device model (:class:`tritium.sim.device_model.DeviceModel`)
  in-process.
* :class:`SerialTransport` -- a serial port (a real board's FTDI UART, or any pty), via pyserial.
* :class:`SimTransport` -- the gateware device simulated under Verilator in a child process (a C++
  harness, or cocotb), reached through a pseudo-terminal, so the host speaks exactly the bytes it
  would send to a board.
"""

import abc
import os
import pathlib
import subprocess
import sys
import time

__all__ = ["Transport", "TransportError", "GoldenTransport", "SerialTransport", "SimTransport", "SIM_ENGINES",
           "ENGINE_ENV", "WAVES_ENV", "DEFAULT_WAVES_CYCLES"]

#: the engines behind :class:`SimTransport`: Tritium's C++ harness under Verilator (fast), cocotb
SIM_ENGINES = ("verilator", "cocotb")
#: environment variable choosing the default :class:`SimTransport` engine (read, never written)
ENGINE_ENV = "TRITIUM_SIM_ENGINE"
#: environment variable asking :class:`SimTransport` for waveforms: ``1`` or a file path
WAVES_ENV = "TRITIUM_WAVES"
#: host silence (ms of real time) after which the simulated device runs its idle timeout out
QUIET_MS = 500
#: clock cycles of waveform a :class:`SimTransport` writes unless told otherwise
DEFAULT_WAVES_CYCLES = 200_000


class TransportError(Exception):
    """The link failed: a timeout, a closed port, or a simulator that did not start."""


class Transport(abc.ABC):
    """A byte pipe to a device. ``read`` returns at most ``n`` bytes, waiting up to ``timeout`` s.

    ``quiet_s``: host silence after which the device has certainly run out its idle timeout (it
    drops a partial frame and hunts for the next SYNC); the host waits this long to resynchronise.
    """

    quiet_s = 0.05

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
    inter-byte timeout (a real link gets it by waiting). ``lm`` (an :class:`LMParams`): the
    device runs the on-chip LM step (GENERATE) too."""

    quiet_s = 0.0   # a read that finds nothing delivers the idle timeout at once

    def __init__(self, params, *, clock_hz=12_000_000, lm=None):
        from ..sim.device_model import DeviceModel
        self.device = DeviceModel(params, clock_hz=clock_hz, lm=lm)
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
    """A serial port (``/dev/ttyUSB1`` for an iCEBreaker's FTDI UART, or a pty path). With
    ``port=None``, the UART of the one attached board, found by its FTDI's USB VID:PID
    (:func:`tritium.host.ports.find_board_port`, whose :class:`~tritium.host.ports.BoardPortError`
    says when there is none or several)."""

    def __init__(self, port=None, *, baudrate=1_000_000):
        try:
            import serial
        except ImportError:
            raise TransportError("the serial backend needs pyserial (pip install pyserial)") from None
        if port is None:
            from .ports import find_board_port
            port = find_board_port()
        try:
            self._port = serial.Serial(port, baudrate=baudrate, timeout=0)
        except (OSError, serial.SerialException) as e:
            raise TransportError(f"cannot open serial port {port}: {e}") from None

    def write(self, data):
        self._port.write(data)
        self._port.flush()

    def read(self, n, timeout):
        """At most ``n`` bytes: returns as soon as some have arrived (and whatever else is already
        there), or ``b""`` after ``timeout`` s; waits in ``select``, not by polling."""
        import select
        deadline = time.monotonic() + timeout
        out = bytearray()
        while len(out) < n:
            chunk = self._port.read(n - len(out))
            if chunk:
                out += chunk
                continue
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                break
            select.select([self._port.fileno()], [], [], remaining)
        return bytes(out)

    def close(self):
        self._port.close()


def _cycles_arg(label, value, default):
    """``value``, else ``$TRITIUM_<LABEL>``, else ``default``: checked to be a cycle count."""
    from ..sim.golden import TritiumValueError
    var = f"TRITIUM_{label.upper()}"
    if value is None and os.environ.get(var, ""):
        try:
            value = int(os.environ[var])
        except ValueError:
            value = None
        if value is None or value < 0:
            raise TritiumValueError(f"{var}={os.environ[var]} must be a non-negative integer")
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TritiumValueError(f"{label} must be a non-negative integer, got {value!r}")
    return value


class SimTransport(SerialTransport):
    """The gateware device simulated under Verilator in a child process, reached through a
    pseudo-terminal: the host speaks exactly the bytes a board's UART would carry.

    Parameters
    ----------
    params : EngineParams
        The :class:`~tritium.hw.device.LinkDevice` to simulate.
    name : str
        Names the simulator build (one per name and engine, reused by later starts) and the
        waveform file; ``-lm`` is appended for a device with the LM step.
    lm : LMParams or None
        Simulate the device with the on-chip LM step of these sizes (WRITE_MEM, LM_CONFIG,
        GENERATE); ``None``: without it.
    engine : ``"verilator"`` or ``"cocotb"``
        ``"verilator"`` (the default; :data:`ENGINE_ENV` overrides the default): Tritium's C++
        harness (``sim/harness/``) clocks the device, no Python per clock (millions of cycles/s);
        the first start builds it (about half a minute for the iCEBreaker device). ``"cocotb"``:
        :mod:`tritium.sim.tb_device` under cocotb (about 12,000 cycles/s), the verification
        harness. Both follow the same cycle rules and give the same reply bytes.
    waves : bool or path
        Write every signal of the run to a waveform file (FST where Verilator's FST writer can
        be built, else VCD; verilator engine only): ``True`` writes ``waves/<name>.fst|vcd`` in the
        build folder, a path writes there. Default: :data:`WAVES_ENV` (``1`` or a path).
        :attr:`waves_path` says where it went; it is complete once the transport is closed.
    waves_from, waves_cycles : int
        The window written: ``waves_cycles`` clock cycles from cycle ``waves_from`` (counted from
        the end of reset). Defaults: ``$TRITIUM_WAVES_FROM`` or 0, ``$TRITIUM_WAVES_CYCLES`` or
        :data:`DEFAULT_WAVES_CYCLES` (a VCD of the iCEBreaker device takes about 1.6 KB a cycle).

    Raises :class:`~tritium.sim.golden.TritiumValueError` for an unknown engine or waves with
    cocotb, :class:`TransportError` when the simulated device does not start. After
    :meth:`close`, :attr:`stats` holds the fast harness's counts (``cycles`` simulated,
    ``seconds`` of wall time spent simulating, ``rx_bytes``, ``tx_bytes``), ``{}`` for cocotb.
    """

    quiet_s = 1.5   # both harnesses run the device's timeout out after 0.5 s of host silence

    def __init__(self, params, *, name="device", engine=None, waves=None, waves_from=None, waves_cycles=None,
                 start_timeout=600, lm=None):
        import tempfile

        from ..sim.golden import TritiumValueError
        if lm is not None:
            name += "-lm"   # its own build: a device with the LM step is another design
        engine = engine or os.environ.get(ENGINE_ENV) or "verilator"
        if engine not in SIM_ENGINES:
            raise TritiumValueError(f"simulation engine {engine!r} is not one of {', '.join(SIM_ENGINES)}")
        if waves is None:
            env_waves = os.environ.get(WAVES_ENV, "")
            waves = False if env_waves in ("", "0") else True if env_waves == "1" else env_waves
        if waves and engine != "verilator":
            raise TritiumValueError("waveforms of the device simulation come from the verilator engine; "
                                    "the engine regression writes its own with make sim WAVES=1")
        waves_from = _cycles_arg("waves_from", waves_from, 0)
        waves_cycles = _cycles_arg("waves_cycles", waves_cycles, DEFAULT_WAVES_CYCLES)
        self.engine = engine
        self.stats = {}
        self.waves_path = None
        if engine == "cocotb":
            from ..sim.runner import build_device_sim
            run_dir = pathlib.Path(build_device_sim(params, name=name, lm=lm))
            cmd = [sys.executable, "-m", "tritium.sim.runner", "--serve-device", name, "--serve-dir"]
        else:
            from ..sim.runner import DEVICE_TIMEOUT_CYCLES, build_fast_device_sim, wave_format
            try:
                exe = build_fast_device_sim(params, name=name, waves=bool(waves), lm=lm)
            except RuntimeError as e:   # no Verilator, no compiler, or a failed build (its log named)
                raise TransportError(str(e)) from None
            run_dir = exe.parent.parent
            cmd = [str(exe), "--parent-pid", str(os.getpid()), "--timeout-cycles", str(DEVICE_TIMEOUT_CYCLES),
                   "--quiet-ms", str(int(QUIET_MS))]
            if waves:
                from ..paths import build_dir
                path = (build_dir("waves", f"{name}.{wave_format()}") if waves is True
                        else pathlib.Path(waves).expanduser().absolute())
                path.parent.mkdir(parents=True, exist_ok=True)
                self.waves_path = path
                cmd += ["--waves", str(path), "--waves-from", str(waves_from), "--waves-cycles", str(waves_cycles)]
            cmd += ["--pty-file"]
        # each running instance gets its own folder, so several can share one simulator build
        serve_dir = pathlib.Path(tempfile.mkdtemp(prefix="serve-", dir=run_dir))
        ptyfile = serve_dir / "pty.path"
        cmd.append(str(ptyfile if engine == "verilator" else serve_dir))
        self._log = open(serve_dir / "serve.log", "w")
        self._stats_file = serve_dir / "stats.json"
        self._out = open(self._stats_file, "w") if engine == "verilator" else self._log
        self._proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._log, env=dict(os.environ),
                                      start_new_session=True)  # its own group: the simulator goes with it
        deadline = time.monotonic() + start_timeout
        while not ptyfile.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise TransportError(f"the simulated device did not start; see {serve_dir / 'serve.log'}")
            time.sleep(0.01)
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
        if self._out is not self._log:
            self._out.close()
            import json
            try:
                self.stats = json.loads(self._stats_file.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                self.stats = {}
            if self._proc.returncode == 0 and self.stats:   # a clean run leaves nothing to look at
                import shutil
                shutil.rmtree(self._stats_file.parent, ignore_errors=True)

    def close(self):
        super().close()
        self._stop()
