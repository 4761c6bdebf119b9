"""Code the tests share: each module holds one kind of helper for test modules."""
