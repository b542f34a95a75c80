"""Who asks the engine to change something: a student acts on their own runs, the instructor on all.

Every call that changes or removes a run (stop, pause, resume, continue, delete, prune) and every
class-wide change (the lesson lock, revealed answers, a new class, renaming or merging students)
takes a :class:`Caller`. The web app builds one per browser session (its owner id, and whether that
session gave the instructor token); the engine decides. ``caller=None`` is this machine's own code
(the command line on its own data folder, a sweep stopping its cells, the tests): it may do anything,
like the instructor.
"""
from __future__ import annotations

from dataclasses import dataclass


class NotAllowed(PermissionError):
    """A student asked for something only the run's owner or the instructor may do. Nothing was
    changed; the message says so in plain words."""


@dataclass(frozen=True)
class Caller:
    owner: str
    instructor: bool = False

    def may_change(self, owner: str) -> bool:
        return self.instructor or owner == self.owner


def check_owner(caller: Caller | None, owner: str, verb: str) -> None:
    """Raise :class:`NotAllowed` unless ``caller`` may ``verb`` (delete, stop...) a run of ``owner``."""
    if caller is not None and not caller.may_change(owner):
        raise NotAllowed(f"This run belongs to another student: only they or the instructor can "
                         f"{verb} it. Nothing was changed.")


def check_instructor(caller: Caller | None, what: str) -> None:
    """Raise :class:`NotAllowed` unless ``caller`` is the instructor (or this machine's own code)."""
    if caller is not None and not caller.instructor:
        raise NotAllowed(f"Only the instructor can {what}. Nothing was changed.")
