"""The device link protocol: the one definition used by gateware, host and tests.

Framed commands over a byte stream (a UART on the boards). Every frame, both directions::

    SYNC | seq | op | len_lo | len_hi | payload[len] | crc_lo | crc_hi

``crc`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR) over
``seq .. payload``. A reply echoes the request's ``seq`` and has ``op | 0x80``; an error reply
has op :data:`ERROR` and payload ``[error code, request op, expected seq]``.

Sequence numbers: after :attr:`Op.IDENTIFY` or :attr:`Op.RESET` (any seq), each request must
carry the previous request's ``seq + 1`` (mod 256); otherwise the device answers
:attr:`Err.BAD_SEQ` without executing it. A frame that stops arriving (no byte for
:data:`IDLE_TIMEOUT_BYTES` byte times) is dropped with :attr:`Err.TIMEOUT`. ``docs/protocol.md``
describes each command.
"""

import enum
import struct

__all__ = ["check_link_params", "SYNC", "ERROR", "REPLY", "VERSION", "MAGIC", "SLOTS", "HEADER_BYTES", "IDLE_TIMEOUT_BYTES",
           "Op", "Err", "Packing", "crc16", "encode_frame", "FrameDecoder", "ProtocolError",
           "identify_payload", "parse_identify", "acc_bytes", "matvec_link_bytes", "max_payload"]

SYNC = 0x54          # 'T'
REPLY = 0x80         # reply op = request op | REPLY
ERROR = 0xFF         # error reply op
VERSION = 1
MAGIC = b"TRIT"
SLOTS = 32           # named matrix slots on the device (a power of two)
HEADER_BYTES = 5     # SYNC, seq, op, len_lo, len_hi
IDLE_TIMEOUT_BYTES = 64


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


class Err(enum.IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2      # length wrong for the op, or over the device's maximum payload
    UNKNOWN_OP = 3
    BAD_SLOT = 4        # slot number >= SLOTS
    EMPTY_SLOT = 5      # MATVEC on a slot never set (or cleared by RESET)
    OUT_OF_RANGE = 6    # address, rows or chunks outside the engine's capacity
    BAD_SEQ = 7
    TIMEOUT = 8         # a frame stopped arriving part-way


class Packing(enum.IntEnum):
    TRIT2 = 0
    BASE3 = 1


class ProtocolError(Exception):
    """A malformed frame seen by the host (not an error reply from the device)."""


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(seq, op, payload=b""):
    payload = bytes(payload)
    if not 0 <= seq <= 255 or not 0 <= op <= 255:
        raise ValueError(f"seq {seq} and op {op} must be bytes")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the 16-bit length field")
    body = bytes([seq, op]) + struct.pack("<H", len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


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
            start = self.buf.find(bytes([SYNC]))
            if start < 0:
                self.buf.clear()
                return frames
            del self.buf[:start]
            if len(self.buf) < HEADER_BYTES:
                return frames
            length = self.buf[3] | self.buf[4] << 8
            if length > self.max_payload:
                del self.buf[:1]
                raise ProtocolError(f"frame length {length} exceeds {self.max_payload}")
            total = HEADER_BYTES + length + 2
            if len(self.buf) < total:
                return frames
            frame = bytes(self.buf[:total])
            want = frame[-2] | frame[-1] << 8
            if crc16(frame[1:-2]) != want:
                del self.buf[:1]
                raise ProtocolError(f"frame CRC {want:#06x} does not match its contents")
            del self.buf[:total]
            frames.append((frame[1], frame[2], frame[HEADER_BYTES:-2]))


def acc_bytes(params):
    """Bytes per result value on the link: ``ceil(acc_width / 8)``."""
    return -(-params.acc_width // 8)


def matvec_link_bytes(params, m, k):
    """Bytes one MATVEC of an ``m x k`` matrix moves on the link: the request (slot and
    ``ceil(k / trits) * trits`` activation bytes) and the reply (``m`` results), both framed."""
    frame = HEADER_BYTES + 2
    return frame + 1 + -(-k // params.trits) * params.trits + frame + m * acc_bytes(params)


def max_payload(params):
    """Largest request payload the device accepts: a MATVEC at ``max_k``, or 32 weight words."""
    return max(1 + params.max_chunks * params.trits, 2 + 32 * -(-params.word_bits // 8), 7)


_IDENT = struct.Struct("<4sBBBBHHBBHI")


def check_link_params(params):
    """Raise :class:`ValueError` for an engine the 16-bit fields of the protocol cannot address."""
    for name, value in (("weight_depth", params.weight_depth), ("max_k", params.max_k),
                        ("max_payload", max_payload(params))):
        if value > 0xFFFF:
            raise ValueError(f"{name} = {value} does not fit the link protocol's 16-bit fields (max 65535)")


def identify_payload(params, clock_hz):
    """The IDENTIFY reply: magic, version, lanes, trits, packing, max_k, weight_depth,
    acc_bytes, slots, max_payload, clock_hz."""
    check_link_params(params)
    return _IDENT.pack(MAGIC, VERSION, params.lanes, params.trits, Packing[params.packing.name],
                       params.max_k, params.weight_depth, acc_bytes(params), SLOTS, max_payload(params),
                       clock_hz)


def parse_identify(payload):
    """Inverse of :func:`identify_payload`: a dict with the engine parameters and link facts."""
    if len(payload) != _IDENT.size:
        raise ProtocolError(f"IDENTIFY reply of {len(payload)} bytes, expected {_IDENT.size}")
    magic, version, lanes, trits, packing, max_k, depth, accb, slots, maxp, clock = _IDENT.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError(f"device answered IDENTIFY with magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"device speaks protocol version {version}, this host speaks {VERSION}")
    return {"lanes": lanes, "trits": trits, "packing": Packing(packing).name.lower(), "max_k": max_k,
            "weight_depth": depth, "acc_bytes": accb, "slots": slots, "max_payload": maxp,
            "clock_hz": clock}
