"""Progress of long work (export, passes, build, benchmark rounds) on the terminal.

A tqdm bar on standard error when it is a terminal; nothing at all otherwise (logs and pipes stay
clean). `stage(name)` advances the bar by one step and names what runs now.
"""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, description: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False, disable=not sys.stderr.isatty(),
                        bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def stage(self, name: str) -> None:
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_) -> None:
        self.close()
