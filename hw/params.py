"""Build-time parameters of the ternary matrix-vector engine (no HDL imports).

One :class:`EngineParams` object describes an engine instance. The gateware is
elaborated from it, the host uses it to check capacity and build memory images,
and the tests use it to pick layouts, so all three agree by construction.
"""

import dataclasses

from ..sim import golden
from ..sim.golden import Packing, TritiumValueError

__all__ = ["rejected", "EngineParams", "LMParams", "MEMORY_KINDS", "SPRAM_DEPTH", "SPRAM_WIDTH", "DEFAULT", "CONFIGS",
           "LM_DEFAULT"]

#: ``"bram"``: an ``amaranth.lib.memory.Memory`` (block RAM: iCE40 EBR, ECP5 DP16KD);
#: ``"spram"``: iCE40 UP5K ``SB_SPRAM256KA`` blocks, 16 bits wide, 16384 deep each.
MEMORY_KINDS = ("bram", "spram")
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16
SPRAM_COUNT_UP5K = 4


def rejected(elaboratable, exc):
    """Mark a design object whose constructor is refusing its arguments, so Amaranth does not
    also warn that it was never used; returns ``exc`` for the caller to raise."""
    elaboratable._MustUse__silence = True
    return exc


def _positive_int(name, value, *, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TritiumValueError(f"{name} = {value!r} must be a positive integer")
    if maximum is not None and value > maximum:
        raise TritiumValueError(f"{name} = {value} exceeds the limit {maximum}")
    return value


@dataclasses.dataclass(frozen=True)
class EngineParams:
    """Parameters of one ternary matrix-vector engine.

    Parameters
    ----------
    lanes : int
        Output rows computed in parallel (one accumulator each).
    trits : int
        Weights each lane consumes per cycle (and activations broadcast per cycle).
        A multiple of 5 for :attr:`Packing.BASE3`.
    packing : Packing or str
        Weight memory packing (``"trit2"`` or ``"base3"``).
    max_k : int
        Largest K (columns) a product may have; sets the activation buffer depth and
        the accumulator width (:func:`golden.acc_width` of ``max_k`` rounded up to whole chunks).
    weight_depth : int
        Weight memory depth in words (one word = ``lanes * lane_bits`` bits).
    memory : str
        ``"bram"`` or ``"spram"`` (see :data:`MEMORY_KINDS`).
    read_register : bool
        Register the weight and activation words after the memories (one more pipeline cycle):
        takes the block RAM's clock-to-output off the critical path. On ECP5 the register is
        the DP16KD's own output register (``OUTREG``; its ``NOREG`` clock-to-output is 5.8 ns),
        elsewhere a fabric register (:class:`tritium.hw.wmem.RegisteredRAM`).

    Raises
    ------
    TritiumValueError
        On any parameter that is not a positive integer, an unknown packing or memory
        kind, ``trits`` not a multiple of the packing group, or an SPRAM word wider than
        the UP5K's four SPRAMs.
    """
    lanes: int
    trits: int
    packing: Packing
    max_k: int
    weight_depth: int
    memory: str = "bram"
    read_register: bool = False

    def __init__(self, *, lanes, trits, packing=Packing.TRIT2, max_k=1024, weight_depth=512, memory="bram",
                 read_register=False):
        _positive_int("lanes", lanes, maximum=256)
        _positive_int("trits", trits, maximum=64)
        try:
            packing = Packing(packing)
        except ValueError:
            raise TritiumValueError(
                f"packing = {packing!r} is not one of {[p.value for p in Packing]}") from None
        golden.lane_bits(trits, packing)  # validates trits vs packing group
        _positive_int("max_k", max_k, maximum=1 << 20)
        _positive_int("weight_depth", weight_depth, maximum=1 << 20)
        if memory not in MEMORY_KINDS:
            raise TritiumValueError(f"memory = {memory!r} is not one of {MEMORY_KINDS}")
        if not isinstance(read_register, bool):
            raise TritiumValueError(f"read_register = {read_register!r} must be True or False")
        for name, value in (("lanes", lanes), ("trits", trits), ("packing", packing),
                            ("max_k", max_k), ("weight_depth", weight_depth), ("memory", memory),
                            ("read_register", read_register)):
            object.__setattr__(self, name, value)
        if memory == "spram":
            if self.spram_count > SPRAM_COUNT_UP5K:
                raise TritiumValueError(
                    f"an SPRAM weight word of {self.word_bits} bits needs {self.spram_count} SPRAMs; "
                    f"the UP5K has {SPRAM_COUNT_UP5K} (at most {SPRAM_COUNT_UP5K * SPRAM_WIDTH} bits)")
            if weight_depth > SPRAM_DEPTH:
                raise TritiumValueError(f"weight_depth = {weight_depth} exceeds the SPRAM depth {SPRAM_DEPTH}")

    # -- derived quantities -----------------------------------------------------------------
    @property
    def lane_bits(self):
        """Weight bits one lane reads per cycle."""
        return golden.lane_bits(self.trits, self.packing)

    @property
    def word_bits(self):
        """Weight memory word width: every lane's bits for one cycle."""
        return self.lanes * self.lane_bits

    @property
    def max_chunks(self):
        """Activation words in the largest product: ``ceil(max_k / trits)``."""
        return -(-self.max_k // self.trits)

    @property
    def acc_width(self):
        """Lane accumulator width: exact for ``max_chunks * trits`` products (padding included)."""
        return golden.acc_width(self.max_chunks * self.trits)

    @property
    def partial_width(self):
        return golden.partial_width(self.trits)

    @property
    def max_rows(self):
        """Most rows one product may have: every word of the weight memory used by one matrix."""
        return self.weight_depth * self.lanes

    @property
    def trits_per_cycle(self):
        """Multiply-free MACs per cycle in steady state."""
        return self.lanes * self.trits

    @property
    def capacity_trits(self):
        """Ternary weights the weight memory holds."""
        return self.weight_depth * self.lanes * self.trits

    @property
    def spram_count(self):
        return -(-self.word_bits // SPRAM_WIDTH)

    def words_for(self, m, k):
        """Weight words an ``m x k`` matrix occupies: ``ceil(m/lanes) * ceil(k/trits)``."""
        return -(-m // self.lanes) * -(-k // self.trits)

    def check_shape(self, m, k, base=0):
        """Raise :class:`TritiumValueError` unless an ``m x k`` matrix at word ``base`` fits."""
        _positive_int("M (rows)", m)
        _positive_int("K (columns)", k)
        if k > self.max_k:
            raise TritiumValueError(f"K = {k} exceeds the engine's max_k = {self.max_k}")
        if not isinstance(base, int) or base < 0:
            raise TritiumValueError(f"weight base address {base!r} must be a non-negative integer")
        need = self.words_for(m, k)
        if base + need > self.weight_depth:
            raise TritiumValueError(
                f"a {m}x{k} matrix needs {need} weight words; from base {base} that passes the "
                f"weight memory depth {self.weight_depth}")

    def describe(self):
        return (f"{self.lanes} lanes x {self.trits} trits/cycle, {self.packing.value}, "
                f"max_k {self.max_k}, {self.weight_depth} x {self.word_bits}-bit {self.memory} words "
                f"({self.capacity_trits} trits), {self.acc_width}-bit accumulators")

    def as_dict(self):
        d = {"lanes": self.lanes, "trits": self.trits, "packing": self.packing.value,
             "max_k": self.max_k, "weight_depth": self.weight_depth, "memory": self.memory}
        if self.read_register:
            d["read_register"] = True
        return d

    @property
    def pipeline_depth(self):
        """Cycles from a weight word's read being issued to its lane sum reaching the accumulators."""
        return 3 + self.read_register

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


#: The default engine: 8 lanes x 4 trits (32 MAC/cycle) over a 64-bit weight word, which is
#: exactly the UP5K's four 16-bit SPRAMs read in parallel (16384 words = 512K trits).
DEFAULT = EngineParams(lanes=8, trits=4, packing="trit2", max_k=1024, weight_depth=512)

#: Named configurations used by tests, the CLI and the synthesis reports.
CONFIGS = {
    "default": DEFAULT,
    "up5k-spram": EngineParams(lanes=8, trits=4, packing="trit2", max_k=2048,
                               weight_depth=SPRAM_DEPTH, memory="spram"),
    "wide": EngineParams(lanes=16, trits=2, packing="trit2", max_k=512, weight_depth=256),
    "base3": EngineParams(lanes=4, trits=10, packing="base3", max_k=1000, weight_depth=256),
    "tiny": EngineParams(lanes=1, trits=1, packing="trit2", max_k=64, weight_depth=64),
    "odd": EngineParams(lanes=3, trits=3, packing="trit2", max_k=200, weight_depth=128),
    "default-reg": EngineParams(lanes=8, trits=4, packing="trit2", max_k=1024, weight_depth=512,
                                read_register=True),
    # the ULX3S 85F board's engine: 64 lanes x 4 trits (256 MAC/cycle) over 57 DP16KD (2048 words
    # of 512 bits, 512K trits); beside the on-chip LM step (docs/lmcore.md: cycles per token for
    # 8, 16, 32 and 64 lanes)
    "ulx3s": EngineParams(lanes=64, trits=4, packing="trit2", max_k=2048, weight_depth=2048),
}


@dataclasses.dataclass(frozen=True)
class LMParams:
    """Sizes of the on-chip LM step beside an engine (:class:`tritium.hw.lmcore.LMCore`).

    Parameters
    ----------
    vmem_depth : int
        Vector memory words (int32 Q16.16), at most 65536.
    cmem_depth : int
        Constant memory (int8 mantissas), at most 65536.
    prog_depth : int
        Program memory (instructions), at most 65536.
    embed_depth : int
        Embedding memory (int8 values, ``vocab * hidden`` of a model), at most 2**24.
    max_vocab : int
        Most tokens a model may have (2 .. 256: tokens travel as bytes); also the depth of the
        embedding's per-row scale memory.
    vector_lanes : int
        Elements per cycle of the vector unit's aligned elementwise instructions (1, 2, 4 or 8;
        :class:`tritium.hw.vector.VectorUnit`). Speed only: the results do not depend on it.
    """
    vmem_depth: int = 2048
    cmem_depth: int = 8192
    prog_depth: int = 256
    embed_depth: int = 32768
    max_vocab: int = 256
    vector_lanes: int = 1

    def __init__(self, *, vmem_depth=2048, cmem_depth=8192, prog_depth=256, embed_depth=32768, max_vocab=256,
                 vector_lanes=1):
        for name, value, top in (("vmem_depth", vmem_depth, 1 << 16), ("cmem_depth", cmem_depth, 1 << 16),
                                 ("prog_depth", prog_depth, 1 << 16), ("embed_depth", embed_depth, 1 << 24),
                                 ("max_vocab", max_vocab, 256)):
            _positive_int(name, value, maximum=top)
            object.__setattr__(self, name, value)
        if max_vocab < 2:
            raise TritiumValueError(f"max_vocab = {max_vocab} must be at least 2")
        if vector_lanes not in (1, 2, 4, 8) or isinstance(vector_lanes, bool):
            raise TritiumValueError(f"vector_lanes = {vector_lanes!r} must be 1, 2, 4 or 8")
        object.__setattr__(self, "vector_lanes", vector_lanes)

    @property
    def addr_bits(self):
        """Width of a vector-memory address in an instruction."""
        return max(1, (self.vmem_depth - 1).bit_length())

    @property
    def caddr_bits(self):
        """Width of a constant-memory address (or matrix number) in an instruction."""
        return max(1, (self.cmem_depth - 1).bit_length())

    def as_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


#: The on-chip LM step sized for the shipped MatMul-free model (1,408 vector words, 4,608 constant
#: bytes, 102 instructions, a 256 x 128 embedding) with room to spare; a four-lane vector unit.
LM_DEFAULT = LMParams(vector_lanes=4)
