"""The device side of the link: frame receiver, command sequencer and frame transmitter.

:class:`LinkDevice` joins the three blocks (``docs/protocol.md``, Gateware structure):
:class:`~tritium.hw.link.FrameReceiver` finds the request frames in the byte stream,
:class:`~tritium.hw.sequencer.CommandSequencer` executes each on the engine (and the LM core) and
:class:`~tritium.hw.link.FrameTransmitter` frames its replies. It behaves byte for byte like
:class:`tritium.sim.device_model.DeviceModel` (the tests check it); the protocol itself is defined
in :mod:`tritium.hw.protocol`.
"""

from amaranth.hdl import Cat, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim.cost import matvec_device_cycles  # the cost model, pure Python: re-exported here
from . import protocol as P
from .link import FrameReceiver, FrameTransmitter
from .params import EngineParams, LMParams, rejected
from .sequencer import CommandSequencer

__all__ = ["crc16_next", "matvec_device_cycles", "LinkDevice"]


def _crc_taps():
    # the byte update is linear over GF(2) in (crc, byte): find which inputs feed each output bit
    taps = [[] for _ in range(16)]
    for i in range(24):
        crc, byte = (1 << i, 0) if i < 16 else (0, 1 << (i - 16))
        out = P.crc16(bytes([byte]), crc)
        for o in range(16):
            if out >> o & 1:
                taps[o].append(i)
    return taps


_CRC_TAPS = _crc_taps()


def crc16_next(crc, byte):
    """The frame CRC after ``byte`` (the update of :func:`protocol.crc16`) as an XOR network, for
    a design that keeps its own CRC register. The link's own blocks use the unit Amaranth builds
    from the catalogue entry (:func:`protocol.crc_parameters`), which computes the same."""
    bits = Cat(crc, byte)
    return Cat(*[Cat(*[bits[i] for i in taps]).xor() for taps in _CRC_TAPS])


class LinkDevice(wiring.Component):
    """The accelerator behind the framed link: request bytes in, reply bytes out.

    Parameters
    ----------
    params : EngineParams
    clock_hz : int
        Reported by IDENTIFY.
    timeout_cycles : int
        A frame with no byte for this many cycles part-way is dropped (:attr:`Err.TIMEOUT`); the
        same silence ends the skip after an oversize length (also with TIMEOUT).
    lm : LMParams or None
        With it, the device also runs the whole LM step (:class:`tritium.hw.lmcore.LMCore`):
        WRITE_MEM, LM_CONFIG and GENERATE. GENERATE answers with a frame per token as the core
        makes it; the link takes no request meanwhile (a UART front end buffers what arrives).

    Members
    -------
    rx : In(stream of bytes)
        Request bytes. Not ready while a request is executed or answered (one request at a time;
        a UART front end buffers what arrives meanwhile).
    tx : Out(stream of bytes)
        Reply bytes.
    busy : Out(1)
        A request is being received, executed or answered.
    error : Out(1)
        The last reply was an error frame.
    in_frame : Out(1)
        A request frame has started and is not complete, or the payload of a frame refused for
        an oversize length is being skipped (until its declared end or the idle timeout).
    activity : Out(3) (with ``lm`` only)
        For performance counters: bit 0 a generation runs, bit 1 the engine is busy, bit 2 the
        vector unit is busy.

    Attributes
    ----------
    receiver : FrameReceiver
    sequencer : CommandSequencer
    transmitter : FrameTransmitter
        The three blocks (``docs/protocol.md``, Gateware structure).
    engine : TernaryMatVec
    core : LMCore or None
        The sequencer's engine and LM core.
    params, lm
        The constructor's arguments.

    Timing
    ------
    A request's first check comes the cycle after its last CRC byte; ``sim/cost.py`` models a
    MATVEC's device cycles (:func:`matvec_device_cycles`).
    """

    def __init__(self, *, params, clock_hz=12_000_000, timeout_cycles=1 << 16, lm=None):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        try:
            P.check_link_params(params)
        except ValueError as e:
            raise rejected(self, e) from None
        if not isinstance(timeout_cycles, int) or timeout_cycles < 2:
            raise rejected(self, ValueError(f"timeout_cycles = {timeout_cycles!r} must be an integer >= 2"))
        if lm is not None and not isinstance(lm, LMParams):
            raise rejected(self, TypeError(f"lm must be an LMParams or None, not {lm!r}"))
        self._params, self._lm = params, lm
        self.sequencer = CommandSequencer(params=params, clock_hz=clock_hz, lm=lm)
        self.receiver = FrameReceiver(max_payload=P.max_payload(params), head_bytes=self.sequencer.head_bytes,
                                      word_bytes=-(-params.word_bits // 8), timeout_cycles=timeout_cycles)
        self.transmitter = FrameTransmitter()
        self.engine, self.core = self.sequencer.engine, self.sequencer.core
        members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                   "busy": Out(1), "error": Out(1), "in_frame": Out(1)}
        if lm is not None:
            members["activity"] = Out(3)
        super().__init__(members)

    @property
    def params(self):
        return self._params

    @property
    def lm(self):
        return self._lm

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = self.receiver
        m.submodules.sequencer = sequencer = self.sequencer
        m.submodules.transmitter = transmitter = self.transmitter
        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, receiver.frame, sequencer.frame)
        wiring.connect(m, receiver.buffer, sequencer.buffer)
        wiring.connect(m, sequencer.reply, transmitter.reply)
        wiring.connect(m, transmitter.tx, wiring.flipped(self.tx))
        m.d.comb += [self.busy.eq(~receiver.idle), self.in_frame.eq(receiver.in_frame),
                     self.error.eq(sequencer.error)]
        if self._lm is not None:
            m.d.comb += self.activity.eq(sequencer.activity)
        return m
