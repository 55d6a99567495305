"""Bit layouts of every stream the engine speaks, derived from :class:`EngineParams`.

These layout objects are the single definition of the engine's words: the gateware
declares its ports with them, and the host and testbenches build and read words with
the same objects (``layout.const({...}).as_bits()``, ``layout.from_bits(word)``).
The golden model's packers (:mod:`tritium.sim.golden`) produce the same bits; a test
checks that the two agree.
"""

import dataclasses

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from ..sim import golden
from ..sim.golden import Packing

__all__ = ["Trit", "EngineLayouts"]


class Trit(enum.Enum, shape=2):
    """One ternary weight: the 2-bit code ``w + 1`` (:mod:`golden` owns the values).
    Code 3 is invalid; the datapath treats it as zero."""
    NEG = golden.TRIT_CODE_NEG
    ZERO = golden.TRIT_CODE_ZERO
    POS = golden.TRIT_CODE_POS


@dataclasses.dataclass(frozen=True)
class EngineLayouts:
    """All layouts of an engine with parameters ``params``.

    Members
    -------
    lane_weights : one lane's weights for one cycle: ``ArrayLayout(Trit, trits)`` for TRIT2,
        ``ArrayLayout(unsigned(8), trits // 5)`` (BASE3 bytes) for BASE3.
    weight_word : ``ArrayLayout(lane_weights, lanes)``; lane ``l`` in the ``l``-th slice.
    activation : ``ArrayLayout(signed(8), trits)``; one activation word.
    command : ``{base, rows, chunks}`` -- the weight word address of the matrix, its row
        count ``M`` and its activation word count ``ceil(K / trits)``.
    weight_write : ``{addr, data: weight_word}``.
    result : ``{values: ArrayLayout(signed(acc_width), lanes), count, last}`` -- one tile of rows;
        the first ``count`` values are valid; ``last`` on the final tile of a product.
    """
    params: object

    @property
    def lane_weights(self):
        p = self.params
        if p.packing is Packing.TRIT2:
            return data.ArrayLayout(Trit, p.trits)
        return data.ArrayLayout(unsigned(8), p.trits // golden.BASE3_TRITS_PER_BYTE)

    @property
    def weight_word(self):
        return data.ArrayLayout(self.lane_weights, self.params.lanes)

    @property
    def activation(self):
        return data.ArrayLayout(signed(8), self.params.trits)

    @property
    def addr_shape(self):
        return unsigned(max(1, (self.params.weight_depth - 1).bit_length()))

    @property
    def command(self):
        p = self.params
        return data.StructLayout({
            "base": self.addr_shape,
            "rows": unsigned(p.max_rows.bit_length()),
            "chunks": unsigned(p.max_chunks.bit_length()),
        })

    @property
    def weight_write(self):
        return data.StructLayout({"addr": self.addr_shape, "data": self.weight_word})

    @property
    def result(self):
        p = self.params
        return data.StructLayout({
            "values": data.ArrayLayout(signed(p.acc_width), p.lanes),
            "count": unsigned(p.lanes.bit_length()),
            "last": unsigned(1),
        })

    # -- words for host and testbenches, built with the layouts above -------------------------
    def command_bits(self, *, base, rows, chunks):
        """The ``cmd`` payload bits for a product."""
        return self.command.const({"base": base, "rows": rows, "chunks": chunks}).as_bits()

    def weight_write_bits(self, *, addr, word):
        """The ``wr`` payload bits writing weight word ``word`` (an int) at ``addr``."""
        return self.weight_write.const({"addr": addr, "data": self.weight_word.from_bits(word)}).as_bits()

    def activation_bits(self, values):
        """The ``act`` payload bits for one word of ``trits`` int8 values."""
        return self.activation.const([int(v) for v in values]).as_bits()

    def decode_result(self, bits):
        """``(values, last)`` of a ``res`` payload: the ``count`` valid values as a list of ints."""
        r = self.result.from_bits(bits)
        return [int(r.values[i]) for i in range(int(r.count))], bool(r.last)
