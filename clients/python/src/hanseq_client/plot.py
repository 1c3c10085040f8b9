"""Attention as a picture: a heatmap with the source tokens across and the output tokens down.

Needs the ``plot`` extra (``pip install 'hanseq-client[plot]'``, i.e. matplotlib) and a font
with Hangul. The system's fonts are searched afresh each time (matplotlib's own font cache
does not see fonts installed after it was built); ``font=`` names a font file instead.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from hanseq_client.results import Attention

# Preferred families first; any other installed font that covers the labels will also do.
PREFERRED = (
    "nanumgothic",
    "nanumbarungothic",
    "notosanscjk",
    "notosanskr",
    "sourcehansans",
    "undotum",
    "baekmuk",
    "malgun",
    "applesdgothicneo",
    "applegothic",
)
INSTALL_HINT = (
    "no installed font has Hangul glyphs, so the tokens cannot be drawn. Install one, e.g.\n"
    "  Debian/Ubuntu:  sudo apt-get install fonts-nanum\n"
    "  Fedora/RHEL:    sudo dnf install naver-nanum-gothic-fonts\n"
    "  macOS:          brew install --cask font-nanum-gothic\n"
    "or pass a font file: --font /path/to/NanumGothic.ttf (font= in Python)."
)


class FontNotFound(RuntimeError):
    pass


# What the file name's suffix asks for, and what matplotlib writes for it.
FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".svg": "svg", ".pdf": "pdf"}
MAX_LABELS = 60  # per axis; a longer input labels every n-th token so the labels stay legible


def image_format(path: str | os.PathLike) -> str:
    """The format ``path`` names by its suffix; ValueError for one this module does not write."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"{path}: cannot write {suffix or 'a file without a suffix'}; "
            f"name a {', '.join(sorted(set(FORMATS)))} file"
        )
    return FORMATS[suffix]


def tick_labels(tokens: list[str]) -> tuple[list[int], list[str]]:
    """Positions and labels for an axis: the tokens without their word-start marks (``▁``),
    every n-th one past MAX_LABELS."""
    step = max(1, -(-len(tokens) // MAX_LABELS))
    shown = list(range(0, len(tokens), step))
    return shown, [tokens[i].replace("\u2581", "") or "\u2581" for i in shown]


def plot_attention(
    attention: Attention,
    path: str | os.PathLike,
    *,
    font: str | os.PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Write ``attention`` as a heatmap to ``path`` (PNG, JPEG, SVG or PDF, by its suffix);
    the figure grows with the matrix up to a cap, and long inputs label every n-th token."""
    kind = image_format(path)
    matplotlib, plt = _pyplot()
    labels = attention.source_tokens + attention.target_tokens + [title or ""]
    family = find_font(labels, font)
    rows, cols = len(attention.target_tokens), len(attention.source_tokens)
    size = (min(2.5 + 0.45 * cols, 60.0), min(2.0 + 0.4 * rows, 60.0))
    with matplotlib.rc_context({"font.family": [family, "DejaVu Sans"]}):
        fig, ax = plt.subplots(figsize=size, dpi=100)
        try:
            image = ax.imshow(attention.weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(*tick_labels(attention.source_tokens), rotation=45, ha="right")
            ax.set_yticks(*tick_labels(attention.target_tokens))
            ax.set_xlabel("source")
            ax.set_ylabel("output")
            if title:
                ax.set_title(title)
            fig.colorbar(image, ax=ax, fraction=0.04)
            fig.tight_layout()
            fig.savefig(path, format=kind)
        finally:
            plt.close(fig)
    return Path(path)


def find_font(labels: list[str], font: str | os.PathLike | None = None) -> str:
    """The family that will draw ``labels`` (registered with matplotlib); ``font``: a font
    file to use instead of searching. Raises FontNotFound with how to install one."""
    return _font_family(_needed(labels), font)


def _pyplot() -> tuple[ModuleType, ModuleType]:  # matplotlib, matplotlib.pyplot
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'hanseq-client[plot]'") from None
    return matplotlib, plt


def _needed(labels: list[str]) -> set[str]:
    """Characters DejaVu Sans (matplotlib's own font, the fallback) cannot draw."""
    from matplotlib import font_manager

    chars = frozenset(ch for text in labels for ch in text if not ch.isspace())
    dejavu = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    return set(chars) - _covered(dejavu, chars)


def _font_family(needed: set[str], font: str | os.PathLike | None) -> str:
    """Register and name a font that covers ``needed``."""
    from matplotlib import font_manager

    if font is not None:
        path = Path(font)
        if not path.is_file():
            raise FontNotFound(f"font file {path} does not exist")
        missing = needed - _covered(str(path), frozenset(needed))
        if missing:
            raise FontNotFound(f"{path} has no glyphs for {''.join(sorted(missing))[:20]}")
        return _register(font_manager, str(path))
    if not needed:
        return "DejaVu Sans"
    for candidate in _candidates(font_manager):
        if _covered(candidate, frozenset(needed)) == needed:
            return _register(font_manager, candidate)
    raise FontNotFound(INSTALL_HINT)


def _candidates(font_manager: ModuleType) -> list[str]:
    paths = [
        p for p in font_manager.findSystemFonts() if p.lower().endswith((".ttf", ".otf", ".ttc"))
    ]

    def rank(path: str) -> tuple[int, str]:
        name = Path(path).stem.lower().replace("-", "").replace("_", "").replace(" ", "")
        hits = [i for i, family in enumerate(PREFERRED) if name.startswith(family)]
        bold = "bold" in name or "extra" in name or "light" in name
        return (hits[0] if hits else len(PREFERRED), str(bold) + path)

    return sorted(paths, key=rank)


@lru_cache(maxsize=256)
def _covered(path: str, needed: frozenset[str]) -> set[str]:
    from matplotlib import ft2font

    try:
        charmap = ft2font.FT2Font(path).get_charmap()
    except (OSError, RuntimeError):
        return set()
    return {ch for ch in needed if ord(ch) in charmap}


def _register(font_manager: ModuleType, path: str) -> str:
    font_manager.fontManager.addfont(path)
    return font_manager.FontProperties(fname=path).get_name()
