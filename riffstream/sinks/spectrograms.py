"""Every clip's spectrogram kept in a folder, as lossless PNG with its EXIF, and one line of ``clips.jsonl``
each saying what it plays (``--save-spectrograms``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from riffstream.planner import Clip
    from riffstream.spectrogram import SpectrogramParams


class SpectrogramFolder:
    """Keeps each clip's spectrogram in ``folder`` (made when the first clip comes)."""

    def __init__(self, folder: Path, params: SpectrogramParams) -> None:
        self.folder, self.params = Path(folder), params

    def add(self, clip: Clip, image: Image.Image, start: float, bpm: float | None) -> None:
        """Keep ``clip``'s ``image``; ``start`` is where it begins in the stream (seconds), ``bpm`` its tempo."""
        name = f"clip-{clip.index:05d}.png"
        exif = Image.Exif()
        exif.update(self.params.to_exif())
        image.save(self.folder / name, format="PNG", exif=exif)
        record = {"file": name, "prompt_a": clip.prompt_a, "prompt_b": clip.prompt_b, "alpha": clip.alpha,
                  "seed_a": clip.seed_a, "seed_b": clip.seed_b, "start": round(start, 2), "bpm": bpm}
        if clip.strength is not None:
            record["strength"] = clip.strength
        with open(self.folder / "clips.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
