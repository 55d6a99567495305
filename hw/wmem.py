"""Weight memory: one read-or-write port, one word per cycle, block RAM or iCE40 SPRAM."""

from amaranth.hdl import ClockSignal, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .layouts import EngineLayouts
from .params import SPRAM_DEPTH, SPRAM_WIDTH

__all__ = ["SPRAM256KA", "RegisteredRAM", "WeightMemory"]


def _is_ice40(platform):
    try:
        from amaranth.vendor import LatticeICE40Platform
    except ImportError:  # pragma: no cover - amaranth 0.5 always has it
        return False
    return isinstance(platform, LatticeICE40Platform)


def _is_ecp5(platform):
    try:
        from amaranth.vendor import LatticeECP5Platform
    except ImportError:  # pragma: no cover - amaranth 0.5 always has it
        return False
    return isinstance(platform, LatticeECP5Platform)


#: ECP5 DP16KD in its x18 mode: 1024 words of 18 bits; the word address sits on AD[13:4], and on
#: the write port AD[1:0] are byte enables. This is the pin convention of Yosys's own DP16KD
#: mapping (``brams_map_16kd.v``), checked pin for pin against it for this mode.
DP16KD_WIDTH, DP16KD_DEPTH, DP16KD_ADDR_SHIFT = 18, 1024, 4


class RegisteredRAM(wiring.Component):
    """A simple dual-port RAM whose read data passes an output register: latency 2.

    On an ECP5 platform (and ``depth <= 1024``) this is a row of ``DP16KD`` block RAMs (x18) in
    their ``OUTREG`` mode, so the RAM's slow clock-to-output (about 5.8 ns in ``NOREG`` mode,
    which Yosys's own mapping always uses) is not on a fabric path. Anywhere else it is an
    Amaranth memory followed by a register, with the same timing.

    Parameters
    ----------
    width, depth : int

    Members
    -------
    waddr, wdata, we : In
        Write ``wdata`` at ``waddr`` at the clock edge when ``we``.
    raddr : In
    rdata : Out(width)
        The word at the ``raddr`` presented two cycles earlier. Reading a word in the cycle it
        is written gives an unspecified value (the engine never does).
    """

    def __init__(self, *, width, depth):
        for name, v in (("width", width), ("depth", depth)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} = {v!r} must be a positive integer")
        self._width, self._depth = width, depth
        abits = max(1, (depth - 1).bit_length())
        super().__init__({"waddr": In(abits), "wdata": In(width), "we": In(1), "raddr": In(abits),
                          "rdata": Out(width)})

    def elaborate(self, platform):
        m = Module()
        if _is_ecp5(platform) and self._depth <= DP16KD_DEPTH:
            w, shift = DP16KD_WIDTH, DP16KD_ADDR_SHIFT
            blocks = -(-self._width // w)
            spare = Signal(blocks * w - self._width + 1)  # outputs of unused bits of the last block
            abits = len(self.raddr)
            for b in range(blocks):
                ports = {}
                for i in range(14):
                    a = i - shift
                    ports[f"i_ADA{i}"] = self.waddr[a] if 0 <= a < abits else (1 if i < 2 else 0)
                    ports[f"i_ADB{i}"] = self.raddr[a] if 0 <= a < abits else 0
                for i in range(w):
                    j = b * w + i
                    ports[f"i_DIA{i}"] = self.wdata[j] if j < self._width else 0
                    ports[f"i_DIB{i}"] = 0
                    ports[f"o_DOB{i}"] = self.rdata[j] if j < self._width else spare[j - self._width]
                m.submodules[f"bram{b}"] = Instance(
                    "DP16KD",
                    p_DATA_WIDTH_A=w, p_DATA_WIDTH_B=w, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                    p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                    p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="AUTO",
                    i_CLKA=ClockSignal(), i_CLKB=ClockSignal(), i_CEA=1, i_OCEA=1, i_CEB=1, i_OCEB=1,
                    i_WEA=self.we, i_WEB=0, i_RSTA=0, i_RSTB=0,
                    i_CSA0=0, i_CSA1=0, i_CSA2=0, i_CSB0=0, i_CSB1=0, i_CSB2=0, **ports)
            return m
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self._width), depth=self._depth, init=[])
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port()
        m.d.comb += [rd.addr.eq(self.raddr), wr.addr.eq(self.waddr), wr.data.eq(self.wdata), wr.en.eq(self.we)]
        m.d.sync += self.rdata.eq(rd.data)
        return m


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
        The word at the ``addr`` of :attr:`latency` cycles earlier, after a read (``we`` low).
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

    @property
    def latency(self):
        """Cycles from ``addr`` to ``rd_data``: 2 for block RAM with ``read_register`` (the
        RAM's output register), else 1."""
        return 2 if self._params.memory == "bram" and self._params.read_register else 1

    def elaborate(self, platform):
        m = Module()
        p = self._params
        if p.memory == "bram" and p.read_register:
            m.submodules.ram = ram = RegisteredRAM(width=p.word_bits, depth=p.weight_depth)
            m.d.comb += [ram.raddr.eq(self.addr), ram.waddr.eq(self.addr), ram.wdata.eq(self.wr_data),
                         ram.we.eq(self.we), self.rd_data.eq(ram.rdata)]
            return m
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
