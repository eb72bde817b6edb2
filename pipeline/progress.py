"""Progress for long jobs: bars on a terminal, a log line every few seconds anywhere else."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("pipeline")

LOG_EVERY_S = 2.0  # s between progress log lines when stderr is not a terminal


class Progress:
    """One bar per file (frames, fps, ETA) and, for folders, one over all files."""

    def __init__(self, files: int = 1, *, interactive: bool | None = None):
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._overall: Any = None
        self._bar: Any = None
        self._label = ""
        self._frames = 0
        self._total: int | None = None
        self._started = 0.0
        self._logged = 0.0
        if self.interactive and files > 1:
            self._overall = tqdm(total=files, unit="file", desc="all files", position=0, leave=True)

    def start_file(self, label: str, total_frames: int | None) -> None:
        self._label, self._frames, self._total = label, 0, total_frames
        self._started = self._logged = time.monotonic()
        if self.interactive:
            self._bar = tqdm(
                total=total_frames,
                unit="frame",
                desc=label[-40:],
                position=1 if self._overall is not None else 0,
                leave=self._overall is None,
                dynamic_ncols=True,
            )

    def update(self, frames_done: int, extra: str = "") -> None:
        """Set how many frames of the current file are done."""
        if self._bar is not None:
            self._bar.update(frames_done - self._frames)
            if extra:
                self._bar.set_postfix_str(extra, refresh=False)
        else:
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_S:
                self._logged = now
                rate = frames_done / max(1e-9, now - self._started)
                of = f"/{self._total}" if self._total else ""
                eta = f", ETA {(self._total - frames_done) / rate:.0f} s" if self._total and rate > 0 else ""
                log.info(
                    "%s: %d%s frame(s), %.1f fps%s%s",
                    self._label,
                    frames_done,
                    of,
                    rate,
                    eta,
                    f", {extra}" if extra else "",
                )
        self._frames = frames_done

    def end_file(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._overall is not None:
            self._overall.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._overall is not None:
            self._overall.close()
