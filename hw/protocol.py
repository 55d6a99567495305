"""The device link protocol: the one definition used by gateware, host and tests.

Framed commands over a byte stream (a UART on the boards). Every frame, both directions::

    SYNC | seq | op | len_lo | len_hi | payload[len] | crc_lo | crc_hi

``crc`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR) over
``seq .. payload``. A reply echoes the request's ``seq`` and has ``op | 0x80``; an error reply
has op :data:`ERROR` and payload ``[error code, request op, expected seq]``.

Sequence numbers: after :attr:`Op.IDENTIFY` or :attr:`Op.RESET` (any seq), each request must
carry the previous request's ``seq + 1`` (mod 256); otherwise the device answers
:attr:`Err.BAD_SEQ` without executing it. A frame whose CRC checks and whose seq is accepted
consumes that seq, whether it is then executed or rejected (:data:`SEQ_CONSUMING_ERRORS`); a
frame refused before that (BAD_CRC, an oversize BAD_LENGTH, TIMEOUT, BAD_SEQ) does not. A frame
that stops arriving (no byte for :data:`IDLE_TIMEOUT_BYTES` byte times) is dropped with
:attr:`Err.TIMEOUT`; after an oversize length the device skips the declared payload and CRC (or
everything up to the idle timeout) unread. ``docs/protocol.md`` describes each command.

Every byte layout (the frame header, each payload) is declared once here as a :class:`Layout`:
the host and the golden device pack and unpack with it as a ``struct.Struct``, the gateware views
the same bits through its Amaranth ``lib.data`` layout (:attr:`Layout.shape`). The frame CRC is
Amaranth's catalogue entry :data:`CRC_ALGORITHM`: the gateware builds its CRC units from it
(:func:`crc_parameters`). This module imports Amaranth only when a gateware layout or the CRC
unit is asked for, so the host runs without it.
"""

import enum
import functools
import struct

from ..sim.golden import Packing, TritiumValueError  # Packing: the spec's, with its link code (.code)
from .params import MEMORY_KINDS, LMParams

__all__ = ["check_link_params", "SYNC", "ERROR", "REPLY", "VERSION", "MAGIC", "SLOTS", "HEADER_BYTES", "IDLE_TIMEOUT_BYTES",
           "Op", "Err", "Packing", "crc16", "encode_frame", "FrameDecoder", "ProtocolError",
           "identify_payload", "parse_identify", "acc_bytes", "matvec_link_bytes", "max_payload",
           "max_link_rows", "IDEMPOTENT", "SEQ_CONSUMING_ERRORS", "MEMORY_CODES", "FLAG_READ_REGISTER",
           "SET_SLOT_LAYOUT", "STATUS_LAYOUT", "ERROR_LAYOUT", "IDENTIFY_LAYOUT", "FLAG_LM", "FLAG_VECTOR_2", "FLAG_VECTOR_4", "Space",
           "WRITE_MEM_HEADER", "LM_CONFIG_LAYOUT", "GENERATE_LAYOUT", "GENERATE_END_LAYOUT", "NO_STOP", "Stop",
           "space_depth", "space_element_bytes", "instruction_bytes", "generate_payload",
           "Layout", "FRAME_HEADER", "FRAME_CRC", "WRITE_WEIGHTS_HEADER", "MATVEC_HEADER",
           "CRC_ALGORITHM", "CRC_POLYNOMIAL", "CRC_INITIAL", "crc_parameters"]

SYNC = 0x54          # 'T'
REPLY = 0x80         # reply op = request op | REPLY
ERROR = 0xFF         # error reply op
VERSION = 3          # 2: IDENTIFY also reports memory kind, flags and max_rows; 3: and the LM step's sizes
MAGIC = b"TRIT"
SLOTS = 32           # named matrix slots on the device (a power of two)
IDLE_TIMEOUT_BYTES = 64


class Layout:
    """A byte layout of the protocol, declared once: named little-endian fields, in order.

    Parameters
    ----------
    **fields : int or str
        Each field's width in bits (8, 16 or 32: an unsigned little-endian integer), or a
        ``struct`` byte-string code such as ``"4s"``.

    Members
    -------
    fields : dict
        The declaration.
    size : int
        Bytes.
    format : str
        The ``struct`` format (``"<BHHH"``).
    pack, unpack
        Those of the ``struct.Struct``: what the host and the golden device use.
    shape : amaranth.lib.data.StructLayout
        The same bits for gateware (field ``i`` of width ``w`` at the bits it has in the
        little-endian bytes): ``shape(value)`` views a payload's bits field by field. Built on
        first use (it imports Amaranth).
    """

    _CODES = {8: "B", 16: "H", 32: "I"}

    def __init__(self, **fields):
        codes = []
        for name, spec in fields.items():
            if isinstance(spec, str):
                if not (spec.endswith("s") and spec[:-1].isdigit()):
                    raise ValueError(f"field {name}: {spec!r} is not a byte-string code like '4s'")
                codes.append(spec)
            elif spec in self._CODES:
                codes.append(self._CODES[spec])
            else:
                raise ValueError(f"field {name}: width {spec!r} must be 8, 16 or 32 bits, or a code like '4s'")
        self.fields = dict(fields)
        self._struct = struct.Struct("<" + "".join(codes))
        self.size, self.format = self._struct.size, self._struct.format
        self.pack, self.unpack = self._struct.pack, self._struct.unpack

    @functools.cached_property
    def shape(self):
        from amaranth.lib import data   # gateware only: the host never imports Amaranth
        return data.StructLayout({name: data.ArrayLayout(8, int(spec[:-1])) if isinstance(spec, str) else spec
                                  for name, spec in self.fields.items()})

    def __repr__(self):
        return "Layout(" + ", ".join(f"{name}={spec!r}" for name, spec in self.fields.items()) + ")"


#: A frame's header after SYNC (the CRC covers it, then the payload).
FRAME_HEADER = Layout(seq=8, op=8, length=16)
#: A frame's trailer: the CRC of the header and payload.
FRAME_CRC = Layout(crc=16)
HEADER_BYTES = 1 + FRAME_HEADER.size     # SYNC, seq, op, len_lo, len_hi


class Op(enum.IntEnum):
    """Request opcodes (payloads little-endian)."""
    #: ``[]`` -> ``identify_payload``; resynchronises ``seq``.
    IDENTIFY = 0x01
    #: ``[addr u16, word * n]`` -> ``[]``; writes ``n`` consecutive weight words of ``word_bytes``.
    WRITE_WEIGHTS = 0x02
    #: ``[slot u8, base u16, rows u16, chunks u16]`` -> ``[]``; names a resident matrix.
    SET_SLOT = 0x03
    #: ``[slot u8, activation bytes * (chunks * trits)]`` -> ``[y_0 .. y_rows-1]``, each
    #: ``acc_bytes`` little-endian two's complement.
    MATVEC = 0x04
    #: ``[]`` -> ``[]``; clears every slot (weights stay in memory), counters and ``seq``.
    RESET = 0x05
    #: ``[]`` -> ``[frames_ok u16, errors u16, last_error u8]``.
    STATUS = 0x06
    #: ``[space u8, addr u32, element * n]`` -> ``[]``; writes ``n`` consecutive elements of one
    #: memory of the LM step (:class:`Space`; devices with the LM step only).
    WRITE_MEM = 0x07
    #: ``[step_start u16, prog_end u16, logits u16, vocab u16]`` -> ``[]``; arms GENERATE: the
    #: reset program is instructions ``0 .. step_start-1``, the token step ``step_start ..
    #: prog_end-1``, the logits are ``vocab`` words at vector address ``logits``.
    LM_CONFIG = 0x08
    #: ``[max_tokens u16, seed u32, inv_temperature u16, top_k u16, stop u16, prompt tokens u8 * n]``
    #: -> one reply frame per generated token ``[token u8]`` as it is made, then the end frame
    #: ``[count u16, reason u8]`` (:class:`Stop`). The whole LM step runs on the device.
    GENERATE = 0x09


class Err(enum.IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2      # length wrong for the op, or over the device's maximum payload
    UNKNOWN_OP = 3
    BAD_SLOT = 4        # slot number >= SLOTS
    EMPTY_SLOT = 5      # MATVEC on a slot never set (or cleared by RESET)
    OUT_OF_RANGE = 6    # address, rows or chunks outside the engine's capacity
    BAD_SEQ = 7
    TIMEOUT = 8         # a frame stopped arriving part-way
    NOT_LOADED = 9      # GENERATE before LM_CONFIG (or after RESET)


#: Requests the host may send again when their reply is lost: executing one twice in a row leaves
#: the device as executing it once (STATUS counts the retry). A request whose repetition would
#: change the outcome must not be listed; the host never retries it.
IDEMPOTENT = frozenset({Op.IDENTIFY, Op.WRITE_WEIGHTS, Op.SET_SLOT, Op.MATVEC, Op.RESET, Op.STATUS,
                        Op.WRITE_MEM, Op.LM_CONFIG})   # not GENERATE: its replies stream; a retry would run it twice

#: Error replies to a frame whose CRC checked and whose seq was accepted: that seq is used up (the
#: device expects ``seq + 1`` next). BAD_CRC, BAD_SEQ, TIMEOUT and a BAD_LENGTH for a length over
#: :func:`max_payload` (refused from the header) leave the expected seq unchanged.
SEQ_CONSUMING_ERRORS = frozenset({Err.BAD_LENGTH, Err.UNKNOWN_OP, Err.BAD_SLOT, Err.EMPTY_SLOT,
                                  Err.OUT_OF_RANGE, Err.NOT_LOADED})

#: WRITE_WEIGHTS payload header (the words follow): the first word's address.
WRITE_WEIGHTS_HEADER = Layout(addr=16)
#: SET_SLOT payload: slot, base word, rows, chunks.
SET_SLOT_LAYOUT = Layout(slot=8, base=16, rows=16, chunks=16)
#: MATVEC payload header (the activations follow): the slot.
MATVEC_HEADER = Layout(slot=8)
#: STATUS reply: frames_ok, errors (both wrap mod 65536), last_error.
STATUS_LAYOUT = Layout(frames_ok=16, errors=16, last_error=8)
#: Error reply payload: error code (an :class:`Err`), request op, expected seq.
ERROR_LAYOUT = Layout(code=8, op=8, expected=8)


class Space(enum.IntEnum):
    """The memories WRITE_MEM fills, and each element's size on the link."""
    PROGRAM = 0     #: instructions, :func:`instruction_bytes` each (little-endian bits of the layout)
    CONST = 1       #: constant mantissas, int8
    EMBED = 2       #: the embedding, int8, row after row (``token * hidden + i``)
    SCALE = 3       #: the embedding's per-row scale mantissas, int16 little-endian


#: WRITE_MEM payload header: space, first element address.
WRITE_MEM_HEADER = Layout(space=8, addr=32)
#: LM_CONFIG payload: step_start, prog_end, logits address, vocab.
LM_CONFIG_LAYOUT = Layout(step_start=16, prog_end=16, logits=16, vocab=16)
#: GENERATE payload header (the prompt tokens follow, at least one): max_tokens (>= 1), seed,
#: inv_temperature (Q8.8, 0 greedy), top_k (0 all), stop (a token, or :data:`NO_STOP`).
GENERATE_LAYOUT = Layout(max_tokens=16, seed=32, inv_temperature=16, top_k=16, stop=16)
#: GENERATE's end frame: tokens generated, :class:`Stop` reason.
GENERATE_END_LAYOUT = Layout(count=16, reason=8)
#: GENERATE ``stop`` value for no stop token (any value above 255 is none).
NO_STOP = 0xFFFF


class Stop(enum.IntEnum):
    """Why GENERATE ended (its end frame)."""
    MAX_TOKENS = 0
    STOP_TOKEN = 1   #: the stop token was generated (and sent)


def instruction_bytes(lm):
    """Bytes of one program instruction on the link for :class:`LMParams` ``lm``."""
    from .vector import instruction_layout   # amaranth layouts: imported only when asked
    from amaranth.hdl import Shape
    return -(-Shape.cast(instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits)).width // 8)


def space_element_bytes(lm, space):
    return {Space.PROGRAM: instruction_bytes(lm), Space.CONST: 1, Space.EMBED: 1, Space.SCALE: 2}[Space(space)]


def space_depth(lm, space):
    """Elements ``space`` holds on a device with :class:`LMParams` ``lm``."""
    return {Space.PROGRAM: lm.prog_depth, Space.CONST: lm.cmem_depth, Space.EMBED: lm.embed_depth,
            Space.SCALE: lm.max_vocab}[Space(space)]


def generate_payload(prompt, *, max_tokens, seed=0, inv_temperature=0, top_k=0, stop=NO_STOP):
    """The GENERATE request payload; raises ``ValueError`` for fields that do not fit."""
    prompt = bytes(prompt)
    if not prompt:
        raise ValueError("GENERATE needs at least one prompt token")
    if not 1 <= max_tokens <= 0xFFFF:
        raise ValueError(f"max_tokens = {max_tokens} must be in 1..65535")
    for name, value, top in (("inv_temperature", inv_temperature, 0xFFFF), ("top_k", top_k, 0xFFFF),
                             ("stop", stop, 0xFFFF)):
        if not 0 <= value <= top:
            raise ValueError(f"{name} = {value} must be in 0..{top}")
    return GENERATE_LAYOUT.pack(max_tokens, seed & 0xFFFFFFFF, inv_temperature, top_k, stop) + prompt


class ProtocolError(Exception):
    """A malformed frame seen by the host (not an error reply from the device)."""


#: The frame CRC: the name of its entry in Amaranth's CRC catalogue (``amaranth.lib.crc.catalog``),
#: CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR.
CRC_ALGORITHM = "CRC16_CCITT_FALSE"
#: That entry's polynomial and initial value, for :func:`crc16` (which must run without Amaranth:
#: the host imports none); ``tests/test_link_blocks.py`` checks them against the catalogue.
CRC_POLYNOMIAL, CRC_INITIAL = 0x1021, 0xFFFF


def crc_parameters():
    """The frame CRC as Amaranth's :class:`amaranth.lib.crc.Parameters` for byte-wide data: its
    ``create()`` is the gateware CRC unit (one byte per cycle), its ``compute(data)`` equals
    :func:`crc16`. Imports Amaranth."""
    from amaranth.lib.crc import catalog
    return getattr(catalog, CRC_ALGORITHM)(data_width=8)


def crc16(data, crc=CRC_INITIAL):
    """The frame CRC (:data:`CRC_ALGORITHM`) of ``data``, continuing from ``crc`` (``crc16(b, crc16(a))
    == crc16(a + b)``: the algorithm has no final XOR or reflection); ``crc16(b"123456789") == 0x29B1``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLYNOMIAL) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(seq, op, payload=b""):
    payload = bytes(payload)
    if not 0 <= seq <= 255 or not 0 <= op <= 255:
        raise ValueError(f"seq {seq} and op {op} must be bytes")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the 16-bit length field")
    body = FRAME_HEADER.pack(seq, op, len(payload)) + payload
    return bytes([SYNC]) + body + FRAME_CRC.pack(crc16(body))


class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes)`` returns the complete frames ``(seq, op, payload)``.

    Bytes before a SYNC are skipped; a frame whose CRC does not match raises
    :class:`ProtocolError` (the decoder then resumes after that frame's SYNC byte).
    """

    def __init__(self, max_payload=0xFFFF):
        self.buf = bytearray()
        self.max_payload = max_payload

    def feed(self, data):
        self.buf += data
        frames = []
        while True:
            item = self._next()
            if item is None:
                return frames
            if isinstance(item, ProtocolError):
                raise item
            frames.append(item)

    def feed_all(self, data):
        """Like :meth:`feed`, but never raises: returns ``(frames, errors)``, every complete frame
        in the order received and a :class:`ProtocolError` for each corrupt one skipped (a
        corrupt frame does not lose the good frames around it)."""
        self.buf += data
        frames, errors = [], []
        while (item := self._next()) is not None:
            (errors if isinstance(item, ProtocolError) else frames).append(item)
        return frames, errors

    def _next(self):
        # the next frame, a ProtocolError for a corrupt one (skipped: decoding resumes after its
        # SYNC byte), or None when more bytes are needed
        start = self.buf.find(bytes([SYNC]))
        if start < 0:
            self.buf.clear()
            return None
        del self.buf[:start]
        if len(self.buf) < HEADER_BYTES:
            return None
        _, _, length = FRAME_HEADER.unpack(self.buf[1:HEADER_BYTES])
        if length > self.max_payload:
            del self.buf[:1]
            return ProtocolError(f"frame length {length} exceeds {self.max_payload}")
        total = HEADER_BYTES + length + 2
        if len(self.buf) < total:
            return None
        frame = bytes(self.buf[:total])
        (want,) = FRAME_CRC.unpack(frame[-FRAME_CRC.size:])
        if crc16(frame[1:-FRAME_CRC.size]) != want:
            del self.buf[:1]
            return ProtocolError(f"frame CRC {want:#06x} does not match its contents")
        del self.buf[:total]
        return (frame[1], frame[2], frame[HEADER_BYTES:-2])

    def clear(self):
        """Forget any partial frame (the host's resynchronisation)."""
        self.buf.clear()


def acc_bytes(params):
    """Bytes per result value on the link: ``ceil(acc_width / 8)``."""
    return -(-params.acc_width // 8)


def matvec_link_bytes(params, m, k):
    """Bytes one MATVEC of an ``m x k`` matrix moves on the link: the cost model's
    :func:`tritium.sim.cost.matvec_link_bytes` (defined there, with the cycle model)."""
    from ..sim.cost import matvec_link_bytes  # the cost model builds on this module's sizes
    return matvec_link_bytes(params, m, k)


def max_payload(params):
    """Largest request payload the device accepts: a MATVEC at ``max_k``, or 32 weight words (at
    least 269 bytes: a GENERATE with a 256-token prompt, a WRITE_MEM of 256 bytes)."""
    return max(1 + params.max_chunks * params.trits, 2 + 32 * -(-params.word_bits // 8),
               GENERATE_LAYOUT.size + 256 + 1)


#: The IDENTIFY reply: magic, version, lanes, trits, packing, max_k, weight_depth, acc_bytes,
#: slots, max_payload, clock_hz, memory, flags, max_rows, then the LM step's sizes (all 0 without
#: it): vmem_depth - 1, cmem_depth - 1, prog_depth - 1, embed_depth, max_vocab (widths in
#: ``docs/protocol.md``).
IDENTIFY_LAYOUT = Layout(magic="4s", version=8, lanes=8, trits=8, packing=8, max_k=16, weight_depth=16,
                         acc_bytes=8, slots=8, max_payload=16, clock_hz=32, memory=8, flags=8, max_rows=16,
                         vmem_depth_m1=16, cmem_depth_m1=16, prog_depth_m1=16, embed_depth=32, max_vocab=16)
_IDENT = IDENTIFY_LAYOUT
#: IDENTIFY ``memory`` codes: the index in this tuple (:data:`tritium.hw.params.MEMORY_KINDS`).
MEMORY_CODES = MEMORY_KINDS
#: IDENTIFY ``flags`` bit: the weight read port is registered (``EngineParams.read_register``).
FLAG_READ_REGISTER = 0x01
#: IDENTIFY ``flags`` bit: the device runs the whole LM step (WRITE_MEM, LM_CONFIG, GENERATE).
FLAG_LM = 0x02
#: IDENTIFY ``flags`` bits 2-3: log2 of the LM step's vector lanes (``LMParams.vector_lanes``):
#: 0x04 two lanes, 0x08 four, 0x0C eight.
FLAG_VECTOR_2 = 0x04
FLAG_VECTOR_4 = 0x08
_VECTOR_FLAGS = {1: 0, 2: FLAG_VECTOR_2, 4: FLAG_VECTOR_4, 8: FLAG_VECTOR_2 | FLAG_VECTOR_4}


def max_link_rows(params):
    """Most rows a slot may have: the engine's ``max_rows``, and few enough that a MATVEC reply
    (``rows * acc_bytes`` bytes) fits the 16-bit length field."""
    return min(params.max_rows, 0xFFFF // acc_bytes(params))


def check_link_params(params):
    """Raise :class:`ValueError` for an engine the 16-bit fields of the protocol cannot address."""
    for name, value in (("weight_depth", params.weight_depth), ("max_k", params.max_k),
                        ("max_payload", max_payload(params))):
        if value > 0xFFFF:
            raise ValueError(f"{name} = {value} does not fit the link protocol's 16-bit fields (max 65535)")


def identify_payload(params, clock_hz, lm=None):
    """The IDENTIFY reply (:data:`IDENTIFY_LAYOUT`): every :class:`EngineParams` field, so the
    host can rebuild the device's parameters exactly, the link facts, and the
    :class:`LMParams` ``lm`` of a device that runs the LM step (``None``: none)."""
    check_link_params(params)
    flags = (FLAG_READ_REGISTER if params.read_register else 0) | (FLAG_LM if lm is not None else 0) \
        | (_VECTOR_FLAGS[lm.vector_lanes] if lm is not None else 0)
    sizes = (lm.vmem_depth - 1, lm.cmem_depth - 1, lm.prog_depth - 1, lm.embed_depth, lm.max_vocab) if lm \
        else (0, 0, 0, 0, 0)
    return _IDENT.pack(MAGIC, VERSION, params.lanes, params.trits, params.packing.code,
                       params.max_k, params.weight_depth, acc_bytes(params), SLOTS, max_payload(params),
                       clock_hz, MEMORY_CODES.index(params.memory), flags, max_link_rows(params), *sizes)


def parse_identify(payload):
    """Inverse of :func:`identify_payload`: a dict with the engine parameters (``lanes``,
    ``trits``, ``packing``, ``max_k``, ``weight_depth``, ``memory``, ``read_register``: the
    keyword arguments of :class:`EngineParams`) and link facts. Raises :class:`ProtocolError` for
    a reply of the wrong size, magic or version, or an unknown packing or memory code."""
    if len(payload) != _IDENT.size:
        raise ProtocolError(f"IDENTIFY reply of {len(payload)} bytes, expected {_IDENT.size}"
                            + (" (protocol version 1?)" if len(payload) == 20 else
                               " (protocol version 2?)" if len(payload) == 24 else ""))
    (magic, version, lanes, trits, packing, max_k, depth, accb, slots, maxp, clock, memory, flags,
     max_rows, vmem, cmem, prog, embed, vocab) = _IDENT.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError(f"device answered IDENTIFY with magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"device speaks protocol version {version}, this host speaks {VERSION}")
    try:
        packing_name = Packing.from_code(packing).value
    except TritiumValueError as e:
        raise ProtocolError(f"IDENTIFY reply: {e}") from None
    if memory >= len(MEMORY_CODES):
        raise ProtocolError(f"IDENTIFY reports memory code {memory}, not one of 0..{len(MEMORY_CODES) - 1}")
    lm = None
    if flags & FLAG_LM:
        try:
            lm = LMParams(vmem_depth=vmem + 1, cmem_depth=cmem + 1, prog_depth=prog + 1, embed_depth=embed,
                          max_vocab=vocab, vector_lanes=1 << ((flags >> 2) & 3))
        except TritiumValueError as e:
            raise ProtocolError(f"IDENTIFY reports LM step sizes this host cannot model: {e}") from None
    return {"lanes": lanes, "trits": trits, "packing": packing_name, "max_k": max_k,
            "weight_depth": depth, "memory": MEMORY_CODES[memory],
            "read_register": bool(flags & FLAG_READ_REGISTER), "acc_bytes": accb, "slots": slots,
            "max_payload": maxp, "clock_hz": clock, "max_rows": max_rows, "lm": lm}
