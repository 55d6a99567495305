"""8N1 UART PHY: byte streams to and from a pair of pins."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .device import LinkDevice
from .params import rejected

__all__ = ["UartRx", "UartTx", "UartLink"]


def _check_divisor(obj, divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise rejected(obj, ValueError(f"UART divisor = {divisor!r} must be an integer >= 4 (clock cycles per bit)"))


class UartRx(wiring.Component):
    """Receives 8N1 bytes on ``rx`` (idle high) at ``clock / divisor`` baud.

    ``rx`` may come straight from a pin: it passes a two-stage :class:`FFSynchronizer` first
    (two cycles of latency), then is sampled in the middle of each bit.

    Members
    -------
    rx : In(1, init=1)
    data : Out(stream of bytes)
        One transfer per received byte; ``valid`` stays up until ``ready``. A byte that arrives
        while the previous one is still waiting is dropped and ``overrun`` pulses.
    overrun : Out(1)
    frame_error : Out(1)
        Pulses when a stop bit is low (the byte is dropped); the next start bit is looked for
        only after the line has returned high.
    """

    def __init__(self, *, divisor):
        _check_divisor(self, divisor)
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)),
                          "overrun": Out(1), "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(d * 3 // 2 + 1))
        bits = Signal(8)
        nbit = Signal(range(9))
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += [timer.eq(d + d // 2 - 1), nbit.eq(0)]  # to the middle of bit 0
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [bits.eq(Cat(bits[1:], rx)), nbit.eq(nbit + 1), timer.eq(d - 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.next = "IDLE"
                    with m.If(~rx):
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"  # a low stop bit is not the next start bit
                    with m.Elif(self.data.valid & ~self.data.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.data.payload.eq(bits), self.data.valid.eq(1)]
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """Sends each byte from ``data`` as 8N1 on ``tx`` at ``clock / divisor`` baud.

    Members
    -------
    data : In(stream of bytes)
        Taken when the previous byte's stop bit has been sent.
    tx : Out(1, init=1)
    """

    def __init__(self, *, divisor):
        _check_divisor(self, divisor)
        self._divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        shreg = Signal(10, init=0x3FF)
        left = Signal(range(11))
        timer = Signal(range(d))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(0, self.data.payload, 1)), left.eq(10), timer.eq(d - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), left.eq(left - 1), timer.eq(d - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UartLink(wiring.Component):
    """:class:`LinkDevice` behind a UART: the whole device a board carries.

    Parameters
    ----------
    params : EngineParams
    clock_hz : int
    baud : int
        ``clock_hz / baud`` must be an integer of at least 4 (checked).
    lm : LMParams or None
        The LM step (:class:`LinkDevice`'s ``lm``).

    Members
    -------
    rx : In(1, init=1)
        The receive pin (synchronised by :class:`UartRx`).
    tx : Out(1, init=1)
    busy, error : Out(1)
        For status LEDs.

    Bytes that arrive while the device executes or answers a request wait in a 32-byte
    :class:`SyncFIFOBuffered` between the receiver and the device (``docs/protocol.md``).
    """

    def __init__(self, *, params, clock_hz, baud, lm=None):
        if clock_hz % baud:
            raise rejected(self, ValueError(f"baud {baud} does not divide the {clock_hz} Hz clock exactly"))
        self.divisor = clock_hz // baud
        _check_divisor(self, self.divisor)
        from .protocol import IDLE_TIMEOUT_BYTES
        self.device = LinkDevice(params=params, clock_hz=clock_hz,
                                 timeout_cycles=IDLE_TIMEOUT_BYTES * 10 * self.divisor, lm=lm)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UartRx(divisor=self.divisor)
        m.submodules.utx = utx = UartTx(divisor=self.divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=32)  # bytes arriving during a reply
        m.submodules.device = dev = self.device
        wiring.connect(m, urx.data, fifo.w_stream)
        wiring.connect(m, fifo.r_stream, dev.rx)
        wiring.connect(m, dev.tx, utx.data)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.busy.eq(dev.busy), self.error.eq(dev.error)]
        return m
