"""Helpers shared by the search-space tests."""


def count_sequences(space, prefix=()):
  """Number of complete decision sequences reachable by mask-valid choices."""
  cursor = space.start()
  for choice in prefix:
    cursor.choose(choice)
  if len(prefix) == len(space.decisions()):
    return 1
  mask = cursor.mask()
  assert any(mask), f"dead end after {prefix}"
  return sum(count_sequences(space, prefix + (c,)) for c, ok in enumerate(mask) if ok)
