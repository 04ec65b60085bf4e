"""The dispatcher's bookkeeping of work in flight: per sink, all deliveries, all job fetches.

Counting, no I/O: the claim loop reserves what is free before it asks the store,
and each fetch or delivery holds its slot while it runs. A rate-limited sink's
free slots are also bounded by its token bucket (ratelimit.py): a claim holds
the tokens of what it may claim, and each delivery that starts spends one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pulse_relay.ratelimit import SinkRates


@dataclass(frozen=True)
class Reservation:
    """Slots held by running or about-to-be-claimed work: per sink, deliveries, fetches;
    and the tokens of rate-limited sinks a claim holds until it is released."""

    per_sink: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    fetches: int = 0
    tokens: dict[str, int] = field(default_factory=dict)


FETCH_SLOT: Final = Reservation(fetches=1)


@dataclass(frozen=True)
class Fill:
    """What a claim's answer says of the work it may have left in the store."""

    # It took all it was offered in some limit: more may be due now.
    full: bool
    # Full, or some sink (or the job fetches) was offered nothing: due work may be
    # waiting for a slot, so a slot freed is worth a claim round.
    short_of_slots: bool


def delivery_slot(sink: str) -> Reservation:
    """The slots one running delivery to `sink` holds."""
    return Reservation({sink: 1}, deliveries=1)


class Slots:
    """Work in flight against its limits: per sink, all deliveries, all job fetches."""

    def __init__(
        self,
        sink_limits: Mapping[str, int],
        *,
        delivery_limit: int,
        fetch_limit: int,
        rates: SinkRates | None = None,
    ) -> None:
        self._sink_limits = dict(sink_limits)
        self._rates = rates or SinkRates({})
        self._delivery_limit = delivery_limit
        self._fetch_limit = fetch_limit
        self._per_sink = dict.fromkeys(self._sink_limits, 0)
        self._deliveries = 0
        self._fetches = 0
        self._rotation = 0

    def open_sinks(self) -> list[str]:
        """The sinks a delivery could start for now (a slot free and, if limited, a token)."""
        if self._deliveries >= self._delivery_limit:
            return []
        return [
            n
            for n, limit in self._sink_limits.items()
            if self._per_sink[n] < limit and self._rates.cap(n, 1)
        ]

    def next_token_seconds(self) -> float:
        """Seconds until a rate-limited sink now out of tokens gets one; infinity if none."""
        return self._rates.next_token_seconds()

    @property
    def has_free_fetch(self) -> bool:
        """True while another job fetch may start."""
        return self._fetches < self._fetch_limit

    def reserve_free(self, *, fetches: bool) -> Reservation:
        """Reserve every free slot (and the free fetch slots if `fetches`) until `release`."""
        free_fetches = max(0, self._fetch_limit - self._fetches) if fetches else 0
        total_free = max(0, self._delivery_limit - self._deliveries)
        names = list(self._sink_limits)
        if not names or total_free == 0:
            reservation = Reservation(fetches=free_fetches)
        else:
            # Rotate the order so one busy sink cannot take the whole budget every time.
            self._rotation = (self._rotation + 1) % len(names)
            names = names[self._rotation :] + names[: self._rotation]
            per_sink = {
                n: self._rates.cap(n, max(0, self._sink_limits[n] - self._per_sink[n]))
                for n in names
            }
            tokens = {n: free for n, free in per_sink.items() if self._rates.is_limited(n)}
            reservation = Reservation(per_sink, total_free, free_fetches, tokens)
        self.reserve(reservation)
        return reservation

    def fill(
        self, offered: Reservation, *, fetches: int | None, per_sink: Mapping[str, int]
    ) -> Fill:
        """How far a claim offered `offered` was filled by `fetches` job fetches (None:
        it asked for none, as a finish_fetch) and `per_sink` deliveries."""
        full = (
            (fetches is not None and 0 < offered.fetches <= fetches)
            or (0 < offered.deliveries <= sum(per_sink.values()))
            or any(0 < free <= per_sink.get(n, 0) for n, free in offered.per_sink.items())
        )
        offered_none = any(offered.per_sink.get(n, 0) == 0 for n in self._sink_limits) or (
            fetches is not None and offered.fetches == 0 and self._fetch_limit > 0
        )
        return Fill(full, full or offered_none)

    def reserve(self, reservation: Reservation) -> None:
        """Count `reservation`'s slots (and tokens) as taken."""
        self._add(reservation, 1)
        for name, count in reservation.tokens.items():
            self._rates.take(name, count)

    def release(self, reservation: Reservation) -> None:
        """Give `reservation`'s slots (and tokens) back."""
        self._add(reservation, -1)
        for name, count in reservation.tokens.items():
            self._rates.give_back(name, count)

    def start_delivery(self, sink: str) -> None:
        """A claimed delivery to `sink` starts: it holds its slot until released with
        `delivery_slot(sink)`, and spends a token of a rate-limited sink for good."""
        self.reserve(delivery_slot(sink))
        self._rates.take(sink)

    def _add(self, reservation: Reservation, sign: int) -> None:
        for name, slots in reservation.per_sink.items():
            self._per_sink[name] += sign * slots
        self._deliveries += sign * reservation.deliveries
        self._fetches += sign * reservation.fetches
