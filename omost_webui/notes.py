"""What the user must know about a job, said where they look: the console and the infotext (the API's `info`).

Its own module so that every step of a generation can report without importing `generation` (which calls them)."""

from __future__ import annotations

INFOTEXT_NOTES = 'Omost notes'


def note(p, message: str):
    """Something the user must know about this job (a repaired canvas, an ignored statement, regions off for a
    batch): one line in the console, and the infotext's 'Omost notes', which the API answers with in `info`."""
    notes = p.__dict__.setdefault('_omost_notes', [])
    if message not in notes:
        notes.append(message)
        print(f'[Omost] {message}')
        p.extra_generation_params[INFOTEXT_NOTES] = '; '.join(notes)

