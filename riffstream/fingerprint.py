"""Fingerprints: an options record as JSON-able data, derived from its fields, for what a resumable render
records and a resume must match. A field whose metadata is :data:`NOT_RECORDED` is left out (it changes
how a run is shown or kept, never its audio), so a new option is recorded without being listed anywhere."""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass

#: Field metadata for options that never change the audio.
NOT_RECORDED = {"recorded": False}


def fingerprint(record: object) -> dict:
    """Every recorded field of the dataclass ``record``, as JSON-able data."""
    return {option.name: fingerprint_value(getattr(record, option.name))
            for option in fields(record) if option.metadata.get("recorded", True)}


def fingerprint_value(value: object) -> object:
    """``value`` as JSON-able data: plain values as they are, records (a timeline, a LoRA) field by field,
    arrays and pictures as sha256 digests of their bytes, anything else by its repr's digest."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [fingerprint_value(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return fingerprint(value)
    data = value.tobytes() if hasattr(value, "tobytes") else repr(value).encode()
    return hashlib.sha256(data).hexdigest()
