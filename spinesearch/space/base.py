"""What every search space offers the search algorithms.

An architecture is produced by a fixed-length sequence of categorical decisions.
Each decision has a fixed number of choices; a mask, which depends on the
decisions before it, says which of them are valid at that point (an exhausted
level in a permutation, a parent outside the window, the same parent twice).
Algorithms only ever see decisions and masks; spaces turn them into
`Architecture`s and back.
"""
import abc
import dataclasses
import random
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError
from spinesearch.space.architecture import Architecture

Mask = Tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class Decision:
  """One categorical choice.

  `kind` groups decisions that share a vocabulary (and, in the RNN controller,
  a softmax layer and an embedding table): all decisions of one kind have the
  same `choices`.
  """
  name: str
  kind: str
  choices: Tuple[str, ...]

  @property
  def num_choices(self) -> int:
    return len(self.choices)


class DecisionCursor(abc.ABC):
  """Walks through a space's decisions one at a time."""

  @property
  @abc.abstractmethod
  def position(self) -> int:
    """Index of the next decision to make."""

  @abc.abstractmethod
  def mask(self) -> Mask:
    """Valid choices for the next decision."""

  @abc.abstractmethod
  def choose(self, choice: int) -> None:
    """Makes the next decision; the choice must be valid under mask()."""

  @abc.abstractmethod
  def architecture(self) -> Architecture:
    """The architecture, once every decision is made."""


class SequentialCursor(DecisionCursor):
  """A cursor over one space's own decisions. It caches the mask (replaying
  decisions asks for each twice: check, then choose) and refuses invalid
  choices; a subclass says what each decision allows (`_compute_mask`) and
  records a choice (`_apply`)."""

  def __init__(self, space: "SearchSpace"):
    self._space = space
    self._decisions = space.decisions()
    self._position = 0
    self._mask: Optional[Mask] = None

  @property
  def position(self) -> int:
    return self._position

  def mask(self) -> Mask:
    if self._mask is None:
      if self._position >= len(self._decisions):
        raise ArchitectureError(f"{self._space.name} space: every decision has been made")
      self._mask = self._compute_mask(self._decisions[self._position])
    return self._mask

  def choose(self, choice: int) -> None:
    mask = self.mask()
    decision = self._decisions[self._position]
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(mask) \
        or not mask[choice]:
      raise ArchitectureError(f"{decision.name}: choice {choice!r} is not valid at this point")
    self._apply(decision, choice)
    self._position += 1
    self._mask = None

  def _require_complete(self) -> None:
    total = len(self._decisions)
    if self._position != total:
      raise ArchitectureError(
          f"{self._space.name} space: {self._position} of {total} decisions made; the "
          f"architecture needs all of them")

  @abc.abstractmethod
  def _compute_mask(self, decision: Decision) -> Mask:
    """Valid choices for `decision`, the next one."""

  @abc.abstractmethod
  def _apply(self, decision: Decision, choice: int) -> None:
    """Records a valid choice for `decision`."""


class SearchSpace(abc.ABC):
  """A search space: decisions <-> architectures."""

  name: ClassVar[str]
  # The `space` field of this space's architectures, when it is not `name`
  # (the scale-decreased space's architectures are SpineNet architectures).
  architecture_space: ClassVar[str] = ""

  @abc.abstractmethod
  def decisions(self) -> Tuple[Decision, ...]:
    """The fixed sequence of decisions every architecture is made of."""

  @abc.abstractmethod
  def start(self) -> DecisionCursor:
    """A cursor before the first decision."""

  def encode(self, architecture: Architecture) -> List[int]:
    """Decisions that decode to `architecture`; ArchitectureError if it is not
    in this space (the message says why)."""
    self._check_space(architecture)
    return self._encode(architecture)

  @abc.abstractmethod
  def _encode(self, architecture: Architecture) -> List[int]:
    """encode() for an architecture whose `space` field names this space."""

  @abc.abstractmethod
  def log10_size(self) -> float:
    """log10 of the number of distinct decision sequences."""

  @abc.abstractmethod
  def config(self) -> Dict:
    """The space's settings as JSON-able data (stored with a search)."""

  # ---- shared behaviour ------------------------------------------------------

  def sample(self, rng: random.Random) -> List[int]:
    """Uniformly random valid choice at every step."""
    cursor = self.start()
    decisions = []
    for _ in self.decisions():
      valid = [i for i, ok in enumerate(cursor.mask()) if ok]
      choice = rng.choice(valid)
      cursor.choose(choice)
      decisions.append(choice)
    return decisions

  def sample_architecture(self, rng: random.Random) -> Architecture:
    return self.decode(self.sample(rng))

  def decode(self, decisions: Sequence[int]) -> Architecture:
    cursor = self._replay(decisions)
    return cursor.architecture()

  def masks(self, decisions: Sequence[int]) -> List[Mask]:
    """The mask in force at each decision of a complete sequence."""
    specs = self.decisions()
    cursor = self.start()
    result = []
    for i, choice in enumerate(decisions):
      mask = cursor.mask()
      self._check_choice(specs, i, choice, mask)
      result.append(mask)
      cursor.choose(choice)
    return result

  def validate(self, architecture: Architecture) -> Architecture:
    """Structural validation plus membership of this space."""
    architecture.validate()
    self.encode(architecture)
    return architecture

  def _check_space(self, architecture: Architecture) -> None:
    expected = self.architecture_space or self.name
    if architecture.space != expected:
      raise ArchitectureError(
          f"space: architecture is from the {architecture.space!r} space, not {expected!r}")

  def _replay(self, decisions: Sequence[int]) -> DecisionCursor:
    specs = self.decisions()
    if len(decisions) != len(specs):
      raise ArchitectureError(
          f"expected {len(specs)} decisions for the {self.name} space, got {len(decisions)}")
    cursor = self.start()
    for i, choice in enumerate(decisions):
      self._check_choice(specs, i, choice, cursor.mask())
      cursor.choose(choice)
    return cursor

  @staticmethod
  def _check_choice(specs, i: int, choice: int, mask: Mask) -> None:
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(mask):
      raise ArchitectureError(
          f"decision {i} ({specs[i].name}): {choice!r} is not a choice index 0..{len(mask) - 1}")
    if not mask[choice]:
      raise ArchitectureError(
          f"decision {i} ({specs[i].name}): choice {choice} "
          f"({specs[i].choices[choice]}) is not valid at this point")
