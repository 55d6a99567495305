"""The cost model: engine cycles, device cycles, link bytes and tokens/s of ternary products.

Plain Python on :class:`~tritium.hw.params.EngineParams` and the link protocol's sizes (no
Amaranth anywhere below this module), so that the host runtime
(:class:`~tritium.host.models.MatrixRunner`), ``tritium plan``, ``tritium generate``'s stats
line and the benchmark (:mod:`tritium.sim.bench`) compute every cost with the same functions,
and the gateware tests check those same functions against RTL simulation:
:func:`product_cycles` against the engine (``tests/test_engine_sim.py``),
:func:`matvec_link_bytes` against the bytes a real run moves.

A token is a list of products ``[(M, K), ...]``, one per ternary matrix the model runs; its
cost on a board (:func:`board_model`) is the link time of every MATVEC request and reply at
the board's baud (10 bits per byte: start, 8 data, stop) plus the device cycles at the board's
clock, the two not overlapped (the host waits for each reply before sending the next request).
"""

import dataclasses
import json
import math
import numbers

from ..hw import protocol as P
from ..paths import build_dir
from .golden import TritiumValueError

__all__ = ["UART_BITS_PER_BYTE", "BoardLink", "BOARD_LINKS", "product_cycles", "matvec_device_cycles",
           "matvec_link_bytes", "token_cost", "board_model"]

#: Bits on the wire per byte of a UART link: start bit, 8 data bits, stop bit.
UART_BITS_PER_BYTE = 10


@dataclasses.dataclass(frozen=True)
class BoardLink:
    """What the cost of a token on a board depends on besides the engine: its clock and the
    baud of its UART link to the host."""
    name: str
    clock_hz: int
    baud: int


#: The boards' system clocks (from their PLLs: the highest whole-MHz clock that met timing on
#: nextpnr seeds 1-3, ``docs/perf/lm.md``; :data:`tritium.hw.boards.BOARDS` builds them) and link
#: bauds; ``tests/test_cost.py`` checks both against the gateware side.
BOARD_LINKS = {
    "icebreaker": BoardLink("iCEBreaker", clock_hz=30_000_000, baud=1_000_000),
    "ulx3s-85f": BoardLink("ULX3S 85F", clock_hz=50_000_000, baud=1_000_000),
}


def product_cycles(params, m, k):
    """Cycles from one command's acceptance to the next command's earliest acceptance, for an
    ``m x k`` product with activations offered every cycle and ``res`` always ready.

    ``chunks`` cycles load the activations and compute the first tile with them as they come,
    each later tile takes ``max(chunks, D + 2)`` (a tile end waits for the previous one to leave
    the output register), and ``D + 3`` cycles drain the pipeline and return to idle, where
    ``D = params.pipeline_depth``.
    ``tiles * chunks`` of these cycles read a weight word: the weight-bandwidth roofline.
    Raises :class:`TritiumValueError` for a shape the engine cannot run.
    """
    params.check_shape(m, k)
    chunks = -(-k // params.trits)
    tiles = -(-m // params.lanes)
    depth = params.pipeline_depth
    return chunks + (tiles - 1) * max(chunks, depth + 2) + depth + 3


def matvec_device_cycles(params, m, k):
    """Device cycles of one MATVEC of an ``m x k`` matrix, link time excluded: the engine's
    :func:`product_cycles` plus the sequencer's two cycles per activation byte (``ceil(k /
    trits) * trits`` of them) and one per result byte (``m * acc_bytes``)."""
    return product_cycles(params, m, k) + 2 * -(-k // params.trits) * params.trits + m * P.acc_bytes(params)


def matvec_link_bytes(params, m, k):
    """Bytes one MATVEC of an ``m x k`` matrix moves on the link: the request (slot and
    ``ceil(k / trits) * trits`` activation bytes) and the reply (``m`` results of
    ``acc_bytes`` each), both framed (:data:`~tritium.hw.protocol.HEADER_BYTES` plus a 2-byte CRC)."""
    frame = P.HEADER_BYTES + 2
    return frame + 1 + -(-k // params.trits) * params.trits + frame + m * P.acc_bytes(params)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise TritiumValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _shape(entry):
    """``(M, K)`` as Python ints (numpy integers allowed); anything else is left for
    :meth:`~tritium.hw.params.EngineParams.check_shape` to reject by name."""
    try:
        m, k = entry
    except (TypeError, ValueError):
        raise TritiumValueError(f"a product's shape must be a pair (M, K), got {entry!r:.60}") from None
    return tuple(int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in (m, k))


def token_cost(params, shapes, *, clock_hz, baud, link_bytes=None):
    """The cost of one token whose products are ``shapes`` (``[(M, K), ...]``) on an engine
    with ``params`` clocked at ``clock_hz``, linked at ``baud``.

    ``link_bytes``: the bytes a token moves on the link, when measured (a run also counts any
    SET_SLOT frames); default the sum of :func:`matvec_link_bytes`. Returns a dict:
    ``products_per_token``, ``link_bytes_per_token``, ``device_cycles_per_token`` (sum of
    :func:`matvec_device_cycles`), ``link_s_per_token``, ``compute_s_per_token``,
    ``tokens_per_s`` (link and compute not overlapped), ``compute_only_tokens_per_s`` and
    ``bound`` (``"link"`` or ``"compute"``, whichever takes longer).
    Raises :class:`TritiumValueError` for no products, a shape the engine cannot run, a clock
    or baud that is not positive, or negative link bytes.
    """
    shapes = [_shape(entry) for entry in shapes]
    if not shapes:
        raise TritiumValueError("a token needs at least one product to have a cost")
    _positive("clock_hz", clock_hz)
    _positive("baud", baud)
    if link_bytes is None:
        link_bytes = sum(matvec_link_bytes(params, m, k) for m, k in shapes)
    elif isinstance(link_bytes, bool) or not isinstance(link_bytes, numbers.Real) or not 0 <= link_bytes < math.inf:
        raise TritiumValueError(f"link_bytes must be a finite number >= 0, got {link_bytes!r}")
    cycles = sum(matvec_device_cycles(params, m, k) for m, k in shapes)
    link_s = link_bytes * UART_BITS_PER_BYTE / baud
    compute_s = cycles / clock_hz
    return {"products_per_token": len(shapes), "link_bytes_per_token": link_bytes,
            "device_cycles_per_token": cycles, "link_s_per_token": link_s, "compute_s_per_token": compute_s,
            "tokens_per_s": 1 / (link_s + compute_s), "compute_only_tokens_per_s": 1 / compute_s,
            "bound": "link" if link_s > compute_s else "compute"}


def _bitstream_report(board):
    """``(path, clock_mhz, fmax_mhz)`` of ``board``'s place-and-route report, or ``None`` when
    no bitstream has been built."""
    path = build_dir(board) / "report.json"
    if not path.exists():
        return None
    try:
        r = json.loads(path.read_text())
        clock_mhz, fmax_mhz = float(r["clock_mhz"]), float(r["fmax_mhz"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TritiumValueError(f"{path}: not a bitstream report with clock_mhz and fmax_mhz "
                                f"({type(e).__name__}: {str(e)[:100]}); rebuild it with make bitstream "
                                f"BOARD={board} or delete it") from None
    if not (clock_mhz > 0 and fmax_mhz > 0):
        raise TritiumValueError(f"{path}: clock_mhz {clock_mhz} and fmax_mhz {fmax_mhz} must be positive")
    return path, clock_mhz, fmax_mhz


def board_model(params, shapes, link_bytes_per_token=None, board="icebreaker"):
    """Modeled tokens/s on ``board`` (a key of :data:`BOARD_LINKS`) of a token whose products
    are ``shapes`` (``[(M, K), ...]``): :func:`token_cost` at the board's baud, at its clock
    and, once a bitstream has been built (``report.json`` in the board's build folder), at the
    Fmax that place and route reached.

    ``link_bytes_per_token``: as measured by a run; default the model's own count. Returns a
    dict: ``board``, ``baud``, ``clock_mhz``, ``fmax_mhz`` and ``report`` (``None`` without a
    report), every key of :func:`token_cost` at the clock, and its ``tokens_per_s`` and
    ``compute_s_per_token`` again as ``tokens_per_s_at_clock`` / ``compute_s_per_token_at_clock``
    beside ``tokens_per_s_at_fmax`` / ``compute_s_per_token_at_fmax`` (with a report only).
    Raises :class:`TritiumValueError` for an unknown board or an unreadable report, and as
    :func:`token_cost` does.
    """
    if board not in BOARD_LINKS:
        raise TritiumValueError(f"unknown board {board!r}; choose from {list(BOARD_LINKS)}")
    link = BOARD_LINKS[board]
    clock_mhz, fmax_mhz, report = link.clock_hz / 1e6, None, None
    found = _bitstream_report(board)
    if found:
        report, clock_mhz, fmax_mhz = str(found[0]), found[1], found[2]
    at_clock = token_cost(params, shapes, clock_hz=clock_mhz * 1e6, baud=link.baud, link_bytes=link_bytes_per_token)
    out = {"board": board, "baud": link.baud, "clock_mhz": clock_mhz, "fmax_mhz": fmax_mhz, "report": report,
           **at_clock, "tokens_per_s_at_clock": at_clock["tokens_per_s"],
           "compute_s_per_token_at_clock": at_clock["compute_s_per_token"]}
    if fmax_mhz:
        at_fmax = token_cost(params, shapes, clock_hz=fmax_mhz * 1e6, baud=link.baud,
                             link_bytes=link_bytes_per_token)
        out["tokens_per_s_at_fmax"] = at_fmax["tokens_per_s"]
        out["compute_s_per_token_at_fmax"] = at_fmax["compute_s_per_token"]
    return out
