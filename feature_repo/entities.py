"""Entities of the segscore feature repository."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper, keyed by the user_id events carry.",
)
