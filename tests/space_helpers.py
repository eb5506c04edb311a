"""Helpers shared by the search-space tests."""
import pytest

from spinesearch.errors import ArchitectureError


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


def random_walks_refuse_masked_choices(space, rng, num_walks):
  """Walks the space `num_walks` times choosing uniformly among mask-valid
  choices; every walk must give a valid architecture, and swapping any one
  decision for a masked-out choice must make decode refuse the sequence.
  Returns how many such refusals were checked."""
  refused = 0
  for _ in range(num_walks):
    cursor = space.start()
    walk = []
    for _ in space.decisions():
      valid = [c for c, ok in enumerate(cursor.mask()) if ok]
      assert valid
      walk.append(rng.choice(valid))
      cursor.choose(walk[-1])
    cursor.architecture().validate()
    for position, mask in enumerate(space.masks(walk)):
      invalid = [c for c, ok in enumerate(mask) if not ok]
      if invalid:
        bad = walk[:position] + [rng.choice(invalid)] + walk[position + 1:]
        with pytest.raises(ArchitectureError, match="is not valid at this point"):
          space.decode(bad)
        refused += 1
  return refused


def sample_round_trips(space, rng, num_samples):
  """Samples `num_samples` architectures of `space`; each must validate, survive
  JSON, and encode back to decisions that decode to it. Returns them."""
  from spinesearch.space.architecture import Architecture
  samples = []
  for _ in range(num_samples):
    architecture = space.decode(space.sample(rng))
    space.validate(architecture)
    again = Architecture.from_json(architecture.to_json())
    assert again == architecture
    assert space.decode(space.encode(again)) == architecture
    samples.append(architecture)
  return samples
