"""The golden device: the link protocol's reference behaviour, byte for byte, in Python.

:class:`DeviceModel` consumes request bytes and produces reply bytes exactly as the gateware
device (:class:`tritium.hw.device.LinkDevice`) does; the gateware is tested against it with
byte equality, and the host's ``golden`` transport talks to it.
"""

import numpy as np

from ..hw import protocol as P
from . import golden

__all__ = ["DeviceModel"]


class DeviceModel:
    """A byte-level model of the device with engine parameters ``params``.

    ``feed(data) -> bytes`` processes request bytes and returns every reply they caused;
    ``idle_timeout() -> bytes`` is what the device does when no byte arrives for the idle
    timeout: a TIMEOUT error while a frame is part-way (including while skipping the payload of a
    frame refused for its length), nothing between frames.

    TRIT2 code 3 (never written by the host) reads as weight 0, as in the gateware.
    """

    def __init__(self, params, *, clock_hz=12_000_000):
        P.check_link_params(params)
        self.p = params
        self.clock_hz = clock_hz
        self.word_bytes = -(-params.word_bits // 8)
        self.acc_bytes = P.acc_bytes(params)
        self.max_payload = P.max_payload(params)
        self.memory = [0] * params.weight_depth
        self.slots = [None] * P.SLOTS
        self.expected = 0
        self.frames_ok = self.errors = self.last_error = 0
        self._state = "hunt"
        self._hdr = bytearray()
        self._payload = bytearray()
        self._crc = bytearray()
        self._skip = 0

    # -- byte parser (the same states as the gateware's) ------------------------------------
    def feed(self, data):
        out = bytearray()
        for b in bytes(data):
            out += self._byte(b)
        return bytes(out)

    def idle_timeout(self):
        if self._state == "hunt":
            return b""
        seq = self._hdr[0] if len(self._hdr) > 0 else 0
        op = self._hdr[1] if len(self._hdr) > 1 else 0
        self._state = "hunt"
        return self._error(seq, op, P.Err.TIMEOUT)

    def _byte(self, b):
        if self._state == "skip":
            # the payload and CRC of a frame refused for its length: never parsed as frames
            self._skip -= 1
            if not self._skip:
                self._state = "hunt"
            return b""
        if self._state == "hunt":
            if b == P.SYNC:
                self._state, self._hdr, self._payload, self._crc = "header", bytearray(), bytearray(), bytearray()
            return b""
        if self._state == "header":
            self._hdr.append(b)
            if len(self._hdr) < 4:
                return b""
            length = self._hdr[2] | self._hdr[3] << 8
            if length > self.max_payload:
                self._state, self._skip = "skip", length + 2
                return self._error(self._hdr[0], self._hdr[1], P.Err.BAD_LENGTH)
            self._state = "payload" if length else "crc"
            return b""
        if self._state == "payload":
            self._payload.append(b)
            if len(self._payload) == (self._hdr[2] | self._hdr[3] << 8):
                self._state = "crc"
            return b""
        self._crc.append(b)
        if len(self._crc) < 2:
            return b""
        self._state = "hunt"
        seq, op = self._hdr[0], self._hdr[1]
        if P.crc16(bytes(self._hdr) + bytes(self._payload)) != (self._crc[0] | self._crc[1] << 8):
            return self._error(seq, op, P.Err.BAD_CRC)
        return self._execute(seq, op, bytes(self._payload))

    # -- replies ------------------------------------------------------------------------------
    def _reply(self, seq, op, payload=b""):
        self.frames_ok = (self.frames_ok + 1) & 0xFFFF
        return P.encode_frame(seq, op | P.REPLY, payload)

    def _error(self, seq, op, code):
        self.errors = (self.errors + 1) & 0xFFFF
        self.last_error = int(code)
        return P.encode_frame(seq, P.ERROR, P.ERROR_LAYOUT.pack(int(code), op, self.expected))

    # -- commands -----------------------------------------------------------------------------
    def _execute(self, seq, op, payload):
        p = self.p
        if op in (P.Op.IDENTIFY, P.Op.RESET):
            self.expected = (seq + 1) & 0xFF
        elif seq != self.expected:
            return self._error(seq, op, P.Err.BAD_SEQ)
        else:
            self.expected = (seq + 1) & 0xFF
        n = len(payload)
        if op == P.Op.IDENTIFY:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            return self._reply(seq, op, P.identify_payload(p, self.clock_hz))
        if op == P.Op.RESET:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            self.slots = [None] * P.SLOTS
            self.frames_ok = self.errors = self.last_error = 0
            return P.encode_frame(seq, op | P.REPLY)
        if op == P.Op.STATUS:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            status = P.STATUS_LAYOUT.pack(self.frames_ok, self.errors, self.last_error)
            return self._reply(seq, op, status)
        if op == P.Op.WRITE_WEIGHTS:
            if n < 2 + self.word_bytes or (n - 2) % self.word_bytes:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            addr = payload[0] | payload[1] << 8
            count = (n - 2) // self.word_bytes
            if addr + count > p.weight_depth:
                return self._error(seq, op, P.Err.OUT_OF_RANGE)
            mask = (1 << p.word_bits) - 1
            for i in range(count):
                chunk = payload[2 + i * self.word_bytes: 2 + (i + 1) * self.word_bytes]
                self.memory[addr + i] = int.from_bytes(chunk, "little") & mask
            return self._reply(seq, op)
        if op == P.Op.SET_SLOT:
            if n != P.SET_SLOT_LAYOUT.size:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            slot, base, rows, chunks = P.SET_SLOT_LAYOUT.unpack(payload)
            if slot >= P.SLOTS:
                return self._error(seq, op, P.Err.BAD_SLOT)
            words = -(-rows // p.lanes) * chunks
            if not rows or not chunks or rows > P.max_link_rows(p) or chunks > p.max_chunks \
                    or base + words > p.weight_depth:
                return self._error(seq, op, P.Err.OUT_OF_RANGE)
            self.slots[slot] = (base, rows, chunks)
            return self._reply(seq, op)
        if op == P.Op.MATVEC:
            if n < 1:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            slot = payload[0]
            if slot >= P.SLOTS:
                return self._error(seq, op, P.Err.BAD_SLOT)
            if self.slots[slot] is None:
                return self._error(seq, op, P.Err.EMPTY_SLOT)
            base, rows, chunks = self.slots[slot]
            if n != 1 + chunks * p.trits:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            k = chunks * p.trits
            words = self.memory[base: base + -(-rows // p.lanes) * chunks]
            w = golden.weights_from_words(words, rows, k, lanes=p.lanes, trits=p.trits, packing=p.packing,
                                          lenient=True)
            x = np.frombuffer(payload[1:], np.int8)
            y = golden.matvec(w, x)
            mask = (1 << (8 * self.acc_bytes)) - 1
            body = b"".join((int(v) & mask).to_bytes(self.acc_bytes, "little") for v in y)
            return self._reply(seq, op, body)
        return self._error(seq, op, P.Err.UNKNOWN_OP)
