"""A fault-injecting transport: the link under bit flips, dropped, duplicated and delayed bytes.

:class:`FaultyTransport` sits between the host (:class:`~tritium.host.accelerator.Accelerator`)
and any other transport (the golden device, the simulated gateware, a board) and damages bytes
in either direction at a set rate, reproducibly from a seed. It is how the host's retries and
resynchronisation are tested: whatever it does, a product must come back correct or end in a
clear error, never as a wrong number.
"""

import numpy as np

from ..sim.golden import TritiumValueError
from .transport import Transport

__all__ = ["FAULT_KINDS", "FaultyTransport", "fault_campaign"]

#: ``flip``: one random bit of the byte inverted; ``drop``: the byte never arrives; ``dup``: it
#: arrives twice; ``delay``: it arrives 1 to :attr:`FaultyTransport.max_delay` bytes later (or,
#: when nothing follows it, at the start of the next write or read in that direction).
FAULT_KINDS = ("flip", "drop", "dup", "delay")
DIRECTIONS = ("to_device", "to_host")


class FaultyTransport(Transport):
    """Wrap ``inner``, damaging each byte with probability ``rate``.

    Parameters
    ----------
    inner : Transport
        The link being damaged; closed with this transport.
    rate : float
        Probability in [0, 1] that a byte suffers a fault; the kind is drawn uniformly from
        ``kinds``.
    kinds : iterable of str
        A non-empty subset of :data:`FAULT_KINDS`.
    directions : iterable of str
        ``"to_device"`` (host writes), ``"to_host"`` (device replies) or both.
    seed : int
        Seeds the fault pattern: the same seed and traffic give the same faults.
    max_delay : int
        Largest displacement, in bytes, of a delayed byte.

    Members
    -------
    counts : dict
        Faults injected so far, by kind, and ``bytes`` (bytes that passed through either way).
    quiet_s : float
        That of ``inner``.

    Raises
    ------
    TritiumValueError
        On a rate outside [0, 1], an unknown fault kind or direction, or a bad ``max_delay``.
    """

    def __init__(self, inner, rate, *, kinds=FAULT_KINDS, directions=DIRECTIONS, seed=0, max_delay=8):
        if not isinstance(inner, Transport):
            raise TritiumValueError(f"inner = {inner!r} must be a Transport")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise TritiumValueError(f"fault rate = {rate!r} must be a number in [0, 1]")
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in FAULT_KINDS]
        if not kinds or bad:
            raise TritiumValueError(f"fault kinds {list(kinds)!r} must be a non-empty subset of {list(FAULT_KINDS)}")
        directions = tuple(directions)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad:
            raise TritiumValueError(f"fault directions {bad!r} must be among {list(DIRECTIONS)}")
        if isinstance(max_delay, bool) or not isinstance(max_delay, int) or max_delay < 1:
            raise TritiumValueError(f"max_delay = {max_delay!r} must be a positive integer")
        self.inner = inner
        self.rate = float(rate)
        self.kinds = kinds
        self.directions = directions
        self.max_delay = max_delay
        self.quiet_s = getattr(inner, "quiet_s", Transport.quiet_s)
        self._rng = np.random.default_rng(seed)
        self._held = {d: [] for d in DIRECTIONS}   # delayed bytes: [bytes still to pass, byte]
        self._rx = bytearray()                     # damaged reply bytes beyond a read's n
        self.counts = dict.fromkeys(FAULT_KINDS, 0)
        self.counts["bytes"] = 0

    def _damage(self, data, direction):
        held = self._held[direction]
        # bytes delayed past the end of the previous chunk arrive first
        out = bytearray(b for _, b in held)
        held.clear()
        active = direction in self.directions and self.rate > 0
        for byte in data:
            self.counts["bytes"] += 1
            kind = None
            if active and self._rng.random() < self.rate:
                kind = self.kinds[int(self._rng.integers(len(self.kinds)))]
                self.counts[kind] += 1
            if kind == "flip":
                out.append(byte ^ (1 << int(self._rng.integers(8))))
            elif kind == "dup":
                out += bytes([byte, byte])
            elif kind is None:
                out.append(byte)
            # bytes delayed earlier come out once enough later bytes have passed
            still = []
            for entry in held:
                entry[0] -= 1
                (still.append(entry) if entry[0] > 0 else out.append(entry[1]))
            held[:] = still
            if kind == "delay":
                held.append([int(self._rng.integers(1, self.max_delay + 1)), byte])
        return bytes(out)

    def write(self, data):
        self.inner.write(self._damage(data, "to_device"))

    def read(self, n, timeout):
        if len(self._rx) < n:
            data = self.inner.read(n, timeout)
            if data or self._held["to_host"]:
                self._rx += self._damage(data, "to_host")
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def close(self):
        self.inner.close()


def fault_campaign(inner, *, products, rate, seed=0, timeout=0.05, retries=3, kinds=FAULT_KINDS,
                   matrices=4):
    """Random products through ``FaultyTransport(inner, rate)``, each checked against the golden
    model. Returns the figures: ``products``, ``correct``, ``clear_errors`` (a :class:`LinkError`
    or :class:`DeviceError` raised), ``wrong`` (a result that differs: must be 0), the host's
    ``retries``, ``resyncs``, ``stale_replies``, ``corrupt_frames``, the faults injected by kind,
    and ``bytes`` through the faulty link. ``inner`` is closed at the end."""
    from ..sim import golden
    from .accelerator import Accelerator, DeviceError, LinkError

    rng = np.random.default_rng(seed)
    link = FaultyTransport(inner, rate, kinds=kinds, seed=seed + 1)
    figures = {"products": products, "rate": rate, "correct": 0, "clear_errors": 0, "wrong": 0}
    try:
        acc = None
        for _ in range(10):   # set-up under faults too; it is retried as a whole if it fails
            try:
                acc = Accelerator(link, timeout=timeout, retries=retries)
                p = acc.params
                mats = {}
                for s in range(matrices):
                    m = int(rng.integers(1, 3 * p.lanes + 1))
                    k = int(rng.integers(1, min(p.max_k, 4 * p.trits) + 1))
                    mats[s] = rng.integers(-1, 2, (m, k))
                    acc.load(s, mats[s])
                break
            except (LinkError, DeviceError):
                acc = None
        if acc is None:
            raise LinkError(f"could not set up the campaign's matrices at fault rate {rate}")
        for _ in range(products):
            s = int(rng.integers(matrices))
            x = rng.integers(-128, 128, mats[s].shape[1])
            try:
                y = acc.matvec(s, x)
            except (LinkError, DeviceError):
                figures["clear_errors"] += 1
                continue
            figures["correct" if np.array_equal(y, golden.matvec(mats[s], x)) else "wrong"] += 1
        figures.update(acc.stats)
        figures.update({f"injected_{k}": v for k, v in link.counts.items() if k != "bytes"})
        figures["bytes"] = link.counts["bytes"]
    finally:
        link.close()
    return figures


def main(argv=None):
    """``python -m tritium.host.faults``: a fault campaign against the golden device (or the
    simulated gateware with ``--backend sim``); prints the figures as JSON."""
    import argparse
    import json
    import sys

    from ..hw.params import CONFIGS
    from .transport import GoldenTransport, SimTransport

    ap = argparse.ArgumentParser(prog="python -m tritium.host.faults", description=main.__doc__)
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="odd")
    ap.add_argument("--backend", choices=("golden", "sim"), default="golden")
    ap.add_argument("--timeout", type=float, help="seconds per attempt (default 0.05 golden, 5 sim)")
    args = ap.parse_args(argv)
    if args.products < 1:
        ap.error(f"--products {args.products} must be positive")
    if not 0 <= args.rate <= 1:
        ap.error(f"--rate {args.rate} must be in [0, 1]")
    params = CONFIGS[args.config]
    inner = GoldenTransport(params) if args.backend == "golden" else SimTransport(params, name="faults")
    timeout = args.timeout or (0.05 if args.backend == "golden" else 5.0)
    figures = fault_campaign(inner, products=args.products, rate=args.rate, seed=args.seed, timeout=timeout)
    json.dump({"config": args.config, "backend": args.backend, **figures}, sys.stdout, indent=1)
    print()
    return 0 if figures["wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
