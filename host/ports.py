"""Find a board's serial port by the USB VID:PID of its FTDI bridge (pyserial's ``list_ports``).

The iCEBreaker's FT2232H (0403:6010) has two channels: A drives the SPI flash (openFPGALoader
uses it), B is the UART to the FPGA -- USB interface 1, ``/dev/ttyUSB1`` when it is the only
FTDI on a Linux host. The ULX3S's FT231X (0403:6015) has one channel, used for both.
"""

import dataclasses
import re

from .transport import TransportError

__all__ = ["BoardUsb", "BOARD_USB", "BoardPortError", "BoardPort", "board_ports", "find_board_port"]


@dataclasses.dataclass(frozen=True)
class BoardUsb:
    """A board's FTDI bridge: USB ``vid``/``pid``, its number of ``channels`` (USB interfaces)
    and the ``interface`` (channel) of its UART."""
    name: str
    vid: int
    pid: int
    channels: int
    interface: int

    @property
    def usb_id(self):
        return f"{self.vid:04x}:{self.pid:04x}"


#: board (as in :data:`tritium.hw.boards.BOARDS`) -> its FTDI bridge
BOARD_USB = {
    "icebreaker": BoardUsb("iCEBreaker", 0x0403, 0x6010, channels=2, interface=1),
    "ulx3s-85f": BoardUsb("ULX3S", 0x0403, 0x6015, channels=1, interface=0),
}


class BoardPortError(TransportError):
    """No board's UART was found on USB, or several were and none was chosen."""


@dataclasses.dataclass(frozen=True)
class BoardPort:
    """A serial port that is a board's UART."""
    board: str
    device: str
    serial_number: str | None = None


def _interface(port):
    """The USB interface number of a listed port, or None when the platform does not say.

    Linux gives ``location`` as ``<bus>-<path>:<config>.<interface>``; macOS and Windows name
    an FT2232H's channels with a trailing ``A``/``B`` on the device or serial number."""
    m = re.search(r":\d+\.(\d+)$", port.location or "")
    if m:
        return int(m.group(1))
    for text in (port.serial_number or "", port.device or ""):
        m = re.search(r"([A-D])$", text)
        if m and text[:-1]:
            return "ABCD".index(m.group(1))
    return None


def board_ports(board=None, *, comports=None):
    """The UARTs of the attached boards (of ``board`` only, when given), sorted by device name.

    ``comports`` (default ``serial.tools.list_ports.comports``) returns pyserial
    ``ListPortInfo``-like objects (``device``, ``vid``, ``pid``, ``location``,
    ``serial_number``). A two-channel bridge contributes only its UART channel; where the platform
    does not tell channels apart, the later-named port of each chip (``ttyUSB1`` after
    ``ttyUSB0``) is taken for interface 1."""
    if board is not None and board not in BOARD_USB:
        raise BoardPortError(f"unknown board {board!r}; choose from {list(BOARD_USB)}")
    if comports is None:
        from serial.tools.list_ports import comports
    wanted = {board: BOARD_USB[board]} if board else BOARD_USB
    found = []
    for name, usb in wanted.items():
        ports = sorted((p for p in comports() if (p.vid, p.pid) == (usb.vid, usb.pid)), key=lambda p: p.device)
        known = [p for p in ports if _interface(p) is not None]
        if usb.channels == 1:
            pass  # one channel: every port of this VID:PID is a board's UART
        elif known:
            ports = [p for p in known if _interface(p) == usb.interface]
        elif ports:
            # channels not distinguishable: each chip lists its channels in order; take the UART's
            chips = {}
            for p in ports:
                chips.setdefault(p.serial_number or p.location or "", []).append(p)
            ports = [ps[min(usb.interface, len(ps) - 1)] for ps in chips.values()]
        found += [BoardPort(name, p.device, p.serial_number) for p in ports]
    return sorted(found, key=lambda p: p.device)


def find_board_port(board=None, *, comports=None):
    """The serial port of the one attached board (of ``board``, when given).

    Raises :class:`BoardPortError` naming the VID:PIDs looked for when none is attached, and
    the ports found when there are several (choose one with ``--port``)."""
    ports = board_ports(board, comports=comports)
    if not ports:
        looked = BOARD_USB.values() if board is None else [BOARD_USB[board]]
        ids = ", ".join(f"{u.name} {u.usb_id}" for u in looked)
        raise BoardPortError(f"no board found on USB (looked for FTDI {ids}); plug it in or give --port")
    if len(ports) > 1:
        listed = ", ".join(f"{p.device} ({BOARD_USB[p.board].name})" for p in ports)
        raise BoardPortError(f"several boards found on USB: {listed}; choose one with --port")
    return ports[0].device
