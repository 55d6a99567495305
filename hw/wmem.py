"""Weight memory: one read-or-write port, one word per cycle, block RAM or iCE40 SPRAM."""

from amaranth.hdl import ClockSignal, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .layouts import EngineLayouts
from .params import SPRAM_DEPTH, SPRAM_WIDTH

__all__ = ["SPRAM256KA", "WeightMemory"]


def _is_ice40(platform):
    try:
        from amaranth.vendor import LatticeICE40Platform
    except ImportError:  # pragma: no cover - amaranth 0.5 always has it
        return False
    return isinstance(platform, LatticeICE40Platform)


class SPRAM256KA(wiring.Component):
    """One iCE40 UP5K single-port RAM, 16384 x 16 bits.

    On an iCE40 platform this elaborates to an ``SB_SPRAM256KA`` primitive; anywhere else
    (Amaranth simulation, Verilog for cocotb) to a behavioural model with the same timing.

    Parameters
    ----------
    depth : int
        Words the behavioural model implements (at most 16384; the primitive always has 16384).
        Addresses at or above ``depth`` are not used by the design.

    Members
    -------
    addr : In(14)
    wdata : In(16)
    we : In(1)
        Write ``wdata`` to ``addr`` at the clock edge. ``rdata`` is unspecified after a write cycle.
    rdata : Out(16)
        The word at the ``addr`` presented in the previous cycle (latency 1) when ``we`` was low.
    """
    addr: In(14)
    wdata: In(16)
    we: In(1)
    rdata: Out(16)

    def __init__(self, *, depth=SPRAM_DEPTH):
        if not isinstance(depth, int) or not 1 <= depth <= SPRAM_DEPTH:
            raise ValueError(f"SPRAM depth = {depth!r} must be an integer in 1..{SPRAM_DEPTH}")
        self._depth = depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        if _is_ice40(platform):
            m.submodules.spram = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=self.addr, i_DATAIN=self.wdata, i_MASKWREN=0b1111, i_WREN=self.we,
                i_CHIPSELECT=1, i_CLOCK=ClockSignal(),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=self.rdata)
            return m
        m.submodules.mem = mem = memory.Memory(shape=unsigned(SPRAM_WIDTH), depth=self._depth, init=[])
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port()
        m.d.comb += [rd.addr.eq(self.addr), wr.addr.eq(self.addr), wr.data.eq(self.wdata),
                     wr.en.eq(self.we), rd.en.eq(~self.we), self.rdata.eq(rd.data)]
        return m


class WeightMemory(wiring.Component):
    """The engine's weight store: ``params.weight_depth`` words of ``params.word_bits`` bits.

    One port: each cycle either reads or writes one word.

    Members
    -------
    addr : In(addr_shape)
    rd_data : Out(weight_word)
        The word at the ``addr`` of the previous cycle, valid one cycle after a read (``we`` low).
    wr_data : In(weight_word)
    we : In(1)
        Write ``wr_data`` at ``addr`` this cycle instead of reading.
    """

    def __init__(self, *, params):
        self._params = params
        self._layouts = EngineLayouts(params)
        super().__init__({
            "addr": In(self._layouts.addr_shape),
            "rd_data": Out(self._layouts.weight_word),
            "wr_data": In(self._layouts.weight_word),
            "we": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._params
        if p.memory == "bram":
            m.submodules.mem = mem = memory.Memory(shape=self._layouts.weight_word, depth=p.weight_depth, init=[])
            rd = mem.read_port(transparent_for=())
            wr = mem.write_port()
            m.d.comb += [rd.addr.eq(self.addr), wr.addr.eq(self.addr), wr.data.eq(self.wr_data),
                         wr.en.eq(self.we), rd.en.eq(~self.we), self.rd_data.eq(rd.data)]
            return m
        rd_bits = Signal(p.spram_count * SPRAM_WIDTH)
        wr_bits = Signal(p.spram_count * SPRAM_WIDTH)
        m.d.comb += wr_bits.eq(self.wr_data.as_value())
        for i in range(p.spram_count):
            bank = SPRAM256KA(depth=p.weight_depth)
            m.submodules[f"spram{i}"] = bank
            sl = slice(i * SPRAM_WIDTH, (i + 1) * SPRAM_WIDTH)
            m.d.comb += [bank.addr.eq(self.addr), bank.wdata.eq(wr_bits[sl]), bank.we.eq(self.we),
                         rd_bits[sl].eq(bank.rdata)]
        m.d.comb += self.rd_data.eq(rd_bits[:p.word_bits])
        return m
