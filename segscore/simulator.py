"""Synthetic shoppers: realistic sessions for behavioural personas, by seed.

Each user has one persona (kept as ground truth for segment evaluation). A persona is
a small generative model: how often sessions start, how long they are, what each step
in a session does, and what is bought at which price.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from core.events import Event, EventType

CATEGORIES = (
    "electronics",
    "apparel",
    "home",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
)


@dataclass(frozen=True)
class Persona:
    """How one kind of shopper behaves."""

    name: str
    sessions_per_day: float
    steps_per_session: float
    # Probabilities of each action at a session step (normalised at use).
    action_weights: dict[EventType, float]
    purchase_given_cart: float
    price_mean: float
    categories: int  # how many distinct categories they wander through


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona(
            "loyal_buyer",
            sessions_per_day=0.9,
            steps_per_session=6,
            action_weights={
                EventType.PAGE_VIEW: 1.0,
                EventType.PRODUCT_VIEW: 2.5,
                EventType.SEARCH: 0.5,
                EventType.ADD_TO_CART: 1.4,
                EventType.REMOVE_FROM_CART: 0.1,
            },
            purchase_given_cart=0.75,
            price_mean=85.0,
            categories=3,
        ),
        Persona(
            "bargain_hunter",
            sessions_per_day=0.7,
            steps_per_session=12,
            action_weights={
                EventType.PAGE_VIEW: 1.0,
                EventType.PRODUCT_VIEW: 4.0,
                EventType.SEARCH: 3.0,
                EventType.ADD_TO_CART: 0.6,
                EventType.REMOVE_FROM_CART: 0.3,
            },
            purchase_given_cart=0.35,
            price_mean=18.0,
            categories=6,
        ),
        Persona(
            "window_shopper",
            sessions_per_day=0.5,
            steps_per_session=9,
            action_weights={
                EventType.PAGE_VIEW: 3.0,
                EventType.PRODUCT_VIEW: 3.0,
                EventType.SEARCH: 0.8,
                EventType.ADD_TO_CART: 0.05,
                EventType.REMOVE_FROM_CART: 0.01,
            },
            purchase_given_cart=0.05,
            price_mean=60.0,
            categories=5,
        ),
        Persona(
            "cart_abandoner",
            sessions_per_day=0.6,
            steps_per_session=7,
            action_weights={
                EventType.PAGE_VIEW: 1.0,
                EventType.PRODUCT_VIEW: 2.0,
                EventType.SEARCH: 0.5,
                EventType.ADD_TO_CART: 2.5,
                EventType.REMOVE_FROM_CART: 1.2,
            },
            purchase_given_cart=0.06,
            price_mean=55.0,
            categories=3,
        ),
    )
}


@dataclass
class Simulation:
    """Generated events (sorted by time) and each user's persona."""

    events: list[Event]
    personas: dict[str, str]


def user_id(index: int) -> str:
    """The simulator's user id for a user index."""
    return f"u{index:06d}"


class _Shopper:
    def __init__(self, uid: str, persona: Persona, rng: np.random.Generator) -> None:
        self.uid = uid
        self.persona = persona
        self.rng = rng
        self.favourites = rng.choice(
            len(CATEGORIES), size=persona.categories, replace=False
        )
        self.device = str(
            rng.choice(["mobile", "desktop", "tablet"], p=[0.6, 0.35, 0.05])
        )
        self.country = str(rng.choice(["DE", "FR", "GB", "US", "NL"]))
        actions = list(persona.action_weights)
        weights = np.array([persona.action_weights[a] for a in actions])
        self.actions = actions
        self.action_p = weights / weights.sum()

    def _event(self, etype: EventType, ts: float, session: str, **extra) -> Event:
        event_id = uuid.UUID(bytes=self.rng.bytes(16)).hex
        return Event.model_construct(
            event_id=event_id,
            user_id=self.uid,
            event_type=etype,
            ts=round(ts, 3),
            session_id=session,
            device=self.device,
            country=self.country,
            channel="web",
            product_id=extra.get("product_id"),
            category=extra.get("category"),
            price=extra.get("price"),
            quantity=extra.get("quantity"),
            revenue=extra.get("revenue"),
        )

    def session(self, start: float) -> Iterator[Event]:
        rng, persona = self.rng, self.persona
        session = uuid.UUID(bytes=rng.bytes(16)).hex[:16]
        ts = start
        cart: list[tuple[str, str, float]] = []
        steps = max(1, int(rng.poisson(persona.steps_per_session)))
        for _ in range(steps):
            ts += float(rng.exponential(45.0)) + 2.0
            action = self.actions[int(rng.choice(len(self.actions), p=self.action_p))]
            category = CATEGORIES[int(rng.choice(self.favourites))]
            product = f"p{int(rng.integers(0, 5000)):05d}"
            price = round(float(rng.gamma(2.0, persona.price_mean / 2.0)), 2)
            if action is EventType.REMOVE_FROM_CART:
                if not cart:
                    continue
                product, category, price = cart.pop(int(rng.integers(0, len(cart))))
            extra = {}
            if action in (EventType.PRODUCT_VIEW, EventType.ADD_TO_CART):
                extra = {"product_id": product, "category": category, "price": price}
            if action is EventType.REMOVE_FROM_CART:
                extra = {"product_id": product, "category": category, "price": price}
            if action is EventType.ADD_TO_CART:
                cart.append((product, category, price))
            yield self._event(action, ts, session, **extra)
        if cart and rng.random() < persona.purchase_given_cart:
            ts += float(rng.exponential(60.0)) + 5.0
            yield self._event(EventType.CHECKOUT, ts, session)
            for product, category, price in cart:
                ts += 1.0
                quantity = int(rng.integers(1, 3))
                yield self._event(
                    EventType.PURCHASE,
                    ts,
                    session,
                    product_id=product,
                    category=category,
                    price=price,
                    quantity=quantity,
                    revenue=round(price * quantity, 2),
                )


def simulate(
    n_users: int,
    start: float,
    end: float,
    seed: int = 0,
    first_user: int = 0,
) -> Simulation:
    """Generate every session of ``n_users`` shoppers between ``start`` and ``end``.

    Args:
        n_users: How many users (ids ``u{first_user:06d}`` onwards).
        start: Window start, epoch seconds.
        end: Window end, epoch seconds; no event lies after it.
        seed: Same seed, same events (ids included).
        first_user: Index of the first user id, to add users to an earlier run.

    Returns:
        The events sorted by time and the persona of each user.
    """
    rng = np.random.default_rng(seed)
    names = list(PERSONAS)
    events: list[Event] = []
    personas: dict[str, str] = {}
    days = (end - start) / 86_400
    for index in range(first_user, first_user + n_users):
        uid = user_id(index)
        persona = PERSONAS[names[index % len(names)]]
        personas[uid] = persona.name
        shopper = _Shopper(uid, persona, rng)
        n_sessions = int(rng.poisson(persona.sessions_per_day * days))
        for session_start in np.sort(rng.uniform(start, end, size=n_sessions)):
            events.extend(
                e for e in shopper.session(float(session_start)) if e.ts <= end
            )
    events.sort(key=lambda e: e.ts)
    return Simulation(events=events, personas=personas)


def live_session(
    uid: str, persona_name: str, start: float, seed: int, buy: bool | None = None
) -> list[Event]:
    """One session for one user starting at ``start`` (for live demos and tests).

    ``buy`` forces (True) or forbids (False) the session ending in a purchase.
    """
    rng = np.random.default_rng(seed)
    persona = PERSONAS[persona_name]
    if buy is not None:
        persona = Persona(
            **{**persona.__dict__, "purchase_given_cart": 1.0 if buy else 0.0}
        )
        if buy:
            weights = dict(persona.action_weights)
            weights[EventType.ADD_TO_CART] = max(weights[EventType.ADD_TO_CART], 2.0)
            persona = Persona(**{**persona.__dict__, "action_weights": weights})
    return list(_Shopper(uid, persona, rng).session(start))
