"""Logging for every process (the API, its workers, Ray actors): one line format, and the third-party output
that carries no action for the user left out: Alembic's per-process migration chatter, transformers' weight
loading bars and its report that a fresh classification head was initialised (every job makes one), its
deprecation FutureWarnings, and bitsandbytes' note about an optional `kernels` package (logged at import,
even with quantization off). `PEFTSERVE_THIRD_PARTY_WARNINGS=true` shows all of it again, for debugging."""

from __future__ import annotations

import logging
import os
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def setup_logging(level: str = "info", third_party: bool = False) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    if third_party:
        return
    for name, floor in (("alembic", logging.WARNING), ("bitsandbytes", logging.ERROR)):
        logging.getLogger(name).setLevel(max(floor, logging.getLogger().level))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"peft(\.|$)")
