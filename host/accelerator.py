"""The host API: an accelerator reached over any :class:`~tritium.host.transport.Transport`."""

import collections
import time

import numpy as np

from ..hw import protocol as P
from ..hw.params import EngineParams
from ..sim import golden
from ..sim.golden import TritiumValueError
from .transport import TransportError

__all__ = ["Accelerator", "DeviceError", "LinkError", "LinkTimeout"]

#: the IDENTIFY fields that are :class:`EngineParams` arguments
_PARAM_FIELDS = ("lanes", "trits", "packing", "max_k", "weight_depth", "memory", "read_register")
#: requests whose only valid length is 0
_EMPTY_REQUESTS = (P.Op.IDENTIFY, P.Op.RESET, P.Op.STATUS)


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


class LinkError(TransportError):
    """A request got no usable reply: lost or corrupt after every retry, or lost once for a
    request that is not retried (not in :data:`tritium.hw.protocol.IDEMPOTENT`)."""


class LinkTimeout(LinkError):
    """No complete reply arrived in time (on every attempt)."""


def _op_name(op):
    try:
        return P.Op(op).name
    except ValueError:
        return f"op {op:#04x}"


class _Lost(Exception):
    # one attempt failed in a way a retry may cure; ``timeout`` when nothing matching arrived
    def __init__(self, message, seq, *, timeout=False, not_executed=False):
        super().__init__(message)
        self.seq, self.timeout, self.not_executed = seq, timeout, not_executed


class Accelerator:
    """Load ternary matrices into named slots and multiply int8 vectors by them.

    ``Accelerator(transport)`` identifies the device (so :attr:`params` equal the device's own
    :class:`EngineParams`, and :attr:`lm` its :class:`LMParams` when it runs the on-chip LM step,
    else ``None``) and resets its slots. Every call waits at most ``timeout`` seconds per attempt
    for its reply. The LM step's commands: :meth:`write_mem`, :meth:`lm_config`, :meth:`generate`
    (:mod:`tritium.host.lmdevice` loads a whole model with them).

    Replies are matched to requests by ``seq``: frames with another seq (late, duplicated or
    stale replies) are discarded, and every frame decoded from one read is kept until used. A
    request in :data:`tritium.hw.protocol.IDEMPOTENT` whose reply is lost or corrupt, or that the
    device refused as damaged (BAD_CRC, TIMEOUT, BAD_SEQ, or BAD_LENGTH without using up the
    seq), is sent again up to ``retries`` times, each after resynchronising the link (wait until
    the line is quiet for the transport's ``quiet_s``, so the device drops any partial frame, then
    IDENTIFY). Any other request is retried only when the device's error proves it was not
    executed; a lost reply to it raises :class:`LinkError` (its effect may or may not have
    happened), never a silent second execution.

    Raises
    ------
    DeviceError
        The device rejected a request (names the command and the error).
    LinkTimeout
        No reply on any attempt.
    LinkError
        Replies kept arriving corrupt, or a non-idempotent request's reply was lost.
    tritium.hw.protocol.ProtocolError
        The device's IDENTIFY reply is not one this host understands.
    """

    def __init__(self, transport, *, timeout=5.0, retries=3):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TritiumValueError(f"retries = {retries!r} must be a non-negative integer")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._seq = 0
        self._decoder = P.FrameDecoder()
        self._queue = collections.deque()
        self.link_bytes = 0
        #: link health: requests sent again, resynchronisations, frames discarded for a seq
        #: that matched no outstanding request, corrupt frames skipped by the decoder
        self.stats = {"retries": 0, "resyncs": 0, "stale_replies": 0, "corrupt_frames": 0}
        self.info = P.parse_identify(self._request(P.Op.IDENTIFY))
        try:
            self.params = EngineParams(**{k: self.info[k] for k in _PARAM_FIELDS})
        except TritiumValueError as e:
            raise P.ProtocolError(f"IDENTIFY reports an engine this host cannot model: {e}") from None
        self.word_bytes = -(-self.params.word_bits // 8)
        self.acc_bytes = self.info["acc_bytes"]
        self.max_payload = self.info["max_payload"]
        self.max_rows = self.info["max_rows"]
        #: the on-chip LM step's sizes (:class:`LMParams`), ``None`` on a device without it
        self.lm = self.info["lm"]
        self.reset()

    # -- framing -------------------------------------------------------------------------------
    def _request(self, op, payload=b"", *, reply_len=None, idempotent=None):
        """Send one request and return its reply payload, retrying as the class describes.
        ``reply_len``: the reply payload's length (a reply of another length is treated as
        corrupt); ``idempotent`` overrides membership of :data:`P.IDEMPOTENT`."""
        if idempotent is None:
            idempotent = op in P.IDEMPOTENT
        return self._retrying(_op_name(op), lambda: self._exchange(op, payload, reply_len), idempotent=idempotent,
                              unknown="whether the device executed it is unknown")

    def _retrying(self, name, once, *, idempotent, unknown):
        """``once()`` (one attempt at a request named ``name``), again after a resynchronisation
        while attempts are left and the failure allows it: always for an ``idempotent`` request,
        else only when the device's error proves the request was not executed; otherwise a
        :class:`LinkError` says why not (``unknown``: what a lost reply leaves unknown)."""
        failures = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                try:
                    self._resync()
                except _Lost as e:
                    failures.append(e)
                    continue
            try:
                return once()
            except _Lost as e:
                failures.append(e)
                if not idempotent and not e.not_executed:
                    raise LinkError(f"{name} (seq {e.seq}): {e}; not retried because {name} is not "
                                    f"idempotent, so {unknown}") from None
        if all(f.timeout for f in failures):
            raise LinkTimeout(f"no reply from the device within {self.timeout} s "
                              f"({len(failures)} attempts)")
        raise LinkError(f"{name} failed after {len(failures)} attempts; last: {failures[-1]}")

    def _send(self, op, payload):
        """Send one request frame with the next seq; returns that seq."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        frame = P.encode_frame(seq, op, payload)
        self.transport.write(frame)
        self.link_bytes += len(frame)
        return seq

    def _refused_as_damaged(self, seq, op, payload, code, expected):
        """Raise :class:`_Lost` (not executed) when the error reply ``code`` to request ``seq``
        says the frame was refused as damaged (taking up the device's expected seq after
        BAD_SEQ); return otherwise."""
        # BAD_LENGTH without the seq used up (or to an empty request, always the right
        # length) is an oversize length field: a header damaged on the way
        damaged = code in (P.Err.BAD_CRC, P.Err.TIMEOUT, P.Err.BAD_SEQ) or (
            code == P.Err.BAD_LENGTH and (expected != (seq + 1) & 0xFF or
                                          (not payload and op in _EMPTY_REQUESTS)))
        if damaged:
            if code == P.Err.BAD_SEQ:
                self._seq = expected
            raise _Lost(f"the device refused seq {seq} as damaged ({P.Err(code).name})", seq,
                        not_executed=True)

    def _exchange(self, op, payload, reply_len):
        # one attempt: send with the next seq, wait for the frame that answers it
        name = _op_name(op)
        seq = self._send(op, payload)
        deadline = time.monotonic() + self.timeout
        while True:
            rseq, rop, body = self._next_frame(deadline, name, seq)
            if rseq != seq:
                self.stats["stale_replies"] += 1
                continue
            if rop == P.ERROR and len(body) == P.ERROR_LAYOUT.size:
                code, _, expected = P.ERROR_LAYOUT.unpack(body)
                self.link_bytes += P.HEADER_BYTES + 2 + len(body)
                self._refused_as_damaged(seq, op, payload, code, expected)
                raise DeviceError(op, code, expected)
            if rop != op | P.REPLY or (reply_len is not None and len(body) != reply_len):
                # a frame with this seq that is not an answer to this request: corrupt or stale
                self.stats["stale_replies"] += 1
                continue
            self.link_bytes += P.HEADER_BYTES + 2 + len(body)
            return body

    def _next_frame(self, deadline, name, seq):
        # the next decoded frame: queued ones first (several can arrive in one read)
        while not self._queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Lost(f"no reply within {self.timeout} s", seq, timeout=True)
            data = self.transport.read(4096, min(remaining, 0.05))
            if data:
                frames, errors = self._decoder.feed_all(data)
                self.stats["corrupt_frames"] += len(errors)
                self._queue.extend(frames)
        return self._queue.popleft()

    def _resync(self):
        """Discard everything until the line has been quiet for the transport's ``quiet_s``
        (the device's idle timeout has then dropped any partial frame), then IDENTIFY, which
        the device accepts with any seq."""
        self.stats["resyncs"] += 1
        quiet = getattr(self.transport, "quiet_s", 0.05)
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - start > self.timeout:
                break
            data = self.transport.read(4096, max(quiet, 0.001))
            now = time.monotonic()
            if data:
                last = now
            elif now - last >= quiet:
                break
        self._decoder.clear()
        self._queue.clear()
        info = P.parse_identify(self._exchange(P.Op.IDENTIFY, b"", P.IDENTIFY_LAYOUT.size))
        if hasattr(self, "info") and info != self.info:
            raise P.ProtocolError("the device answered IDENTIFY differently after resynchronising: "
                                  "it is not the device this host identified")

    # -- commands ------------------------------------------------------------------------------
    def identify(self):
        return P.parse_identify(self._request(P.Op.IDENTIFY, reply_len=P.IDENTIFY_LAYOUT.size))

    def reset(self):
        """Clear every slot on the device (weights stay in memory), its counters and its LM
        configuration (the LM step's memories keep their contents)."""
        self._request(P.Op.RESET, reply_len=0)
        self.slots = [None] * P.SLOTS
        #: the last :meth:`lm_config` (``(step_start, prog_end, logits, vocab)``), ``None`` after RESET
        self.lm_state = None

    def status(self):
        frames_ok, errors, last = P.STATUS_LAYOUT.unpack(
            self._request(P.Op.STATUS, reply_len=P.STATUS_LAYOUT.size))
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
            payload = (addr + i).to_bytes(2, "little") + b"".join(w.to_bytes(self.word_bytes, "little")
                                                                  for w in part)
            self._request(P.Op.WRITE_WEIGHTS, payload, reply_len=0)

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
        self._check_rows(m)
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

    def _check_rows(self, m):
        if m > self.max_rows:
            raise TritiumValueError(f"M = {m} rows exceeds the link's max_rows = {self.max_rows} "
                                    f"(a MATVEC reply of {m} x {self.acc_bytes} bytes would not fit a frame)")

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
        self._check_rows(m)
        chunks = -(-k // self.params.trits)
        self._request(P.Op.SET_SLOT, P.SET_SLOT_LAYOUT.pack(slot, base, m, chunks), reply_len=0)
        self.slots[slot] = (base, m, k)

    # -- the on-chip LM step -----------------------------------------------------------------------
    def _need_lm(self, what):
        if self.lm is None:
            raise TritiumValueError(f"{what} needs a device with the on-chip LM step; this one has none "
                                    "(IDENTIFY reports no LM flag)")
        return self.lm

    def write_mem(self, space, addr, data):
        """Write ``data`` (bytes: whole elements of ``space``, as :class:`~tritium.hw.protocol.Space`
        lays them out on the link) into one LM-step memory from element ``addr``, in as many
        WRITE_MEM requests as :attr:`max_payload` needs. Raises :class:`TritiumValueError` (nothing
        sent) on a device without the LM step, an unknown space, a length that is not whole
        elements, or elements past the memory's end."""
        lm = self._need_lm("WRITE_MEM")
        try:
            space = P.Space(space)
        except ValueError:
            raise TritiumValueError(f"space {space!r} is not one of {[s.name for s in P.Space]}") from None
        data = bytes(data)
        size, depth = P.space_element_bytes(lm, space), P.space_depth(lm, space)
        if len(data) % size:
            raise TritiumValueError(f"{len(data)} bytes are not whole {space.name} elements of {size} bytes")
        count = len(data) // size
        if isinstance(addr, bool) or not isinstance(addr, int) or addr < 0 or addr + count > depth:
            raise TritiumValueError(f"{count} {space.name} elements from address {addr!r} do not fit its "
                                    f"{depth} elements")
        per_frame = max(1, (self.max_payload - P.WRITE_MEM_HEADER.size) // size)
        for i in range(0, count, per_frame):
            part = data[i * size:(i + per_frame) * size]
            self._request(P.Op.WRITE_MEM, P.WRITE_MEM_HEADER.pack(space, addr + i) + part, reply_len=0)

    def lm_config(self, step_start, prog_end, logits, vocab):
        """Arm GENERATE (one LM_CONFIG): the reset program is instructions ``0 .. step_start-1``,
        the token step ``step_start .. prog_end-1``, the logits ``vocab`` words at vector address
        ``logits``. Raises :class:`TritiumValueError` (nothing sent) for values the device would
        refuse."""
        lm = self._need_lm("LM_CONFIG")
        values = (step_start, prog_end, logits, vocab)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values) or not (
                0 <= step_start < prog_end <= lm.prog_depth and 1 <= vocab <= lm.max_vocab
                and 0 <= logits and logits + vocab <= lm.vmem_depth):
            raise TritiumValueError(f"LM_CONFIG step_start={step_start!r}, prog_end={prog_end!r}, logits={logits!r}, "
                                    f"vocab={vocab!r} needs 0 <= step_start < prog_end <= {lm.prog_depth}, "
                                    f"1 <= vocab <= {lm.max_vocab} and logits + vocab <= {lm.vmem_depth}")
        self._request(P.Op.LM_CONFIG, P.LM_CONFIG_LAYOUT.pack(*values), reply_len=0)
        self.lm_state = values

    def generate(self, payload, *, on_token=None, timeout_per_token=None):
        """Send one GENERATE (``payload``: :func:`tritium.hw.protocol.generate_payload`) and read
        its stream: ``on_token(token)`` is called for each token frame as it arrives; returns
        ``(tokens, reason)`` (a :class:`~tritium.hw.protocol.Stop`) from the end frame.

        Each token must arrive within ``timeout_per_token`` seconds (default :attr:`timeout`) of
        the previous one, the first within that times ``prompt tokens + 1``. GENERATE is never
        sent twice once the device may have started it (only a refusal that proves it was not
        executed, such as BAD_CRC, is retried, after resynchronising).

        Raises
        ------
        DeviceError
            The device refused the request, or an instruction failed its run-time check; the
            tokens streamed before it are in the exception's ``tokens``.
        LinkError
            The stream stopped (no frame in time) or lost a frame (the end frame's count is not
            the number of tokens received); not retried.
        """
        self._need_lm("GENERATE")
        payload = bytes(payload)
        timeout = self.timeout if timeout_per_token is None else timeout_per_token
        return self._retrying("GENERATE", lambda: self._generate_once(payload, on_token, timeout), idempotent=False,
                              unknown="whether the device went on generating is unknown")

    def _generate_once(self, payload, on_token, timeout):
        seq = self._send(P.Op.GENERATE, payload)
        prompt = max(0, len(payload) - P.GENERATE_LAYOUT.size)
        deadline = time.monotonic() + timeout * (prompt + 1)
        tokens = []
        while True:
            try:
                rseq, rop, body = self._next_frame(deadline, "GENERATE", seq)
            except _Lost as e:
                raise _Lost(f"{e} after {len(tokens)} tokens", seq, timeout=e.timeout) from None
            if rseq != seq:
                self.stats["stale_replies"] += 1
                continue
            if rop == P.ERROR and len(body) == P.ERROR_LAYOUT.size:
                code, _, expected = P.ERROR_LAYOUT.unpack(body)
                self.link_bytes += P.HEADER_BYTES + 2 + len(body)
                if not tokens:   # (once tokens have come, the request was executed)
                    self._refused_as_damaged(seq, P.Op.GENERATE, payload, code, expected)
                error = DeviceError(P.Op.GENERATE, code, expected)
                error.tokens = tokens
                raise error
            if rop != P.Op.GENERATE | P.REPLY or len(body) not in (1, P.GENERATE_END_LAYOUT.size):
                self.stats["stale_replies"] += 1
                continue
            self.link_bytes += P.HEADER_BYTES + 2 + len(body)
            if len(body) == 1:
                tokens.append(body[0])
                if on_token:
                    on_token(body[0])
                deadline = time.monotonic() + timeout
                continue
            count, reason = P.GENERATE_END_LAYOUT.unpack(body)
            if count != len(tokens) or reason not in set(P.Stop):
                raise LinkError(f"GENERATE (seq {seq}): the end frame reports {count} tokens (reason {reason}), "
                                f"but {len(tokens)} token frames arrived: frames were lost on the link")
            return tokens, P.Stop(reason)

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
        body = self._request(P.Op.MATVEC, bytes([slot]) + padded.tobytes(), reply_len=m * self.acc_bytes)
        raw = np.frombuffer(body, np.uint8).reshape(m, self.acc_bytes)
        vals = np.zeros(m, np.int64)
        for i in range(self.acc_bytes):
            vals |= raw[:, i].astype(np.int64) << (8 * i)
        sign = 1 << (8 * self.acc_bytes - 1)
        return (vals ^ sign) - sign
