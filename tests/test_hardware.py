"""On a real board: the selftest and a short generation over its UART (``make test-hw``).

The board must carry the Tritium bitstream (``make program BOARD=...``). It is found on USB by
its FTDI's VID:PID, or given as ``$TRITIUM_PORT`` (``make test-hw PORT=/dev/ttyUSB1``); with no
board attached every test here is skipped.
"""

import json
import os

import pytest

from tritium.host import cli
from tritium.host.ports import BOARD_USB, board_ports

pytestmark = pytest.mark.hardware


@pytest.fixture(scope="module")
def board_port():
    port = os.environ.get("TRITIUM_PORT") or None
    if port:
        return port
    found = board_ports()
    if not found:
        ids = ", ".join(f"{u.name} {u.usb_id}" for u in BOARD_USB.values())
        pytest.skip(f"no board attached (no FTDI {ids} on USB)")
    if len(found) > 1:
        pytest.fail(f"several boards attached ({', '.join(p.device for p in found)}): choose one with "
                    "make test-hw PORT=...")
    return found[0].device


def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    hint = "" if rc == 0 else " (is the bitstream loaded? make program BOARD=icebreaker|ulx3s-85f)"
    assert rc == 0, f"tritium {' '.join(argv)} exited {rc}: {out.err.strip()}{hint}"
    return out.out


def test_selftest_on_the_board(board_port, capsys):
    out = _cli(capsys, "selftest", "--backend", "serial", "--port", board_port, "--matrices", "8", "--products", "8")
    # every random product the board computed equals the golden model's
    assert out.splitlines()[-1] == "64 passed, 0 failed"


def test_generation_on_the_board_matches_golden(board_port, capsys):
    # (the iCEBreaker is the matrix-vector coprocessor: the host runs the step, on both sides)
    args = ["generate", "--prompt", "The return statement", "--max-tokens", "8", "--seed", "0", "--json", "--quiet",
            "--mode", "host"]
    board = json.loads(_cli(capsys, *args, "--backend", "serial", "--port", board_port))
    golden = json.loads(_cli(capsys, *args, "--backend", "golden"))
    # the board's exact integer products give the same tokens as the golden device, token for token
    assert len(board["tokens"]) == 8
    assert board["tokens"] == golden["tokens"]
