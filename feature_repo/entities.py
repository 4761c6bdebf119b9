"""Entities of the segscore feature repository."""

from feast import Entity, ValueType

from core.names import ENTITY, JOIN_KEY

user = Entity(
    name=ENTITY,
    join_keys=[JOIN_KEY],
    value_type=ValueType.STRING,
    description="A shopper, keyed by the user_id events carry.",
)
