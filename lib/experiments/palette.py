"""One colour per estimator in every figure of the report and of the explorer.

* CDG: red; its curves per ε in shades of red (darker: larger ε).
* NES: blue; per sample count or per σ in shades of blue (darker: more samples, larger σ).
* The exact smoothed gradient: purple. CDG's noise ceiling: dashed near-black.
* The STE variants: a categorical palette (ColorBrewer Dark2 without its purple), one colour each.
"""
from __future__ import annotations

from typing import Any

CDG = "#b2182b"
NES = "#2166ac"
EXACT = "#5e3c99"
CEILING = "#252525"
STE = {"identity": "#1b9e77", "clipped": "#d95f02", "steep": "#e7298a", "swishsign": "#66a61e",
       "polynomial": "#a6761d"}
PRECISION = {"binary": "#252525", "ternary": "#e41a1c", "2bit": "#377eb8", "fp": "#999999"}
_MAPS = {"cdg": "Reds", "nes": "Blues"}


def ste_colour(variant: str) -> str:
    """The colour of an STE variant (grey for a name outside the palette)."""
    return STE.get(variant, "#7f7f7f")


def shades(family: str, n: int) -> list[Any]:
    """``n`` shades of an estimator family's colour (``"cdg"`` or ``"nes"``), light to dark; one
    value gives the family's own colour."""
    if n == 1:
        return [CDG if family == "cdg" else NES]
    import matplotlib

    cmap = matplotlib.colormaps[_MAPS[family]]
    return [cmap(0.4 + 0.55 * i / (n - 1)) for i in range(n)]
