"""The host API: an accelerator reached over any :class:`~tritium.host.transport.Transport`."""

import struct
import time

import numpy as np

from ..hw import protocol as P
from ..hw.params import EngineParams
from ..sim import golden
from ..sim.golden import TritiumValueError
from .transport import TransportError

__all__ = ["Accelerator", "DeviceError", "LinkTimeout"]


class DeviceError(Exception):
    """The device answered a request with an error frame."""

    def __init__(self, op, code, expected_seq):
        self.op, self.code, self.expected_seq = op, code, expected_seq
        try:
            op_name = P.Op(op).name
        except ValueError:
            op_name = f"op {op:#04x}"
        try:
            err = P.Err(code).name
        except ValueError:
            err = f"error {code}"
        super().__init__(f"device rejected {op_name}: {err}")


class LinkTimeout(TransportError):
    """No complete reply arrived in time."""


class Accelerator:
    """Load ternary matrices into named slots and multiply int8 vectors by them.

    ``Accelerator(transport)`` identifies the device (so :attr:`params` are the device's own)
    and resets its slots. Every call waits at most ``timeout`` seconds for its reply; a device
    error raises :class:`DeviceError` naming the command and the error, a missing or corrupt
    reply raises :class:`LinkTimeout` or :class:`tritium.hw.protocol.ProtocolError`.
    """

    def __init__(self, transport, *, timeout=5.0):
        self.transport = transport
        self.timeout = timeout
        self._seq = 0
        self._decoder = P.FrameDecoder()
        self.link_bytes = 0
        info = self._request(P.Op.IDENTIFY)
        self.info = P.parse_identify(info)
        self.params = EngineParams(lanes=self.info["lanes"], trits=self.info["trits"],
                                   packing=self.info["packing"], max_k=self.info["max_k"],
                                   weight_depth=self.info["weight_depth"])
        self.word_bytes = -(-self.params.word_bits // 8)
        self.acc_bytes = self.info["acc_bytes"]
        self.max_payload = self.info["max_payload"]
        self.reset()

    # -- framing -------------------------------------------------------------------------------
    def _request(self, op, payload=b""):
        seq = self._seq
        frame = P.encode_frame(seq, op, payload)
        self.transport.write(frame)
        self.link_bytes += len(frame)
        reply = self._read_reply()
        self._seq = (seq + 1) & 0xFF
        rseq, rop, body = reply
        self.link_bytes += P.HEADER_BYTES + 2 + len(body)
        if rseq != seq:
            raise P.ProtocolError(f"reply to {P.Op(op).name} carries seq {rseq}, expected {seq}")
        if rop == P.ERROR:
            if len(body) != 3:
                raise P.ProtocolError(f"error reply with {len(body)} payload bytes, expected 3")
            if body[0] == P.Err.BAD_SEQ:
                self._seq = body[2]
            raise DeviceError(body[1], body[0], body[2])
        if rop != op | P.REPLY:
            raise P.ProtocolError(f"reply op {rop:#04x} to {P.Op(op).name}")
        return body

    def _read_reply(self):
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no reply from the device within {self.timeout} s")
            data = self.transport.read(4096, min(remaining, 0.05))
            frames = self._decoder.feed(data) if data else []
            if frames:
                return frames[0]

    # -- commands ------------------------------------------------------------------------------
    def identify(self):
        return P.parse_identify(self._request(P.Op.IDENTIFY))

    def reset(self):
        """Clear every slot on the device (weights stay in memory) and its counters."""
        self._request(P.Op.RESET)
        self.slots = [None] * P.SLOTS

    def status(self):
        frames_ok, errors, last = struct.unpack("<HHB", self._request(P.Op.STATUS))
        return {"frames_ok": frames_ok, "errors": errors, "last_error": last}

    def capacity(self):
        """Free weight words and the engine limits."""
        used = sum(self.params.words_for(m, k) for _, m, k in filter(None, self.slots))
        return {"weight_words": self.params.weight_depth, "free_words": self.params.weight_depth - used,
                "max_k": self.params.max_k, "slots": P.SLOTS, "capacity_trits": self.params.capacity_trits}

    def write_words(self, addr, words):
        per_frame = max(1, (self.max_payload - 2) // self.word_bytes)
        for i in range(0, len(words), per_frame):
            part = words[i:i + per_frame]
            payload = struct.pack("<H", addr + i) + b"".join(w.to_bytes(self.word_bytes, "little") for w in part)
            self._request(P.Op.WRITE_WEIGHTS, payload)

    def load(self, slot, w, *, base=None):
        """Make ternary ``w`` (M x K) resident in ``slot``; ``base`` defaults to the first free word
        after the other slots. Raises :class:`TritiumValueError` for bad weights, a bad slot or a
        matrix that does not fit; nothing on the device changes then."""
        p = self.params
        self._check_slot(slot)
        w = self._check_matrix(w)
        m, k = w.shape
        others = [(i, b, b + p.words_for(mm, kk)) for i, s in enumerate(self.slots) if s and i != slot
                  for b, mm, kk in [s]]
        if base is None:
            base = max((end for _, _, end in others), default=0)
        p.check_shape(m, k, base)
        end = base + p.words_for(m, k)
        for i, b, e in others:
            if base < e and b < end:
                raise TritiumValueError(f"weight words {base}..{end - 1} would overwrite slot {i} "
                                        f"(words {b}..{e - 1}); reset() or choose another base")
        self.write_matrix(w, base)
        self.bind(slot, base, m, k)

    def _check_slot(self, slot):
        if not isinstance(slot, int) or not 0 <= slot < P.SLOTS:
            raise TritiumValueError(f"slot {slot!r} must be an integer in 0..{P.SLOTS - 1}")

    def _check_matrix(self, w):
        w = golden.check_ternary(w, "weights")
        if w.ndim != 2:
            raise TritiumValueError(f"weights must be a 2-D matrix (M x K), got shape {w.shape}")
        return w

    def write_matrix(self, w, base):
        """Write ternary ``w`` (M x K) into weight memory at word ``base`` without naming it
        (see :meth:`bind`); shape and range are checked first."""
        p = self.params
        w = self._check_matrix(w)
        p.check_shape(*w.shape, base)
        self.write_words(base, golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing))

    def bind(self, slot, base, m, k):
        """Name the ``m x k`` matrix already resident at word ``base`` as ``slot`` (one SET_SLOT)."""
        self._check_slot(slot)
        self.params.check_shape(m, k, base)
        chunks = -(-k // self.params.trits)
        self._request(P.Op.SET_SLOT, struct.pack("<BHHH", slot, base, m, chunks))
        self.slots[slot] = (base, m, k)

    def matvec(self, slot, x):
        """``W x`` for the matrix in ``slot`` and int8 ``x`` (K): exact int64 results (M)."""
        self._check_slot(slot)
        if self.slots[slot] is None:
            raise TritiumValueError(f"slot {slot} is empty: load() a matrix into it first")
        base, m, k = self.slots[slot]
        x = golden.check_int8(x, "activations")
        if x.shape != (k,):
            raise TritiumValueError(f"activations of shape {x.shape} do not match slot {slot}'s {m}x{k} matrix")
        chunks = -(-k // self.params.trits)
        padded = np.zeros(chunks * self.params.trits, np.int8)
        padded[:k] = x
        body = self._request(P.Op.MATVEC, bytes([slot]) + padded.tobytes())
        if len(body) != m * self.acc_bytes:
            raise P.ProtocolError(f"MATVEC reply of {len(body)} bytes, expected {m * self.acc_bytes}")
        raw = np.frombuffer(body, np.uint8).reshape(m, self.acc_bytes)
        vals = np.zeros(m, np.int64)
        for i in range(self.acc_bytes):
            vals |= raw[:, i].astype(np.int64) << (8 * i)
        sign = 1 << (8 * self.acc_bytes - 1)
        return (vals ^ sign) - sign
