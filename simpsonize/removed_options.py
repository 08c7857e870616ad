"""Options removed from the trainer that changed the generator itself, so weights or runs made with them cannot load
as a plain generator here.

No torch and no other simpsonize module here: the served model (``model.weights``), the trainer
(``training.checkpoint``, ``training.config``) and ``tools/gpu_run.py`` all refuse such files, and ``model`` must not
import ``training``. Removed options that changed only how a run trained are in ``training.config.REMOVED_OPTIONS``,
which takes these options' commits from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Removed option -> the last commit that has it (docs/experiments.md has the ablations they lost).
# landmark_maps (`train --landmark-maps`): G_B took five face-part heatmaps beside the photo (3 + 5 input channels).
REMOVED_GENERATOR_OPTIONS: dict[str, str] = {"landmark_maps": "e674807"}


def removed_generator_option(recorded: Mapping[str, Any], source: object, *, still: str = "has") -> str | None:
    """Why the weights or run ``source``, whose config or metadata is ``recorded``, cannot load here: one sentence
    naming the removed generator option it used and the commit that still ``has`` (or ``serves``, ``merges``) it.
    None when it used none."""
    for name, commit in REMOVED_GENERATOR_OPTIONS.items():
        if recorded.get(name):  # a config records True; served weights' metadata recorded the face parts
            return (
                f"{source} was trained with --{name.replace('_', '-')}, removed after its ablation lost "
                f"(docs/experiments.md); commit {commit} still {still} it."
            )
    return None
